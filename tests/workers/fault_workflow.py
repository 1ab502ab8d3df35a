"""A child process of the crash-injection harness: runs (or recovers) one seeded random workflow.

    fault_workflow.py DB LOG SEED WORKFLOW_ID MODE

MODE ``start`` calls ``start_workflow`` with the id (which resumes the workflow if a dead process
left it PENDING); MODE ``recover`` only launches (recovery adopts the workflow) and starts the
workflow itself only if it does not exist yet (its first process died before creating it). Either
way the process then waits for the workflow to end and exits 0. Every event of the workflow (see
fault_shape) is appended to LOG, opened with O_APPEND, as ``KIND PID FIELDS...``, so the log survives
SIGKILL and tells which process did what.
"""

from __future__ import annotations

import contextlib
import os
import sys

from fault_shape import FaultError, build, shape_of

import litedur


def main() -> int:
    db, log, seed, workflow_id, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    pid = os.getpid()

    def event(kind: str, *fields: object) -> None:
        line = " ".join([kind, str(pid), *map(str, fields)]) + "\n"
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    app = litedur.Engine(db)
    flow = build(app, shape_of(seed), event)
    event("start", mode, app.executor_id)
    app.launch()
    if mode == "start":
        with litedur.SetWorkflowID(workflow_id):
            handle = app.start_workflow(flow, seed)
    else:
        try:
            handle = app.retrieve_workflow(workflow_id)
        except litedur.WorkflowNotFoundError:
            with litedur.SetWorkflowID(workflow_id):
                handle = app.start_workflow(flow, seed)
    with contextlib.suppress(FaultError):
        handle.get_result()
    app.shutdown()
    event("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
