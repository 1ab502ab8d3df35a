"""A child for test_communication_processes: a workflow that publishes events before and after a kill.

    comm_events.py DB LOG start     launch, start "publisher" and wait for ever (the test SIGKILLs it
                                    while the workflow waits for its message on topic "next").
    comm_events.py DB LOG recover   launch (recovering it), wait for its result, log ``result JSON``.

The body sets "phase" = "one", "progress" = {"done": 1, "of": 2} and "origin" = "first run", runs a step that logs
``published PID``, waits for a message on topic "next", then sets "phase" = "two",
"progress" = {"done": 2, "of": 2} and "note" = the message.
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
def published() -> None:
    log.record(f"published {os.getpid()}")


@app.workflow(name="publisher")
def publisher() -> str:
    app.set_event("phase", "one")
    app.set_event("progress", {"done": 1, "of": 2})
    app.set_event("origin", "first run")
    published()
    message = app.recv("next", timeout=30)
    app.set_event("phase", "two")
    app.set_event("progress", {"done": 2, "of": 2})
    app.set_event("note", message)
    return "finished"


if mode == "start":
    app.launch()
    with litedur.SetWorkflowID("pub"):
        app.start_workflow(publisher)
    threading.Event().wait()
else:
    app.launch()
    log.record(f"result {json.dumps(app.retrieve_workflow('pub').get_result(timeout=30))}")
    app.shutdown(timeout=10)
