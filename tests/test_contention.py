"""Contention: 4 processes x 4 threads on one file, starting workflows and writing and reading streams.

Each process (tests/workers/contention_worker.py) runs an Engine; each of its threads starts
workflows that write stream values from a step and from the body, reads them back live, and now
and then reads a random finished workflow of any process through a Client. All processes start
together (a gate file) and run for ``LITEDUR_CONTENTION_SECONDS`` (5 s here; 30 s for the long
mode: ``LITEDUR_CONTENTION_SECONDS=30 pytest tests/test_contention.py -s``).

Checks: no exception reaches any caller (no SQLITE_BUSY, no "database is locked"); every workflow a
process reports is SUCCESS in the file with exactly its values, and the file holds no other
workflow; every reader got every value in order; ``PRAGMA integrity_check`` is ok. The throughput
is printed (``-s``).
"""

from __future__ import annotations

import json
import os
import subprocess

import apsw
from support import finish, kill, spawn, stream_entries

import litedur

PROCESSES = 4
THREADS = 4
SECONDS = float(os.environ.get("LITEDUR_CONTENTION_SECONDS", "5"))


def test_four_processes_of_four_threads_lose_nothing_and_never_see_busy(tmp_path):
    db = tmp_path / "contended.db"
    litedur.Engine(db).close()
    gate = tmp_path / "go"
    processes: list[subprocess.Popen] = []
    try:
        for number in range(PROCESSES):
            processes.append(
                spawn("contention_worker.py", db, f"p{number}", THREADS, SECONDS, gate,
                      stdout=subprocess.PIPE, text=True)
            )  # fmt: skip
        for process in processes:
            assert process.stdout.readline().strip() == "ready", "a worker died before it was ready"
        gate.touch()  # every engine is launched: the load starts everywhere at once
        reports = []
        for process in processes:
            out, _ = process.communicate(timeout=SECONDS + 120)
            assert process.returncode == 0, f"worker exited with {process.returncode}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            kill(process)
        for process in processes:
            finish(process, timeout=10)

    errors = [error for report in reports for error in report["errors"]]
    assert not errors, f"{len(errors)} errors reached callers, first:\n{errors[0]}"
    ids = [workflow_id for report in reports for workflow_id in report["ids"]]
    workflows = sum(report["workflows"] for report in reports)
    written = sum(report["written"] for report in reports)
    read = sum(report["read"] for report in reports)
    seconds = max(report["seconds"] for report in reports)
    print(
        f"\ncontention ({PROCESSES} processes x {THREADS} threads, {seconds:.1f} s): "
        f"{workflows / seconds:.0f} workflows/s, {written / seconds:.0f} values written/s, "
        f"{read / seconds:.0f} values read/s, {sum(r['foreign_reads'] for r in reports)} cross-process reads"
    )
    assert workflows >= PROCESSES * THREADS  # every thread got work done

    with litedur.Client(db) as client:
        stored = {status.workflow_id: status for status in client.list_workflows()}
    assert sorted(stored) == sorted(ids)  # nothing lost, nothing extra
    for workflow_id, status in stored.items():
        count = status.inputs["args"][1]
        assert (status.status, status.output) == ("SUCCESS", count), workflow_id
        values = stream_entries(db, workflow_id, "values")
        assert [(offset, value) for offset, value, _, _ in values] == [
            (i, f"{workflow_id}:{i}") for i in range(count)
        ], workflow_id
        assert [value for _, value, _, _ in stream_entries(db, workflow_id, "body")] == ["first", "last"]
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
