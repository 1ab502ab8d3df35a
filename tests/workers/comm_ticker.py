"""A child for test_communication_processes: a slow stream writer that is killed, cancelled and resumed.

    comm_ticker.py DB LOG start N   launch, start "ticker" (writes 0..N-1 to the stream "ticks" from a
                                    step) and wait for ever: the test SIGKILLs the process.
    comm_ticker.py DB LOG serve N   log ``serving PID``, launch (recovering "ticker"), and stay up until
                                    "ticker" is SUCCESS (through a cancel and a resume), then log ``done``.

The step logs ``attempt PID FROM`` (FROM: how many values ``already_written`` returned, which it skips),
writes one value every ``TICK_PACE`` seconds (default 0.005), and logs ``cancelled at I PID`` when a
write raises WorkflowCancelledError (then re-raises it). The workflow closes the stream and returns FROM.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog, wait_until  # noqa: E402

import litedur  # noqa: E402

KEY = "ticks"
db, log_path, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log = SideEffectLog(log_path)
pace = float(os.environ.get("TICK_PACE", "0.005"))
app = litedur.Engine(db)


@app.step()
def tick(count: int) -> int:
    earlier = len(app.already_written(KEY))
    log.record(f"attempt {os.getpid()} {earlier}")
    for i in range(earlier, count):
        try:
            app.write_stream(KEY, i)
        except litedur.WorkflowCancelledError:
            log.record(f"cancelled at {i} {os.getpid()}")
            raise
        time.sleep(pace)
    return earlier


@app.workflow(name="ticker")
def ticker(count: int) -> int:
    earlier = tick(count)
    app.close_stream(KEY)
    return earlier


if mode == "start":
    app.launch()
    with litedur.SetWorkflowID("ticker"):
        app.start_workflow(ticker, n)
    threading.Event().wait()
else:
    log.record(f"serving {os.getpid()}")
    app.launch()
    wait_until(lambda: app.get_status("ticker").status == "SUCCESS", timeout=60, interval=0.01)
    log.record("done")
    app.shutdown(timeout=10)
