"""The interface the engine calls: every verb a litedur storage backend provides, and its guarantee.

`Storage` is what the rest of the library (engine, client, streams, wake-up, queues, schedules,
retention, the HTTP server and the command line) may call on the object `open_storage` returns.
`SQLiteStorage` (one WAL-mode file) and `PostgresStorage` (one PostgreSQL database) both satisfy it;
``tests/test_storage_protocol.py`` checks that each has every verb with the same parameters.

The contract every backend keeps:

- **One transaction per verb.** A write verb commits everything it writes or nothing; it returns
  only once its commit is durable at the backend's durability (``durability="full"``: flushed to
  stable storage). A caller never opens, extends or joins a transaction; a verb that must do two
  things atomically (a stream write and the step that records it, a consumption and its checkpoint)
  takes both as arguments. A read that returns several things says when they come from one snapshot.
- **Rows are the tuples of `records`**, holding stored values still encoded: ``(encoding, value)``
  pairs as `litedur.values` made them (a str, JSON text or the serializer's bytes; a backend stores
  and returns them unchanged and never decodes them). Times are
  epoch seconds from this process's clock (``time.time()``), never the server's.
- **The fence.** A write made on behalf of a run of a workflow names its ``executor_id`` and is
  refused, writing nothing, unless the workflow is still PENDING and owned by that executor: with
  `WorkflowCancelledError` if it was cancelled, else `StaleRunError` (resumed, recovered elsewhere,
  ended or deleted). The check and the write are in the same transaction, so no write of a run can
  land after the commit that took the workflow from it. Each verb says whether it is fenced and
  whether a refusal raises or returns a flag.
- **Ordering.** Stream offsets are dense from 0 per stream, taken inside the appending transaction;
  a reader never sees a gap or a reordering. Change numbers (`changes_since`) are in commit order:
  once a reader has seen change ``n``, no change numbered below ``n`` can still commit.
- **Errors.** Backend failures (missing or foreign database, read-only, full, locked too long,
  unreachable server) are `DatabaseError` with one clear line naming the database; the other
  `litedur.errors` each verb raises are listed in its docstring. A driver's own exception escaping a
  verb is a bug of the backend.
- **No engine imports.** A backend imports `records`, `litedur.errors`, `litedur.liveness` and
  `litedur.wakeup` at most; it knows workflows, steps, streams and executors, never functions,
  decorators, codecs or threads of the engine.

Verbs are grouped as in `sqlite`: lifecycle and schema, liveness and wake-up, executors, workflows,
steps, streams, events and messages, durable waits and changes, queues, schedules, management,
retention, maintenance, overview (``litedur top``), HTTP streams (``litedur serve``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .records import (
    EntryRow,
    EventRow,
    HeldLock,
    HttpAppendResult,
    HttpEntry,
    HttpProducer,
    HttpReadResult,
    HttpStreamRow,
    HttpStreamSpec,
    MessageRow,
    QueueCounts,
    QueueRow,
    ScheduleRow,
    StepRow,
    StreamGroup,
    StreamRow,
    WorkflowRow,
    WorkflowState,
)

if TYPE_CHECKING:
    from ..wakeup import WakeSource

__all__ = ["Storage"]


class Storage(Protocol):
    """A litedur database: the verbs the library calls, each one transaction (see the module docstring).

    A backend is opened by `litedur.storage.open_storage(location, create=..., durability=...)`:
    ``create=False`` never creates a database (a missing one is `DatabaseError`), an existing one of
    an older schema is migrated, and anything that is not a litedur database is refused with
    `DatabaseError` naming it. Every verb may be called from any thread at once.
    """

    # ---- lifecycle and schema -------------------------------------------------------------------

    @property
    def path(self) -> str:
        """What error messages name the database by. SQLite: the file's absolute path (the same as
        `location`). Other backends: the same as `location`. Kept because `streams` and `server` read
        it; new code uses `location`."""

    def close(self) -> None:
        """Release every connection this object opened; later verbs raise `DatabaseError` ("closed").

        Called when no thread uses the object any more. Idempotent. Held executor locks are not
        released by it (their holder releases them)."""

    def schema_version(self) -> int:
        """The schema version recorded in the database (the backend's own numbering)."""

    def is_readonly(self) -> bool:
        """True when this process can only read (a read-only file or mount; a PostgreSQL role or
        session without write rights). Reads still work then; writes raise `DatabaseError`."""

    # ---- liveness and wake-up -------------------------------------------------------------------

    @property
    def location(self) -> str:
        """What names this database to a user and keys the process-wide change feed (`wakeup.feed_for`):
        two objects on the same database give the same location. SQLite: the absolute file path.
        PostgreSQL: the URL without its password."""

    def executor_lock(self, executor_id: str) -> HeldLock:
        """Hold "executor ``executor_id`` is alive" until ``.release()``, or until the process dies,
        however it dies (no lease to time out).

        Raises `ExecutorError` when another live process holds that id, `DatabaseError` when the lock
        cannot be taken. SQLite: an OS file lock on ``<database>-executors/<id>``. PostgreSQL: a
        session-level advisory lock (``pg_try_advisory_lock`` on a key derived from the id) taken on a
        dedicated connection that stays open, idle, for as long as the lock is held; it drops when
        that session ends, which the server notices when the process's socket closes.
        """

    def executor_alive(self, executor_id: str | None) -> bool:
        """True while some process holds ``executor_id``'s `executor_lock`; False for None.

        When it cannot tell, True: work that may still be running is never adopted. SQLite: a
        try-lock of the file lock (a dead executor's lock file is removed). PostgreSQL: a look at
        ``pg_locks`` for that advisory key (or a try-lock released at once), answered by the server,
        so processes on other hosts are seen too.
        """

    def wake_source(self) -> WakeSource:
        """How other processes' commits wake this one's waiters (see `litedur.wakeup.WakeSource`):
        its ``location``, a ``database_watch`` that fires on any commit (stream readers), a
        ``signal_watch`` that fires when another process `announce`s workflow changes, and
        ``announce`` itself. A watch of None makes the waiters poll; wake-ups are hints, since every
        waiter re-reads the database after waking.

        SQLite: `wakeup.FileWakeSource` (inotify or kqueue on the database, its WAL and one signal
        file per process). PostgreSQL: LISTEN on a dedicated connection whose socket is the watch's
        file descriptor (``drain`` consumes the notifications), stream appends ``NOTIFY`` in their
        own transaction (delivered at commit), and ``announce`` is a ``NOTIFY`` on the signal channel.
        """

    # ---- executors ------------------------------------------------------------------------------

    def register_executor(self, executor_id: str, pid: int, hostname: str) -> None:
        """Record (or refresh) an executor's identity: its pid, host and start time. Liveness is the
        executor lock, not this row; the row only tells the command line who an owner was."""

    def forget_executor(self, executor_id: str) -> None:
        """Remove an executor's identity row unless it still owns a PENDING or ENQUEUED workflow;
        nothing else. Idempotent."""

    def active_executors(self) -> list[str | None]:
        """The distinct owners of PENDING workflows, in one snapshot; None stands for "no executor"
        (work resumed or forked that nobody has taken yet)."""

    def pending_workflows_of(self, executor_id: str | None) -> list[tuple[str, str]]:
        """``(workflow_id, name)`` of the PENDING workflows owned by ``executor_id`` (None: unowned),
        oldest created first."""

    # ---- workflows ------------------------------------------------------------------------------

    def create_workflow(
        self,
        workflow_id: str,
        name: str,
        inputs: tuple[int, Any],
        executor_id: str,
        *,
        parent_id: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        checkpoint: StepRow | None = None,
    ) -> tuple[bool, WorkflowRow]:
        """Insert a PENDING workflow owned by ``executor_id`` unless the id exists: ``(created, row)``,
        where row is the existing one when not created. Idempotent: a second start of an id never
        creates a second workflow.

        A child (``parent_id``) is created fenced on its parent's run (``executor_id``), and with
        ``checkpoint`` (a child started by a workflow body) the parent's step record commits in the
        same transaction, so a replay finds it and never starts a second child; such a child whose
        id belongs to a workflow of another name raises `WorkflowConflictError` (a top-level one is
        returned, the caller compares names). An id whose deleted workflow's rows are still being
        removed is freed first for a top-level workflow (the removal finished here) and raises
        `WorkflowConflictError` for a child. A child raises the fence's errors.
        """

    def claim_workflow(
        self, workflow_id: str, previous_executor: str | None, executor_id: str, max_recoveries: int
    ) -> str:
        """Take over a PENDING workflow still owned by ``previous_executor`` (None: unowned), atomically.

        Counts a recovery unless it was unowned (a first run after a resume or fork). Returns
        "claimed" (``executor_id`` owns it now), "exceeded" (the count passed ``max_recoveries``: it is
        now MAX_RECOVERY_ATTEMPTS_EXCEEDED and its open streams are closed by termination) or "lost"
        (it is no longer PENDING with that owner: nothing written). Of two claimers, one wins.
        """

    def finish_workflow(
        self,
        workflow_id: str,
        status: str,
        executor_id: str | None,
        output: tuple[int, Any] | None = None,
        error: tuple[str, bytes | None] | None = None,
        has_streams: bool = True,
    ) -> bool:
        """Record a final status with its encoded output or ``(description, pickled error)``, and close
        every open stream of the workflow as closed by termination (each with its end entry), in one
        transaction.

        Fenced, as a flag: only while the workflow is PENDING and owned by ``executor_id``; False
        (nothing written) when a cancel or another executor came first. ``has_streams=False`` is a
        promise that the workflow never opened a stream (the search for open ones may be skipped).
        """

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """One workflow's row, or None if there is none (or it was deleted)."""

    def workflow_state(self, workflow_id: str) -> WorkflowState | None:
        """Status, owner, deadline and cancel reason in one cheap read; None if absent.

        A running workflow asks this at its start and after each change of its workflow: it must not
        wait behind this process's writers.
        """

    def list_workflows(
        self, status: str | None = None, name: str | None = None, limit: int | None = None, queue: str | None = None
    ) -> list[WorkflowRow]:
        """Workflows newest created first (ties: latest inserted first), filtered by status, name and
        queue where given, at most ``limit`` (None: all)."""

    def count_by_status(self) -> dict[str, int]:
        """The number of workflows per status, in one snapshot (statuses with none are absent)."""

    # ---- steps ----------------------------------------------------------------------------------

    def load_checkpoints(self, workflow_id: str) -> tuple[dict[int, StepRow], dict[int, int]]:
        """A workflow's step records by position, and for each position whose step wrote to a stream
        the highest attempt that wrote, in one snapshot. Read once when a run starts, so a replay of a
        recorded step costs no query."""

    def record_step(self, row: StepRow, executor_id: str) -> None:
        """Record a step's output or final error at its position. Fenced, raising: the fence's errors
        (`WorkflowCancelledError`, `StaleRunError`), nothing recorded.

        A position is recorded once; recording it again is a bug of the caller and fails with an
        error that is not a `LitedurError` (SQLite: the driver's constraint error).
        """

    def list_steps(self, workflow_id: str) -> list[StepRow]:
        """A workflow's step records in position order."""

    # ---- streams --------------------------------------------------------------------------------

    def append_stream(
        self,
        workflow_id: str,
        key: str,
        values: Sequence[tuple[int, Any]],
        position: int,
        attempt: int,
        executor_id: str,
        written_at: float | None = None,
    ) -> int:
        """Append encoded values at the end of the stream ``(workflow_id, key)``, creating it; returns
        the offset of the first. Each entry records ``position`` and ``attempt``.

        Offsets are dense: the next offset is taken inside this transaction, so concurrent appenders
        (of this or other processes) serialize. With ``written_at`` (one value written by a workflow
        body) the entry is also that body's checkpoint at ``position``: `load_checkpoints` and
        `list_steps` give it as the step ``litedur.write_stream:<key>``, so a body write commits one
        row. Raises `StreamClosedError` on a closed stream, and the fence's errors; nothing written then.
        """

    def open_stream(self, workflow_id: str, key: str, executor_id: str) -> tuple[int, bool]:
        """``(stream_id, closed)`` of a stream, creating it open and empty if needed. Fenced, raising.

        ``stream_id`` is the backend's handle for `append_one`, `read_values` and `stream_end`; it is
        never given to another stream, even after a deletion."""

    def append_one(
        self,
        stream_id: int,
        encoded: tuple[int, Any],
        position: int,
        attempt: int,
        workflow_id: str,
        executor_id: str,
    ) -> int | None:
        """Append one value to an existing stream in a transaction of its own: its offset, or None
        (nothing written) if the stream is closed. Fenced on ``workflow_id``, raising.

        The hot path of unbatched stream writes: a backend may remember each stream's next offset and
        insert there, provided a stale guess is detected (an insert refused by the key) and corrected
        inside a transaction that reads the real end, so offsets stay dense.
        """

    def append_groups(
        self, groups: Sequence[StreamGroup], executor_id: str
    ) -> tuple[dict[str, BaseException], list[tuple[int, int, list[tuple[int, Any]]]]]:
        """Append several groups of values (each: one stream, one step attempt), in one transaction.

        Returns ``(failures, placed)``. A group whose workflow fails the fence, or whose stream is
        closed, is skipped, as are the later groups of that workflow; ``failures`` maps the workflow
        id to the error (`WorkflowCancelledError`, `StaleRunError`, `StreamClosedError`) instead of
        raising it. ``placed`` is ``(stream_id, first offset, values)`` for every group written, in
        order. Offsets are dense, each taken inside the transaction.
        """

    def close_stream(self, workflow_id: str, key: str, executor_id: str) -> None:
        """Mark a stream closed by its workflow and append its end entry, creating it empty if needed.
        Idempotent (a closed stream stays as it is). Fenced, raising."""

    def find_stream(self, workflow_id: str, key: str) -> tuple[int | None, bool] | None:
        """``(stream_id or None if the workflow has no such stream, whether the workflow has ended)``
        in one snapshot; None if there is no such workflow. Ended: any status but PENDING and ENQUEUED."""

    def read_values(
        self, stream_id: int, offset: int, limit: int, first_read: bool = False, workflow_id: str = "?"
    ) -> tuple[list[tuple[int, Any]], bool]:
        """``(values, ended)``: up to ``limit`` encoded values from ``offset`` in offset order, and
        whether the stream ends right after them (it was closed, by the workflow or by termination).

        One range read serves both (the end is an entry after the last value). With ``first_read``, a
        reader starting past the end of a closed stream also learns ``ended``. A deleted workflow's
        stream gives the values still there (always a prefix), then raises `WorkflowNotFoundError`
        naming ``workflow_id`` (only used in that error): never a gap.
        """

    def stream_end(self, stream_id: int) -> tuple[int, bool]:
        """``(length, ended)``: the offset after a stream's last value, and whether the stream ends
        there. One cheap read (where a reader that found nothing is waiting from)."""

    def earlier_attempt_values(self, workflow_id: str, key: str, position: int, attempt: int) -> list[EntryRow]:
        """The entries that attempts before ``attempt`` of the step at ``position`` wrote to ``key``, in
        offset order (empty for an unknown stream). The source of `already_written`."""

    def list_streams(self, workflow_id: str) -> list[StreamRow]:
        """A workflow's streams by key, with their lengths in values (end entries not counted) and
        closed flag (`OPEN`, `CLOSED_BY_WORKFLOW`, `CLOSED_BY_TERMINATION`)."""

    # ---- events and messages --------------------------------------------------------------------

    def set_event(
        self,
        workflow_id: str,
        key: str,
        encoded: tuple[int, Any],
        position: int,
        executor_id: str,
        checkpoint: StepRow | None = None,
    ) -> None:
        """Set the latest value of an event of a running workflow (with its step record when given).
        Fenced, raising. Numbers a change of ``workflow_id`` (see `changes_since`)."""

    def get_event(self, workflow_id: str, key: str) -> tuple[str, tuple[int, Any] | None] | None:
        """``(workflow status, (encoding, value) or None if unset)`` in one snapshot; None if there is
        no such workflow."""

    def list_events(self, workflow_id: str) -> list[EventRow]:
        """A workflow's events (their latest values) by key."""

    def send_message(
        self,
        workflow_id: str,
        topic: str | None,
        encoded: tuple[int, Any],
        idempotency_key: str | None = None,
        checkpoint: tuple[StepRow, str] | None = None,
    ) -> bool:
        """Queue a message for a workflow that has not ended (PENDING or ENQUEUED); numbers a change of it.

        Idempotent with ``idempotency_key``: False, nothing written, if a message with that key was
        already sent to that workflow. Raises `WorkflowNotFoundError` or `WorkflowStatusError` (an
        ended workflow), writing nothing. With ``checkpoint`` = ``(step record, executor id)`` (a send
        from a workflow body) the sender's record commits with the message, fenced (raising) on the
        sender's run.
        """

    def consume_message(self, checkpoint: StepRow, topic: str | None, executor_id: str) -> tuple[int, Any] | None:
        """Take the oldest unconsumed message of ``topic`` (None is a topic of its own) for the
        checkpoint's workflow, and record it as that step's output, atomically: exactly once, FIFO per
        topic. Returns its ``(encoding, value)``, or None (nothing written) when there is none.
        Fenced, raising, when there is a message to take."""

    def pending_messages(self, workflow_id: str) -> list[MessageRow]:
        """Messages sent to a workflow and not yet received, oldest first."""

    # ---- durable waits and changes --------------------------------------------------------------

    def wait_deadline(self, workflow_id: str, position: int, deadline: float, executor_id: str) -> float:
        """The deadline of the durable wait at ``position``: the one first recorded there, else
        ``deadline``, recorded now. So a sleep, recv or get_event keeps its first deadline across
        crashes. Fenced, raising."""

    def changes_since(self, seq: int | None) -> tuple[int, list[str] | None]:
        """``(latest change number, keys changed after seq)``; with ``seq`` None only the number (and []).

        A change is numbered in the transaction that makes it, and numbers follow commit order (a
        PostgreSQL sequence alone does not: the numbering must be serialized, e.g. by a counter row
        updated last in each such transaction). Keys: a workflow id (its status changed, an event was
        set, a message was sent, it was deleted), ``"queue:<name>"`` (a queued workflow was enqueued or
        changed status), `ANY_UNOWNED` (unowned PENDING work appeared: resume, fork) and
        `http_stream_key` (an HTTP stream was written or deleted). A key may repeat. A backend keeps
        only recent numbers (SQLite: about the last 65,536): for an older ``seq`` the list is None,
        meaning anything may have changed.
        """

    # ---- queues ---------------------------------------------------------------------------------

    def declare_queue(self, queue: QueueRow) -> None:
        """Record or replace a queue's limits (the latest declaration by any process wins)."""

    def get_queue(self, name: str) -> QueueRow | None:
        """A declared queue, or None."""

    def list_queues(self) -> list[tuple[QueueRow | None, QueueCounts]]:
        """Every queue declared or holding active workflows, by name, with its ENQUEUED and PENDING
        counts, in one snapshot; the row is None for a queue never declared."""

    def enqueue_workflow(
        self, row: WorkflowRow, checkpoint: StepRow | None = None, executor_id: str | None = None
    ) -> tuple[bool, WorkflowRow]:
        """Insert an ENQUEUED workflow unless its id exists: ``(created, row)``, the existing row when
        not created (idempotent). Numbers a change of its queue.

        Raises `DuplicateWorkflowError` (naming the holder; nothing written) when an ENQUEUED or
        PENDING workflow of the same queue holds its deduplication id. With ``checkpoint`` (an enqueue
        from a workflow body) the parent's step record commits with it, fenced (raising) on the
        parent's run (``executor_id``).
        """

    def dequeue(
        self, queue: QueueRow, executor_id: str, names: Sequence[str], want: int
    ) -> tuple[list[WorkflowRow], float | None]:
        """Take up to ``want`` available ENQUEUED workflows of the queue whose names are in ``names``:
        they become PENDING, owned by ``executor_id``, their timeout's deadline starting now.

        One transaction that enforces the limits recorded in the database (``queue`` serves only when
        none is): PENDING in the queue anywhere < concurrency, here < worker_concurrency, starts within
        rate_period < rate_limit. These hold exactly across every process, so a backend serializes
        concurrent dequeues of one queue (SQLite: the write lock; PostgreSQL: e.g. a transaction-level
        advisory lock keyed by the queue name). Lower priority first when enabled, then first
        enqueued. Returns ``(taken rows, retry at)``: the epoch time a delayed workflow becomes
        available or the rate window frees a start, when that is what limits the queue now, else None.
        """

    def requeue_workflows_of(self, executor_id: str) -> list[str]:
        """Put the queued workflows a dead executor was running back in their queues (ENQUEUED, no
        owner, their place kept), counting a recovery each, in one transaction; their ids."""

    def running_executors(self, queue_name: str) -> list[str]:
        """The executors running PENDING workflows of a queue now (to find dead ones holding slots)."""

    def give_up(self, workflow_id: str, executor_id: str) -> bool:
        """Mark a workflow MAX_RECOVERY_ATTEMPTS_EXCEEDED and close its open streams by termination.
        Fenced, as a flag: False, nothing written, unless it is PENDING and owned by ``executor_id``."""

    # ---- schedules ------------------------------------------------------------------------------

    def declare_schedule(
        self, schedule: ScheduleRow, executor_id: str | None = None, forget: Sequence[tuple[str, float]] = ()
    ) -> tuple[float, float | None]:
        """Record or update a schedule's declaration, keeping when it was first declared and its last
        claimed tick; returns those ``(created_at, last_tick)``. One transaction.

        With ``executor_id``, that launched process's declaration is recorded (at
        ``schedule.declared_at``); ``forget`` lists declarations ``(executor_id, declared_at)`` by
        executors found dead, deleted unless that executor declared the schedule again meanwhile.
        """

    def claim_tick(self, name: str, tick: float, workflow: WorkflowRow) -> tuple[bool, float | None]:
        """Claim tick ``tick`` of schedule ``name`` and insert its ``workflow`` (PENDING, owned by the
        claimer, unless its id exists), in one transaction.

        The claim holds only if no tick at or after ``tick`` was claimed (the last tick only grows),
        so across every process each tick is claimed at most once and never after a later one.
        Returns ``(created, the schedule's latest claimed tick)``; nothing written when not claimed.
        """

    def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule recorded in the database, by name."""

    def schedule_declarations(self, name: str | None = None) -> list[tuple[str, str, float]]:
        """``(name, executor_id, declared_at)`` of the recorded declarations of schedule ``name`` (of
        every schedule if None), by name and executor. A schedule no live executor declared is stale."""

    def remove_schedule(self, name: str, declared_at: float) -> bool:
        """Delete schedule ``name`` and its declarations in one transaction, unless it is gone or was
        declared again since ``declared_at`` (when the caller read it): whether it was removed. The
        workflows of its ticks stay (ordinary workflows)."""

    # ---- management: cancel, resume, fork -------------------------------------------------------

    def cancel_workflow(self, workflow_id: str, reason: str, if_deadline: float | None = None) -> tuple[str, list[str]]:
        """Cancel a workflow that has not ended and its unfinished descendants, in one transaction.

        Returns ``(status before, ids cancelled)``. Nothing is written for a workflow that has ended
        (idempotent), nor, given ``if_deadline``, for one whose deadline is no longer that (a resume
        cleared it). Each cancelled workflow becomes CANCELLED with its reason (descendants:
        `CASCADE_REASON`, the parent's id and the reason) and its open streams are closed by
        termination; from this commit on the fence refuses their runs' writes. Raises
        `WorkflowNotFoundError`.
        """

    def resume_workflow(self, workflow_id: str) -> list[str]:
        """Make a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow, and the descendants cancelled
        with it, runnable again with no owner (PENDING, or ENQUEUED if queued); their ids.

        Streams closed by termination reopen (their end entries go: the next value takes the next
        offset); streams the workflow closed stay closed. Output, error, recovery count, cancel
        reason and deadline are cleared. Numbers `ANY_UNOWNED`. Raises `WorkflowNotFoundError`,
        `WorkflowStatusError` (another status) or `DuplicateWorkflowError` (its deduplication id was
        taken meanwhile), writing nothing.
        """

    def fork_workflow(self, workflow_id: str, new_id: str, start_step: int) -> WorkflowRow:
        """Insert ``new_id``: PENDING, unowned, with the inputs and timeout of ``workflow_id`` and its
        record before position ``start_step`` (steps, waits, events, and the stream values those
        positions wrote, renumbered densely from 0, the streams open); its row. One transaction.
        Numbers ``new_id`` and `ANY_UNOWNED`. Raises `WorkflowNotFoundError`, or
        `WorkflowConflictError` if ``new_id`` exists.
        """

    # ---- retention ------------------------------------------------------------------------------

    def collection_cutoff(self, ended_before: float | None, keep_last: int | None) -> float | None:
        """The end time before which finished workflows may go: ``ended_before``, moved later (never
        earlier) so that the ``keep_last`` most recently ended finished workflows stay; infinity for
        ``keep_last`` 0, None when neither bounds anything."""

    def collectable_workflows(self, ended_before: float, limit: int) -> list[str]:
        """Up to ``limit`` (-1: all) finished workflows that ended before ``ended_before``, oldest first,
        leaving out children of workflows still PENDING or ENQUEUED. Reads only."""

    def collect_batch(self, ended_before: float, limit: int) -> list[str]:
        """`delete_workflows` of the next `collectable_workflows`, chosen in the same transaction (a
        workflow resumed and ended meanwhile is not taken for an old one); the ids deleted."""

    def workflow_family(self, workflow_id: str) -> list[WorkflowRow]:
        """A workflow's row and its descendants' (children, their children, ...), the workflow first;
        empty if absent."""

    def delete_workflows(self, workflow_ids: Sequence[str]) -> list[str]:
        """Delete those of these workflows that are finished, in one transaction; the ids deleted.

        Never PENDING or ENQUEUED work. The workflows vanish at once for every reader; their streams'
        end entries become "deleted" marks (`STREAM_DELETED`), so a reader behind stops with
        `WorkflowNotFoundError` where the values end; their other rows are left for `purge_some`. The
        id cannot be reused until that is done. Numbers each deleted id.
        """

    def purge_some(self, max_rows: int, max_seconds: float) -> tuple[int, int]:
        """Remove up to about ``max_rows`` rows of deleted workflows in one short transaction that
        takes no more after ``max_seconds``: ``(rows, stream values)`` removed, ``(0, 0)`` when none
        are left. Each stream loses entries from its end backwards: a reader still finds a prefix
        followed by the "deleted" mark, never a gap."""

    # ---- maintenance: space, backup ---------------------------------------------------------------

    def vacuum_some(self, max_pages: int) -> int:
        """Give up to ``max_pages`` free pages back to the file system in one short write; how many.

        SQLite: ``PRAGMA incremental_vacuum`` (the file shrinks at the next `checkpoint`).
        PostgreSQL: nothing to do (autovacuum reclaims space): 0."""

    def checkpoint(self) -> None:
        """Move committed data to its final place without waiting for anyone.

        SQLite: a passive WAL checkpoint (it also truncates a file that `vacuum_some` shrank).
        PostgreSQL: nothing (the server checkpoints on its own)."""

    def backup(self, destination: str) -> None:
        """Write a consistent copy of the whole database, one committed state, to the new file
        ``destination`` while writers carry on; on failure no file is left there. `DatabaseError`.

        SQLite: the online backup API inside one read snapshot, giving a WAL-mode litedur file.
        PostgreSQL: the same state read in one REPEATABLE READ snapshot, or, where the backend cannot
        produce such a file, `DatabaseError` saying to use ``pg_dump``."""

    def file_sizes(self) -> dict[str, int]:
        """Bytes the database takes on disk, by part. SQLite: ``database`` and ``wal`` (each present
        if the file exists). PostgreSQL: ``database``, the size of litedur's tables and indexes."""

    # ---- overview (``litedur top``) -------------------------------------------------------------

    def open_stream_lengths(self) -> list[StreamRow]:
        """Every open stream of a PENDING workflow with its length, in one snapshot."""

    def recovered_workflows(self, limit: int) -> list[WorkflowRow]:
        """Up to ``limit`` workflows recovered at least once (recovery count > 0), latest updated first."""

    def pending_owners(self) -> list[tuple[str | None, int | None, str | None, int]]:
        """``(executor_id, pid, hostname, count)`` for each owner of PENDING workflows, by executor id;
        pid and hostname from `register_executor` (None if it never registered), executor_id None for
        unowned work."""

    def last_modified(self) -> float | None:
        """When a process last committed, as cheaply as the backend can tell (None: unknown).

        SQLite: the later modification time of the file and its non-empty WAL. PostgreSQL: None, or
        the latest ``updated_at`` of a workflow."""

    # ---- HTTP streams (``litedur serve``) -------------------------------------------------------
    # Standalone byte (or JSON-message) streams by path, with expiry, forks and idempotent producers.
    # Every write numbers `http_stream_key(path)`. Outcomes are strings, never exceptions.

    def create_http_stream(
        self, spec: HttpStreamSpec, body: HttpEntry | None, now: float
    ) -> tuple[str, HttpStreamRow | None]:
        """Create the stream ``spec.path`` (a fork of ``spec.fork_source`` if given) with ``body`` as
        its first entry, in one transaction that first removes expired streams: ``(outcome, row)``.

        "created"; for a path in use "exists" (same configuration: idempotent, nothing written),
        "conflict" or "gone" (a tombstone); for a fork "source-missing", "source-gone",
        "source-mismatch", "bad-fork-offset" or "bad-sub-offset". A fork copies what it inherits, so
        it never depends on its source again; without a TTL or expiry of its own it takes the
        source's.
        """

    def append_http_stream(
        self,
        path: str,
        entry: HttpEntry | None,
        media_type: str | None,
        *,
        close: bool = False,
        stream_seq: str | None = None,
        producer: HttpProducer | None = None,
        now: float,
    ) -> HttpAppendResult:
        """Append ``entry`` (None: none) and close the stream if asked, in one transaction that checks,
        in this order, and writes nothing when a check fails: "missing"/"gone", "content-type",
        "stale-epoch", "duplicate" (idempotent producers: a retried append lands once), "closed",
        "bad-epoch-seq", "seq-gap", "stream-seq". Otherwise "appended": the entry at the tail, the
        producer's state, the closed flag and the renewed TTL commit together."""

    def read_http_stream(self, path: str, start: tuple[int, int] | None, max_bytes: int, now: float) -> HttpReadResult:
        """Entries from ``start`` = ``(seq, position)`` (None: the tail, so none) in one snapshot: the
        first, then more while they total under ``max_bytes``. Outcomes "ok", "missing", "gone",
        "bad-offset" (not an entry boundary, or past the tail). Reads only."""

    def http_stream_info(self, path: str, now: float) -> tuple[str, HttpStreamRow | None]:
        """``(outcome, row)``: "ok", "missing" or "gone". Reads only (a TTL is not renewed)."""

    def touch_http_stream(self, stream_id: int, now: float) -> None:
        """Renew the sliding TTL of a live stream that was read (nothing for one without a TTL)."""

    def delete_http_stream(self, path: str, now: float) -> str:
        """Delete a stream and its entries in one transaction: "deleted", or "tombstoned" when forks
        came from it (its path stays taken); "missing"; "gone". Tombstones no fork needs go with it."""

    def purge_expired_http_streams(self, now: float) -> int:
        """Delete every stream whose TTL or expiry time has passed, in one transaction; how many."""
