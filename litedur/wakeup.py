"""Waking stream readers when the database changes, without busy polling.

The readers of one stream in one client share one `Waiter`, which the reader that leads them sleeps
on (see `streams`). A commit made in this process rings the bell of every waiter on that file
through the process's `ChangeFeed`, so a local reader wakes directly. Commits made by other
processes are seen as file-change events on the database's directory, watched by the waiter itself
(inotify on Linux through ctypes, kqueue on BSD and macOS), so the kernel wakes the reading thread
with no thread in between. Where no such notification exists, or when ``LITEDUR_WAIT=poll`` or
``wait="poll"`` asks for it, a waiter sleeps in slices that grow from 1 ms to 50 ms.

A reader re-checks the database after every wake-up (one range read of one table), so a lost or
spurious event costs time, never correctness, and a notified wait still ends after
`SAFETY_NET` seconds in case an event never comes.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from .errors import DatabaseError
from .runner import Plan, Wait

T = TypeVar("T")

SAFETY_NET = 1.0
IDLE_EXIT = 1.0  # a signals watcher with nobody waiting this long stops (and closes its watch)
SETTLE = 0.001
POLL_FIRST = 0.001
POLL_MAX = 0.05
POLL_GROWTH = 1.5
MAX_IDLE_WATCHES = 16

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT_HEADER = struct.Struct("iIII")
_READ_SIZE = 65536


class ChangeFeed:
    """This process's commits to one database file, and the waiters to wake for them."""

    def __init__(self, source: WakeSource) -> None:
        self.source = source
        self.location = source.location
        self._version = 0
        self._lock = threading.Lock()
        self._waiting: set[Waiter] = set()
        self._idle_watches: list[_Watch] = []
        self._signals: weakref.WeakSet[WorkflowSignals] = weakref.WeakSet()

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> None:
        """Something was committed here: wake every waiting reader."""
        with self._lock:
            self._version += 1
            waiting = list(self._waiting)
        for waiter in waiting:
            waiter.ring()

    def publish(self, placed: list[tuple[int, int, list[tuple[int, Any]]]]) -> None:
        """Encoded values were just committed, as ``(stream_id, first offset, values)``: wake every
        waiting reader, and hand the values to the readers of those streams.

        A reader whose next offset is the first offset takes them from memory instead of asking the
        database, which saves a query on the path from the commit to the value.
        """
        with self._lock:
            self._version += 1
            waiting = list(self._waiting)
            for waiter in waiting:
                for stream_id, offset, values in placed:
                    if waiter.stream_id == stream_id:
                        waiter.published.append((offset, values))
        for waiter in waiting:
            waiter.ring()

    def signal(self, workflow_ids: Iterable[str]) -> None:
        """This process committed changes to these workflows (a message, an event, a status): wake
        their waiters here directly, and those of other processes through the signal file."""
        ids = list(workflow_ids)
        for signals in list(self._signals):
            signals.ring(ids, "hand-over")
        self.source.announce()
        self.notify()

    def waiter(self, wait: str = "auto") -> Waiter:
        """A waiter for one reader. ``wait``: "auto", "notify" or "poll" (also env LITEDUR_WAIT=poll)."""
        if wait not in ("auto", "notify", "poll"):
            raise ValueError(f"wait must be 'auto', 'notify' or 'poll', not {wait!r}")
        if os.environ.get("LITEDUR_WAIT", "").lower() == "poll":
            wait = "poll"
        watch = None if wait == "poll" else self._take_watch()
        if watch is None and wait == "notify":
            raise OSError(f"no change notification available for {self.location}")
        return Waiter(self, watch)

    def _take_watch(self) -> _Watch | None:
        with self._lock:
            if self._idle_watches:
                watch = self._idle_watches.pop()
                watch.drain()
                return watch
        return self.source.database_watch()

    def _return_watch(self, watch: _Watch) -> None:
        """Keep a finished reader's watch for the next one: closing an inotify descriptor is slow."""
        with self._lock:
            if len(self._idle_watches) < MAX_IDLE_WATCHES:
                self._idle_watches.append(watch)
                return
        watch.close()

    def release_idle_watches(self) -> None:
        """Close the watches kept for future readers (a client of this file closed).

        Each watch is an inotify instance, of which a user has few (often 128): a process that
        opens many database files one after another must not keep one per file for ever.
        """
        with self._lock:
            idle, self._idle_watches = self._idle_watches, []
        for watch in idle:
            watch.close()

    def _register(self, waiter: Waiter) -> None:
        # No lock: adding is atomic, and a waiter checks the version after it, while `notify` bumps
        # the version before it copies the set, so one of the two sees the other (a wait's hot path).
        self._waiting.add(waiter)

    def _unregister(self, waiter: Waiter) -> None:
        self._waiting.discard(waiter)


class Waiter:
    """One reader's sleep: `arm`, check the database, then `wait` if there was nothing new."""

    def __init__(self, feed: ChangeFeed, watch: _Watch | None) -> None:
        self._feed = feed
        self._watch = watch
        self._seen = feed.version
        self._poll_interval = POLL_FIRST
        self._settle = False
        self.woke_on_file_event = False
        self.stream_id: int | None = None  # set by a reader to receive what this process commits to it
        self.published: list[tuple[int, list[tuple[int, Any]]]] = []
        self._bell = _Bell()
        self._bell_fd = self._bell.fileno()
        self._poller = None
        if hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(self._bell.fileno(), select.POLLIN)
            if watch is not None:
                self._poller.register(watch.fileno(), select.POLLIN)

    @property
    def polling(self) -> bool:
        return self._watch is None

    def arm(self) -> None:
        """Remember this process's commit count; call before checking the database."""
        self._seen = self._feed.version

    def take_published(self, offset: int) -> list[tuple[int, Any]]:
        """Encoded values published during the last wait that continue exactly at ``offset``."""
        taken: list[tuple[int, Any]] = []
        if not self.published:  # the common case for a reader of another process's writes: no lock
            return taken
        with self._feed._lock:
            published, self.published = self.published, []
        for first, values in published:
            if first == offset + len(taken):
                taken.extend(values)
        return taken

    def progressed(self) -> None:
        """The last check found something: poll quickly again."""
        self._poll_interval = POLL_FIRST
        self.woke_on_file_event = False

    def found_nothing(self) -> None:
        """A file event woke us but nothing was visible yet: check once more shortly.

        The kernel reports the write of a commit's last WAL frame a moment before SQLite publishes
        the commit in the WAL index, so a fast reader can wake too early.
        """
        self._settle = self.woke_on_file_event

    def ring(self) -> None:
        self._bell.ring()

    def wait(self, deadline: float | None) -> None:
        """Block until a local commit after `arm`, a file event, a poll slice or ``deadline``."""
        timeout = self._slice()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        self.woke_on_file_event = False
        feed = self._feed
        waiting = feed._waiting
        waiting.add(self)  # (as `ChangeFeed._register` does, on a wait's hot path)
        try:
            if feed._version != self._seen:
                return
            if self._poller is None:
                self._bell.wait(timeout)
                return
            ready = self._poller.poll(max(1, int(timeout * 1000 + 0.999)))
        finally:
            waiting.discard(self)
        for fd, _ in ready:
            if fd == self._bell_fd:
                self._bell.drain()
            elif self._watch is not None and self._watch.drain():
                self.woke_on_file_event = True

    def _slice(self) -> float:
        if self._settle:
            self._settle = False
            return SETTLE
        if self._watch is not None:
            return SAFETY_NET
        interval = self._poll_interval
        self._poll_interval = min(interval * POLL_GROWTH, POLL_MAX)
        return interval

    def close(self) -> None:
        """Release the waiter's file descriptors."""
        if self._watch is not None:
            self._feed._return_watch(self._watch)
            self._watch = None
        self._bell.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class Interest:
    """One waiting thread's subscription to changes of some workflows (of any workflow, given none)."""

    def __init__(self, signals: WorkflowSignals, workflow_ids: tuple[str, ...]) -> None:
        self._signals = signals
        self.workflow_ids = workflow_ids
        self._event = threading.Event()
        self._loop: Any = None  # set by wait_async: rings then reach that event loop too
        self._async_event: Any = None
        self.woken_by: str | None = None  # "hand-over", "file", "poll" or "safety-net": how the last ring came
        self.blocked = False  # in wait or wait_async now: its check found nothing, only a ring or a deadline ends it

    def arm(self) -> None:
        """Forget earlier rings; call before checking the database."""
        self._event.clear()
        if self._async_event is not None:
            self._async_event.clear()

    def ring(self, how: str) -> None:
        self.woken_by = how
        self._event.set()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(self._async_event.set)

    async def wait_async(self, deadline: float | None) -> bool:
        """`wait` for a coroutine: the loop runs on while it waits."""
        import asyncio

        if self._async_event is None:  # before looking at the event: a ring from now on reaches the loop
            self._async_event = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        if self._event.is_set():
            return True
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.blocked = True
        try:
            await asyncio.wait_for(self._async_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self.blocked = False
        return True

    def rung(self) -> bool:
        """True if rung since the last `arm`."""
        return self._event.is_set()

    def wait(self, deadline: float | None) -> bool:
        """Block until rung (True) or ``deadline`` (a time.monotonic() value) passes (False)."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.blocked = True
        try:
            return self._event.wait(timeout)
        finally:
            self.blocked = False

    def close(self) -> None:
        self._signals._unregister(self)

    def __enter__(self) -> Interest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WorkflowSignals:
    """Wakes threads that wait for something of a workflow: a message, an event, a status change.

    A thread registers an `Interest` in some workflow ids and waits on it. A change made in this
    process rings those interests directly (`ChangeFeed.signal`). Every such change is also recorded
    in storage as a numbered workflow change, and its process rewrites one byte of the file's
    *signal file* after the commit. One watcher thread per client waits for file events on that
    signal file (inotify/kqueue, as stream readers do on the database; commits of steps and stream
    values do not touch it, so they wake nobody here), then reads the changes after the last number
    it saw (one indexed query for all the waiting threads) and rings the interests of the workflows
    that changed. Without file events it polls that query; with them it still asks every
    `SAFETY_NET` seconds (a writer killed between its commit and its signal), while anyone waits.
    Idle, it sleeps on its bell.
    """

    def __init__(
        self,
        feed: ChangeFeed,
        changes_since: Callable[[int | None], tuple[int, list[str] | None]],
        wait: str = "auto",
    ) -> None:
        self._feed = feed
        self._changes_since = changes_since
        self._wait = wait
        self._lock = threading.Lock()
        self._by_id: dict[str, set[Interest]] = {}
        self._any: set[Interest] = set()
        self._count = 0
        self._last: int | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._bell = _Bell()
        self._watch: _Watch | None = None
        self.rings: dict[str, int] = {"hand-over": 0, "file": 0, "poll": 0, "safety-net": 0}
        self.queries = 0
        feed._signals.add(self)

    def interest(self, *workflow_ids: str) -> Interest:
        """Register a waiting thread's interest in ``workflow_ids`` (any workflow, given none)."""
        interest = Interest(self, workflow_ids)
        with self._lock:
            if self._closed:
                raise DatabaseError(f"cannot wait: the client of {self._feed.location} is closed")
            first = self._count == 0
            if first:
                self._start_watching()
            self._count += 1
            if workflow_ids:
                for workflow_id in workflow_ids:
                    self._by_id.setdefault(workflow_id, set()).add(interest)
            else:
                self._any.add(interest)
        if first:
            self._bell.ring()  # the watcher sleeps on its bell alone while nobody waits
        return interest

    def _start_watching(self) -> None:
        # Called with the lock held, before the caller checks the database. _last only grows and is
        # never above the newest change, so a change committed after the caller's check is read.
        if self._thread is not None:
            return
        if self._wait != "poll" and os.environ.get("LITEDUR_WAIT", "").lower() != "poll":
            self._watch = self._feed.source.signal_watch()
        self._last = self._changes_since(None)[0]
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="litedur-signals", daemon=True)
            self._thread.start()

    def _unregister(self, interest: Interest) -> None:
        with self._lock:
            if interest in self._any:
                self._any.discard(interest)
            elif interest.workflow_ids:
                for workflow_id in interest.workflow_ids:
                    waiting = self._by_id.get(workflow_id)
                    if waiting is not None:
                        waiting.discard(interest)
                        if not waiting:
                            del self._by_id[workflow_id]
            else:
                return
            self._count -= 1

    def blocked(self, workflow_id: str) -> int:
        """How many waits on this workflow are blocked now (a test hook: a change from now on must wake them)."""
        with self._lock:
            return sum(interest.blocked for interest in self._by_id.get(workflow_id, ()))

    def ring(self, workflow_ids: Iterable[str], how: str) -> None:
        """Ring the interests in these workflows (and those in any workflow)."""
        with self._lock:
            if not self._count:
                return
            targets = set(self._any)
            for workflow_id in workflow_ids:
                targets.update(self._by_id.get(workflow_id, ()))
        for interest in targets:
            self.rings[how] += 1
            interest.ring(how)

    def wait_plan(
        self, workflow_ids: tuple[str, ...], check: Callable[[], tuple[bool, T]], deadline: float | None
    ) -> Plan[tuple[bool, T | None]]:
        """Call ``check`` until it says done, re-checking whenever these workflows change.

        Returns ``(True, value)`` from ``check``, or ``(False, None)`` once ``deadline`` (monotonic)
        passes. The interest is armed before each check, so no change between a check and the wait
        is missed. A plan (see `runner`): it yields the waits for a sync or an async driver.
        """
        with self.interest(*workflow_ids) as interest:
            while True:
                if self._closed:
                    raise DatabaseError(f"stopped waiting: the client of {self._feed.location} was closed")
                interest.arm()
                done, value = check()
                if done:
                    return True, value
                if deadline is not None and time.monotonic() >= deadline:
                    return False, None
                yield Wait(interest, deadline)

    def close(self) -> None:
        """Stop the watcher thread and release its descriptors; waits still blocked raise DatabaseError."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self.ring_everyone("hand-over")
        self._bell.ring()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._bell.close()
        self._feed._signals.discard(self)

    def _run(self) -> None:
        poll_interval = POLL_FIRST
        while True:
            with self._lock:
                if self._closed:
                    return
                active = self._count > 0
                watch = self._watch
            if not active:
                rung = _wait_readable([self._bell.fileno()], IDLE_EXIT)
                self._bell.drain()
                with self._lock:
                    idle = not rung and self._count == 0
                    if idle:  # nobody waited for a while: stop, so an unused client holds no thread
                        self._thread, watch, self._watch = None, self._watch, None
                if idle:
                    if watch is not None:
                        watch.close()
                    return
                continue
            if watch is None:
                timeout, how = poll_interval, "poll"
                poll_interval = min(poll_interval * POLL_GROWTH, POLL_MAX)
            else:
                timeout, how = SAFETY_NET, "safety-net"
            ready = _wait_readable([self._bell.fileno()] + ([watch.fileno()] if watch else []), timeout)
            if self._bell.fileno() in ready:
                self._bell.drain()
                if watch is None or watch.fileno() not in ready:
                    continue  # an interest came or went: wait again with the new set
            if watch is not None and watch.fileno() in ready:
                if not watch.drain():
                    continue
                how = "file"
            changed = self._read_changes()
            if changed is None:  # too far behind to know what changed: everyone checks again
                self.ring_everyone(how)
            elif changed:
                poll_interval = POLL_FIRST
                self.ring(changed, how)

    def ring_everyone(self, how: str) -> None:
        """Ring every waiting interest (each re-checks what it waits for)."""
        with self._lock:
            targets = set(self._any).union(*self._by_id.values())
        for interest in targets:
            interest.ring(how)

    def _read_changes(self) -> list[str] | None:
        with self._lock:
            since = self._last
        try:
            seq, changed = self._changes_since(since)
        except Exception:  # a busy or closing database: the next event or slice asks again
            return []
        self.queries += 1
        with self._lock:
            self._last = seq if self._last is None else max(self._last, seq)
        return changed


def _wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The descriptors among ``fds`` that became readable within ``timeout`` seconds (None: no limit)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        millis = None if timeout is None else max(1, int(timeout * 1000 + 0.999))
        return [fd for fd, _ in poller.poll(millis)]
    return select.select(fds, [], [], timeout)[0]


class _Bell:
    """A self-pipe that another thread rings to end a wait (an Event where poll is missing)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._read = self._write = -1
        if hasattr(select, "poll"):
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        if self._write < 0:
            self._event.set()
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._read, 4096)

    def close(self) -> None:
        for fd in (self._read, self._write):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read = self._write = -1


class _Watch:
    """A pollable descriptor that becomes readable when the database or its WAL changes."""

    def fileno(self) -> int:
        raise NotImplementedError

    def drain(self) -> bool:
        """Consume pending events; True if one concerned the database or its WAL."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class WakeSource(Protocol):
    """How a storage backend lets one process know that another committed (see `feed_for`)."""

    location: str  # what identifies the database: one feed per location in a process

    def database_watch(self) -> _Watch | None:
        """A watch that fires on any commit (stream readers), or None: then the reader polls."""

    def signal_watch(self) -> _Watch | None:
        """A watch that fires when another process `announce`s workflow changes, or None: poll."""

    def announce(self) -> None:
        """Tell other processes that this one just committed numbered workflow changes."""


class FileWakeSource:
    """A SQLite file's wake-ups: file events on the database and its WAL wake stream readers, and
    each process rewrites a signal file of its own (next to the executor locks) after committing
    workflow changes, which wakes the workflow watchers of other processes."""

    def __init__(self, db_path: str) -> None:
        self.location = os.path.realpath(db_path)
        self._signal_fd = -1
        self._signal_pid = -1  # the process whose signal file _signal_fd is (a forked child makes its own)
        self._signal_lock = threading.Lock()

    def database_watch(self) -> _Watch | None:
        return _open_watch(self.location)

    def signal_watch(self) -> _Watch | None:
        return _open_signal_watch(signal_path(self.location))

    def announce(self) -> None:
        # One byte rewritten in place: a file-change event for every watcher, and the file never grows.
        if self._signal_pid != os.getpid():
            with self._signal_lock:
                if self._signal_pid != os.getpid():
                    self._signal_fd = _open_signal_file(signal_path(self.location))  # a fork's child opens its own
                    self._signal_pid = os.getpid()
        if self._signal_fd >= 0:
            with contextlib.suppress(OSError):
                os.pwrite(self._signal_fd, b"\0", 0)


# Each process signals through a file of its own where the kernel names the file in its events
# (inotify), so a watcher ignores its own process's signals; elsewhere all share one file.
_OWN_SIGNAL_FILE = sys.platform.startswith("linux")
SIGNAL_PREFIX = "signal"


def signal_path(db_path: str) -> str:
    """The file this process rewrites to tell others "workflows changed" (next to the executor locks)."""
    from .liveness import lock_directory

    name = f"{SIGNAL_PREFIX}-{os.getpid()}" if _OWN_SIGNAL_FILE else SIGNAL_PREFIX
    return os.path.join(lock_directory(db_path), name)


def _open_signal_file(path: str) -> int:
    """A descriptor for rewriting a signal file (created with its directory), or -1 if impossible."""
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return -1
    if _OWN_SIGNAL_FILE:
        import atexit

        atexit.register(_remove_quietly, path)
    return fd


def _remove_if_dead(directory: str, name: str) -> bool:
    """Remove the signal file of a process that no longer exists (killed before it could); True if so."""
    prefix = f"{SIGNAL_PREFIX}-"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        return False
    try:
        os.kill(int(name[len(prefix) :]), 0)
    except ProcessLookupError:
        _remove_quietly(os.path.join(directory, name))
        return True
    except OSError:
        pass  # alive, or not ours to signal
    return False


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _open_signal_watch(own_path: str) -> _Watch | None:
    """A watch that fires when another process rewrites its signal file, or None (then the watcher polls)."""
    directory, own = os.path.split(own_path)
    with contextlib.suppress(OSError):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        if _OWN_SIGNAL_FILE and _libc() is not None:
            return _InotifySignalWatch(directory, own)
        if hasattr(select, "kqueue"):
            fd = _open_signal_file(own_path)
            if fd >= 0:
                os.close(fd)
                return _KqueueFileWatch(own_path)
    except OSError:
        pass
    return None


def _open_watch(db_path: str) -> _Watch | None:
    """A watch on the database's directory (SQLite deletes and recreates the -wal), or None."""
    directory, base = os.path.split(os.path.abspath(db_path))
    try:
        if sys.platform.startswith("linux") and _libc() is not None:
            names = {base.encode(), f"{base}-wal".encode()}
            return _InotifyWatch(directory, names.__contains__)
        if hasattr(select, "kqueue"):
            return _KqueueWatch(directory, base)
    except OSError:
        pass  # e.g. out of inotify instances: this reader polls instead
    return None


def watch_database(feed: ChangeFeed) -> _Watch | None:
    """A descriptor to poll (``fileno()``; ``drain()`` is True for a relevant event) that becomes
    readable when any process commits anything to the feed's database: the event that wakes stream
    readers. None where there is none (or ``LITEDUR_WAIT=poll``): then poll. Close it after."""
    if os.environ.get("LITEDUR_WAIT", "").lower() == "poll":
        return None
    return feed.source.database_watch()


_libc_handle: Any = None


def _libc() -> Any:
    """The C library through ctypes (imported here: most processes never wait on a stream)."""
    global _libc_handle
    if _libc_handle is None:
        import ctypes

        # The interpreter's own symbols include libc's; ctypes.util.find_library would run ldconfig.
        for name in (None, "libc.so.6"):
            try:
                handle = ctypes.CDLL(name, use_errno=True)
                handle.inotify_init1  # noqa: B018 - AttributeError if absent
            except (OSError, AttributeError):
                continue
            _libc_handle = handle
            break
    return _libc_handle


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


class _InotifyWatch(_Watch):
    """inotify on a directory; events for the file names that ``concerns`` accepts count."""

    MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE | _IN_MOVED_TO

    def __init__(self, directory: str, concerns: Callable[[bytes], bool] | None = None) -> None:
        libc = _libc()
        assert libc is not None
        self._libc, self._directory, self._concerns = libc, directory, concerns
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(_errno(), "inotify_init1 failed")
        self._fd = fd
        self._directory_wd = libc.inotify_add_watch(fd, os.fsencode(directory), self.MASK)
        if self._directory_wd < 0:
            errno = _errno()
            self.close()
            raise OSError(errno, f"inotify_add_watch failed on {directory}")

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> bool:
        relevant = False
        while True:
            try:
                events = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return relevant
            at = 0
            while at + _EVENT_HEADER.size <= len(events):
                wd, _, _, length = _EVENT_HEADER.unpack_from(events, at)
                start = at + _EVENT_HEADER.size
                relevant = self._relevant(wd, events[start : start + length].rstrip(b"\0")) or relevant
                at = start + length
            if len(events) < _READ_SIZE // 2:  # the queue is empty (no need for a failing read)
                return relevant

    def _relevant(self, wd: int, name: bytes) -> bool:
        assert self._concerns is not None
        return self._concerns(name)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _KqueueWatch(_Watch):
    """kqueue watches open files, not names: the directory, the database, and the current -wal."""

    def __init__(self, directory: str, base: str) -> None:
        self._directory = directory
        self._wal = f"{base}-wal"
        self._kqueue = select.kqueue()
        self._files: dict[int, str] = {}
        for name in (directory, os.path.join(directory, base)):
            self._files[os.open(name, os.O_RDONLY)] = name
        self._wal_fd = -1
        self._watch_wal()

    def _watch_wal(self) -> None:
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
        with contextlib.suppress(OSError):
            self._wal_fd = os.open(os.path.join(self._directory, self._wal), os.O_RDONLY)
        fds = [*self._files, *([self._wal_fd] if self._wal_fd >= 0 else [])]
        flags = select.KQ_EV_ADD | select.KQ_EV_CLEAR
        notes = select.KQ_NOTE_WRITE | select.KQ_NOTE_EXTEND | select.KQ_NOTE_DELETE
        self._kqueue.control([select.kevent(fd, select.KQ_FILTER_VNODE, flags, notes) for fd in fds], 0)

    def fileno(self) -> int:
        return self._kqueue.fileno()

    def drain(self) -> bool:
        events = self._kqueue.control(None, 64, 0)
        if any(event.ident != self._wal_fd for event in events):
            self._watch_wal()  # the directory changed: the -wal may be a new file
        return bool(events)

    def close(self) -> None:
        for fd in [*self._files, self._wal_fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._files.clear()
        self._wal_fd = -1
        self._kqueue.close()


class _InotifySignalWatch(_InotifyWatch):
    """inotify on the signal files of the other processes, each watched on its own (not this
    process's: its own signals must not wake it), and on the directory for new ones."""

    MASK = _IN_CREATE | _IN_MOVED_TO

    def __init__(self, directory: str, own: str) -> None:
        self._prefix, self._own = f"{SIGNAL_PREFIX}-".encode(), own.encode()
        super().__init__(directory)
        for name in os.listdir(directory):
            if not _remove_if_dead(directory, name):
                self._watch_file(os.fsencode(name))

    def _watch_file(self, name: bytes) -> bool:
        if not name.startswith(self._prefix) or name == self._own:
            return False
        self._libc.inotify_add_watch(self._fd, os.path.join(os.fsencode(self._directory), name), _IN_MODIFY)
        return True

    def _relevant(self, wd: int, name: bytes) -> bool:
        if wd != self._directory_wd:
            return True  # another process rewrote its signal file
        return self._watch_file(name)  # a new process: it may have signalled before we watched its file


class _KqueueFileWatch(_Watch):
    """kqueue on one file (the signal file): readable when it is written."""

    def __init__(self, path: str) -> None:
        self._kqueue = select.kqueue()
        self._fd = os.open(path, os.O_RDONLY)
        flags = select.KQ_EV_ADD | select.KQ_EV_CLEAR
        self._kqueue.control([select.kevent(self._fd, select.KQ_FILTER_VNODE, flags, select.KQ_NOTE_WRITE)], 0)

    def fileno(self) -> int:
        return self._kqueue.fileno()

    def drain(self) -> bool:
        return bool(self._kqueue.control(None, 64, 0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._kqueue.close()


_feeds: dict[str, ChangeFeed] = {}
_feeds_lock = threading.Lock()


def feed_for(storage: Any) -> ChangeFeed:
    """The process-wide feed of a database, shared by every engine and client on it. ``storage``
    is the backend (see `litedur.storage`); it gives the wake-up source of its database."""
    source: WakeSource = storage.wake_source()
    with _feeds_lock:
        feed = _feeds.get(source.location)
        if feed is None:
            feed = _feeds[source.location] = ChangeFeed(source)
        return feed
