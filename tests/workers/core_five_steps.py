"""A child for test_recovery: a five-step workflow that can park at a step boundary to be killed.

    core_five_steps.py DB LOG WORKFLOW_ID STOP_AT

Starts (idempotently: a relaunch adopts the dead executor's run) the workflow WORKFLOW_ID and waits
for its result, which it logs as ``result [...]``. Each step logs ``step i`` to the O_APPEND log LOG.
With STOP_AT = k in 0..5 the body, on reaching boundary k (before step k; 5 is after the last step,
before the final status), logs ``boundary k`` and waits for ever: the test then SIGKILLs the process.
Every step before boundary k is durably recorded by then. STOP_AT = -1 never stops.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402

db, log_path, workflow_id, stop_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log = SideEffectLog(log_path)
app = litedur.Engine(db)


@app.step()
def step(acc: list[int], i: int) -> list[int]:
    log.record(f"step {i}")
    return acc + [i]


def boundary(k: int) -> None:
    if k == stop_at:
        log.record(f"boundary {k}")
        threading.Event().wait()


@app.workflow(name="five_steps")
def five_steps() -> list[int]:
    log.record("body")
    acc: list[int] = []
    for i in range(5):
        boundary(i)
        acc = step(acc, i)
    boundary(5)
    return acc


app.launch()
with litedur.SetWorkflowID(workflow_id):
    handle = app.start_workflow(five_steps)
log.record(f"result {json.dumps(handle.get_result(timeout=60))}")
app.shutdown(timeout=10)
