"""A child for test_communication_processes: a parent workflow that starts a child and awaits it.

    comm_family.py DB LOG start     launch, start the parent "family" and wait for ever (the test
                                    SIGKILLs the process while the child waits in recv).
    comm_family.py DB LOG recover   launch (recovering both), wait for the parent's result, log
                                    ``result JSON``.

The child's step ``effect`` logs ``effect X PID``; the child then waits for a message on topic "go".
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402

db, log_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
log = SideEffectLog(log_path)
app = litedur.Engine(db)


@app.step()
def effect(x: int) -> int:
    log.record(f"effect {x} {os.getpid()}")
    return x * 10


@app.workflow(name="child")
def child(x: int) -> str:
    base = effect(x)
    message = app.recv("go", timeout=30)
    return f"{base}:{message}"


@app.workflow(name="parent")
def parent(x: int) -> dict:
    handle = app.start_workflow(child, x)
    return {"child": handle.workflow_id, "result": handle.get_result()}


if mode == "start":
    app.launch()
    with litedur.SetWorkflowID("family"):
        app.start_workflow(parent, 7)
    threading.Event().wait()
else:
    app.launch()
    log.record(f"result {json.dumps(app.retrieve_workflow('family').get_result(timeout=30))}")
    app.shutdown(timeout=10)
