"""Durable queues with limits that hold across every process on the file.

``app.queue(name, ...)`` declares a queue (its limits are recorded in the file, for clients and the
command line); ``queue.enqueue(fn, ...)`` or ``Client.enqueue(name, workflow_name, ...)`` records an
ENQUEUED workflow. Each launched engine that declared queues runs one `Dispatcher` thread: it takes
work with `SQLiteStorage.dequeue`, one transaction that counts what runs (everywhere, and here) and
what started in the rate window, and claims the rows it may start, so the limits are exact however
many processes take from the queue. The dispatcher sleeps on the queue's change key (rung by an
enqueue and by a queued workflow changing status, in this process or another, through the same
signals as every other wait) and on a timer for delayed work and rate windows: it never polls.

A queued workflow whose executor dies goes back to its queue, at its place, as soon as any process
notices (recovery, or a dispatcher that finds the queue full of dead executors' work), so a dead
process never holds a slot and a recovered workflow never strands its queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import management, options
from .errors import LitedurError, WorkflowConflictError
from .storage import ANY_UNOWNED, QueueRow, StepRow, WorkflowRow

log = logging.getLogger("litedur")

if TYPE_CHECKING:
    from .client import Client, WorkflowHandle
    from .engine import Engine, _Run

ENQUEUE_STEP = "litedur.enqueue"
SAFETY_NET = 2.0  # seconds between looks at the queues when nothing rang
BATCH = 256  # at most this many workflows taken per queue per look


def queue_key(name: str) -> str:
    """The change key that wakes the dispatchers of a queue."""
    return f"queue:{name}"


def check_queue(
    name: Any, concurrency: Any, worker_concurrency: Any, limiter: Any, priority_enabled: Any
) -> QueueRow:
    """A queue's declaration, or a ValueError/TypeError naming what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"queue name must be a non-empty str, not {name!r}")
    for label, value in (("concurrency", concurrency), ("worker_concurrency", worker_concurrency)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"queue {name!r}: {label} must be None or an int >= 1, not {value!r}")
    if concurrency is not None and worker_concurrency is not None and worker_concurrency > concurrency:
        raise ValueError(
            f"queue {name!r}: worker_concurrency ({worker_concurrency}) cannot exceed concurrency ({concurrency})"
        )
    limit = period = None
    if limiter is not None:
        if not isinstance(limiter, dict) or set(limiter) != {"limit", "period"}:
            raise ValueError(
                f"queue {name!r}: limiter must be a dict with exactly 'limit' and 'period', "
                f'like {{"limit": 50, "period": 60.0}}, not {limiter!r}'
            )
        limit, period = limiter["limit"], limiter["period"]
        if type(limit) is not int or limit < 1:
            raise ValueError(f"queue {name!r}: limiter limit must be an int >= 1, not {limit!r}")
        if not isinstance(period, (int, float)) or isinstance(period, bool) or not period > 0:
            raise ValueError(f"queue {name!r}: limiter period must be a number of seconds > 0, not {period!r}")
    if not isinstance(priority_enabled, bool):
        raise TypeError(f"queue {name!r}: priority_enabled must be a bool, not {priority_enabled!r}")
    period = None if period is None else float(period)
    return QueueRow(name, concurrency, worker_concurrency, limit, period, int(priority_enabled), time.time())


class Queue:
    """A durable queue of this engine (see `Engine.queue`)."""

    def __init__(self, engine: Engine, declaration: QueueRow) -> None:
        self._engine = engine
        self.declaration = declaration

    @property
    def name(self) -> str:
        return self.declaration.name

    @property
    def concurrency(self) -> int | None:
        return self.declaration.concurrency

    @property
    def worker_concurrency(self) -> int | None:
        return self.declaration.worker_concurrency

    @property
    def limiter(self) -> dict[str, Any] | None:
        row = self.declaration
        return None if row.rate_limit is None else {"limit": row.rate_limit, "period": row.rate_period}

    @property
    def priority_enabled(self) -> bool:
        return bool(self.declaration.priority_enabled)

    def enqueue(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> WorkflowHandle:
        """Record ``fn(*args, **kwargs)`` as ENQUEUED in this queue; a process that registered ``fn``
        starts it when the limits allow. `SetEnqueueOptions` sets a deduplication id, a priority or a
        delay; an existing `SetWorkflowID` id returns that workflow's handle."""
        spec = self._engine._spec_of(fn)
        return self._engine._enqueue(self.declaration, spec.name, args, kwargs, spec.timeout)

    async def enqueue_async(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> WorkflowHandle:
        """`enqueue` for async code (it is one short commit)."""
        return self.enqueue(fn, *args, **kwargs)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"


def enqueue(
    client: Client,
    queue: QueueRow,
    workflow_name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    default_timeout: float | None,
    parent: _Run | None = None,
) -> str:
    """Record an ENQUEUED workflow (or find the one with the chosen id); its id.

    From a workflow body (``parent``) it is a checkpoint, like a child's start: the id is derived
    from the parent's (``"<parent id>-<position>"`` unless SetWorkflowID chose one), a replay
    returns it and enqueues nothing, and the workflow is the parent's child (its cancel and its
    deadline reach it).
    """
    deduplication_id, priority, delay = options.enqueue_options()
    if priority is not None and not queue.priority_enabled:
        raise ValueError(f"queue {queue.name!r} does not take priorities (declare it with priority_enabled=True)")
    inputs = client._encode_inputs(args, kwargs)
    now = time.time()
    checkpoint = None
    if parent is not None:
        position, recorded = parent.checkpoint(ENQUEUE_STEP)
        if recorded is not None:
            return client._decode(recorded.output_encoding, recorded.output)
        workflow_id = management.child_id(parent, position)
        checkpoint = StepRow(parent.workflow_id, position, ENQUEUE_STEP, *client._codec.encode(workflow_id),
                             None, None, 1, now, now)  # fmt: skip
    else:
        workflow_id = options.take_workflow_id()
    row = WorkflowRow(
        workflow_id, workflow_name, "ENQUEUED", inputs[0], inputs[1], None, None, None, None,
        None, 0, now, now, None if parent is None else parent.workflow_id, options.chosen_timeout(default_timeout),
        None if parent is None else parent.deadline, None,
        queue.name, priority or 0, deduplication_id, None if not delay else now + delay,
    )  # fmt: skip
    executor = None if parent is None else parent.executor_id
    created, found = client._storage.enqueue_workflow(row, checkpoint, executor)
    if not created and found.name != workflow_name:
        raise WorkflowConflictError(
            f"workflow id {row.workflow_id!r} already belongs to a workflow named {found.name!r}, not {workflow_name!r}"
        )
    if created:
        client._feed.signal([queue_key(queue.name)])
    return row.workflow_id


class Dispatcher:
    """Takes work from an engine's queues and starts it (one thread per launched engine)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queues: dict[str, QueueRow] = {}
        self._thread: threading.Thread | None = None
        self._interest: Any = None
        self._stopping = False
        self._lock = threading.Lock()

    def add(self, queue: QueueRow) -> None:
        with self._lock:
            self._queues[queue.name] = queue
        if self._thread is not None:
            self.start()  # a new key to wait on

    def start(self) -> None:
        """Start (or restart with new queues) the dispatcher thread; no-op without queues."""
        with self._lock:
            if not self._queues:
                return
            keys = [queue_key(name) for name in self._queues] + [ANY_UNOWNED]  # + resumed and requeued work
            old, self._interest = self._interest, self._engine._signals.interest(*keys)
            self._interest.ring("hand-over")  # look at the queues at once
            self._stopping = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="litedur-queues", daemon=True)
                self._thread.start()
        if old is not None:
            old.ring("hand-over")
            old.close()

    def room_freed(self) -> None:
        """A run of this process ended: look at the queues again (its slot, or its thread, is free)."""
        interest = self._interest
        if interest is not None:
            interest.ring("hand-over")

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            thread, interest = self._thread, self._interest
            self._thread = self._interest = None
        if interest is not None:
            interest.ring("hand-over")
        if thread is not None:
            thread.join()
        if interest is not None:
            interest.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                interest, queues = self._interest, list(self._queues.values())
            interest.arm()
            retry_at = time.time() + SAFETY_NET
            for queue in queues:
                with contextlib.suppress(LitedurError):  # a busy file now: the next ring or timer tries again
                    when = self.take(queue)
                    if when is not None:
                        retry_at = min(retry_at, when)
            interest.wait(time.monotonic() + max(0.0, retry_at - time.time()))

    def take(self, queue: QueueRow) -> float | None:
        """Start what the queue's limits allow now; when to look again (a delay or a rate window)."""
        engine = self._engine
        executor = engine._ensure_executor()
        names = [name for name in engine._workflows]
        want = engine._room_for_work(BATCH)
        rows, retry_at = engine._storage.dequeue(queue, executor.executor_id, names, want)
        if not rows and want > 0 and queue.concurrency is not None and self._free_dead_slots(queue.name):
            rows, retry_at = engine._storage.dequeue(queue, executor.executor_id, names, want)
        for row in rows:
            engine._start_dequeued(row)
        return retry_at

    def _free_dead_slots(self, queue_name: str) -> bool:
        """Requeue the work of dead executors holding this queue's slots; True if any went back."""
        engine = self._engine
        freed = False
        for owner in engine._storage.running_executors(queue_name):
            if owner != engine.executor_id and not engine._storage.executor_alive(owner):
                freed = bool(requeued_from(engine, owner)) or freed
        if freed:
            engine._feed.signal([ANY_UNOWNED])  # the other processes' dispatchers too
        return freed


LOGGED_IDS = 20  # the requeue log names this many workflows at most


def requeued_from(engine: Engine, dead_executor: str) -> int:
    """Put a dead executor's queued work back in its queues (INFO when there was some); how many."""
    ids = engine._storage.requeue_workflows_of(dead_executor)
    if ids:
        named = ", ".join(ids[:LOGGED_IDS]) + (f" and {len(ids) - LOGGED_IDS} more" if len(ids) > LOGGED_IDS else "")
        log.info("%d queued workflow(s) of dead executor %s went back to their queues: %s", len(ids), dead_executor,
                 named)  # fmt: skip
    return len(ids)
