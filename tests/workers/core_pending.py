"""A child for test_recovery: many workflows, left PENDING by a dead executor, then recovered.

    core_pending.py DB LOG park COUNT      start COUNT workflows p00.. and park each after its first
                                            step (logs ``parked ID`` once that step is durable); the
                                            test then SIGKILLs the process.
    core_pending.py DB LOG recover COUNT   log ``up PID``, wait until two processes are up, launch
                                            (recovering what the dead executor left) and wait for
                                            every workflow to end; log ``done PID``.

Side effects go to the O_APPEND log: ``first ID``, ``second ID`` (the steps), ``body ID PID``.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog, wait_until  # noqa: E402

import litedur  # noqa: E402

db, log_path, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log = SideEffectLog(log_path)
app = litedur.Engine(db)
ids = [f"p{i:02d}" for i in range(count)]


@app.step()
def first(workflow_id: str) -> str:
    log.record(f"first {workflow_id}")
    return workflow_id


@app.step()
def second(workflow_id: str) -> str:
    log.record(f"second {workflow_id}")
    return workflow_id.upper()


@app.workflow(name="parked")
def parked(workflow_id: str) -> str:
    log.record(f"body {workflow_id} {os.getpid()}")
    first(workflow_id)
    if mode == "park":
        log.record(f"parked {workflow_id}")
        threading.Event().wait()
    return second(workflow_id)


if mode == "park":
    app.launch()
    for workflow_id in ids:
        with litedur.SetWorkflowID(workflow_id):
            app.start_workflow(parked, workflow_id)
    threading.Event().wait()
else:
    log.record(f"up {os.getpid()}")
    wait_until(lambda: sum(line.startswith("up ") for line in log.lines()) >= 2, timeout=30)
    app.launch()
    for workflow_id in ids:
        app.retrieve_workflow(workflow_id).get_result(timeout=60)
    log.record(f"done {os.getpid()} {app.executor_id}")
    app.shutdown(timeout=10)
