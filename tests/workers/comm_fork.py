"""A child for test_communication_processes: a deterministic multi-step stream writer, and its fork.

    comm_fork.py DB LOG run              run the workflow "orig" (seed 5) to its end.
    comm_fork.py DB LOG serve FORK [HOLD]  log ``ready PID``, launch, wait until the workflow FORK
                                           exists (the test forks it from another process) and for
                                           its end. With HOLD = "I.J", stage I blocks for ever before
                                           writing its value J (after logging ``held PID``): the test
                                           SIGKILLs the process there; that process looks for
                                           work without an executor only when woken (its
                                           periodic recovery round is an hour).

The workflow "pipeline" runs STAGES steps; stage i logs ``stage I PID FROM`` (FROM: what
``already_written`` returned, which it skips), writes PER values "i.j:acc" to the stream "out" and
returns a new acc. Then it sets the event "final", closes the stream and returns acc.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog, wait_until  # noqa: E402

import litedur  # noqa: E402

STAGES, PER = 5, 3
db, log_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
log = SideEffectLog(log_path)
hold_at = tuple(int(x) for x in sys.argv[5].split(".")) if len(sys.argv) > 5 else None
app = litedur.Engine(db)
if hold_at is not None:  # the fork must be taken by a wake-up: this process's recovery round is an hour
    litedur.engine.RECOVERY_INTERVAL = 3600.0


@app.step()
def stage(i: int, acc: int) -> int:
    earlier = len(app.already_written("out"))
    log.record(f"stage {i} {os.getpid()} {earlier}")
    for j in range(earlier, PER):
        if (i, j) == hold_at:
            log.record(f"held {os.getpid()}")
            threading.Event().wait()
        app.write_stream("out", f"{i}.{j}:{acc}")
    return acc * 3 + i


@app.workflow(name="pipeline")
def pipeline(seed: int) -> int:
    acc = seed
    for i in range(STAGES):
        acc = stage(i, acc)
    app.set_event("final", acc)
    app.close_stream("out")
    return acc


def exists(workflow_id: str) -> bool:
    try:
        app.get_status(workflow_id)
    except litedur.WorkflowNotFoundError:
        return False
    return True


app.launch()
if mode == "run":
    with litedur.SetWorkflowID("orig"):
        app.start_workflow(pipeline, 5).get_result(timeout=30)
else:
    fork_id = sys.argv[4]
    log.record(f"ready {os.getpid()}")
    wait_until(lambda: exists(fork_id), timeout=30)
    app.retrieve_workflow(fork_id).get_result(timeout=30)
app.shutdown(timeout=10)
