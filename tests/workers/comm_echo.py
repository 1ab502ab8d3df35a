"""A child for test_communication_processes: how a wait in one process is woken by another.

    comm_echo.py DB LOG GATE start     launch, start "echo" and wait for ever (the test SIGKILLs it
                                       while the workflow waits in recv).
    comm_echo.py DB LOG GATE recover   launch (recovering "echo"), wait for its result, log ``result JSON``.

The body receives one message on topic "ping", runs a step ``report`` that logs ``report PID RINGS``
(this process's ``app._signals.rings``, how its waiters were woken so far, as JSON), runs a step
``hold`` that waits for the file GATE to exist, then sets the event "pong" to the message upper-cased.

A monitor thread logs ``blocked PID POSITION RINGS`` once per durable wait, as soon as a workflow
thread is blocked in it: its stack holds `timers.wait_durably` (whose local ``position`` names the
wait) under `Interest.wait`. Its check for the message has then run and found nothing, so whatever
the test sends after seeing that line must wake the wait: no race between "waiting" and "sent".
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
from litedur.wakeup import Interest  # noqa: E402

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


def blocked_wait_position(frame) -> int | None:
    """The position of the durable wait this stack is blocked in, else None."""
    in_interest_wait, position = False, None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "wait" and isinstance(frame.f_locals.get("self"), Interest):
            in_interest_wait = True
        elif code.co_name == "wait_durably" and code.co_filename.endswith("timers.py"):
            position = frame.f_locals.get("position")
        frame = frame.f_back
    return position if in_interest_wait else None


def monitor() -> None:
    reported: set[int] = set()
    me = threading.get_ident()
    while True:
        for ident, frame in sys._current_frames().items():
            position = None if ident == me else blocked_wait_position(frame)
            if position is not None and position not in reported:
                reported.add(position)
                log.record(f"blocked {os.getpid()} {position} {rings()}")
        time.sleep(0.001)


threading.Thread(target=monitor, daemon=True).start()
app.launch()
if mode == "start":
    with litedur.SetWorkflowID("echo"):
        app.start_workflow(echo)
    threading.Event().wait()
else:
    log.record(f"result {json.dumps(app.retrieve_workflow('echo').get_result(timeout=30))}")
    app.shutdown(timeout=10)
