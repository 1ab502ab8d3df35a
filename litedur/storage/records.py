"""The rows and constants every storage backend shares: what the engine reads and writes, without SQL."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

OPEN, CLOSED_BY_WORKFLOW, CLOSED_BY_TERMINATION = 0, 1, 2
END_OF_STREAM = -1  # encoding of the entry that closing a stream appends after its last value
BEING_REMOVED = "id of a deleted workflow whose rows are still being removed"  # the trigger's words
STREAM_DELETED = -2  # encoding an end entry takes when its workflow is deleted: readers stop with an error
ACTIVE_STATUSES = ("PENDING", "ENQUEUED")
RESUMABLE_STATUSES = ("CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")
CASCADE_REASON = "cancelled with its parent"  # how a child's cancel reason starts when its parent's cancel took it
WRITE_STREAM_STEP = "litedur.write_stream"
SET_EVENT_STEP = "litedur.set_event"
ANY_UNOWNED = ""  # the change key bumped when PENDING work without an executor appears (resume, fork)


class WorkflowRow(NamedTuple):
    workflow_id: str
    name: str
    status: str
    inputs_encoding: int
    inputs: Any
    output_encoding: int | None
    output: Any
    error: str | None
    error_pickle: bytes | None
    executor_id: str | None
    recovery_attempts: int
    created_at: float
    updated_at: float
    parent_id: str | None = None
    timeout: float | None = None
    deadline: float | None = None
    cancel_reason: str | None = None
    queue_name: str | None = None
    priority: int | None = None
    deduplication_id: str | None = None
    available_at: float | None = None


class QueueRow(NamedTuple):
    name: str
    concurrency: int | None
    worker_concurrency: int | None
    rate_limit: int | None
    rate_period: float | None
    priority_enabled: int
    declared_at: float


class QueueCounts(NamedTuple):
    name: str
    enqueued: int
    running: int


class ScheduleRow(NamedTuple):
    """A schedule as the latest process launched with it declared it, and the latest tick claimed."""

    name: str
    workflow_name: str
    cron: str
    tz: str | None
    catch_up: int
    created_at: float  # when a process first declared it (the clock of `schedules`)
    declared_at: float
    last_tick: float | None  # epoch seconds of the latest tick claimed; None before the first


class StepRow(NamedTuple):
    workflow_id: str
    position: int
    name: str
    output_encoding: int | None
    output: Any
    error: str | None
    error_pickle: bytes | None
    attempts: int
    started_at: float
    finished_at: float


class StreamRow(NamedTuple):
    workflow_id: str
    key: str
    length: int
    closed: int


class StreamGroup(NamedTuple):
    """Values one step attempt wrote to one stream, in order: the unit of a grouped append."""

    workflow_id: str
    key: str
    position: int
    attempt: int
    values: list[tuple[int, Any]]


class EventRow(NamedTuple):
    workflow_id: str
    key: str
    encoding: int
    value: Any
    position: int
    updated_at: float


class MessageRow(NamedTuple):
    message_id: int
    workflow_id: str
    topic: str | None
    encoding: int
    value: Any
    sent_at: float


class WorkflowState(NamedTuple):
    """What a running workflow checks before each step: is it still PENDING, and still its executor's."""

    status: str
    executor_id: str | None
    deadline: float | None
    cancel_reason: str | None


class EntryRow(NamedTuple):
    offset: int
    encoding: int
    value: Any
    position: int
    attempt: int


HTTP_STREAM_CHANGE = "http-stream:"  # prefix of the change key numbered by every write to a stream


def http_stream_key(path: str) -> str:
    """The change key (see `changes_since`) that writes to the HTTP stream ``path`` number."""
    return HTTP_STREAM_CHANGE + path


class HttpStreamRow(NamedTuple):
    stream_id: int
    path: str
    content_type: str
    media_type: str
    json: int
    ttl: int | None
    expires_at: float | None
    expiry: float | None  # when it expires: the earlier of expires_at and its last read or write + ttl
    closed: int
    deleted: int
    next_seq: int
    next_position: int
    stream_seq: str | None
    forked_from: int | None
    fork_source: str | None
    fork_seq: int | None
    fork_sub_offset: int
    created_at: float


class HttpStreamSpec(NamedTuple):
    """What a create asks for: the configuration, the closed flag and, for a fork, its origin."""

    path: str
    content_type: str
    media_type: str
    json: bool
    ttl: int | None = None
    expires_at: float | None = None
    closed: bool = False
    fork_source: str | None = None
    fork_at: tuple[int, int] | None = None  # (seq, position) in the source; None: its tail
    fork_sub_offset: int = 0


class HttpEntry(NamedTuple):
    """One append: its bytes (JSON mode: its messages, one per line) and its size in bytes (messages)."""

    data: bytes
    size: int


class HttpProducer(NamedTuple):
    producer_id: str
    epoch: int
    seq: int


class HttpAppendResult(NamedTuple):
    outcome: str
    stream: HttpStreamRow | None
    epoch: int | None = None  # the producer's epoch: accepted, or the recorded one that refused it
    seq: int | None = None  # the highest accepted seq, or the one expected after a gap


class HttpReadResult(NamedTuple):
    outcome: str
    stream: HttpStreamRow | None
    entries: list[tuple[int, int, int, bytes]]  # (seq, position, size, data)


class HeldLock(Protocol):
    """What a backend's ``executor_lock`` returns: held until released, or until the process dies."""

    def release(self) -> None: ...


def new_workflow_row(
    workflow_id: str,
    name: str,
    inputs: tuple[int, Any],
    executor_id: str,
    parent_id: str | None,
    timeout: float | None,
    deadline: float | None,
    now: float,
) -> WorkflowRow:
    """The row of a workflow created PENDING and owned by ``executor_id`` at ``now``."""
    return WorkflowRow(workflow_id, name, "PENDING", inputs[0], inputs[1], None, None, None, None,
                       executor_id, 0, now, now, parent_id, timeout, deadline)  # fmt: skip


def forked_workflow_row(original: WorkflowRow, new_id: str, now: float) -> WorkflowRow:
    """The row of a fork of ``original``: PENDING with no executor, its timeout starting ``now``."""
    deadline = None if original.timeout is None else now + original.timeout
    return WorkflowRow(new_id, original.name, "PENDING", original.inputs_encoding, original.inputs,
                       None, None, None, None, None, 0, now, now, None, original.timeout, deadline)  # fmt: skip


def cascade_reason(parent_id: str, reason: str) -> str:
    """The cancel reason of a descendant that a cancel of its ancestor took (see CASCADE_REASON)."""
    return f"{CASCADE_REASON} {parent_id!r}: {reason}"
