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

import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator
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


def run_sync(plan: Plan[T], body: Callable[[], Any] | None = None) -> T:
    """Carry out a plan in this thread, blocking for its sleeps and waits."""
    try:
        request = next(plan)
    except StopIteration as stop:  # decided at once (a replay, a message already there)
        return stop.value
    while True:
        try:
            if request is CALL:
                assert body is not None
                reply = body()
            elif isinstance(request, Sleep):
                time.sleep(request.seconds)
                reply = None
            else:
                request.interest.wait(request.deadline)
                reply = None
        except BaseException as exc:  # the plan decides: retry, record, or let it through
            try:
                request = plan.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            request = plan.send(reply)
        except StopIteration as stop:
            return stop.value


async def run_async(plan: Plan[T], body: Callable[[], Any] | None = None) -> T:
    """Carry out a plan in the running loop: awaits its sleeps and waits, never blocks."""
    import asyncio

    try:
        request = next(plan)
    except StopIteration as stop:
        return stop.value
    while True:
        try:
            if request is CALL:
                assert body is not None
                reply = body()
                if isinstance(reply, Awaitable):
                    reply = await reply
            elif isinstance(request, Sleep):
                await asyncio.sleep(request.seconds)
                reply = None
            else:
                await request.interest.wait_async(request.deadline)
                reply = None
        except BaseException as exc:
            try:
                request = plan.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            request = plan.send(reply)
        except StopIteration as stop:
            return stop.value


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """``fn(*args, **kwargs)`` in a worker thread, with this context (so it sees the current run)."""
    import asyncio

    return asyncio.to_thread(fn, *args, **kwargs)


class AsyncRunner:
    """The engine's own event loop, in a daemon thread started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, coroutine: Awaitable[T]) -> Future[T]:
        """Run ``coroutine`` on the engine's loop; a future of its outcome."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._ensure_loop())  # type: ignore[arg-type]

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
