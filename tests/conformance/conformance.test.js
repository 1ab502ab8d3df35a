// The protocol's conformance suite against the server whose URL is in LITEDUR_CONFORMANCE_URL
// (tests/test_conformance.py starts `litedur serve` and sets it).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.LITEDUR_CONFORMANCE_URL
if (!baseUrl) {
  throw new Error("set LITEDUR_CONFORMANCE_URL to the base URL of a running `litedur serve`")
}

runConformanceTests({ baseUrl })
