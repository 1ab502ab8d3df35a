"""A worker for the ``litedur top`` tests: a stream that grows and a queue with work waiting.

    top_worker.py DB LOG STOP

Starts ``ticker-1`` (workflow "ticker"), whose step writes ``tick N`` to its stream "ticks" every
20 ms until the file STOP exists, then closes it; enqueues ``job-0``, ``job-1``, ``job-2``
(workflow "job") in the queue "jobs" (concurrency 1), each of which waits for a message on topic
"go" and returns it. Logs ``ready`` once all that is under way, then runs until killed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402

db, log_path, stop = sys.argv[1], sys.argv[2], sys.argv[3]
app = litedur.Engine(db)
jobs = app.queue("jobs", concurrency=1)


@app.step()
def tick(key: str) -> int:
    count = len(app.already_written(key))
    deadline = time.monotonic() + 120
    while not os.path.exists(stop) and time.monotonic() < deadline:
        app.write_stream(key, f"tick {count}")
        count += 1
        time.sleep(0.02)
    return count


@app.workflow(name="ticker")
def ticker() -> int:
    count = tick("ticks")
    app.close_stream("ticks")
    return count


@app.workflow(name="job")
def job() -> object:
    return app.recv(topic="go", timeout=120)


with app:
    with litedur.SetWorkflowID("ticker-1"):
        app.start_workflow(ticker)
    for index in range(3):
        with litedur.SetWorkflowID(f"job-{index}"):
            jobs.enqueue(job)
    SideEffectLog(log_path).record("ready")
    threading.Event().wait()
