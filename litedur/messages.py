"""Workflows that talk: events a workflow publishes, and messages sent to it.

An *event* is the latest value of a key that a workflow sets (``set_event``); anyone may wait for it
(``get_event``) or list them. A *message* is queued for one workflow under a topic (``send``) and
received by that workflow, oldest first per topic, exactly once (``recv``): the consumption and the
receiving checkpoint commit in one transaction. Every operation made from a workflow body is a
checkpoint, so a replay neither sets, sends nor consumes twice. Waits go through `timers.wait_durably`
(in a run) or the client's `WorkflowSignals` (outside one): woken by the change, never by polling.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .errors import SerializationError, WorkflowNotFoundError, WorkflowStatusError
from .runner import Plan
from .storage import ACTIVE_STATUSES, SET_EVENT_STEP, StepRow
from .timers import check_timeout, wait_durably

if TYPE_CHECKING:
    from .client import Client, MessageInfo
    from .engine import Engine, _Run

GET_EVENT_STEP = "litedur.get_event"
SEND_STEP = "litedur.send"
RECV_STEP = "litedur.recv"


def _check_str(value: Any, what: str, optional: bool = False) -> None:
    if (value is None and optional) or isinstance(value, str):
        return
    kind = "a str or None" if optional else "a str"
    raise TypeError(f"{what} must be {kind}, not {type(value).__name__} ({value!r})")


# ---- events -----------------------------------------------------------------------------------


def set_event(engine: Engine, run: _Run, key: str, value: Any) -> None:
    """Set ``key`` to ``value`` for the run's workflow. Replay rule: in a body it is a checkpoint (a
    replay does not set it again); in a step it is part of the step (a retried attempt sets it again)."""
    _check_str(key, "event key")
    encoded = engine._codec.encode(value)
    step = run.current_step()
    if step is not None:
        engine._storage.set_event(run.workflow_id, key, encoded, step.position, run.executor_id)
    else:
        name = f"{SET_EVENT_STEP}:{key}"
        position, recorded = run.checkpoint(name)
        if recorded is not None:
            return  # the recorded output is the value: not a result of set_event
        now = time.time()
        # The checkpoint keeps the value too: a fork rebuilds the events as they were at its position.
        checkpoint = StepRow(run.workflow_id, position, name, encoded[0], encoded[1], None, None, 1, now, now)
        engine._storage.set_event(run.workflow_id, key, encoded, position, run.executor_id, checkpoint)
    engine._feed.signal([run.workflow_id])


def get_event(client: Client, workflow_id: str, key: str, timeout: float | None) -> Plan[Any]:
    """Wait (outside a workflow body) for an event's value; None on timeout or once the workflow ended."""
    _check_str(workflow_id, "workflow_id")
    _check_str(key, "event key")
    timeout = check_timeout(timeout, "get_event timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    done, encoded = yield from client._signals.wait_plan(
        (workflow_id,), lambda: _event_or_end(client, workflow_id, key), deadline
    )
    return None if not done or encoded is None else client._decode(*encoded)


def get_event_in_run(engine: Engine, run: _Run, workflow_id: str, key: str, timeout: float | None) -> Plan[Any]:
    """``get_event`` from a workflow body. Replay rule: the value it returned (or None) is its checkpoint."""
    _check_str(workflow_id, "workflow_id")
    _check_str(key, "event key")
    timeout = check_timeout(timeout, "get_event timeout")
    position, recorded = run.checkpoint(GET_EVENT_STEP)
    if recorded is not None:
        return engine._recorded_outcome(recorded)
    started = time.time()
    _event_or_end(engine, workflow_id, key)  # an unknown workflow raises before anything is recorded
    done, encoded = yield from wait_durably(
        engine, run, position, timeout, lambda: _event_or_end(engine, workflow_id, key), others=(workflow_id,)
    )
    output = encoded if done and encoded is not None else engine._codec.encode(None)
    engine._record_step(run, position, GET_EVENT_STEP, 1, started, output=output)
    return engine._decode(*output)


def _event_or_end(client: Client, workflow_id: str, key: str) -> tuple[bool, tuple[int, Any] | None]:
    found = client._storage.get_event(workflow_id, key)
    if found is None:
        raise WorkflowNotFoundError(workflow_id)
    status, encoded = found
    return encoded is not None or status not in ACTIVE_STATUSES, encoded


def list_events(client: Client, workflow_id: str) -> dict[str, Any]:
    client._workflow_row(workflow_id)
    return {row.key: client._decode(row.encoding, row.value) for row in client._storage.list_events(workflow_id)}


# ---- messages ---------------------------------------------------------------------------------


def send(client: Client, workflow_id: str, message: Any, topic: str | None, idempotency_key: str | None) -> bool:
    """Queue ``message`` for a workflow that has not ended (outside a workflow body); False if the
    idempotency key had already landed."""
    _check_str(workflow_id, "workflow_id")
    _check_str(topic, "topic", optional=True)
    _check_str(idempotency_key, "idempotency_key", optional=True)
    encoded = _encode_message(client, message)
    sent = client._storage.send_message(workflow_id, topic, encoded, idempotency_key)
    if sent:
        client._feed.signal([workflow_id])
    return sent


def send_from_run(engine: Engine, run: _Run, workflow_id: str, message: Any, topic: str | None) -> None:
    """``send`` from a workflow body. Replay rule: a checkpoint committed with the message, so a replay
    never sends again; a refused send (an ended workflow) is recorded and raised again on replay."""
    _check_str(workflow_id, "workflow_id")
    _check_str(topic, "topic", optional=True)
    encoded = _encode_message(engine, message)
    position, recorded = run.checkpoint(SEND_STEP)
    if recorded is not None:
        engine._recorded_outcome(recorded)
        return
    started = time.time()
    checkpoint = StepRow(run.workflow_id, position, SEND_STEP, None, None, None, None, 1, started, time.time())
    try:
        engine._storage.send_message(workflow_id, topic, encoded, None, (checkpoint, run.executor_id))
    except (WorkflowNotFoundError, WorkflowStatusError) as exc:
        engine._record_step(run, position, SEND_STEP, 1, started, error=exc)
        raise
    engine._feed.signal([workflow_id])


def _encode_message(client: Client, message: Any) -> tuple[int, Any]:
    try:
        return client._codec.encode(message)
    except SerializationError as exc:
        raise SerializationError(f"cannot send this message: {exc}") from exc


def recv(engine: Engine, run: _Run, topic: str | None, timeout: float | None) -> Plan[Any]:
    """The next message of ``topic`` for the run's workflow, or None after ``timeout`` seconds.

    Replay rule: the message received (or None) is the checkpoint, committed in the same transaction
    that consumes the message, so each message is received exactly once across crashes.
    """
    _check_str(topic, "topic", optional=True)
    timeout = check_timeout(timeout, "recv timeout")
    position, recorded = run.checkpoint(RECV_STEP)
    if recorded is not None:
        return engine._recorded_outcome(recorded)
    started = time.time()
    checkpoint = StepRow(run.workflow_id, position, RECV_STEP, None, None, None, None, 1, started, started)

    def consume() -> tuple[bool, tuple[int, Any] | None]:
        taken = engine._storage.consume_message(checkpoint._replace(finished_at=time.time()), topic, run.executor_id)
        return taken is not None, taken

    done, taken = yield from wait_durably(engine, run, position, timeout, consume)
    if done and taken is not None:
        return engine._decode(*taken)
    engine._record_step(run, position, RECV_STEP, 1, started, output=engine._codec.encode(None))
    return None


def pending(client: Client, workflow_id: str) -> list[MessageInfo]:
    from .client import MessageInfo

    client._workflow_row(workflow_id)
    return [
        MessageInfo(row.workflow_id, row.message_id, row.topic, client._decode(row.encoding, row.value), row.sent_at)
        for row in client._storage.pending_messages(workflow_id)
    ]
