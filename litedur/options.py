"""Options for workflows started in a ``with`` block: the next one's id, a timeout, enqueue options."""

from __future__ import annotations

import contextvars
import os
from typing import Any, TypeVar

from .timers import check_timeout

Self = TypeVar("Self", bound="_BlockOption")

_next_workflow_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "litedur_next_workflow_id", default=None
)
_UNSET = object()
_timeout: contextvars.ContextVar[float | None | object] = contextvars.ContextVar("litedur_timeout", default=_UNSET)
_enqueue: contextvars.ContextVar[tuple[str | None, int | None, float | None]] = contextvars.ContextVar(
    "litedur_enqueue", default=(None, None, None)
)


class _BlockOption:
    """Sets a context variable for the ``with`` block (and back after it)."""

    _variable: contextvars.ContextVar[Any]

    def __init__(self, value: Any) -> None:
        self._value = value
        self._token: contextvars.Token[Any] | None = None

    def __enter__(self: Self) -> Self:
        self._token = self._variable.set(self._value)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        self._variable.reset(self._token)


class SetWorkflowID(_BlockOption):
    """``with SetWorkflowID("id"):`` gives the next workflow started, called or forked in the block that id."""

    _variable = _next_workflow_id

    def __init__(self, workflow_id: str) -> None:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise TypeError(f"workflow id must be a non-empty str, not {workflow_id!r}")
        self.workflow_id = workflow_id
        super().__init__(workflow_id)


class SetWorkflowTimeout(_BlockOption):
    """``with SetWorkflowTimeout(seconds):`` gives every workflow started or called in the block a
    durable deadline ``seconds`` after its start (None: no timeout), instead of ``@workflow(timeout=)``.

    The deadline is stored with the workflow, survives restarts and bounds its children's; when it
    passes, the workflow and its children are cancelled (reason in ``get_status().cancel_reason``).
    """

    _variable = _timeout

    def __init__(self, seconds: float | None) -> None:
        self.seconds = check_timeout(seconds, "workflow timeout")
        super().__init__(self.seconds)


class SetEnqueueOptions(_BlockOption):
    """``with SetEnqueueOptions(deduplication_id=None, priority=None, delay_seconds=None):`` for every
    enqueue in the block.

    A second enqueue with a deduplication id that an ENQUEUED or PENDING workflow of the queue holds
    raises DuplicateWorkflowError naming it; a lower priority is taken first (queues declared with
    priority_enabled); a delayed workflow waits, durably, that long before it can be taken.
    """

    _variable = _enqueue

    def __init__(
        self, *, deduplication_id: str | None = None, priority: int | None = None, delay_seconds: float | None = None
    ) -> None:
        if deduplication_id is not None and (not isinstance(deduplication_id, str) or not deduplication_id):
            raise TypeError(f"deduplication_id must be a non-empty str or None, not {deduplication_id!r}")
        if priority is not None and (type(priority) is not int or priority < 0):
            raise ValueError(f"priority must be an int >= 0 or None, not {priority!r}")
        self.options = (deduplication_id, priority, check_timeout(delay_seconds, "delay_seconds"))
        super().__init__(self.options)


def enqueue_options() -> tuple[str | None, int | None, float | None]:
    """``(deduplication_id, priority, delay_seconds)`` set by a SetEnqueueOptions block."""
    return _enqueue.get()


def chosen_workflow_id() -> str | None:
    """The id a SetWorkflowID block chose for the next start, if any (not taken)."""
    return _next_workflow_id.get()


def take_workflow_id() -> str:
    """The id for the workflow starting now: a SetWorkflowID block's (used up), else a new random one."""
    chosen = _next_workflow_id.get()
    if chosen is not None:
        _next_workflow_id.set(None)
        return chosen
    return random_uuid()


def chosen_timeout(default: float | None) -> float | None:
    """The timeout of the workflow starting now: a SetWorkflowTimeout block's, else ``default``."""
    chosen = _timeout.get()
    return default if chosen is _UNSET else chosen  # type: ignore[return-value]


def random_uuid() -> str:
    """A random (version 4) UUID in its usual text form, without importing uuid (which is slow)."""
    data = bytearray(os.urandom(16))
    data[6] = data[6] & 0x0F | 0x40
    data[8] = data[8] & 0x3F | 0x80
    text = data.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
