"""Running durable workflows: the Engine, its decorators, checkpointed steps and recovery.

A workflow's body runs with a `_Run` in a context variable: in a thread, or as a task of an event
loop for an ``async def`` workflow (see `runner`: steps, waits and whole runs are written once, as
plans, and carried out by a sync or an async driver). Each step call and each
durable operation in the body (a stream write, an event, a message sent or received, a sleep, a child
started or awaited) takes the next *position*; a position with a record is replayed (the body of the
step does not run again) and a position without one runs and is recorded in one commit. Every write
of a run is fenced in storage on "still PENDING and still this executor's", so after a cancel (or a
resume elsewhere) nothing more of that run is recorded. Recovery finds PENDING workflows whose
executor no longer holds its file lock, claims each in one transaction, and re-runs its body, which
replays up to the first unrecorded position.

Events and messages live in `messages`, durable sleep, deadlines and cancellation checks in
`timers`, cancel/resume/fork and child workflows in `management`; the Engine delegates to them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import management, messages, options, queues, runner, schedules, timers
from .client import FINAL_STATUSES, Client, WorkflowHandle, _check_path_type
from .errors import (
    DatabaseError,
    LitedurError,
    NonDeterminismError,
    NotInWorkflowError,
    SerializationError,
    StaleRunError,
    StreamClosedError,
    WorkflowCancelledError,
    WorkflowConflictError,
)
from .retention import RetentionKeeper
from .retention import is_seconds as retention_is_seconds
from .runner import CALL, Plan, Sleep
from .storage import ANY_UNOWNED, WRITE_STREAM_STEP, HeldLock, StepRow, WorkflowRow
from .streams import StreamWriter, check_key
from .values import Serializer
from .wakeup import Interest

if TYPE_CHECKING:
    from concurrent.futures import Future
    from datetime import tzinfo

P = ParamSpec("P")
R = TypeVar("R")

RECOVERY_INTERVAL = 2.0

log = logging.getLogger("litedur")


@dataclass
class _StepRun:
    position: int
    attempt: int


@dataclass
class _Run:
    """The state of one workflow execution in this thread."""

    engine: Engine
    workflow_id: str
    executor_id: str
    checkpoints: dict[int, StepRow]
    attempts_so_far: dict[int, int]
    interest: Interest  # rung when the workflow changes (a cancel, a message): then check_running reads it
    deadline: float | None = None  # epoch seconds: the workflow is cancelled when it passes
    is_async: bool = False
    queue_name: str | None = None
    next_position: int = 0
    stream_ids: dict[str, int] = field(default_factory=dict)
    has_streams: bool = True  # False while a fresh run has not created any stream yet

    @staticmethod
    def current_step() -> _StepRun | None:
        """The step attempt running in this context (thread or task), if any."""
        return _current_step.get()

    def take_position(self) -> int:
        position = self.next_position
        self.next_position += 1
        return position

    def checkpoint(self, name: str) -> tuple[int, StepRow | None]:
        """Take the next position for the durable operation ``name``: ``(position, its record or None)``."""
        position = self.take_position()
        return position, self.recorded_at(position, name)

    def recorded_at(self, position: int, name: str) -> StepRow | None:
        """The record of ``name`` at ``position``, if any; one of another operation there means the
        body is not deterministic."""
        recorded = self.checkpoints.get(position)
        if recorded is not None and recorded.name != name:
            raise NonDeterminismError(
                f"workflow {self.workflow_id!r} called {name!r} at position {position}, "
                f"but the recorded run called {recorded.name!r} there"
            )
        return recorded


@dataclass
class _WorkflowSpec:
    fn: Callable[..., Any]
    name: str
    max_recovery_attempts: int
    timeout: float | None = None
    is_async: bool = False


@dataclass
class _StepPolicy:
    name: str
    max_attempts: int
    interval: float
    backoff: float


@dataclass
class _Executor:
    executor_id: str
    lock: HeldLock
    running: dict[str, Future[Any] | None] = field(default_factory=dict)


_current_run: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("litedur_run", default=None)
_current_step: contextvars.ContextVar[_StepRun | None] = contextvars.ContextVar("litedur_step", default=None)


def _default_name(fn: Callable[..., Any]) -> str:
    """A function's qualified name without ``<locals>`` parts: stable across processes."""
    return fn.__qualname__.replace("<locals>.", "")


class Engine(Client):
    """Runs durable workflows whose state lives in one SQLite file (see the package docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        executor_id: str | None = None,
        serializer: Serializer | None = None,
        durability: str = "normal",
        max_workers: int = 64,
        wait: str = "auto",
        group_writes: bool = True,
        retention: float | None = None,
    ) -> None:
        if retention is not None and (not retention_is_seconds(retention) or retention == 0):
            raise ValueError(f"retention must be a finite number of seconds > 0, not {retention!r}")
        if executor_id is not None and (not isinstance(executor_id, str) or not executor_id):
            raise TypeError(f"executor_id must be a non-empty str, not {executor_id!r}")
        if type(max_workers) is not int or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
        self._open(_check_path_type(path), serializer, True, wait, create=True, durability=durability)
        self.executor_id = executor_id or f"{_hostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        self._max_workers = max_workers
        self._workflows: dict[str, _WorkflowSpec] = {}
        self._executor: _Executor | None = None
        self._pool: runner.WorkflowThreads | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._recovery_thread: threading.Thread | None = None
        self._launched = False
        self._writer = StreamWriter(self._storage, self._feed, self.executor_id) if group_writes else None
        self._deadlines = timers.DeadlineKeeper(self._cancel_at_deadline)
        self._runner = runner.AsyncRunner()
        self._dispatcher = queues.Dispatcher(self)
        self._scheduler = schedules.Scheduler(self)
        self._queues: dict[str, queues.Queue] = {}
        self._own_orphans = False  # a run here ended without recording its end: recover own work too
        self._recovery_interest: Any = None
        self._retention = retention
        self._retention_keeper: RetentionKeeper | None = None

    # ---- registration -----------------------------------------------------------------------

    def workflow(
        self, name: str | None = None, max_recovery_attempts: int = 50, timeout: float | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Make a function a durable workflow; calling it runs it durably in the caller's thread.

        An ``async def`` workflow called directly (``await wf()``) runs in the caller's event loop;
        started, recovered or dequeued, it runs on the engine's own loop thread. ``timeout``
        (seconds) gives each run a durable deadline, after which it and its children are cancelled
        (see `SetWorkflowTimeout`).
        """
        if name is not None and not isinstance(name, str):
            raise TypeError(f"workflow name must be a str, not {type(name).__name__}")
        if type(max_recovery_attempts) is not int or max_recovery_attempts < 0:
            raise ValueError(f"max_recovery_attempts must be an int >= 0, not {max_recovery_attempts!r}")
        timeout = timers.check_timeout(timeout, "workflow timeout")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            is_async = inspect.iscoroutinefunction(fn)
            spec = _WorkflowSpec(fn, name or _default_name(fn), max_recovery_attempts, timeout, is_async)
            with self._lock:
                known = self._workflows.get(spec.name)
                if known is not None and known.fn is not fn:
                    raise LitedurError(
                        f"a workflow named {spec.name!r} is already registered; pass name=... to tell them apart"
                    )
                self._workflows[spec.name] = spec

            @functools.wraps(fn)
            def call(*args: P.args, **kwargs: P.kwargs) -> R:
                if spec.is_async:
                    return self._call_workflow_async(spec, args, kwargs)  # type: ignore[return-value]
                return self._call_workflow(spec, args, kwargs)

            call.__litedur_workflow__ = spec  # type: ignore[attr-defined]
            return call

        return decorate

    def step(
        self,
        name: str | None = None,
        max_attempts: int = 1,
        interval: float = 1.0,
        backoff: float = 2.0,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Make a function a checkpointed step: inside a workflow its result is recorded once.

        An ``async def`` step is awaited; steps started together (``asyncio.gather``) take their
        positions in call order. A sync step called from an ``async def`` workflow returns an
        awaitable and runs in a worker thread, so the workflow's loop never blocks.
        """
        if name is not None and not isinstance(name, str):
            raise TypeError(f"step name must be a str, not {type(name).__name__}")
        if type(max_attempts) is not int or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        for label, number in (("interval", interval), ("backoff", backoff)):
            if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0:
                raise ValueError(f"{label} must be a number >= 0, not {number!r}")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            policy = _StepPolicy(name or _default_name(fn), max_attempts, float(interval), float(backoff))

            is_async = inspect.iscoroutinefunction(fn)

            @functools.wraps(fn)
            def call(*args: P.args, **kwargs: P.kwargs) -> R:
                run = self._body_run()
                if run is None:  # outside a workflow, or inside a step: a plain call
                    return fn(*args, **kwargs)
                if is_async and not run.is_async:
                    raise LitedurError(
                        f"async step {policy.name!r} called from the sync workflow {run.workflow_id!r}: "
                        "call async steps from an async def workflow (or make the step sync)"
                    )
                plan = self._step_plan(run, run.take_position(), policy)  # the position now, in call order
                if is_async:
                    return runner.run_async(plan, lambda: fn(*args, **kwargs))  # type: ignore[return-value]
                if run.is_async and runner.running_loop() is not None:
                    return runner.run_async(plan, lambda: runner.in_thread(fn, *args, **kwargs))  # type: ignore
                return runner.run_sync(plan, lambda: fn(*args, **kwargs))

            return call

        return decorate

    # ---- lifecycle --------------------------------------------------------------------------

    def launch(self) -> None:
        """Register this process as an executor and recover orphaned workflows in the background."""
        with self._lock:
            if self._launched:
                return
            self._ensure_executor()
            self._launched = True
            self._stopping.clear()
        self._recover(include_own=True)
        self._recovery_interest = self._signals.interest(ANY_UNOWNED)
        self._recovery_thread = threading.Thread(
            target=self._recover_periodically, name="litedur-recovery", daemon=True
        )
        self._recovery_thread.start()
        self._dispatcher.start()
        self._scheduler.start()
        if self._retention is not None:
            self._retention_keeper = RetentionKeeper(self, self._retention)
            self._retention_keeper.start()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop recovering, wait up to ``timeout`` s for running workflows, then release the file.

        A step that is running finishes; a workflow in a durable wait (``sleep``, ``recv``,
        ``get_event``, a child's ``get_result``) stops waiting at once and stays PENDING: the next
        launch of any process on the file resumes it, with the wait's original deadline.

        If workflows are still running when the timeout passes, the executor keeps its lock (they
        are still alive, nobody may adopt them) and the connections stay open for them.
        """
        self._stopping.set()
        self._scheduler.close()
        self._dispatcher.close()
        if self._retention_keeper is not None:
            self._retention_keeper.stop()
            self._retention_keeper = None
        if self._signals_or_none is not None:  # durable waits end now; their workflows resume on a later launch
            self._signals_or_none.ring_everyone("hand-over")
        if self._recovery_thread is not None:
            self._recovery_thread.join()
            self._recovery_thread = None
        if self._recovery_interest is not None:
            self._recovery_interest.close()
            self._recovery_interest = None
        with self._lock:
            executor, pool = self._executor, self._pool
            self._launched = False
        if executor is not None:
            futures = [f for f in list(executor.running.values()) if f is not None]
            deadline = None if timeout is None else time.monotonic() + timeout
            for future in futures:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    future.exception(timeout=remaining)
                except TimeoutError:
                    return
            if executor.running:
                return
        if pool is not None:
            pool.shutdown()
        if self._writer is not None:
            self._writer.close()
        self._deadlines.close()
        self._runner.close()
        if executor is not None:
            with contextlib.suppress(DatabaseError):  # a read-only or vanished file keeps its row
                self._storage.forget_executor(executor.executor_id)  # unless it still owns work
        with self._lock:
            if executor is not None:
                executor.lock.release()
            self._executor = None
            self._pool = None
        self.close()  # the connections and this file's idle wake-up watches

    def __enter__(self) -> Engine:
        self.launch()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ---- starting workflows -------------------------------------------------------------------

    def start_workflow(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> WorkflowHandle:
        """Start ``fn`` in a background thread; returns once the workflow is durably recorded.

        In a workflow body this starts a child (see `management.start_child`): a checkpoint whose
        replay returns the same child and never starts a second one.
        """
        spec = self._spec_of(fn)
        parent = self._body_run()
        if parent is not None:
            return WorkflowHandle(self, management.start_child(self, parent, spec, args, kwargs))
        return WorkflowHandle(self, self._start(spec, args, kwargs))

    async def start_workflow_async(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> WorkflowHandle:
        """`start_workflow` for async code (recording the start is one short commit)."""
        return self.start_workflow(fn, *args, **kwargs)

    def _start(
        self,
        spec: _WorkflowSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workflow_id: str | None = None,
        parent: _Run | None = None,
        checkpoint: StepRow | None = None,
    ) -> str:
        """Record a workflow and run it in the background (or adopt the one with its id); its id."""
        workflow_id = workflow_id or options.take_workflow_id()
        created, row, executor = self._create(spec, workflow_id, args, kwargs, parent, checkpoint)
        if created:
            self._submit(spec, row, args, kwargs, executor, fresh=True)
        elif self._adopt(spec, row, executor):
            self._start_recovered(spec, workflow_id, executor)
        return workflow_id

    def _call_workflow(self, spec: _WorkflowSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A direct call: run the workflow durably in this thread (or wait for the run that has its id)."""
        parent = self._body_run()
        how, row, args, kwargs, executor = self._prepare_call(spec, self._call_id(parent), args, kwargs, parent)
        if how == "wait":
            return runner.run_sync(Client._result_plan(self, row.workflow_id, None))  # not a checkpoint
        return self._execute(spec, row, args, kwargs, executor, fresh=how == "run fresh")

    def _call_workflow_async(self, spec: _WorkflowSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        parent = self._body_run()
        workflow_id = self._call_id(parent)  # now: a child's position is taken in call order

        async def call() -> Any:
            how, row, call_args, call_kwargs, executor = self._prepare_call(spec, workflow_id, args, kwargs, parent)
            if how == "wait":
                return await runner.run_async(Client._result_plan(self, row.workflow_id, None))
            return await self._execute_async(spec, row, call_args, call_kwargs, executor, fresh=how == "run fresh")

        return call()

    def _call_id(self, parent: _Run | None) -> str:
        if parent is not None and options.chosen_workflow_id() is None:  # a chosen id takes no position
            return management.child_id(parent, parent.take_position())
        return options.take_workflow_id()

    def _prepare_call(
        self, spec: _WorkflowSpec, workflow_id: str, args: Any, kwargs: Any, parent: _Run | None
    ) -> tuple[str, WorkflowRow, Any, Any, _Executor]:
        """Create (or find) a directly called workflow: "run fresh" (just created), "run" (adopted from
        a dead executor) or "wait" (another executor runs it), with its row and recorded arguments."""
        created, row, executor = self._create(spec, workflow_id, args, kwargs, parent)
        if created:
            return "run fresh", row, args, kwargs, executor
        if self._adopt(spec, row, executor):
            recorded = self._decode(row.inputs_encoding, row.inputs)
            return "run", row, tuple(recorded["args"]), recorded["kwargs"], executor
        return "wait", row, args, kwargs, executor

    def _body_run(self) -> _Run | None:
        """The run of this engine whose body (not a step) is executing in this context, if any."""
        run = _current_run.get()
        return run if run is not None and run.engine is self and _current_step.get() is None else None

    def _spec_of(self, fn: Any) -> _WorkflowSpec:
        spec = getattr(fn, "__litedur_workflow__", None)
        if not isinstance(spec, _WorkflowSpec) or self._workflows.get(spec.name) is not spec:
            raise TypeError(
                f"{getattr(fn, '__qualname__', fn)!r} is not a workflow of this engine; decorate it with @app.workflow"
            )
        return spec

    def _limits(self, spec: _WorkflowSpec, parent: _Run | None) -> tuple[float | None, float | None]:
        """``(timeout, deadline)`` of a workflow starting now: its own, bounded by its parent's deadline."""
        timeout = options.chosen_timeout(spec.timeout)
        deadline = None if timeout is None else time.time() + timeout
        if parent is not None and parent.deadline is not None:
            deadline = parent.deadline if deadline is None else min(deadline, parent.deadline)
        return timeout, deadline

    def _create(
        self,
        spec: _WorkflowSpec,
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: _Run | None = None,
        checkpoint: StepRow | None = None,
    ) -> tuple[bool, WorkflowRow, _Executor]:
        inputs = self._encode_inputs(args, kwargs)
        executor = self._ensure_executor()  # after encoding: a value that cannot be stored writes nothing
        timeout, deadline = self._limits(spec, parent)
        if parent is not None:
            timers.check_running(self, parent)  # a cancelled parent starts no child
        with self._lock:
            added = workflow_id not in executor.running  # another call may be running this very id here
            executor.running.setdefault(workflow_id, None)
        try:
            created, row = self._storage.create_workflow(
                workflow_id, spec.name, inputs, executor.executor_id,
                parent_id=None if parent is None else parent.workflow_id,
                timeout=timeout, deadline=deadline, checkpoint=checkpoint,
            )  # fmt: skip
        except BaseException:
            if added:
                self._forget_running(executor, workflow_id)
            raise
        if not created:
            if added:
                self._forget_running(executor, workflow_id)
            if row.name != spec.name:
                raise WorkflowConflictError(
                    f"workflow id {workflow_id!r} already belongs to a workflow named {row.name!r}, not {spec.name!r}"
                )
        else:
            self._feed.notify()
        return created, row, executor

    def _adopt(self, spec: _WorkflowSpec, row: WorkflowRow, executor: _Executor) -> bool:
        """Claim an existing PENDING workflow whose executor is dead; True if this one may run it."""
        if row.status != "PENDING" or row.executor_id == executor.executor_id:
            return False
        if self._storage.executor_alive(row.executor_id):
            return False
        return self._claim(spec, row.workflow_id, row.executor_id, executor)

    def _claim(self, spec: _WorkflowSpec, workflow_id: str, owner: str | None, executor: _Executor) -> bool:
        with self._lock:
            if workflow_id in executor.running:
                return False
            executor.running[workflow_id] = None
        outcome = self._storage.claim_workflow(
            workflow_id, owner, executor.executor_id, spec.max_recovery_attempts
        )
        if outcome != "claimed":
            self._forget_running(executor, workflow_id)
            if outcome == "exceeded":
                _log_exhausted(workflow_id, spec)
                self._feed.signal([workflow_id])
            return False
        _log_claim(workflow_id, spec.name, owner, executor.executor_id)
        return True

    def _submit(
        self,
        spec: _WorkflowSpec,
        row: WorkflowRow,
        args: Any,
        kwargs: Any,
        executor: _Executor,
        fresh: bool = False,
    ) -> None:
        with self._lock:  # held until the future is registered, so the run cannot forget it first
            if spec.is_async:
                run = self._execute_async(spec, row, args, kwargs, executor, fresh)
                executor.running[row.workflow_id] = self._runner.submit(_quietly(run))
                return
            if self._pool is None:
                self._pool = runner.WorkflowThreads(self._max_workers)
            executor.running[row.workflow_id] = self._pool.submit(
                self._execute_quietly, spec, row, args, kwargs, executor, fresh
            )

    def _execute_quietly(self, *call: Any) -> None:
        with contextlib.suppress(Exception):  # recorded as the workflow's ERROR; handles re-raise it
            self._execute(*call)

    def _execute(
        self, spec: _WorkflowSpec, row: WorkflowRow, args: Any, kwargs: Any, executor: _Executor, fresh: bool = False
    ) -> Any:
        """Run (or replay) a workflow body in this thread and record its final status."""
        plan = self._workflow_plan(row, executor, fresh, spec.is_async)
        return runner.run_sync(plan, lambda: spec.fn(*args, **kwargs))

    async def _execute_async(
        self, spec: _WorkflowSpec, row: WorkflowRow, args: Any, kwargs: Any, executor: _Executor, fresh: bool = False
    ) -> Any:
        """Run (or replay) an async workflow body in the running loop and record its final status."""
        plan = self._workflow_plan(row, executor, fresh, spec.is_async)
        return await runner.run_async(plan, lambda: spec.fn(*args, **kwargs))

    def _workflow_plan(self, row: WorkflowRow, executor: _Executor, fresh: bool, is_async: bool) -> Plan[Any]:
        """One run of a workflow this executor owns, from the first position to its final status.

        The final status is fenced like every write of the run: a run that was cancelled (or whose
        workflow went to another executor) records nothing and raises why it stopped.
        """
        workflow_id = row.workflow_id
        stopped = ended = False
        try:
            checkpoints, attempts = ({}, {}) if fresh else self._storage.load_checkpoints(workflow_id)
            interest = self._signals.interest(workflow_id)
            interest.ring("hand-over")  # a cancel may have come before the interest: read the status once
            run = _Run(self, workflow_id, executor.executor_id, checkpoints, attempts, interest, row.deadline,
                       is_async, row.queue_name, has_streams=not fresh)  # fmt: skip
            token = _current_run.set(run)
            try:
                timers.start_run(self, run)
                result = yield CALL
            except Exception as exc:
                # If the error cannot be recorded either (the disk is still full, ...), the caller gets
                # the first error, not that one, and the workflow stays PENDING for recovery.
                with contextlib.suppress(DatabaseError):
                    ended = self._finish(run, "ERROR", error=self._codec.encode_error(exc))
                raise
            finally:
                _current_run.reset(token)
                interest.close()
            try:
                output = self._codec.encode(result)
            except SerializationError as exc:
                ended = self._finish(run, "ERROR", error=self._codec.encode_error(exc))
                raise
            ended = self._finish(run, "SUCCESS", output=output)
            if not ended:
                raise timers.stopped_error(self, run)
            return result
        except (WorkflowCancelledError, StaleRunError):
            stopped = True  # a resume while this run was stopping waited for it to leave
            raise
        finally:
            self._forget_running(executor, workflow_id)  # once: then a new run of it may register
            if not ended:  # maybe PENDING here and running nowhere (a crash, a database error, a resume)
                self._feed.notify()  # (an ended run's _finish signalled already)
                self._own_orphans = True
            if stopped:
                self._wake_recovery()
            self._dispatcher.room_freed()

    def _wake_recovery(self) -> None:
        if self._recovery_interest is not None:
            self._recovery_interest.ring("hand-over")

    def _finish(self, run: _Run, status: str, **outcome: Any) -> bool:
        finished = self._storage.finish_workflow(
            run.workflow_id, status, run.executor_id, has_streams=run.has_streams, **outcome
        )
        if finished:
            changed = [run.workflow_id]
            if run.queue_name is not None:  # a slot of its queue is free
                changed.append(queues.queue_key(run.queue_name))
            self._feed.signal(changed)
        return finished

    def _forget_running(self, executor: _Executor, workflow_id: str) -> None:
        with self._lock:
            executor.running.pop(workflow_id, None)

    def _ensure_executor(self) -> _Executor:
        executor = self._executor
        if executor is not None:
            return executor
        with self._lock:
            if self._executor is None:
                lock = self._storage.executor_lock(self.executor_id)
                try:
                    self._storage.register_executor(self.executor_id, os.getpid(), _hostname())
                except BaseException:
                    lock.release()
                    raise
                self._executor = _Executor(self.executor_id, lock)
            return self._executor

    # ---- steps ----------------------------------------------------------------------------------

    def _step_plan(self, run: _Run, position: int, policy: _StepPolicy) -> Plan[Any]:
        """The step at ``position``. Replay rule: a recorded output is returned (a recorded error
        raised) and the body does not run; else attempts run (with retries after ``interval *
        backoff**n`` s) until one returns, and its output (or the last error) is recorded."""
        recorded = run.recorded_at(position, policy.name)
        if recorded is not None:
            return self._recorded_outcome(recorded)
        started = time.time()
        first_attempt = run.attempts_so_far.get(position, 0) + 1
        for number in range(policy.max_attempts):
            timers.check_running(self, run)  # a cancelled run starts no step body
            attempt = first_attempt + number
            token = _current_step.set(_StepRun(position, attempt))
            try:
                try:
                    result = yield CALL
                finally:
                    _current_step.reset(token)
                    self._flush_stream_writes(run)  # this attempt's values are committed first
            except (WorkflowCancelledError, StaleRunError):
                raise  # the run stops: not a failure of the step to retry or record
            except Exception as exc:
                if number + 1 < policy.max_attempts:
                    delay = policy.interval * policy.backoff**number
                    _log_retry(policy, position, run.workflow_id, number + 1, delay, exc)
                    yield Sleep(delay)
                    continue
                self._record_step(run, position, policy.name, attempt, started, error=exc)
                raise
            try:
                output = self._codec.encode(result)
            except SerializationError as exc:
                self._record_step(run, position, policy.name, attempt, started, error=exc)
                raise
            self._record_step(run, position, policy.name, attempt, started, output=output)
            return result
        raise AssertionError("unreachable")

    def _recorded_outcome(self, recorded: StepRow) -> Any:
        """A checkpoint's recorded output, or its recorded exception raised again."""
        if recorded.error is not None:
            raise self._codec.decode_error(recorded.error, recorded.error_pickle)
        return self._decode(recorded.output_encoding, recorded.output)

    def _record_step(
        self,
        run: _Run,
        position: int,
        name: str,
        attempt: int,
        started: float,
        output: tuple[int, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        encoding, data = output if output is not None else (None, None)
        description, pickled = self._codec.encode_error(error) if error is not None else (None, None)
        self._storage.record_step(
            StepRow(run.workflow_id, position, name, encoding, data, description, pickled,
                    attempt, started, time.time()),
            run.executor_id,
        )  # fmt: skip

    # ---- streams (writing side) -------------------------------------------------------------

    def write_stream(self, key: str, value: Any) -> None:
        """Append ``value`` to the stream ``key`` of the current workflow, durably.

        In a step the value is tagged with the step's position and attempt. A value of a burst is
        committed with its neighbours within about a millisecond, one that comes alone before this
        returns (every value, with ``group_writes=False``); the step's output is recorded only
        after all its values are committed. In a workflow body the write is a checkpoint,
        committed before this returns and not repeated on replay.
        """
        if type(key) is not str:
            check_key(key)
        run = _current_run.get()
        if run is None or run.engine is not self:
            raise NotInWorkflowError("write_stream() must be called inside a workflow or a step of this engine")
        encoded = self._codec.encode(value)
        step = _current_step.get()
        if step is None:
            self._write_checkpoint(run, key, encoded)
            self._feed.notify()
            return
        stream_id = run.stream_ids.get(key)
        if stream_id is None:
            stream_id = self._open_for_writing(run, key)
        if self._writer is not None and self._writer.append(run.workflow_id, key, step.position, step.attempt, encoded):
            return
        offset = self._storage.append_one(
            stream_id, encoded, step.position, step.attempt, run.workflow_id, run.executor_id
        )
        if offset is None:
            run.stream_ids.pop(key, None)
            raise StreamClosedError(f"stream {key!r} of workflow {run.workflow_id!r} is closed")
        self._feed.publish([(stream_id, offset, [encoded])])

    def _write_checkpoint(self, run: _Run, key: str, encoded: tuple[int, Any]) -> None:
        name = f"{WRITE_STREAM_STEP}:{key}"
        position, recorded = run.checkpoint(name)
        if recorded is not None:
            return
        self._flush_stream_writes(run)
        run.has_streams = True
        self._storage.append_stream(run.workflow_id, key, [encoded], position, 1, run.executor_id, time.time())

    def _open_for_writing(self, run: _Run, key: str) -> int:
        run.has_streams = True
        stream_id, closed = self._storage.open_stream(run.workflow_id, key, run.executor_id)
        if closed:
            raise StreamClosedError(f"stream {key!r} of workflow {run.workflow_id!r} is closed")
        run.stream_ids[key] = stream_id
        return stream_id

    def _flush_stream_writes(self, run: _Run) -> None:
        if self._writer is not None and run.has_streams:  # a run without streams queued nothing
            self._writer.flush(run.workflow_id)

    def close_stream(self, key: str) -> None:
        """Mark the current workflow's stream ``key`` complete; readers end after its last value."""
        check_key(key)
        run = self._current("close_stream")
        self._flush_stream_writes(run)
        run.has_streams = True
        self._storage.close_stream(run.workflow_id, key, run.executor_id)
        run.stream_ids.pop(key, None)
        self._feed.notify()

    def already_written(self, key: str) -> list[Any]:
        """Inside a step: the values earlier attempts of this same step wrote to ``key``."""
        check_key(key)
        run = self._current("already_written")
        step = _current_step.get()
        if step is None:
            raise NotInWorkflowError("already_written() must be called inside a step")
        entries = self._storage.earlier_attempt_values(run.workflow_id, key, step.position, step.attempt)
        return [self._codec.decode(e.encoding, e.value) for e in entries]

    def _current(self, what: str) -> _Run:
        run = _current_run.get()
        if run is None or run.engine is not self:
            raise NotInWorkflowError(f"{what}() must be called inside a workflow or a step of this engine")
        return run

    # ---- recovery -------------------------------------------------------------------------------

    def _recover_periodically(self) -> None:
        """Every RECOVERY_INTERVAL, and at once when a resume or fork anywhere leaves work without an
        executor, claim what this process can run."""
        interest = self._recovery_interest
        while True:
            interest.wait(time.monotonic() + RECOVERY_INTERVAL)
            if self._stopping.is_set():
                return
            interest.arm()
            with contextlib.suppress(LitedurError):  # a busy or read-only file now: try next round
                # Own workflows too after a run of this process ended without recording its end (a
                # database error, disk full, ...): PENDING here and running nowhere.
                own, self._own_orphans = self._own_orphans, False
                self._recover(include_own=own)

    def _recover(self, include_own: bool) -> int:
        """Claim and start every PENDING workflow whose executor is dead; returns how many."""
        executor = self._ensure_executor()
        started = 0
        for owner in self._storage.active_executors():
            own = owner == executor.executor_id
            if own and not include_own:
                continue
            if not own and self._storage.executor_alive(owner):
                continue
            if not own and owner is not None and queues.requeued_from(self, owner):
                self._feed.signal([ANY_UNOWNED])  # queued work went back to its queue, at its place
            for workflow_id, name in self._storage.pending_workflows_of(owner):
                spec = self._workflows.get(name)
                if spec is None or not self._claim(spec, workflow_id, owner, executor):
                    continue
                self._start_recovered(spec, workflow_id, executor)
                started += 1
        return started

    def _start_recovered(self, spec: _WorkflowSpec, workflow_id: str, executor: _Executor) -> None:
        row = self._storage.get_workflow(workflow_id)
        assert row is not None
        try:
            inputs = self._codec.decode(row.inputs_encoding, row.inputs)
        except SerializationError as exc:
            error = self._codec.encode_error(exc)
            self._storage.finish_workflow(workflow_id, "ERROR", executor.executor_id, error=error)
            self._forget_running(executor, workflow_id)
            self._feed.signal([workflow_id])
            return
        self._submit(spec, row, tuple(inputs["args"]), inputs["kwargs"], executor)

    # ---- schedules (delegated) ---------------------------------------------------------------------

    def scheduled(
        self, cron: str, tz: str | tzinfo | None = None, catch_up: bool = False, *, name: str | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Run the workflow under it at every tick of ``cron`` (five fields, see `schedules.Cron`), as
        ``workflow(scheduled_time, actual_time)`` (aware datetimes in ``tz``, an IANA name; UTC if None).

        Each tick runs once across every process launched on the file. Ticks missed while no process
        ran (or this one was suspended) are skipped; with ``catch_up=True`` only the latest of them
        runs. ``name`` (default: the workflow's) names the schedule and its workflows' ids,
        ``"sched-<name>-<tick in UTC>"``. Put ``@app.workflow()`` under it.
        """
        return schedules.scheduled(self, cron, tz, catch_up, name)

    # ---- queues (delegated) ------------------------------------------------------------------------

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        limiter: dict[str, Any] | None = None,
        priority_enabled: bool = False,
    ) -> queues.Queue:
        """Declare a durable queue (see `queues`): at most ``concurrency`` of its workflows run at once
        across every process on the file, ``worker_concurrency`` in one process, and ``limiter`` =
        ``{"limit": n, "period": seconds}`` starts in any window of that length.

        The declaration is recorded in the file and every process takes work under the latest one,
        so a worker started with new limits changes them for all.
        """
        declaration = queues.check_queue(name, concurrency, worker_concurrency, limiter, priority_enabled)
        with self._lock:
            known = self._queues.get(name)
            if known is not None:
                if known.declaration[:6] != declaration[:6]:
                    raise LitedurError(f"queue {name!r} is already declared here with other limits")
                return known
            self._storage.declare_queue(declaration)
            queue = self._queues[name] = queues.Queue(self, declaration)
        self._dispatcher.add(declaration)
        return queue

    def _enqueue(
        self, queue: Any, workflow_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> WorkflowHandle:
        parent = self._body_run()
        return WorkflowHandle(self, queues.enqueue(self, queue, workflow_name, args, kwargs, timeout, parent))

    def _room_for_work(self, most: int) -> int:
        """How many more workflows this process should take now: as many as its threads have slots for
        (a run blocked in a durable wait, or an async run, takes none)."""
        pool = self._pool
        return most if pool is None else max(0, min(most, self._max_workers - pool.busy))

    def _start_dequeued(self, row: WorkflowRow) -> None:
        """Run a workflow the dispatcher just took from a queue (or give it up after too many recoveries)."""
        executor = self._ensure_executor()
        spec = self._workflows[row.name]
        if row.recovery_attempts > spec.max_recovery_attempts:
            if self._storage.give_up(row.workflow_id, executor.executor_id):
                _log_exhausted(row.workflow_id, spec)
                self._feed.signal([row.workflow_id, queues.queue_key(row.queue_name or "")])
            return
        if row.recovery_attempts:
            log.info("workflow %s (%s) taken again from queue %s by executor %s (recovery %d)", row.workflow_id,
                     spec.name, row.queue_name, executor.executor_id, row.recovery_attempts)  # fmt: skip
        with self._lock:
            if row.workflow_id in executor.running:
                return  # already run here (a recovery, or a run a resume let go on): not a second time
            executor.running[row.workflow_id] = None
        self._start_recovered(spec, row.workflow_id, executor)

    # ---- communication and management (delegated) -----------------------------------------------

    def set_event(self, key: str, value: Any) -> None:
        """Publish the latest value of ``key`` for this workflow (a checkpoint in a body; also in a step)."""
        messages.set_event(self, self._current("set_event"), key, value)

    def recv(self, topic: str | None = None, timeout: float | None = 60) -> Any:
        """In a workflow body: the next message of ``topic`` (FIFO), consumed exactly once; None on timeout.

        The deadline is recorded at the first attempt, so a recovered run waits only what remains.
        """
        runner.refuse_on_loop("recv()", "app.recv_async()")
        return runner.run_sync(messages.recv(self, self._body_run_for("recv"), topic, timeout))

    async def recv_async(self, topic: str | None = None, timeout: float | None = 60) -> Any:
        """`recv` for an ``async def`` workflow."""
        return await runner.run_async(messages.recv(self, self._body_run_for("recv_async"), topic, timeout))

    def sleep(self, seconds: float) -> None:
        """Durable sleep: in a workflow body the deadline is recorded, and after a crash the workflow
        wakes at the original deadline (at once if it passed). A cancel wakes it. Elsewhere: time.sleep."""
        runner.refuse_on_loop("sleep()", "app.sleep_async()")
        run = self._body_run()
        if run is None:
            time.sleep(_seconds(seconds))
            return
        runner.run_sync(timers.sleep(self, run, seconds))

    async def sleep_async(self, seconds: float) -> None:
        """`sleep` for async code (durable in an ``async def`` workflow body)."""
        run = self._body_run()
        if run is None:
            import asyncio

            await asyncio.sleep(_seconds(seconds))
            return
        await runner.run_async(timers.sleep(self, run, seconds))

    def send(
        self, workflow_id: str, message: Any, topic: str | None = None, *, idempotency_key: str | None = None
    ) -> bool:
        """Send ``message`` to a workflow (see `Client.send`); in a workflow body it is a checkpoint."""
        run = self._body_run()
        if run is None:
            return super().send(workflow_id, message, topic, idempotency_key=idempotency_key)
        messages.send_from_run(self, run, workflow_id, message, topic)
        return True

    def _event_plan(self, workflow_id: str, key: str, timeout: float | None) -> Plan[Any]:
        """``get_event``; in a workflow body a checkpoint (see `messages.get_event_in_run`)."""
        run = self._body_run()
        if run is None:
            return super()._event_plan(workflow_id, key, timeout)
        return messages.get_event_in_run(self, run, workflow_id, key, timeout)

    def _result_plan(self, workflow_id: str, timeout: float | None) -> Plan[Any]:
        """``handle.get_result``; in a workflow body a checkpoint (see `management.await_child`)."""
        run = self._body_run()
        if run is None:
            return super()._result_plan(workflow_id, timeout)
        return management.await_child(self, run, workflow_id, timeout)

    def _cancel_at_deadline(self, workflow_id: str, deadline: float) -> None:
        row = self._storage.get_workflow(workflow_id)
        if row is not None and row.status == "PENDING" and row.deadline == deadline:
            self._cancel(workflow_id, timers.timeout_reason(row), if_deadline=deadline)

    def _body_run_for(self, what: str) -> _Run:
        run = self._body_run()
        if run is None:
            where = "in a step" if _current_run.get() is not None else "outside a workflow"
            raise NotInWorkflowError(f"{what}() must be called in a workflow body of this engine, not {where}")
        return run

    def is_final(self, workflow_id: str) -> bool:
        """True once the workflow has a final status."""
        return self._workflow_row(workflow_id).status in FINAL_STATUSES


def _seconds(seconds: Any) -> float:
    checked = timers.check_timeout(seconds, "sleep")
    if checked is None:
        raise TypeError("sleep() needs a number of seconds, not None")
    return checked


def _hostname() -> str:
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket  # Windows: a slower import, only there

    return socket.gethostname()


async def _quietly(run: Any) -> None:
    """Await a run whose failure is recorded as the workflow's ERROR (handles re-raise it)."""
    with contextlib.suppress(Exception):
        await run


def _log_claim(workflow_id: str, name: str, previous: str | None, executor_id: str) -> None:
    """INFO: who took over a workflow, and from which executor (None: work left unowned)."""
    if previous is None:
        log.info("workflow %s (%s) adopted by executor %s (it had no executor: resumed, forked or requeued)",
                 workflow_id, name, executor_id)  # fmt: skip
    elif previous == executor_id:
        log.info("workflow %s (%s) recovered by its own executor %s (its run ended without a final status)",
                 workflow_id, name, executor_id)  # fmt: skip
    else:
        log.info("workflow %s (%s) recovered by executor %s from dead executor %s",
                 workflow_id, name, executor_id, previous)  # fmt: skip


def _log_retry(
    policy: _StepPolicy, position: int, workflow_id: str, attempt: int, delay: float, exc: Exception
) -> None:
    """WARNING: a step attempt failed and another follows after ``delay`` seconds."""
    log.warning("step %s (position %d of workflow %s) failed on attempt %d of %d, retrying in %.3g s: %r",
                policy.name, position, workflow_id, attempt, policy.max_attempts, delay, exc)  # fmt: skip


def _log_exhausted(workflow_id: str, spec: _WorkflowSpec) -> None:
    log.warning("workflow %s (%s) reached MAX_RECOVERY_ATTEMPTS_EXCEEDED (more than %d recoveries)",
                workflow_id, spec.name, spec.max_recovery_attempts)  # fmt: skip

