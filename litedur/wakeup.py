"""Waking stream readers when the database changes, without busy polling.

Each process keeps one `ChangeFeed` per database file. A commit made in this process calls
`ChangeFeed.notify` and wakes local readers directly. Commits made by other processes are seen as
file-change events on the database's directory (inotify on Linux, kqueue on BSD and macOS), read by
one watcher thread per feed. Where no such notification exists, or when ``LITEDUR_WAIT=poll`` or
``wait="poll"`` asks for it, readers poll with a backing-off interval. Either way a reader re-checks
the database after every wake-up, so a lost or spurious event costs time, never correctness, and a
notified wait still ends after `SAFETY_NET` seconds in case an event never comes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
import sys
import threading
import time

SAFETY_NET = 1.0
POLL_FIRST = 0.001
POLL_MAX = 0.05
POLL_GROWTH = 1.5

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT_HEADER = struct.Struct("iIII")


class ChangeFeed:
    """A counter that goes up whenever the database may have changed, and a way to wait for it."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self._version = 0
        self._condition = threading.Condition(threading.Lock())
        self._watcher: _Watcher | None = None
        self._watch_lock = threading.Lock()
        self.native_mode = _native_mode()

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> None:
        """Something was committed: wake every waiter."""
        with self._condition:
            self._version += 1
            self._condition.notify_all()

    def waiter(self, wait: str = "auto") -> Waiter:
        """A waiter for one reader. ``wait``: "auto", "notify" or "poll" (also env LITEDUR_WAIT=poll)."""
        if wait not in ("auto", "notify", "poll"):
            raise ValueError(f"wait must be 'auto', 'notify' or 'poll', not {wait!r}")
        if os.environ.get("LITEDUR_WAIT", "").lower() == "poll":
            wait = "poll"
        if wait != "poll" and self._start_watcher():
            return Waiter(self, polling=False)
        if wait == "notify":
            raise OSError(f"no file-change notification available for {self.db_path}")
        return Waiter(self, polling=True)

    def _start_watcher(self) -> bool:
        with self._watch_lock:
            if self._watcher is None and self.native_mode != "poll":
                try:
                    self._watcher = _Watcher(self)
                except OSError:
                    self.native_mode = "poll"
            return self._watcher is not None

    def _wait(self, seen: int, timeout: float) -> None:
        with self._condition:
            if self._version == seen:
                self._condition.wait(timeout)

    def close(self) -> None:
        """Stop the watcher thread, if any."""
        with self._watch_lock:
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None


class Waiter:
    """One reader's view of a feed: arm, check the database, then wait if there was nothing new."""

    def __init__(self, feed: ChangeFeed, polling: bool) -> None:
        self._feed = feed
        self.polling = polling
        self._seen = feed.version
        self._poll_interval = POLL_FIRST

    def arm(self) -> None:
        """Remember the current version; call before checking the database."""
        self._seen = self._feed.version

    def progressed(self) -> None:
        """The last check found something: poll quickly again."""
        self._poll_interval = POLL_FIRST

    def wait(self, deadline: float | None) -> None:
        """Block until a change after `arm`, a poll slice, the safety net or ``deadline``.

        Local commits wake a polling waiter early too; only other processes' commits need the poll.
        """
        if self.polling:
            slice_ = self._poll_interval
            self._poll_interval = min(self._poll_interval * POLL_GROWTH, POLL_MAX)
        else:
            slice_ = SAFETY_NET
        if deadline is not None:
            slice_ = min(slice_, max(0.0, deadline - time.monotonic()))
        self._feed._wait(self._seen, slice_)


def _native_mode() -> str:
    if sys.platform.startswith("linux") and _libc() is not None:
        return "inotify"
    if hasattr(select, "kqueue"):
        return "kqueue"
    return "poll"


_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    global _libc_handle
    if _libc_handle is None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        try:
            handle = ctypes.CDLL(name, use_errno=True)
            handle.inotify_init1  # noqa: B018 - raises AttributeError if absent
        except (OSError, AttributeError):
            return None
        _libc_handle = handle
    return _libc_handle


class _Watcher:
    """A daemon thread that turns file-change events on the database into `ChangeFeed.notify`."""

    def __init__(self, feed: ChangeFeed) -> None:
        self._feed = feed
        directory, base = os.path.split(os.path.abspath(feed.db_path))
        self._names = {base.encode(), f"{base}-wal".encode()}
        self._stop_read, self._stop_write = os.pipe()
        if feed.native_mode == "inotify":
            self._fd = self._open_inotify(directory)
            target = self._run_inotify
        else:
            self._fd, self._kqueue, self._files = self._open_kqueue(directory, base)
            target = self._run_kqueue
        self._thread = threading.Thread(target=target, name="litedur-wakeup", daemon=True)
        self._thread.start()

    # -- inotify (Linux) --

    @staticmethod
    def _open_inotify(directory: str) -> int:
        libc = _libc()
        assert libc is not None
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE | _IN_MOVED_TO
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch failed on {directory}")
        return fd

    def _run_inotify(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_read in ready:
                    return
                if self._touches_database(self._drain_inotify()):
                    self._feed.notify()
        finally:
            os.close(self._fd)

    def _drain_inotify(self) -> bytes:
        chunks = []
        with contextlib.suppress(BlockingIOError):
            while True:
                chunks.append(os.read(self._fd, 65536))
        return b"".join(chunks)

    def _touches_database(self, events: bytes) -> bool:
        at = 0
        while at + _EVENT_HEADER.size <= len(events):
            _, _, _, length = _EVENT_HEADER.unpack_from(events, at)
            start = at + _EVENT_HEADER.size
            if events[start : start + length].rstrip(b"\0") in self._names:
                return True
            at = start + length
        return False

    # -- kqueue (macOS, BSD) --

    def _open_kqueue(self, directory: str, base: str) -> tuple[int, select.kqueue, dict[int, str]]:
        kq = select.kqueue()
        files: dict[int, str] = {}
        dir_fd = os.open(directory, os.O_RDONLY)
        files[dir_fd] = directory
        for name in (base, f"{base}-wal"):
            with contextlib.suppress(OSError):
                files[os.open(os.path.join(directory, name), os.O_RDONLY)] = name
        return kq.fileno(), kq, files

    def _kevents(self) -> list[select.kevent]:
        flags = select.KQ_EV_ADD | select.KQ_EV_CLEAR
        notes = select.KQ_NOTE_WRITE | select.KQ_NOTE_EXTEND | select.KQ_NOTE_DELETE
        events = [select.kevent(fd, select.KQ_FILTER_VNODE, flags, notes) for fd in self._files]
        events.append(select.kevent(self._stop_read, select.KQ_FILTER_READ, select.KQ_EV_ADD))
        return events

    def _run_kqueue(self) -> None:
        directory = next(iter(self._files.values()))
        base = os.path.basename(self._feed.db_path)
        self._kqueue.control(self._kevents(), 0)
        try:
            while True:
                events = self._kqueue.control(None, 16)
                if any(event.ident == self._stop_read for event in events):
                    return
                self._reopen_wal(directory, base)
                self._feed.notify()
        finally:
            for fd in self._files:
                os.close(fd)
            self._kqueue.close()

    def _reopen_wal(self, directory: str, base: str) -> None:
        """SQLite deletes and recreates the -wal file; watch the current one."""
        wal = f"{base}-wal"
        for fd, name in list(self._files.items()):
            if name == wal:
                os.close(fd)
                del self._files[fd]
        with contextlib.suppress(OSError):
            fd = os.open(os.path.join(directory, wal), os.O_RDONLY)
            self._files[fd] = wal
            self._kqueue.control(self._kevents(), 0)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_write, b"x")
        self._thread.join(timeout=5)
        os.close(self._stop_read)
        os.close(self._stop_write)


_feeds: dict[str, ChangeFeed] = {}
_feeds_lock = threading.Lock()


def feed_for(db_path: str) -> ChangeFeed:
    """The process-wide feed of a database file, shared by every engine and client on it."""
    key = os.path.realpath(db_path)
    with _feeds_lock:
        feed = _feeds.get(key)
        if feed is None:
            feed = _feeds[key] = ChangeFeed(key)
        return feed
