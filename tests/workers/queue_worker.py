"""A child for test_queues: a worker process that declares queues and runs what they hold.

    queue_worker.py DB LOG PROFILE MAX_WORKERS          declare the profile's queues, launch, log
                                                        ``ready PID EXECUTOR_ID``, then run queued work
                                                        for ever (the test kills it).
    queue_worker.py DB LOG PROFILE MAX_WORKERS declare  declare the profile's queues and exit (so that a
                                                        Client can enqueue while no worker runs).

Profiles (each declares only the queues its test uses, so a dispatcher looks at nothing else):
    load    "jobs" (concurrency 6, worker_concurrency 3) and "paced" (limiter 8 starts per 0.3 s)
    ranked  "ranked" (concurrency 1, priority_enabled)
    solo    "solo" (concurrency 1)
    misc    "plain" (no limits), "dedup" (no limits), "single" (concurrency 1)

Workflows (the same in every profile; enqueued by name, as a Client would):
    job(wid, pace)      one step ``work``: reads the workflow's own ``updated_at`` (the commit time of the
                        dequeue that took it, as the queue recorded it), logs ``run WID PID``, sleeps
                        ``pace`` s and returns ``{"pid", "executor", "taken_at"}``, so the step's record
                        says who ran it and when it was taken; its started_at/finished_at say when it ran.
    gated(wid, gate)    the step ``work`` (pace 0) then a step ``hold`` that waits until the file GATE
                        exists (at most 60 s) and logs ``released WID PID``.
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

db, log_path, profile, max_workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
declare_only = sys.argv[5:] == ["declare"]
log = SideEffectLog(log_path)
app = litedur.Engine(db, max_workers=max_workers)


@app.step()
def work(wid: str, pace: float) -> dict:
    taken_at = app.get_status(wid).updated_at  # still the dequeue's write: nothing else touches it while PENDING
    log.record(f"run {wid} {os.getpid()}")
    if pace:
        time.sleep(pace)
    return {"pid": os.getpid(), "executor": app.executor_id, "taken_at": taken_at}


@app.step()
def hold(wid: str, gate: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.002)
    log.record(f"released {wid} {os.getpid()}")


@app.workflow(name="job")
def job(wid: str, pace: float) -> dict:
    return work(wid, pace)


@app.workflow(name="gated")
def gated(wid: str, gate: str) -> dict:
    ran = work(wid, 0)
    hold(wid, gate)
    return ran


if profile == "load":
    app.queue("jobs", concurrency=6, worker_concurrency=3)
    app.queue("paced", limiter={"limit": 8, "period": 0.3})
elif profile == "ranked":
    app.queue("ranked", concurrency=1, priority_enabled=True)
elif profile == "solo":
    app.queue("solo", concurrency=1)
elif profile == "misc":
    app.queue("plain")
    app.queue("dedup")
    app.queue("single", concurrency=1)
else:
    raise SystemExit(f"unknown profile {profile!r}")

if declare_only:
    app.close()
    sys.exit(0)

app.launch()
log.record(f"ready {os.getpid()} {app.executor_id}")
threading.Event().wait()
