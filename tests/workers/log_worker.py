"""A child for test_logging: a worker that takes queued workflows and holds them until it is killed.

    log_worker.py DB LOG    declare the queue "work", launch, log ``ready PID EXECUTOR_ID``; each
                            workflow it takes logs ``holding WID PID`` in its step ``hold`` and waits
                            there for ever (the test SIGKILLs the process)

`register` defines the queue and the workflows; the test registers the same ones in its own engine
(with a ``hold`` that returns at once), the process that launches after the kill:

    held(wid)       steps ``hold`` then ``flaky`` (max_attempts=2), whose first attempt in a process
                    raises RuntimeError; returns the attempt that succeeded (2)
    fragile(wid)    max_recovery_attempts=0: step ``hold``; after one recovery it is given up
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import litedur


def register(app: litedur.Engine, hold: Callable[[str], None]) -> None:
    """The queue ``work`` and the workflows ``held`` and ``fragile`` (see module doc)."""
    app.queue("work")
    attempts: list[int] = []

    @app.step(name="hold")
    def hold_step(wid: str) -> None:
        hold(wid)

    @app.step(name="flaky", max_attempts=2, interval=0.001)
    def flaky(wid: str) -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError(f"first try of {wid} fails")
        return len(attempts)

    @app.workflow(name="held")
    def held(wid: str) -> int:
        hold_step(wid)
        return flaky(wid)

    @app.workflow(name="fragile", max_recovery_attempts=0)
    def fragile(wid: str) -> str:
        hold_step(wid)
        return "never"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support import SideEffectLog

    db, log = sys.argv[1], SideEffectLog(sys.argv[2])

    def hold_for_ever(wid: str) -> None:
        log.record(f"holding {wid} {os.getpid()}")
        threading.Event().wait()

    app = litedur.Engine(db)
    register(app, hold_for_ever)
    app.launch()
    log.record(f"ready {os.getpid()} {app.executor_id}")
    threading.Event().wait()
