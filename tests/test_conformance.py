"""The Durable Streams protocol's own conformance suite against a real `litedur serve`.

tests/conformance pins @durable-streams/server-conformance-tests 0.3.6 and vitest (package-lock.json);
its test file calls ``runConformanceTests({ baseUrl })``. This test installs it (``npm ci``, skipped
when node_modules already holds that lock), starts ``litedur serve`` on a free port with a new
database, runs vitest with its JSON reporter and requires at least MIN_PASSED of the suite's 338
tests to pass (the protocol's reference server passes 324 with this version), naming every failure.
It needs Node.js >= 20.19 and npm: .ci/run installs them where they are missing; elsewhere it skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MIN_PASSED = 330
SUITE = Path(__file__).parent / "conformance"
OWN_NODE = SUITE / ".node" / "node_modules" / ".bin"  # where .ci/run puts Node when the machine's is too old
MIN_NODE = (20, 19)  # vitest 4 (vite 7) needs it
LONG_POLL_TIMEOUT = "2"  # seconds: the suite waits for a few long-polls to time out (its tests allow 5 s)


def node_and_npm() -> tuple[str, str]:
    """Paths of node and npm, preferring the Node that .ci/run installed; skip if there is none fit."""
    path = os.pathsep.join([str(OWN_NODE), os.environ.get("PATH", "")])
    node, npm = shutil.which("node", path=path), shutil.which("npm", path=path)
    if node is None or npm is None:
        pytest.skip("the conformance suite needs Node.js and npm (.ci/run installs them): not found")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    numbers = tuple(int(part) for part in version.lstrip("v").split(".")[:2])
    if numbers < MIN_NODE:
        pytest.skip(f"the conformance suite needs Node.js >= {'.'.join(map(str, MIN_NODE))}, found {version}")
    return node, npm


def install(node: str, npm: str) -> None:
    """``npm ci`` in tests/conformance unless its node_modules holds exactly the pinned lock already."""
    lock = hashlib.sha256((SUITE / "package-lock.json").read_bytes()).hexdigest()
    stamp = SUITE / "node_modules" / ".litedur-lock-sha256"
    if stamp.exists() and stamp.read_text() == lock:
        return
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(node).parent), os.environ.get("PATH", "")])}
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SUITE, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, f"npm ci failed in {SUITE}:\n{done.stdout}\n{done.stderr}"
    stamp.write_text(lock)


def start_server(path: Path) -> tuple[subprocess.Popen[str], str]:
    """``litedur serve`` on a free port of loopback; its process and URL."""
    env = {key: value for key, value in os.environ.items() if key != "LITEDUR_TOKEN"}
    command = [sys.executable, "-m", "litedur", "--db", str(path), "serve", "--create", "--port", "0",
               "--long-poll-timeout", LONG_POLL_TIMEOUT]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()  # type: ignore[union-attr]
    if not url.startswith("http://"):
        process.kill()
        raise AssertionError(f"litedur serve did not start: {process.stderr.read()}")  # type: ignore[union-attr]
    return process, url


def failures(report: dict) -> list[str]:
    return [
        " > ".join([*test["ancestorTitles"], test["title"]]) + f": {(test['failureMessages'] or [''])[0][:300]}"
        for result in report["testResults"]
        for test in result["assertionResults"]
        if test["status"] == "failed"
    ]


def test_the_protocol_conformance_suite_passes_against_litedur_serve(tmp_path):
    node, npm = node_and_npm()
    install(node, npm)
    server, url = start_server(tmp_path / "conformance.db")
    report_path = tmp_path / "report.json"
    try:
        run = subprocess.run(
            [node, "node_modules/vitest/vitest.mjs", "run", "--reporter=json", f"--outputFile={report_path}"],
            cwd=SUITE, env={**os.environ, "LITEDUR_CONFORMANCE_URL": url, "CI": "true"},
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert report_path.exists(), f"vitest wrote no report:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    passed, failed = report["numPassedTests"], report["numFailedTests"]
    skipped = report["numPendingTests"] + report["numTodoTests"]
    failed_tests = failures(report)
    print(f"conformance: {passed} passed, {failed} failed, {skipped} skipped of {report['numTotalTests']}")
    for failure in failed_tests:
        print(f"  FAILED {failure}")
    assert passed >= MIN_PASSED, f"{passed} passed (at least {MIN_PASSED} expected); failed:\n" + "\n".join(
        failed_tests
    )
