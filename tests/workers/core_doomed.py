"""A child for test_recovery: a workflow whose step SIGKILLs its own process, every time.

    core_doomed.py DB LOG WORKFLOW_ID

Launches (recovering the workflow if a previous run died in it), starts WORKFLOW_ID idempotently
and waits for its result. The step logs ``doom PID`` and kills the process. Once the workflow is
moved to MAX_RECOVERY_ATTEMPTS_EXCEEDED (max_recovery_attempts=2) the process logs ``exceeded``
and exits with status 3.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402

db, log_path, workflow_id = sys.argv[1], sys.argv[2], sys.argv[3]
log = SideEffectLog(log_path)
app = litedur.Engine(db)


@app.step()
def doom() -> None:
    log.record(f"doom {os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


@app.workflow(name="doomed", max_recovery_attempts=2)
def doomed() -> str:
    doom()
    return "survived"


app.launch()
with litedur.SetWorkflowID(workflow_id):
    handle = app.start_workflow(doomed)
try:
    handle.get_result(timeout=60)
except litedur.MaxRecoveryAttemptsExceededError:
    log.record("exceeded")
    app.shutdown(timeout=10)
    sys.exit(3)
log.record("finished")
