"""A child for test_communication_processes: how a wait in one process is woken by another.

    comm_echo.py DB LOG GATE start     launch, start "echo" and wait for ever (the test SIGKILLs it
                                       while the workflow waits in recv).
    comm_echo.py DB LOG GATE recover   launch (recovering "echo"), wait for its result, log ``result JSON``.

The body receives one message on topic "ping", runs a step ``report`` that logs ``report PID RINGS``
(this process's ``app._signals.rings``, how its waiters were woken so far, as JSON), runs a step
``hold`` that waits for the file GATE to exist, then sets the event "pong" to the message upper-cased.

A monitor thread logs ``blocked PID 0 RINGS`` as soon as the workflow's recv is blocked in its wait
(``app._signals.blocked("echo")``). Its check for the message has then run and found nothing, so
whatever the test sends after seeing that line must wake the wait: no race between "waiting" and
"sent".
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

db, log_path, gate, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
log = SideEffectLog(log_path)
app = litedur.Engine(db)


def rings() -> str:
    return json.dumps(dict(app._signals.rings), sort_keys=True, separators=(",", ":"))


@app.step()
def report(message: str) -> None:
    log.record(f"report {os.getpid()} {rings()}")


@app.step()
def hold() -> None:
    while not os.path.exists(gate):
        time.sleep(0.001)


@app.workflow(name="echo")
def echo() -> str:
    message = app.recv("ping", timeout=30)
    report(message)
    hold()
    app.set_event("pong", message.upper())
    return message


def monitor() -> None:
    while not app._signals.blocked("echo"):
        time.sleep(0.001)
    log.record(f"blocked {os.getpid()} 0 {rings()}")


threading.Thread(target=monitor, daemon=True).start()
app.launch()
if mode == "start":
    with litedur.SetWorkflowID("echo"):
        app.start_workflow(echo)
    threading.Event().wait()
else:
    log.record(f"result {json.dumps(app.retrieve_workflow('echo').get_result(timeout=30))}")
    app.shutdown(timeout=10)
