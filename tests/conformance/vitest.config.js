import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["conformance.test.js"],
    // One server, one file: the suite's own timeouts apply (5 s unless a test sets more).
    fileParallelism: false,
  },
})
