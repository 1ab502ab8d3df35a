"""The read and management side of litedur: status, handles, introspection, stream readers,
messages and events sent or read from outside, and cancel/resume/fork.

`Client` is what a process that runs no workflows uses (a dashboard, the CLI, a second reader, a web
handler that answers an agent); `Engine` extends it with running workflows. A client never creates a
database file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from . import management, messages, queues, retention, runner, schedules
from .errors import (
    LitedurError,
    MaxRecoveryAttemptsExceededError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from .runner import Plan
from .schedules import ScheduleInfo
from .storage import CLOSED_BY_TERMINATION, CLOSED_BY_WORKFLOW, StepRow, WorkflowRow, open_storage
from .streams import AsyncStreamReader, StreamReader, StreamTails
from .values import JSON, Codec, Serializer
from .wakeup import WorkflowSignals, feed_for

FINAL_STATUSES = frozenset({"SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"})


@dataclass(frozen=True)
class WorkflowStatus:
    """One workflow as recorded: identity, state, times (epoch seconds) and decoded values."""

    workflow_id: str
    name: str
    status: str
    created_at: float
    updated_at: float
    executor_id: str | None
    recovery_attempts: int
    inputs: dict[str, Any] | None = None
    output: Any = None
    error: BaseException | None = None
    parent_id: str | None = None
    timeout: float | None = None
    deadline: float | None = None  # epoch seconds, while a timeout applies
    cancel_reason: str | None = None  # why it was CANCELLED: a request, its deadline, or its parent's cancel
    queue_name: str | None = None
    priority: int | None = None
    deduplication_id: str | None = None
    available_at: float | None = None  # a delayed enqueue is not taken before this (epoch seconds)


@dataclass(frozen=True)
class QueueInfo:
    """A queue: its limits (None where it was never declared, only used) and what it holds now."""

    name: str
    enqueued: int
    running: int
    concurrency: int | None = None
    worker_concurrency: int | None = None
    limiter: dict[str, Any] | None = None
    priority_enabled: bool = False


@dataclass(frozen=True)
class MessageInfo:
    """A message sent to a workflow and not yet received."""

    workflow_id: str
    message_id: int
    topic: str | None
    message: Any
    sent_at: float


@dataclass(frozen=True)
class StepInfo:
    """One recorded step: its position in the workflow, name, attempts, timing and result."""

    workflow_id: str
    position: int
    name: str
    attempts: int
    started_at: float
    finished_at: float
    output: Any = None
    error: BaseException | None = None

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a workflow: its length and whether (and by whom) it was closed."""

    workflow_id: str
    key: str
    length: int
    closed: bool
    closed_by: str | None


def default_path() -> str:
    return os.environ.get("LITEDUR_DB") or "./litedur.db"


def _check_path_type(path: Any) -> str:
    if path is None:
        return default_path()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"database path must be a str or os.PathLike, not {type(path).__name__}")
    return os.fspath(path)


class WorkflowHandle:
    """A reference to one workflow: wait for its result or look at its status."""

    def __init__(self, client: Client, workflow_id: str) -> None:
        self._client = client
        self.workflow_id = workflow_id

    def get_status(self) -> WorkflowStatus:
        return self._client.get_status(self.workflow_id)

    def get_result(self, timeout: float | None = None) -> Any:
        """Wait for the workflow to end; return its output or raise its exception."""
        runner.refuse_on_loop("handle.get_result()", "handle.get_result_async()")
        return runner.run_sync(self._client._result_plan(self.workflow_id, timeout))

    async def get_result_async(self, timeout: float | None = None) -> Any:
        """`get_result` for async code: the loop runs on while it waits."""
        return await runner.run_async(self._client._result_plan(self.workflow_id, timeout))

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"


class Client:
    """Reads and manages workflows in an existing litedur database; runs none itself."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        serializer: Serializer | None = None,
        unpickle: bool = True,
        wait: str = "auto",
    ) -> None:
        self._open(_check_path_type(path), serializer, unpickle, wait, create=False, durability="normal")

    def _open(
        self,
        path: str,
        serializer: Serializer | None,
        unpickle: bool,
        wait: str,
        *,
        create: bool,
        durability: str,
    ) -> None:
        if wait not in ("auto", "notify", "poll"):
            raise ValueError(f"wait must be 'auto', 'notify' or 'poll', not {wait!r}")
        self._storage = open_storage(path, create=create, durability=durability)
        self._codec = Codec(serializer)
        self._unpickle = unpickle
        self._wait_mode = wait
        self._feed = feed_for(self._storage)
        self._signals_or_none: WorkflowSignals | None = None
        self._tails = StreamTails(self._storage, self._codec, unpickle, self._feed, wait)

    @property
    def path(self) -> str:
        """Where the database is: the file's absolute path (a PostgreSQL URL, password masked)."""
        return self._storage.location

    @property
    def _signals(self) -> WorkflowSignals:
        """Wake-ups for threads waiting on workflows (messages, events, status), started on first use."""
        if self._signals_or_none is None:
            self._signals_or_none = WorkflowSignals(self._feed, self._storage.changes_since, self._wait_mode)
        return self._signals_or_none

    def close(self) -> None:
        """Release the database connections (and this file's idle wake-up watches)."""
        if self._signals_or_none is not None:
            self._signals_or_none.close()
        self._tails.close()
        self._storage.close()
        self._feed.release_idle_watches()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- workflows --------------------------------------------------------------------------

    def get_status(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's recorded status; WorkflowNotFoundError if there is none."""
        return self._status_of(self._workflow_row(workflow_id))

    def retrieve_workflow(self, workflow_id: str) -> WorkflowHandle:
        """A handle to an existing workflow; WorkflowNotFoundError if there is none."""
        self._workflow_row(workflow_id)
        return WorkflowHandle(self, workflow_id)

    def list_workflows(
        self, status: str | None = None, name: str | None = None, limit: int | None = None, queue: str | None = None
    ) -> list[WorkflowStatus]:
        """Workflows newest first, filtered by status, name and queue, at most ``limit``."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"limit must be None or an int >= 0, not {limit!r}")
        rows = self._storage.list_workflows(status=status, name=name, limit=limit, queue=queue)
        return [self._status_of(row) for row in rows]

    # ---- queues ---------------------------------------------------------------------------------

    def enqueue(self, queue_name: str, workflow_name: str, *args: Any, **kwargs: Any) -> WorkflowHandle:
        """Enqueue the workflow registered as ``workflow_name`` (by any process) in a declared queue,
        from a process that does not have its function; `SetEnqueueOptions` and `SetWorkflowID` apply."""
        if not isinstance(queue_name, str) or not isinstance(workflow_name, str):
            raise TypeError(f"queue and workflow names must be str, not {queue_name!r} and {workflow_name!r}")
        queue = self._storage.get_queue(queue_name)
        if queue is None:
            raise LitedurError(f"no queue named {queue_name!r} in {self.path} (declare it with app.queue in a worker)")
        return WorkflowHandle(self, queues.enqueue(self, queue, workflow_name, args, kwargs, None))

    def list_queues(self) -> list[QueueInfo]:
        """Every queue declared on this file or holding workflows, with its counts and limits, by name."""
        found = []
        for declared, counts in self._storage.list_queues():
            limits = {}
            if declared is not None:
                limiter = None
                if declared.rate_limit is not None:
                    limiter = {"limit": declared.rate_limit, "period": declared.rate_period}
                limits = {"concurrency": declared.concurrency, "worker_concurrency": declared.worker_concurrency,
                          "limiter": limiter, "priority_enabled": bool(declared.priority_enabled)}  # fmt: skip
            found.append(QueueInfo(counts.name, counts.enqueued, counts.running, **limits))
        return found

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule recorded in the file (by the processes launched with it), with its next tick."""
        return schedules.list_schedules(self._storage)

    def remove_schedule(self, name: str) -> None:
        """Delete a stale schedule (one no live process declared: dropped or renamed in the code) from
        the file; an active one is refused (`LitedurError`), an unknown one raises `LookupError`."""
        schedules.remove_schedule(self._storage, name)

    def _encode_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, Any]:
        inputs = self._codec.encode({"args": list(args), "kwargs": kwargs})
        if inputs[0] != JSON:  # pickled: keep the exact tuple of arguments
            inputs = self._codec.encode({"args": args, "kwargs": kwargs})
        return inputs

    def list_steps(self, workflow_id: str) -> list[StepInfo]:
        """The workflow's recorded steps, by position."""
        self._workflow_row(workflow_id)
        return [self._step_of(row) for row in self._storage.list_steps(workflow_id)]

    def list_streams(self, workflow_id: str) -> list[StreamInfo]:
        """The workflow's streams, by key."""
        self._workflow_row(workflow_id)
        closed_by = {CLOSED_BY_WORKFLOW: "workflow", CLOSED_BY_TERMINATION: "termination"}
        return [
            StreamInfo(row.workflow_id, row.key, row.length, row.closed != 0, closed_by.get(row.closed))
            for row in self._storage.list_streams(workflow_id)
        ]

    def info(self) -> dict[str, Any]:
        """The file, its schema version, sizes on disk and workflow counts by status."""
        return {
            "path": self.path,
            "schema_version": self._storage.schema_version(),
            "sizes": self._storage.file_sizes(),
            "workflows": self._storage.count_by_status(),
        }

    # ---- messages and events ------------------------------------------------------------------

    def send(
        self, workflow_id: str, message: Any, topic: str | None = None, *, idempotency_key: str | None = None
    ) -> bool:
        """Send ``message`` to a workflow that has not ended; its ``recv(topic)`` receives it once, in order.

        With ``idempotency_key``, a send retried after an error or a crash lands only once: a retry
        returns False (nothing sent), even if the workflow has ended since. WorkflowStatusError
        names the status of a workflow that has ended; nothing is written.
        """
        return messages.send(self, workflow_id, message, topic, idempotency_key)

    def get_event(self, workflow_id: str, key: str, timeout: float | None = 60) -> Any:
        """Wait until the workflow sets the event ``key`` and return its latest value.

        None when ``timeout`` seconds pass first, or at once when the workflow has ended without
        setting it. WorkflowNotFoundError for an unknown workflow.
        """
        runner.refuse_on_loop("get_event()", "get_event_async()")
        return runner.run_sync(self._event_plan(workflow_id, key, timeout))

    async def get_event_async(self, workflow_id: str, key: str, timeout: float | None = 60) -> Any:
        """`get_event` for async code."""
        return await runner.run_async(self._event_plan(workflow_id, key, timeout))

    def _event_plan(self, workflow_id: str, key: str, timeout: float | None) -> Plan[Any]:
        return messages.get_event(self, workflow_id, key, timeout)

    def list_events(self, workflow_id: str) -> dict[str, Any]:
        """The latest value of every event the workflow has set, by key."""
        return messages.list_events(self, workflow_id)

    def list_messages(self, workflow_id: str) -> list[MessageInfo]:
        """Messages sent to the workflow that it has not received yet, oldest first."""
        return messages.pending(self, workflow_id)

    # ---- management -----------------------------------------------------------------------------

    def cancel_workflow(self, workflow_id: str) -> bool:
        """Cancel a workflow and its unfinished children; False (a no-op) if it had already ended.

        The workflow stops at its next step, stream write or wait; its status becomes CANCELLED and
        its open streams close (readers end). Nothing of it is recorded after the cancel commits.
        """
        return bool(self._cancel(workflow_id, management.REQUESTED))

    def _cancel(self, workflow_id: str, reason: str, if_deadline: float | None = None) -> list[str]:
        return management.cancel(self, workflow_id, reason, if_deadline)

    # ---- retention --------------------------------------------------------------------------------

    def garbage_collect(
        self, older_than: float | None = None, keep_last: int | None = None, *, dry_run: bool = False
    ) -> retention.Collected:
        """Delete finished workflows (SUCCESS, ERROR, CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED) that
        ended more than ``older_than`` seconds ago, or that are not among the newest ``keep_last``
        finished ones (with both, either rule deletes), with their steps, streams, events and messages.

        Runs in short transactions (live writers wait a few milliseconds at most), never touches
        PENDING or ENQUEUED work, and gives the space back to the file system. A reader of a stream
        of a deleted workflow gets every value up to where the deletion reached it, then
        `WorkflowNotFoundError`, never a gap. ``dry_run``: only report which workflows would go.
        """
        return retention.garbage_collect(self, older_than, keep_last, dry_run=dry_run)

    def delete_workflow(self, workflow_id: str, *, children: bool = False) -> retention.Collected:
        """Delete one finished workflow and everything that belongs to it (with ``children``, also its
        descendants, all finished). A PENDING or ENQUEUED workflow: `WorkflowStatusError`."""
        return retention.delete_workflow(self, workflow_id, children=children)

    def backup(self, destination: str | os.PathLike[str]) -> str:
        """Write a consistent copy of the live database to the new file ``destination`` (SQLite's
        online backup: workflows and streams go on meanwhile); its absolute path."""
        return retention.backup(self, destination)

    def resume_workflow(self, workflow_id: str) -> WorkflowHandle:
        """Let a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow continue from its last checkpoint.

        A launched process that registered it picks it up at once. Streams its termination closed
        reopen (a reader from its offset gets the rest); its deadline is cleared.
        """
        management.resume(self, workflow_id)
        return WorkflowHandle(self, workflow_id)

    def fork_workflow(self, workflow_id: str, start_step: int) -> WorkflowHandle:
        """A new workflow with the same inputs that reuses the steps recorded before position
        ``start_step`` (and the stream values and events they wrote) and runs the rest.

        Its id is the one set by `SetWorkflowID`, else a new random one.
        """
        return WorkflowHandle(self, management.fork(self, workflow_id, start_step))

    # ---- streams ----------------------------------------------------------------------------

    def read_stream(
        self, workflow_id: str, key: str, *, start: int = 0, timeout: float | None = None
    ) -> StreamReader:
        """Iterate over the stream's values from ``start``, blocking for new ones until it ends.

        It ends when the stream is closed or the workflow reached a final status, after every
        value was delivered. ``timeout`` bounds the wait for each next value (TimeoutError).
        The readers of one stream in this client share one read per commit (see `streams`).
        """
        return StreamReader(self._tails, workflow_id, key, start=start, timeout=timeout)

    def read_stream_async(
        self, workflow_id: str, key: str, *, start: int = 0, timeout: float | None = None
    ) -> AsyncStreamReader:
        """`read_stream` as an async iterator."""
        return AsyncStreamReader(self.read_stream(workflow_id, key, start=start, timeout=timeout))

    # ---- helpers ----------------------------------------------------------------------------

    def _workflow_row(self, workflow_id: str) -> WorkflowRow:
        if not isinstance(workflow_id, str):
            raise TypeError(f"workflow_id must be a str, not {type(workflow_id).__name__}")
        row = self._storage.get_workflow(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        return row

    def _decode(self, encoding: int | None, data: Any) -> Any:
        return None if encoding is None else self._codec.decode(encoding, data, unpickle=self._unpickle)

    def _decode_error(self, description: str, pickled: bytes | None) -> BaseException:
        # With unpickle=False a recorded exception is never unpickled: it becomes a RecordedError.
        return self._codec.decode_error(description, pickled if self._unpickle else None)

    def _status_of(self, row: WorkflowRow) -> WorkflowStatus:
        inputs = self._decode(row.inputs_encoding, row.inputs)
        if isinstance(inputs, dict):
            inputs = {"args": tuple(inputs.get("args", ())), "kwargs": inputs.get("kwargs", {})}
        error = None if row.error is None else self._decode_error(row.error, row.error_pickle)
        return WorkflowStatus(
            workflow_id=row.workflow_id,
            name=row.name,
            status=row.status,
            created_at=row.created_at,
            updated_at=row.updated_at,
            executor_id=row.executor_id,
            recovery_attempts=row.recovery_attempts,
            inputs=inputs,
            output=self._decode(row.output_encoding, row.output),
            error=error,
            parent_id=row.parent_id,
            timeout=row.timeout,
            deadline=row.deadline,
            cancel_reason=row.cancel_reason,
            queue_name=row.queue_name,
            priority=row.priority,
            deduplication_id=row.deduplication_id,
            available_at=row.available_at,
        )

    def _step_of(self, row: StepRow) -> StepInfo:
        error = None if row.error is None else self._decode_error(row.error, row.error_pickle)
        return StepInfo(
            workflow_id=row.workflow_id,
            position=row.position,
            name=row.name,
            attempts=row.attempts,
            started_at=row.started_at,
            finished_at=row.finished_at,
            output=self._decode(row.output_encoding, row.output),
            error=error,
        )

    def _result_plan(self, workflow_id: str, timeout: float | None) -> Plan[Any]:
        """Wait for a workflow's end: its output, or its exception raised."""
        row = self._workflow_row(workflow_id)
        if row.status in FINAL_STATUSES:  # the common case costs one read and no wake-up
            return self._result_of(row)
        deadline = None if timeout is None else time.monotonic() + timeout
        done, row = yield from self._signals.wait_plan((workflow_id,), lambda: self._final_row(workflow_id), deadline)
        if not done:
            raise TimeoutError(f"workflow {workflow_id!r} did not finish within {timeout} s")
        return self._result_of(row)

    def _final_row(self, workflow_id: str) -> tuple[bool, WorkflowRow]:
        row = self._workflow_row(workflow_id)
        return row.status in FINAL_STATUSES, row

    def _result_of(self, row: WorkflowRow) -> Any:
        if row.status == "SUCCESS":
            return self._decode(row.output_encoding, row.output)
        if row.status == "ERROR":
            raise self._decode_error(row.error or "{}", row.error_pickle)
        if row.status == "CANCELLED":
            reason = f": {row.cancel_reason}" if row.cancel_reason else ""
            raise WorkflowCancelledError(f"workflow {row.workflow_id!r} was cancelled{reason}")
        raise MaxRecoveryAttemptsExceededError(
            f"workflow {row.workflow_id!r} exceeded its recovery attempts "
            f"({row.recovery_attempts}) and is no longer run automatically"
        )

    # ---- overview (litedur top) -------------------------------------------------------------------

    def overview(self, recoveries: int = 10) -> dict[str, Any]:
        """The whole file at a glance, read now: what ``litedur top`` shows.

        ``workflows``: counts by status; ``queues``: as `list_queues`; ``streams``: every open stream
        of a PENDING workflow (`StreamInfo`); ``recoveries``: up to ``recoveries`` workflows taken over
        from a dead executor, latest updated first; ``executors``: each owner of PENDING work, a dict
        with ``executor_id`` (None: unowned, after a resume or fork), ``pid``, ``hostname``, ``pending``
        and ``alive`` (False when its process is gone from this host, None when that cannot be told);
        ``changed_at``: when a process last wrote the file (epoch seconds).
        """
        storage = self._storage
        return {
            "path": self.path,
            "changed_at": storage.last_modified(),
            "workflows": storage.count_by_status(),
            "queues": self.list_queues(),
            "streams": [StreamInfo(row.workflow_id, row.key, row.length, False, None)
                        for row in storage.open_stream_lengths()],  # fmt: skip
            "recoveries": [self._status_of(row) for row in storage.recovered_workflows(recoveries)],
            "executors": [
                {"executor_id": executor_id, "pid": pid, "hostname": hostname, "pending": pending,
                 "alive": self._process_alive(pid, hostname) if executor_id is not None else None}
                for executor_id, pid, hostname, pending in storage.pending_owners()
            ],  # fmt: skip
        }

    @staticmethod
    def _process_alive(pid: int | None, hostname: str | None) -> bool | None:
        """Whether an executor's registered process still runs: a hint from this host's process table
        (the executor's lock is what recovery trusts, and looking at it would take it)."""
        if pid is None or not hasattr(os, "uname") or hostname != os.uname().nodename:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # another user's process: alive
        return True
