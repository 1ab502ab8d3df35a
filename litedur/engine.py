"""Running durable workflows: the Engine, its decorators, checkpointed steps and recovery.

A workflow's body runs in a thread with a `_Run` in a context variable. Each step call and each
stream write in the body takes the next *position*; a position with a record is replayed (the body
of the step does not run again) and a position without one runs and is recorded in one commit.
Recovery finds PENDING workflows whose executor no longer holds its file lock, claims each in one
transaction, and re-runs its body, which replays up to the first unrecorded position.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import liveness
from .client import FINAL_STATUSES, Client, WorkflowHandle, _check_path_type
from .errors import (
    DatabaseError,
    LitedurError,
    NonDeterminismError,
    NotInWorkflowError,
    SerializationError,
    StreamClosedError,
    WorkflowConflictError,
)
from .storage import WRITE_STREAM_STEP, StepRow, WorkflowRow
from .streams import StreamWriter, check_key
from .values import JSON, Serializer

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

P = ParamSpec("P")
R = TypeVar("R")

RECOVERY_INTERVAL = 2.0


@dataclass
class _StepRun:
    position: int
    attempt: int


@dataclass
class _Run:
    """The state of one workflow execution in this thread."""

    engine: Engine
    workflow_id: str
    checkpoints: dict[int, StepRow]
    attempts_so_far: dict[int, int]
    next_position: int = 0
    step: _StepRun | None = None
    stream_ids: dict[str, int] = field(default_factory=dict)
    has_streams: bool = True  # False while a fresh run has not created any stream yet

    def take_position(self) -> int:
        position = self.next_position
        self.next_position += 1
        return position


@dataclass
class _WorkflowSpec:
    fn: Callable[..., Any]
    name: str
    max_recovery_attempts: int


@dataclass
class _StepPolicy:
    name: str
    max_attempts: int
    interval: float
    backoff: float


@dataclass
class _Executor:
    executor_id: str
    lock: liveness.ExecutorLock
    running: dict[str, Future[Any] | None] = field(default_factory=dict)


_current_run: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("litedur_run", default=None)
_next_workflow_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "litedur_next_workflow_id", default=None
)


def _default_name(fn: Callable[..., Any]) -> str:
    """A function's qualified name without ``<locals>`` parts: stable across processes."""
    return fn.__qualname__.replace("<locals>.", "")


class SetWorkflowID:
    """``with SetWorkflowID("id"):`` gives the next workflow started or called in the block that id."""

    def __init__(self, workflow_id: str) -> None:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise TypeError(f"workflow id must be a non-empty str, not {workflow_id!r}")
        self.workflow_id = workflow_id
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> SetWorkflowID:
        self._token = _next_workflow_id.set(self.workflow_id)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        _next_workflow_id.reset(self._token)


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
    ) -> None:
        if executor_id is not None and (not isinstance(executor_id, str) or not executor_id):
            raise TypeError(f"executor_id must be a non-empty str, not {executor_id!r}")
        if type(max_workers) is not int or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
        self._open(_check_path_type(path), serializer, True, wait, create=True, durability=durability)
        self.executor_id = executor_id or f"{_hostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        self._max_workers = max_workers
        self._workflows: dict[str, _WorkflowSpec] = {}
        self._executor: _Executor | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._recovery_thread: threading.Thread | None = None
        self._launched = False
        self._writer = StreamWriter(self._storage, self._feed) if group_writes else None

    # ---- registration -----------------------------------------------------------------------

    def workflow(
        self, name: str | None = None, max_recovery_attempts: int = 50
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Make a function a durable workflow; calling it runs it durably in the caller's thread."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"workflow name must be a str, not {type(name).__name__}")
        if type(max_recovery_attempts) is not int or max_recovery_attempts < 0:
            raise ValueError(f"max_recovery_attempts must be an int >= 0, not {max_recovery_attempts!r}")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            spec = _WorkflowSpec(fn, name or _default_name(fn), max_recovery_attempts)
            with self._lock:
                known = self._workflows.get(spec.name)
                if known is not None and known.fn is not fn:
                    raise LitedurError(
                        f"a workflow named {spec.name!r} is already registered; pass name=... to tell them apart"
                    )
                self._workflows[spec.name] = spec

            @functools.wraps(fn)
            def call(*args: P.args, **kwargs: P.kwargs) -> R:
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
        """Make a function a checkpointed step: inside a workflow its result is recorded once."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"step name must be a str, not {type(name).__name__}")
        if type(max_attempts) is not int or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        for label, number in (("interval", interval), ("backoff", backoff)):
            if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0:
                raise ValueError(f"{label} must be a number >= 0, not {number!r}")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            policy = _StepPolicy(name or _default_name(fn), max_attempts, float(interval), float(backoff))

            @functools.wraps(fn)
            def call(*args: P.args, **kwargs: P.kwargs) -> R:
                run = _current_run.get()
                if run is None or run.step is not None or run.engine is not self:
                    return fn(*args, **kwargs)
                return self._run_step(run, policy, fn, args, kwargs)

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
        self._recovery_thread = threading.Thread(
            target=self._recover_periodically, name="litedur-recovery", daemon=True
        )
        self._recovery_thread.start()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop recovering, wait up to ``timeout`` s for running workflows, then release the file.

        If workflows are still running when the timeout passes, the executor keeps its lock (they
        are still alive, nobody may adopt them) and the connections stay open for them.
        """
        self._stopping.set()
        if self._recovery_thread is not None:
            self._recovery_thread.join()
            self._recovery_thread = None
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
            pool.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()
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
        """Start ``fn`` in a background thread; returns once the workflow is durably recorded."""
        spec = self._spec_of(fn)
        workflow_id = self._take_workflow_id()
        created, row, executor = self._create(spec, workflow_id, args, kwargs)
        if created:
            self._submit(spec, workflow_id, args, kwargs, executor, fresh=True)
        elif self._adopt(spec, row, executor):
            self._start_recovered(spec, workflow_id, executor)
        return WorkflowHandle(self, workflow_id)

    def _call_workflow(self, spec: _WorkflowSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        parent = _current_run.get()
        if parent is not None and parent.step is None and _next_workflow_id.get() is None:
            workflow_id = f"{parent.workflow_id}-{parent.take_position()}"
        else:
            workflow_id = self._take_workflow_id()
        created, row, executor = self._create(spec, workflow_id, args, kwargs)
        if created:
            return self._execute(spec, workflow_id, args, kwargs, executor, fresh=True)
        if self._adopt(spec, row, executor):
            recorded = self._decode(row.inputs_encoding, row.inputs)
            return self._execute(spec, workflow_id, tuple(recorded["args"]), recorded["kwargs"], executor)
        return self._await_result(workflow_id, None)

    def _take_workflow_id(self) -> str:
        chosen = _next_workflow_id.get()
        if chosen is not None:
            _next_workflow_id.set(None)
            return chosen
        return _random_uuid()

    def _spec_of(self, fn: Any) -> _WorkflowSpec:
        spec = getattr(fn, "__litedur_workflow__", None)
        if not isinstance(spec, _WorkflowSpec) or self._workflows.get(spec.name) is not spec:
            raise TypeError(
                f"{getattr(fn, '__qualname__', fn)!r} is not a workflow of this engine; decorate it with @app.workflow"
            )
        return spec

    def _create(
        self,
        spec: _WorkflowSpec,
        workflow_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[bool, WorkflowRow, _Executor]:
        inputs = self._codec.encode({"args": list(args), "kwargs": kwargs})
        if inputs[0] != JSON:  # pickled: keep the exact tuple of arguments
            inputs = self._codec.encode({"args": args, "kwargs": kwargs})
        executor = self._ensure_executor()  # after encoding: a value that cannot be stored writes nothing
        with self._lock:
            executor.running.setdefault(workflow_id, None)
        try:
            created, row = self._storage.create_workflow(workflow_id, spec.name, inputs, executor.executor_id)
        except BaseException:
            self._forget_running(executor, workflow_id)
            raise
        if not created:
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
        if liveness.is_alive(self.path, row.executor_id):
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
                self._feed.notify()
            return False
        return True

    def _submit(
        self,
        spec: _WorkflowSpec,
        workflow_id: str,
        args: Any,
        kwargs: Any,
        executor: _Executor,
        fresh: bool = False,
    ) -> None:
        with self._lock:  # held until the future is registered, so the run cannot forget it first
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="litedur-workflow")
            executor.running[workflow_id] = self._pool.submit(
                self._execute_quietly, spec, workflow_id, args, kwargs, executor, fresh
            )

    def _execute_quietly(self, *call: Any) -> None:
        with contextlib.suppress(Exception):  # recorded as the workflow's ERROR; handles re-raise it
            self._execute(*call)

    def _execute(
        self,
        spec: _WorkflowSpec,
        workflow_id: str,
        args: Any,
        kwargs: Any,
        executor: _Executor,
        fresh: bool = False,
    ) -> Any:
        """Run (or replay) a workflow body this executor owns and record its final status."""
        try:
            checkpoints, attempts = ({}, {}) if fresh else self._storage.load_checkpoints(workflow_id)
            run = _Run(self, workflow_id, checkpoints, attempts, has_streams=not fresh)
            token = _current_run.set(run)
            try:
                result = spec.fn(*args, **kwargs)
            except Exception as exc:
                # If the error cannot be recorded either (the disk is still full, ...), the caller gets
                # the first error, not that one, and the workflow stays PENDING for recovery.
                with contextlib.suppress(DatabaseError):
                    self._storage.finish_workflow(
                        workflow_id, "ERROR", error=self._codec.encode_error(exc), has_streams=run.has_streams
                    )
                raise
            finally:
                _current_run.reset(token)
            try:
                output = self._codec.encode(result)
            except SerializationError as exc:
                error = self._codec.encode_error(exc)
                self._storage.finish_workflow(workflow_id, "ERROR", error=error, has_streams=run.has_streams)
                raise
            self._storage.finish_workflow(workflow_id, "SUCCESS", output=output, has_streams=run.has_streams)
            return result
        finally:
            self._forget_running(executor, workflow_id)
            self._feed.notify()

    def _forget_running(self, executor: _Executor, workflow_id: str) -> None:
        with self._lock:
            executor.running.pop(workflow_id, None)

    def _ensure_executor(self) -> _Executor:
        executor = self._executor
        if executor is not None:
            return executor
        with self._lock:
            if self._executor is None:
                lock = liveness.ExecutorLock(self.path, self.executor_id)
                try:
                    self._storage.register_executor(self.executor_id, os.getpid(), _hostname())
                except BaseException:
                    lock.release()
                    raise
                self._executor = _Executor(self.executor_id, lock)
            return self._executor

    # ---- steps ----------------------------------------------------------------------------------

    def _run_step(
        self, run: _Run, policy: _StepPolicy, fn: Callable[..., Any], args: Any, kwargs: Any
    ) -> Any:
        position = run.take_position()
        recorded = run.checkpoints.get(position)
        if recorded is not None:
            return self._replay(run, position, recorded, policy.name)
        started = time.time()
        first_attempt = run.attempts_so_far.get(position, 0) + 1
        for number in range(policy.max_attempts):
            attempt = first_attempt + number
            run.step = _StepRun(position, attempt)
            try:
                try:
                    result = fn(*args, **kwargs)
                finally:
                    self._flush_stream_writes(run)  # this attempt's values are committed first
            except Exception as exc:
                if number + 1 < policy.max_attempts:
                    time.sleep(policy.interval * policy.backoff**number)
                    continue
                self._record_step(run, position, policy.name, attempt, started, error=exc)
                raise
            finally:
                run.step = None
            try:
                output = self._codec.encode(result)
            except SerializationError as exc:
                self._record_step(run, position, policy.name, attempt, started, error=exc)
                raise
            self._record_step(run, position, policy.name, attempt, started, output=output)
            return result
        raise AssertionError("unreachable")

    def _replay(self, run: _Run, position: int, recorded: StepRow, name: str) -> Any:
        if recorded.name != name:
            raise NonDeterminismError(
                f"workflow {run.workflow_id!r} called {name!r} at position {position}, "
                f"but the recorded run called {recorded.name!r} there"
            )
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
                    attempt, started, time.time())
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
        step = run.step
        if step is None:
            self._write_checkpoint(run, key, encoded)
            self._feed.notify()
            return
        stream_id = run.stream_ids.get(key)
        if stream_id is None:
            stream_id = self._open_for_writing(run, key)
        if self._writer is not None and self._writer.append(run.workflow_id, key, step.position, step.attempt, encoded):
            return
        offset = self._storage.append_one(stream_id, encoded, step.position, step.attempt)
        if offset is None:
            run.stream_ids.pop(key, None)
            raise StreamClosedError(f"stream {key!r} of workflow {run.workflow_id!r} is closed")
        self._feed.publish([(stream_id, offset, [encoded])])

    def _write_checkpoint(self, run: _Run, key: str, encoded: tuple[int, Any]) -> None:
        name = f"{WRITE_STREAM_STEP}:{key}"
        position = run.take_position()
        recorded = run.checkpoints.get(position)
        if recorded is not None:
            self._replay(run, position, recorded, name)
            return
        self._flush_stream_writes(run)
        now = time.time()
        checkpoint = StepRow(run.workflow_id, position, name, None, None, None, None, 1, now, now)
        run.has_streams = True
        self._storage.append_stream(run.workflow_id, key, [encoded], position, 1, checkpoint)

    def _open_for_writing(self, run: _Run, key: str) -> int:
        run.has_streams = True
        stream_id, closed = self._storage.open_stream(run.workflow_id, key)
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
        self._storage.close_stream(run.workflow_id, key)
        run.stream_ids.pop(key, None)
        self._feed.notify()

    def already_written(self, key: str) -> list[Any]:
        """Inside a step: the values earlier attempts of this same step wrote to ``key``."""
        check_key(key)
        run = self._current("already_written")
        if run.step is None:
            raise NotInWorkflowError("already_written() must be called inside a step")
        entries = self._storage.earlier_attempt_values(
            run.workflow_id, key, run.step.position, run.step.attempt
        )
        return [self._codec.decode(e.encoding, e.value) for e in entries]

    def _current(self, what: str) -> _Run:
        run = _current_run.get()
        if run is None or run.engine is not self:
            raise NotInWorkflowError(f"{what}() must be called inside a workflow or a step of this engine")
        return run

    # ---- recovery -------------------------------------------------------------------------------

    def _recover_periodically(self) -> None:
        while not self._stopping.wait(RECOVERY_INTERVAL):
            with contextlib.suppress(LitedurError):  # a busy or read-only file now: try next round
                # Own workflows too: one whose run died of a database error (disk full, ...) before it
                # could record its end is PENDING here and running nowhere (a running one is skipped).
                self._recover(include_own=True)

    def _recover(self, include_own: bool) -> int:
        """Claim and start every PENDING workflow whose executor is dead; returns how many."""
        executor = self._ensure_executor()
        started = 0
        for owner in self._storage.active_executors():
            own = owner == executor.executor_id
            if own and not include_own:
                continue
            if not own and liveness.is_alive(self.path, owner):
                continue
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
            self._storage.finish_workflow(workflow_id, "ERROR", error=self._codec.encode_error(exc))
            self._forget_running(executor, workflow_id)
            self._feed.notify()
            return
        self._submit(spec, workflow_id, tuple(inputs["args"]), inputs["kwargs"], executor)

    def is_final(self, workflow_id: str) -> bool:
        """True once the workflow has a final status."""
        return self._workflow_row(workflow_id).status in FINAL_STATUSES


def _hostname() -> str:
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket  # Windows: a slower import, only there

    return socket.gethostname()


def _random_uuid() -> str:
    """A random (version 4) UUID in its usual text form, without importing uuid (which is slow)."""
    data = bytearray(os.urandom(16))
    data[6] = data[6] & 0x0F | 0x40
    data[8] = data[8] & 0x3F | 0x80
    text = data.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
