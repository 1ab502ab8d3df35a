"""A child for test_schedules: a worker process with one scheduled workflow, on a fast clock.

    sched_worker.py DB LOG ORIGIN RATE [hang]

The schedulers' test hook (`litedur.schedules.clock`) runs RATE times as fast as real time from
ORIGIN, the same in every worker, so they agree on the time: at RATE 120 a cron minute passes in half
a second. The workflow ``every`` is scheduled ``* * * * *`` with catch_up on (a tick reached late
under load still runs; a burst never does). Its step ``effect`` logs ``tick <scheduled time> <pid>``
and returns ``[scheduled time, pid]``. After launch the worker logs ``ready PID`` and runs until killed.

With ``hang`` the step logs ``started <scheduled time> <pid>`` and blocks for ever instead, so the
test can kill the process in the middle of a tick's workflow.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402
from litedur import schedules  # noqa: E402

db, log_path, origin, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
hang = sys.argv[5:] == ["hang"]
schedules.clock = schedules.Clock(rate=rate, origin=origin)
log = SideEffectLog(log_path)
app = litedur.Engine(db)


@app.step()
def effect(tick: str) -> list:
    if hang:
        log.record(f"started {tick} {os.getpid()}")
        threading.Event().wait()
    log.record(f"tick {tick} {os.getpid()}")
    return [tick, os.getpid()]


@app.scheduled("* * * * *", catch_up=True)
@app.workflow(name="every")
def every(scheduled_time: datetime, actual_time: datetime) -> list:
    return effect(scheduled_time.isoformat())


app.launch()
log.record(f"ready {os.getpid()}")
threading.Event().wait()
