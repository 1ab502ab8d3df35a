"""Steering workflows: cancel, resume and fork (from anywhere), and child workflows (from a body).

Each management call is one storage transaction, then a wake-up of whoever waits on the workflows
it changed (in this process directly, in others through the recorded change and their file watch).

A *child* is a workflow started from a workflow body with ``start_workflow``. Its id is derived from
its parent's: ``"<parent id>-<position>"``, where the position is the parent's checkpoint that started
it (a `SetWorkflowID` block chooses another). The start and the parent's checkpoint commit together,
so a replay returns the same child and never starts a second; the child shares its parent's deadline
(or a shorter one of its own), and a cancel of the parent cancels it too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import options
from .errors import WorkflowNotFoundError
from .runner import Plan
from .storage import ANY_UNOWNED, StepRow
from .timers import wait_durably

if TYPE_CHECKING:
    from .client import Client
    from .engine import Engine, _Run, _WorkflowSpec

REQUESTED = "cancelled on request"
START_CHILD_STEP = "litedur.start_workflow"
GET_RESULT_STEP = "litedur.get_result"


def _check_id(workflow_id: Any) -> None:
    if not isinstance(workflow_id, str):
        raise TypeError(f"workflow_id must be a str, not {type(workflow_id).__name__}")


def cancel(client: Client, workflow_id: str, reason: str, if_deadline: float | None = None) -> list[str]:
    """Cancel a workflow and its unfinished descendants; the ids cancelled (none if it had ended).

    With ``if_deadline`` (a timeout), only while the workflow still has that deadline.
    """
    _check_id(workflow_id)
    _, cancelled = client._storage.cancel_workflow(workflow_id, reason, if_deadline)
    if cancelled:
        client._feed.signal(cancelled)
    return cancelled


def resume(client: Client, workflow_id: str) -> list[str]:
    """Make a cancelled (or recovery-exhausted) workflow PENDING again for any launched process to run."""
    _check_id(workflow_id)
    resumed = client._storage.resume_workflow(workflow_id)
    client._feed.signal([*resumed, ANY_UNOWNED])
    return resumed


def fork(client: Client, workflow_id: str, start_step: int) -> str:
    """Create a fork of ``workflow_id`` that replays its record before ``start_step``; the new id."""
    _check_id(workflow_id)
    if type(start_step) is not int or start_step < 0:
        raise ValueError(f"start_step must be an int >= 0, not {start_step!r}")
    if client._storage.get_workflow(workflow_id) is None:
        raise WorkflowNotFoundError(workflow_id)
    new_id = options.take_workflow_id()
    client._storage.fork_workflow(workflow_id, new_id, start_step)
    client._feed.signal([new_id, ANY_UNOWNED])
    return new_id


def child_id(parent: _Run, position: int) -> str:
    """The id of the child a parent starts at ``position``: the same on every replay (unless a
    SetWorkflowID block chose one, which this takes)."""
    if options.chosen_workflow_id() is not None:
        return options.take_workflow_id()
    return f"{parent.workflow_id}-{position}"


def start_child(engine: Engine, parent: _Run, spec: _WorkflowSpec, args: Any, kwargs: Any) -> str:
    """Start a child workflow from a body; its id. Replay rule: the recorded child id is returned."""
    position, recorded = parent.checkpoint(START_CHILD_STEP)
    if recorded is not None:
        return engine._recorded_outcome(recorded)
    workflow_id = child_id(parent, position)
    now = time.time()
    encoding, text = engine._codec.encode(workflow_id)
    checkpoint = StepRow(parent.workflow_id, position, START_CHILD_STEP, encoding, text, None, None, 1, now, now)
    return engine._start(spec, args, kwargs, workflow_id, parent, checkpoint)


def await_child(engine: Engine, parent: _Run, workflow_id: str, timeout: float | None) -> Plan[Any]:
    """``handle.get_result()`` in a body. Replay rule: the result (or exception) it got is the checkpoint."""
    position, recorded = parent.checkpoint(GET_RESULT_STEP)
    if recorded is not None:
        return engine._recorded_outcome(recorded)
    started = time.time()
    engine._workflow_row(workflow_id)  # an unknown id raises before anything is recorded
    done, row = yield from wait_durably(
        engine, parent, position, timeout, lambda: engine._final_row(workflow_id), others=(workflow_id,)
    )
    try:
        if not done or row is None:
            raise TimeoutError(f"workflow {workflow_id!r} did not finish within {timeout} s")
        result = engine._result_of(row)
    except Exception as exc:
        engine._record_step(parent, position, GET_RESULT_STEP, 1, started, error=exc)
        raise
    engine._record_step(parent, position, GET_RESULT_STEP, 1, started, output=(row.output_encoding, row.output))
    return result
