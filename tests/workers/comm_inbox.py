"""A child for test_communication_processes: a workflow that receives N messages, each exactly once.

    comm_inbox.py DB LOG start N     launch, start the workflow "inbox" (N messages), log ``started PID``,
                                     then wait for ever: the test SIGKILLs the process mid-way.
    comm_inbox.py DB LOG recover N   launch (recovering "inbox" from the dead executor), wait for its
                                     result and log ``result JSON``.

The body alternates ``app.recv()`` (the default topic) and a step ``note`` that logs ``got MSG PID``
*after* recv returned, then sleeps ``INBOX_PACE`` seconds (default 0.02) so that the test can kill the
process while messages are still queued. It returns the messages in the order it received them.
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

db, log_path, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log = SideEffectLog(log_path)
pace = float(os.environ.get("INBOX_PACE", "0.02"))
app = litedur.Engine(db)


@app.step()
def note(message: str) -> str:
    log.record(f"got {message} {os.getpid()}")
    time.sleep(pace)
    return message


@app.workflow(name="inbox")
def inbox(count: int) -> list[str]:
    received = []
    for _ in range(count):
        message = app.recv(timeout=30)
        received.append(note(message))
    return received


if mode == "start":
    app.launch()
    with litedur.SetWorkflowID("inbox"):
        app.start_workflow(inbox, n)
    log.record(f"started {os.getpid()}")
    threading.Event().wait()
else:
    app.launch()
    result = app.retrieve_workflow("inbox").get_result(timeout=60)
    log.record(f"result {json.dumps(result)}")
    app.shutdown(timeout=10)
