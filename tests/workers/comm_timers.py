"""A child for test_communication_processes: durable sleep and workflow timeouts across a kill.

    comm_timers.py DB LOG start WORKFLOW_ID KIND [TIMEOUT]
    comm_timers.py DB LOG recover WORKFLOW_ID

``start`` launches, starts WORKFLOW_ID and waits for ever (the test SIGKILLs it). KIND is
``nap:SECONDS`` (the workflow "napper": a step, ``app.sleep(SECONDS)``, a step), or ``recv`` / ``hold``
(the workflow "bounded", ``@app.workflow(timeout=2.0)``: a step, then blocked in ``app.recv`` for 30 s,
or in a step ``hold`` that never returns in a ``start`` process). TIMEOUT, if given, starts it inside
``SetWorkflowTimeout(TIMEOUT)`` instead of the decorator's 2 s.
``recover`` logs ``launching PID TIME``, launches (recovering the workflow), waits for its end and
logs ``result JSON`` or ``cancelled MESSAGE``.

Steps log ``before PID TIME``, ``after PID TIME`` and ``hold PID`` when their bodies run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402

db, log_path, mode, workflow_id = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
log = SideEffectLog(log_path)
app = litedur.Engine(db)


@app.step()
def mark(label: str) -> str:
    log.record(f"{label} {os.getpid()} {time.time():.6f}")
    return label


@app.step()
def hold() -> None:
    log.record(f"hold {os.getpid()}")
    if mode == "start":
        threading.Event().wait()


@app.workflow(name="napper")
def napper(seconds: float) -> float:
    mark("before")
    app.sleep(seconds)
    mark("after")
    return seconds


@app.workflow(name="bounded", timeout=2.0)
def bounded(kind: str) -> str:
    mark("before")
    if kind == "recv":
        app.recv(timeout=30)
    else:
        hold()
    mark("after")
    return kind


if mode == "start":
    kind = sys.argv[5]
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else None
    app.launch()
    with litedur.SetWorkflowID(workflow_id):
        if kind.startswith("nap:"):
            app.start_workflow(napper, float(kind[4:]))
        elif timeout is None:
            app.start_workflow(bounded, kind)
        else:
            with litedur.SetWorkflowTimeout(timeout):
                app.start_workflow(bounded, kind)
    threading.Event().wait()
else:
    log.record(f"launching {os.getpid()} {time.time():.6f}")
    app.launch()
    try:
        log.record(f"result {json.dumps(app.retrieve_workflow(workflow_id).get_result(timeout=30))}")
    except litedur.WorkflowCancelledError as exc:
        log.record(f"cancelled {exc}")
    app.shutdown(timeout=10)
