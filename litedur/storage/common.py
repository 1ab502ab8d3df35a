"""Logic every storage backend shares around its SQL: argument checks, refusals and their messages,
the end marks of stream reads, and the outcome decisions of the HTTP stream verbs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    DatabaseError,
    DuplicateWorkflowError,
    StaleRunError,
    StreamClosedError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowNotFoundError,
    WorkflowStatusError,
)
from .records import (
    ACTIVE_STATUSES,
    END_OF_STREAM,
    RESUMABLE_STATUSES,
    STREAM_DELETED,
    WRITE_STREAM_STEP,
    HttpAppendResult,
    HttpEntry,
    HttpProducer,
    HttpReadResult,
    HttpStreamRow,
    HttpStreamSpec,
    QueueCounts,
    QueueRow,
    StepRow,
    WorkflowRow,
)

# ---- opening -------------------------------------------------------------------------------------


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str) -> bool:
    """True if ``location`` names a PostgreSQL database rather than a SQLite file."""
    return location.startswith(POSTGRES_SCHEMES)


def mask_url(url: str) -> str:
    """``url`` with any password (in the authority or a ``password`` parameter) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        netloc = f"{credentials}@{host}"
    query = [(name, "***" if name == "password" else value) for name, value in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/*")))


def check_durability(durability: str) -> None:
    """Raise ValueError unless ``durability`` is one a backend knows."""
    if durability not in ("normal", "full"):
        raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")


def newer_schema_error(where: str, version: int, supported: int) -> DatabaseError:
    """The refusal of a database whose schema is newer than this litedur reads."""
    return DatabaseError(
        f"{where} has litedur schema version {version}; this litedur reads up to {supported}: upgrade litedur"
    )


def refuse_older_executors(where: str, version: int, supported: int, running: list[tuple[str, int, str]]) -> None:
    """Refuse an upgrade from ``version`` past the migration that made body writes their own
    checkpoints (an older litedur would not see them and would write again the body writes it
    replays) while ``running`` executors ``(id, pid, host)`` of the older litedur are alive."""
    if not running:
        return
    named = ", ".join(f"{executor_id!r} (pid {pid} on {host})" for executor_id, pid, host in running)
    raise DatabaseError(
        f"{where} needs a schema upgrade from version {version} to {supported}, which changes how a workflow "
        f"body's stream writes are recorded, and processes of an older litedur still run on it: {named}. "
        "Stop them, then open the database again"
    )


def id_being_removed_error(what: str) -> WorkflowConflictError:
    """The refusal of a new workflow whose id a deleted workflow's rows still hold."""
    return WorkflowConflictError(
        f"cannot {what}: the id belongs to a deleted workflow whose rows are still being removed; "
        "a collection finishes that (Client.garbage_collect, litedur gc), or use another id"
    )


# ---- workflows -----------------------------------------------------------------------------------


def run_refusal(
    workflow_id: str, executor_id: str | None, status: str | None, owner: str | None, reason: str | None
) -> Exception:
    """Why a fenced write of a run was refused, from what its fence found (status None: no row)."""
    if status is None:  # deleted (a cancelled workflow whose run had not stopped yet)
        return StaleRunError(f"workflow {workflow_id!r} was deleted; this run of it (executor {executor_id!r}) stops")
    if status == "CANCELLED":
        return WorkflowCancelledError(f"workflow {workflow_id!r} was cancelled" + (f": {reason}" if reason else ""))
    return StaleRunError(
        f"workflow {workflow_id!r} is {status} and owned by executor {owner!r}; "
        f"this run of it (executor {executor_id!r}) stops"
    )


def check_same_name(workflow_id: str, existing: WorkflowRow | None, name: str) -> None:
    """Raise WorkflowConflictError if the workflow already under this id has another name."""
    if existing is not None and existing.name != name:
        raise WorkflowConflictError(
            f"workflow id {workflow_id!r} already belongs to a workflow named {existing.name!r}, not {name!r}"
        )


def claimed_status(recovery_attempts: int, previous_executor: str | None, max_recoveries: int) -> tuple[int, str]:
    """``(recovery attempts, status)`` of a workflow taken over from ``previous_executor``."""
    # Taking work nobody ran since a resume or fork is a first run, not a recovery.
    attempts = recovery_attempts + (previous_executor is not None)
    return attempts, "PENDING" if attempts <= max_recoveries else "MAX_RECOVERY_ATTEMPTS_EXCEEDED"


def final_values(
    output: tuple[int, Any] | None, error: tuple[str, bytes | None] | None
) -> tuple[int | None, Any, str | None, bytes | None]:
    """``(output encoding, output, error, error pickle)`` that finishing a workflow records."""
    encoding, value = output if output is not None else (None, None)
    description, pickled = error if error is not None else (None, None)
    return encoding, value, description, pickled


# ---- steps --------------------------------------------------------------------------------------

# Per position of a workflow's stream entries: (position, highest attempt, written_at, key), the last
# two those of the body write there, if any (an attempt of a step that died there, before an edit of
# the code made the position a body write, may have left entries in other streams).
ENTRY_CHECKPOINTS = (
    "SELECT e.position, max(e.attempt), max(e.written_at), "
    "max(CASE WHEN e.written_at IS NOT NULL THEN s.key END) FROM stream_entries e "
    "JOIN streams s ON s.stream_id = e.stream_id WHERE s.workflow_id = {mark} AND e.position >= 0 "
    "GROUP BY e.position"
)


def body_write_step(workflow_id: str, position: int, key: str, written_at: float) -> StepRow:
    """The checkpoint of a workflow body's ``write_stream``, kept in its stream entry."""
    name = f"{WRITE_STREAM_STEP}:{key}"
    return StepRow(workflow_id, position, name, None, None, None, None, 1, written_at, written_at)


# A workflow's body writes: (position, key, written_at).
BODY_WRITES = (
    "SELECT e.position, s.key, e.written_at FROM stream_entries e JOIN streams s ON s.stream_id = e.stream_id "
    "WHERE s.workflow_id = {mark} AND e.written_at IS NOT NULL"
)


def steps_with_body_writes(
    workflow_id: str, steps: list[StepRow], writes: list[tuple[int, str, float]]
) -> list[StepRow]:
    """`list_steps`'s answer: the step rows and the body writes (rows of BODY_WRITES), by position."""
    steps += [body_write_step(workflow_id, *write) for write in writes]
    return sorted(steps, key=lambda step: step.position)


def checkpoints_with_body_writes(
    workflow_id: str, steps: dict[int, StepRow], entries: list[tuple[int, int, float | None, str]]
) -> tuple[dict[int, StepRow], dict[int, int]]:
    """`load_checkpoints`'s answer: ``steps`` plus the body writes among ``entries`` (rows of
    ENTRY_CHECKPOINTS), and the highest attempt that wrote at each position."""
    for position, _, written_at, key in entries:
        if written_at is not None:
            steps[position] = body_write_step(workflow_id, position, key, written_at)
    return steps, {position: attempt for position, attempt, _, _ in entries}


def check_can_receive(workflow_id: str, status: str) -> None:
    """Raise WorkflowStatusError for a message to a workflow that has ended."""
    if status not in ACTIVE_STATUSES:
        raise WorkflowStatusError(f"cannot send to workflow {workflow_id!r}: it has ended ({status})", status)


def check_resumable(workflow_id: str, status: str) -> None:
    """Raise WorkflowStatusError for a resume of a workflow in any status but the resumable ones."""
    if status not in RESUMABLE_STATUSES:
        raise WorkflowStatusError(
            f"cannot resume workflow {workflow_id!r}: it is {status}; only "
            f"{' or '.join(RESUMABLE_STATUSES)} workflows can be resumed",
            status,
        )


def fork_exists_error(workflow_id: str, new_id: str) -> WorkflowConflictError:
    return WorkflowConflictError(f"cannot fork {workflow_id!r} as {new_id!r}: that id exists")


def collection_cutoff(
    ended_before: float | None, keep_last: int | None, nth_newest_end: Callable[[int], float | None]
) -> float | None:
    """`Storage.collection_cutoff`, given how to read when the finished workflow at an index
    (0: the newest) ended (None: there are not that many)."""
    if keep_last is None:
        return ended_before
    if keep_last == 0:
        return float("inf")
    kept_end = nth_newest_end(keep_last - 1)
    if kept_end is None:  # at most keep_last finished workflows
        return ended_before
    return kept_end if ended_before is None else max(kept_end, ended_before)


# ---- queues --------------------------------------------------------------------------------------


def duplicate_in_queue_error(row: WorkflowRow, holder: str) -> DuplicateWorkflowError:
    """The refusal of an enqueue whose deduplication id the active workflow ``holder`` holds."""
    return DuplicateWorkflowError(
        f"queue {row.queue_name!r} already has workflow {holder!r} with deduplication id {row.deduplication_id!r}",
        holder,
    )


def deduplication_taken_error(
    workflow_id: str, queue: str, holder: str, deduplication_id: str
) -> DuplicateWorkflowError:
    """The refusal of a resume that would put a workflow back beside another holding its deduplication id."""
    return DuplicateWorkflowError(
        f"cannot resume workflow {workflow_id!r}: queue {queue!r} already has workflow {holder!r} "
        f"with its deduplication id {deduplication_id!r}",
        holder,
    )


def dequeued_deadline(row: WorkflowRow, now: float) -> float | None:
    """The deadline of a workflow taken from its queue at ``now``: its timeout starts at the first
    dequeue (a requeued workflow keeps its deadline), bounded by a deadline set at the enqueue."""
    ends = [end for end in (row.deadline, None if row.timeout is None else now + row.timeout) if end]
    return min(ends) if ends else None


def queue_overview(
    declared: dict[str, QueueRow], counts: dict[str, QueueCounts]
) -> list[tuple[QueueRow | None, QueueCounts]]:
    """Every queue declared or holding workflows, with its counts, by name."""
    names = sorted(set(counts) | set(declared))
    return [(declared.get(name), counts.get(name, QueueCounts(name, 0, 0))) for name in names]


# ---- streams -------------------------------------------------------------------------------------


def stream_closed_error(workflow_id: str, key: str) -> StreamClosedError:
    return StreamClosedError(f"stream {key!r} of workflow {workflow_id!r} is closed")


def ends_before_offset(last: tuple[int, int] | None, offset: int, workflow_id: str) -> bool:
    """Whether a stream whose last entry is ``last`` (``(offset, encoding)``) ended before ``offset``;
    WorkflowNotFoundError where it ends with the "deleted" mark."""
    ended = last is not None and last[1] in (END_OF_STREAM, STREAM_DELETED) and last[0] < offset
    if ended and last is not None and last[1] == STREAM_DELETED:
        raise WorkflowNotFoundError(workflow_id)
    return ended


def without_end_mark(rows: list[tuple[int, Any]], workflow_id: str) -> tuple[list[tuple[int, Any]], bool]:
    """``(values, ended)`` of entries read from a stream, its end entry taken off; a "deleted" mark
    with nothing before it raises WorkflowNotFoundError."""
    if rows and rows[-1][0] == END_OF_STREAM:
        del rows[-1]
        return rows, True
    if rows and rows[-1][0] == STREAM_DELETED:
        del rows[-1]
        if not rows:
            raise WorkflowNotFoundError(workflow_id)
    return rows, False


def stream_end(last: tuple[int, int] | None) -> tuple[int, bool]:
    """`Storage.stream_end` from a stream's last entry ``(offset, encoding)`` (None: empty)."""
    if last is None:
        return 0, False
    offset, encoding = last
    return (offset, True) if encoding < 0 else (offset + 1, False)  # < 0: a mark of storage's own (its end)


# ---- HTTP streams --------------------------------------------------------------------------------


class HttpForkPoint(NamedTuple):
    source: HttpStreamRow
    seq: int
    position: int
    partial: HttpEntry | None  # the first bytes (messages) of the entry at the fork point


def http_expiry(ttl: int | None, expires_at: float | None, now: float) -> float | None:
    ends = [end for end in (expires_at, None if ttl is None else now + ttl) if end is not None]
    return min(ends) if ends else None


def http_stream_missing(row: HttpStreamRow | None, now: float, has_forks: Callable[[int], bool]) -> str | None:
    """None for a live stream, else "missing" or "gone" (a tombstone, or expired with forks)."""
    if row is None:
        return "missing"
    if row.deleted:
        return "gone"
    if row.expiry is not None and row.expiry <= now:
        return "gone" if has_forks(row.stream_id) else "missing"
    return None


def http_absent(row: HttpStreamRow | None) -> str | None:
    """"missing" (no row) or "gone" (a tombstone) for a stream a write cannot take; else None."""
    if row is None:
        return "missing"
    return "gone" if row.deleted else None


def same_http_config(row: HttpStreamRow, spec: HttpStreamSpec) -> bool:
    """Whether a create asks for the stream already there (a fork: the same origin; TTL and expiry
    compared only where the request gives them, since a fork takes its source's otherwise)."""
    if row.media_type != spec.media_type:
        return False
    lifetime = row.ttl == spec.ttl and row.expires_at == spec.expires_at
    if spec.fork_source is None:
        return lifetime
    if row.fork_source != spec.fork_source or row.fork_sub_offset != spec.fork_sub_offset:
        return False
    if spec.fork_at is not None and spec.fork_at[0] != row.fork_seq:
        return False
    return lifetime or (spec.ttl is None and spec.expires_at is None)


def existing_http_outcome(existing: HttpStreamRow, spec: HttpStreamSpec) -> str:
    """What a create finds at a path in use: "gone", "exists" (the same stream) or "conflict"."""
    if existing.deleted:
        return "gone"
    return "exists" if same_http_config(existing, spec) else "conflict"


def http_fork_point(
    spec: HttpStreamSpec,
    source: HttpStreamRow | None,
    entry_at: Callable[[int, int], tuple[int, int, bytes] | None],
) -> tuple[str, HttpForkPoint | None]:
    """Where a fork of ``source`` starts, or why it cannot (an outcome of `create_http_stream`);
    ``entry_at(stream_id, seq)`` reads ``(position, size, data)`` of an entry of the source."""
    if source is None:
        return "source-missing", None
    if source.deleted:
        return "source-gone", None
    if source.media_type != spec.media_type:
        return "source-mismatch", None
    seq, position = spec.fork_at if spec.fork_at is not None else (source.next_seq, source.next_position)
    entry = entry_at(source.stream_id, seq)
    at_tail = (seq, position) == (source.next_seq, source.next_position)
    if not at_tail and (entry is None or entry[0] != position):
        return "bad-fork-offset", None
    partial = None
    if spec.fork_sub_offset:
        if entry is None or spec.fork_sub_offset > entry[1]:
            return "bad-sub-offset", None
        partial = http_entry_prefix(bytes(entry[2]), spec.fork_sub_offset, bool(source.json))
    return "", HttpForkPoint(source, seq, position, partial)


def forked_spec(spec: HttpStreamSpec, fork: HttpForkPoint | None) -> HttpStreamSpec:
    """A fork without TTL and expiry of its own takes its source's."""
    if fork is None or spec.ttl is not None or spec.expires_at is not None:
        return spec
    return spec._replace(ttl=fork.source.ttl, expires_at=fork.source.expires_at)


def new_http_stream_params(spec: HttpStreamSpec, fork: HttpForkPoint | None, now: float) -> tuple[Any, ...]:
    """The values of a new ``http_streams`` row, in the order path, content_type, media_type, json,
    ttl, expires_at, expiry, closed, forked_from, fork_source, fork_seq, fork_sub_offset, created_at."""
    return (spec.path, spec.content_type, spec.media_type, int(spec.json), spec.ttl, spec.expires_at,
            http_expiry(spec.ttl, spec.expires_at, now), int(spec.closed),
            fork and fork.source.stream_id, spec.fork_source, fork and fork.seq, spec.fork_sub_offset, now)  # fmt: skip


def http_entry_prefix(data: bytes, size: int, json_mode: bool) -> HttpEntry:
    """The first ``size`` bytes of an entry, or in JSON mode its first ``size`` messages."""
    if json_mode:
        return HttpEntry(b"\n".join(data.split(b"\n")[:size]), size)
    return HttpEntry(data[:size], size)


def http_append_refused(
    row: HttpStreamRow,
    producer: HttpProducer | None,
    state: tuple[int, int] | None,
    stream_seq: str | None,
) -> HttpAppendResult | None:
    """Why an append must not happen (see `SQLiteStorage.append_http_stream`), or None; ``state``:
    the ``(epoch, last seq)`` recorded for ``producer``."""
    if producer is not None and state is not None:
        epoch, last = state
        if producer.epoch < epoch:
            return HttpAppendResult("stale-epoch", row, epoch)
        if producer.epoch == epoch and producer.seq <= last:
            return HttpAppendResult("duplicate", row, epoch, last)
    if row.closed:
        return HttpAppendResult("closed", row)
    if producer is not None:
        if state is None or producer.epoch > state[0]:
            if producer.seq != 0:
                return HttpAppendResult("bad-epoch-seq", row)
        elif producer.seq != state[1] + 1:
            return HttpAppendResult("seq-gap", row, state[0], state[1] + 1)
    if stream_seq is not None and row.stream_seq is not None and stream_seq <= row.stream_seq:
        return HttpAppendResult("stream-seq", row)
    return None


def appended_http_row(
    row: HttpStreamRow, entry: HttpEntry | None, close: bool, stream_seq: str | None, now: float
) -> HttpStreamRow:
    """A stream's row after an accepted append: its new tail and flags, its TTL renewed."""
    if entry is not None:
        row = row._replace(next_seq=row.next_seq + 1, next_position=row.next_position + entry.size)
    return row._replace(
        closed=int(row.closed or close),
        stream_seq=stream_seq if stream_seq is not None else row.stream_seq,
        expiry=http_expiry(row.ttl, row.expires_at, now),
    )


def appended_result(row: HttpStreamRow, producer: HttpProducer | None) -> HttpAppendResult:
    if producer is None:
        return HttpAppendResult("appended", row)
    return HttpAppendResult("appended", row, producer.epoch, producer.seq)


def http_read_result(
    row: HttpStreamRow,
    start: tuple[int, int] | None,
    entries_from: Callable[[int], list[tuple[int, int, int, bytes]]],
) -> HttpReadResult:
    """`read_http_stream` of a live stream from ``start``; ``entries_from(seq)`` reads its entries."""
    if start is None or start == (row.next_seq, row.next_position):
        return HttpReadResult("ok", row, [])
    if start[0] >= row.next_seq:
        return HttpReadResult("bad-offset", row, [])
    entries = entries_from(start[0])
    if not entries or entries[0][1] != start[1]:
        return HttpReadResult("bad-offset", row, [])
    return HttpReadResult("ok", row, entries)
