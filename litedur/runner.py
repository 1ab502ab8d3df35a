"""One implementation of durable code for sync and async callers, and the engine's own event loop.

The engine writes each durable operation once, as a *plan*: a generator that decides what to
replay and what to record, and yields what it needs done: `CALL` (run the user's function), a
`Sleep` or a `Wait` on an `Interest`. `run_sync` does each by blocking the thread; `run_async` by
awaiting, so an async workflow never blocks its loop (a sync function is run in a worker thread).
Whatever the driver meets (a result, an exception) goes back into the plan.

`AsyncRunner` is the engine's event loop thread: async workflows started with ``start_workflow``,
recovered or taken from a queue run there; an async workflow called directly (``await wf()``)
runs in the caller's loop.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future

    from .wakeup import Interest

T = TypeVar("T")


class _Call:
    """Run the function the driver was given (a step's or a workflow's body)."""


CALL = _Call()


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Wait:
    """Wait until ``interest`` is rung or ``deadline`` (time.monotonic) passes."""

    interest: Interest
    deadline: float | None


Request = Union[_Call, Sleep, Wait]  # noqa: UP007 - a runtime alias; Python 3.10 has no X | Y of classes here
Plan = Generator[Request, Any, T]


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any (without importing asyncio)."""
    asyncio = sys.modules.get("asyncio")
    return None if asyncio is None else asyncio._get_running_loop()


def refuse_on_loop(what: str, instead: str) -> None:
    """Raise instead of blocking a thread that runs an event loop."""
    if running_loop() is not None:
        from .errors import LitedurError

        raise LitedurError(f"{what} would block this thread's event loop; use `await {instead}` in async code")


def _advance(plan: Plan[T], reply: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Hand the plan what its last request gave (a reply, or an error it decides about: retry,
    record, or let through): ``(True, its result)`` once it ends, else ``(False, its next request)``."""
    try:
        request = plan.throw(error) if error is not None else plan.send(reply)
    except StopIteration as stop:
        return True, stop.value
    return False, request


def run_sync(plan: Plan[T], body: Callable[[], Any] | None = None) -> T:
    """Carry out a plan in this thread, blocking for its sleeps and waits."""
    done, value = _advance(plan, None, None)
    while not done:
        reply, error = None, None
        try:
            if value is CALL:
                assert body is not None
                reply = body()
            elif isinstance(value, Sleep):
                time.sleep(value.seconds)
            else:
                with _waiting():
                    value.interest.wait(value.deadline)
        except BaseException as exc:
            error = exc
        done, value = _advance(plan, reply, error)
    return value


async def run_async(plan: Plan[T], body: Callable[[], Any] | None = None) -> T:
    """Carry out a plan in the running loop: awaits its sleeps and waits, never blocks."""
    import asyncio

    done, value = _advance(plan, None, None)
    while not done:
        reply, error = None, None
        try:
            if value is CALL:
                assert body is not None
                reply = body()
                if isinstance(reply, Awaitable):
                    reply = await reply
            elif isinstance(value, Sleep):
                await asyncio.sleep(value.seconds)
            else:
                await value.interest.wait_async(value.deadline)
        except BaseException as exc:
            error = exc
        done, value = _advance(plan, reply, error)
    return value


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """``fn(*args, **kwargs)`` in a worker thread, with this context (so it sees the current run)."""
    import asyncio

    return asyncio.to_thread(fn, *args, **kwargs)


_local = threading.local()


@contextlib.contextmanager
def _waiting() -> Iterator[None]:
    """A durable wait on a thread of `WorkflowThreads` gives back its slot while it waits."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        yield
        return
    pool._release()
    try:
        yield
    finally:
        pool._reacquire()


class WorkflowThreads:
    """The threads that run sync workflows: at most ``limit`` at work at once.

    A run blocked in a durable wait (a recv, a sleep, a child's result) keeps its thread but gives
    back its slot, so parents waiting for their children, or many agents waiting for messages,
    never starve the work they wait for. Threads are made as needed, and leave after
    `IDLE_THREAD_EXIT` seconds without work.
    """

    def __init__(self, limit: int, name: str = "litedur-workflow") -> None:
        self._limit = limit
        self._name = name
        self._lock = threading.Lock()
        self._queue: deque[_Task] = deque()
        self._busy = 0  # threads at work, not counting those in a durable wait
        self._idle: list[_Parked] = []
        self._made = 0
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        from concurrent.futures import Future

        future: Future[T] = Future()
        with self._lock:
            self._queue.append((future, fn, args))
            self._dispatch()
        return future

    def _dispatch(self) -> None:
        # With the lock held: hand queued work to a parked thread or a new one, within the limit.
        while self._queue and self._busy < self._limit:
            task = self._queue.popleft()
            self._busy += 1
            if self._idle:
                parked = self._idle.pop()
                parked.task = task
                parked.event.set()
            else:
                self._made += 1
                name = f"{self._name}-{self._made}"
                threading.Thread(target=self._work, args=(task,), name=name, daemon=True).start()

    @property
    def busy(self) -> int:
        """Runs at work now (not counting those blocked in a durable wait)."""
        return self._busy

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1
            self._dispatch()

    def _reacquire(self) -> None:
        with self._lock:
            self._busy += 1  # may pass the limit for a moment: a woken run goes on at once

    def _work(self, task: _Task) -> None:
        _local.pool = self
        parked = _Parked()
        while True:
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                if self._queue and self._busy <= self._limit:  # not past the limit (a woken wait may be)
                    task = self._queue.popleft()
                    continue
                self._busy -= 1
                self._dispatch()
                if self._closed:
                    return
                parked.task = None
                parked.event.clear()
                self._idle.append(parked)
            parked.event.wait(IDLE_THREAD_EXIT)
            with self._lock:
                if parked.task is None:  # nothing came (or the engine shut down): leave
                    if parked in self._idle:
                        self._idle.remove(parked)
                    return
                task = parked.task


    def shutdown(self) -> None:
        """Let the parked threads go (call once no run is left); a thread at work leaves after it."""
        with self._lock:
            self._closed = True
            parked, self._idle = self._idle, []
        for thread in parked:
            thread.event.set()


class _Parked:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.task: _Task | None = None


_Task = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]

IDLE_THREAD_EXIT = 30.0


class AsyncRunner:
    """The engine's own event loop, in a daemon thread started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, coroutine: Awaitable[T]) -> Future[T]:
        """Run ``coroutine`` on the engine's loop; a future of its outcome."""
        import asyncio
        import contextvars

        loop = self._ensure_loop()
        # In a context of its own: a run started from a step or a `with` block must not inherit it.
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coroutine, loop)  # type: ignore

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name="litedur-async", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        """Stop the loop (call once no workflow runs on it) and join its thread."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
