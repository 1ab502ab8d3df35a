"""Durable streams: the grouped writer, and readers that follow a stream in order, live, across crashes.

`StreamWriter` commits the values steps write in groups from one background thread: a write in a
burst returns at once, the thread commits whatever has accumulated in one transaction (so values are
visible within about a millisecond, and a busy writer gets many values per commit), and a step's
output is recorded only after `StreamWriter.flush` has committed every value of that step. A value
that comes alone (a slow producer) is committed in the caller's thread before the write returns.

Readers of one stream in one client share a `StreamTail`: the newest values of the stream (a bounded
window), read once per commit for all of them. A reader whose next offset is in the window takes its
values from memory; one behind it reads its own from storage until it gets there; those at the end
wait. Of the reader threads that wait, one *leads*: it sleeps on the process's `ChangeFeed` (a local
commit, or a file event of another process's), reads what follows the window (one query, which also
says whether the stream has ended: closed, or its workflow reached a final status), appends it and
wakes the others, each of which wakes the next. Async readers await a future; while no thread leads,
the client's keeper thread reads for them. The window ends only on a read that says "ended", so every
value committed together with the final status is delivered first.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .errors import DatabaseError, WorkflowNotFoundError
from .runner import refuse_on_loop
from .storage import Storage, StreamGroup
from .values import JSON, TEXT, Codec
from .wakeup import IDLE_EXIT, ChangeFeed, Waiter

BATCH = 1000
WINDOW = 2048  # values a stream's tail keeps for its readers in a client (a reader further behind reads its own)
WINDOW_BYTES = 8 << 20  # and about this many bytes of them at most
MAX_PENDING = 100_000
QUIET_GAP = 0.001  # a value written this long after the previous one is committed at once, not queued
_TAKE, _READ, _WAIT, _END = "take", "read", "wait", "end"  # what a reader finds at its offset (see StreamTail.look)
_WAITING, _WOKEN, _GONE = 0, 1, 2  # a sleeper's state
_scan_json = json.JSONDecoder().scan_once  # json.loads without its wrappers (see StreamTails.decode)


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"stream key must be a str, not {type(key).__name__} ({key!r})")
    return key


class _Encoded:
    """A value in a tail that each reader decodes for itself: a container or a pickle, so that no two
    readers share one mutable object (strings and numbers are decoded once and shared)."""

    __slots__ = ("encoding", "data")

    def __init__(self, encoding: int, data: Any) -> None:
        self.encoding, self.data = encoding, data


class _Sleeper:
    """A reader thread blocked until its tail changes: a lock that the waker releases."""

    __slots__ = ("lock", "state")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.state = _GONE


class StreamTail:
    """The newest values of one stream, shared by every reader of it in one client.

    ``state`` is ``(start, values, ended)``: ``values[i]`` is the value at offset ``start + i``, they
    run to the stream's end as last read, and ``ended`` says the stream ends after them. It is None
    until a reader's own read found where the end is. Values are appended (in place, under the lock,
    ``version`` bumped after) and the oldest dropped beyond `WINDOW`; readers look without the lock.
    """

    def __init__(self, tails: StreamTails, workflow_id: str, key: str) -> None:
        self._tails = tails
        self.workflow_id, self.key = workflow_id, key
        self.stream_id: int | None = None
        self.state: tuple[int, list[Any], bool] | None = None
        self.version = 0
        self.users = 0
        self._lock = threading.Lock()
        self._bytes = 0  # of the values in state (encoded), for the WINDOW_BYTES bound
        self._leader = False  # a reader thread (or the keeper) is reading past the end for everyone
        self._caught_up = False  # the last read, made with _waiter armed, got all there was
        self._sleepers: list[_Sleeper] = []
        self._waking: deque[_Sleeper] = deque()  # woken one after another, each by the one before
        self._async: list[tuple[Any, Any]] = []  # (loop, future) of async readers waiting
        self.kept: tuple[int, int] = (-1, -1)  # (keeper round, version) of the keeper's last read here
        self._waiter: Waiter | None = None

    @property
    def waiter(self) -> Waiter:
        """The wake-up that a leading reader thread of this stream sleeps on (made on first use)."""
        if self._waiter is None:
            self._waiter = self._tails.feed.waiter(self._tails.wait)
            self._waiter.stream_id = self.stream_id
        return self._waiter

    # ---- what a reader sees -----------------------------------------------------------------

    def look(self, offset: int) -> tuple[str, Any]:
        """What a reader at ``offset`` does next, without the lock: ``(_TAKE, values)`` (at most
        `BATCH`, from ``offset``); ``(_READ, None)``: read from storage itself (behind the window, or
        no window yet); ``(_WAIT, version)``: nothing yet (give `wait` the version); ``(_END, None)``."""
        version = self.version  # before the state: a change after this makes `wait` return at once
        state = self.state
        if state is None or offset < state[0]:
            return _READ, None
        start, values, ended = state
        at = offset - start
        if at < len(values):
            return _TAKE, values[at : at + BATCH]
        return (_END, None) if ended else (_WAIT, version)

    def read(self, offset: int) -> tuple[list[tuple[int, Any]], bool]:
        """A reader's own read from ``offset`` (it is behind the window, or there is none yet):
        ``(encoded values, ended)``. A read that reaches the end starts the window there."""
        storage = self._tails.storage
        if self.stream_id is None:
            found = storage.find_stream(self.workflow_id, self.key)
            if found is None:
                raise WorkflowNotFoundError(self.workflow_id)
            stream_id, workflow_is_final = found
            if stream_id is None:  # not written yet: empty (and ended if its workflow has)
                self._start_window(0, [], workflow_is_final)
                return [], workflow_is_final
            self._found(stream_id)
        assert self.stream_id is not None
        rows, ended = storage.read_values(self.stream_id, offset, BATCH, True, self.workflow_id)
        state = self.state
        if not rows and not ended and state is not None and offset < state[0]:
            raise DatabaseError(f"stream {self.key!r} of workflow {self.workflow_id!r} has no value at offset "
                                f"{offset}, though it had values after it")  # fmt: skip
        if rows or ended or offset == 0:
            if len(rows) < BATCH or ended:
                self._start_window(offset, rows, ended)
        elif state is None:  # nothing at offset: the window starts at the end, which may be before offset
            length, ended = storage.stream_end(self.stream_id)
            if length <= offset:
                self._start_window(length, [], ended)
        return rows, ended

    def _found(self, stream_id: int) -> None:
        self.stream_id = stream_id
        if self._waiter is not None:
            self._waiter.stream_id = stream_id

    def _start_window(self, start: int, rows: list[tuple[int, Any]], ended: bool) -> None:
        entries, size = self._entries(rows)
        with self._lock:
            if self.state is not None:
                return
            self.state = (start, entries, ended)
            self._bytes = size
            self.version += 1
        if ended:
            self._tails.forget(self)

    def _entries(self, rows: list[tuple[int, Any]]) -> tuple[list[Any], int]:
        """Window entries for encoded values (strings and numbers decoded once, the rest left
        encoded), and their size in bytes."""
        decode = self._tails.decode
        entries, size = [], 0
        for encoding, data in rows:
            if encoding == TEXT:
                entries.append(data)
            elif encoding == JSON and data[:1] != "{" and data[:1] != "[":
                entries.append(decode(encoding, data))
            else:
                entries.append(_Encoded(encoding, data))
            size += len(data)
        return entries, size

    # ---- waiting at the end -----------------------------------------------------------------

    def wait(
        self, offset: int, version: int, deadline: float | None, sleeper: _Sleeper, buffer: deque[Any]
    ) -> bool | None:
        """Block a reader thread at the window's end until the window changes (True) or ``deadline``
        passes: False after a read of its own that found nothing, None if another reader was
        reading for it right then. The first to wait leads: it sleeps on the file's wake-up and
        reads past the end for everyone; the others sleep until it (or whoever leads next) wakes them."""
        with self._lock:
            if self.version != version:
                return True
            lead = not self._leader
            if lead:
                self._leader = True
            else:
                sleeper.state = _WAITING
                self._sleepers.append(sleeper)
        return self._lead(offset, buffer, deadline) if lead else self._sleep(sleeper, offset, buffer, deadline)

    def _lead(self, offset: int, buffer: deque[Any], deadline: float | None) -> bool:
        changed = False
        try:
            waiter = self._waiter or self.waiter
            while True:
                if self._caught_up and (deadline is None or time.monotonic() < deadline):
                    # The last read got everything visible with the waiter armed before it: any
                    # commit since then ends the wait below at once. No need to ask again first.
                    self._caught_up = False
                else:  # (a deadline is only ever declared passed after a read)
                    changed = self._refresh(waiter, None, offset, buffer)
                    if changed:
                        waiter.progressed()
                        return True
                    waiter.found_nothing()
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                waiter.wait(deadline)
        finally:
            if not changed:
                self._leave()

    def _sleep(self, sleeper: _Sleeper, offset: int, buffer: deque[Any], deadline: float | None) -> bool | None:
        timeout = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            woken = sleeper.lock.acquire(timeout=timeout)
        except BaseException:  # (KeyboardInterrupt) a wake it got goes on to the next sleeper
            with self._lock:
                passed_on = sleeper.state == _WOKEN
                sleeper.state = _GONE
            if passed_on:
                self._wake_next()
            raise
        if not woken:
            with self._lock:
                woken = sleeper.state == _WOKEN
                if not woken:  # leave (it may still sit in _waking, where it is skipped)
                    sleeper.state = _GONE
                    with contextlib.suppress(ValueError):
                        self._sleepers.remove(sleeper)
                    lead = not self._leader
                    self._leader = True
            if not woken:  # one last read before giving up (as the leader, if nobody leads now)
                return self._lead(offset, buffer, deadline) if lead else None
            sleeper.lock.acquire()  # woken just as the wait ended: take the wake, and pass it on
        self._wake_next()
        return True

    def _wake_next(self) -> None:
        """Wake the next sleeper of the last change (each woken thread wakes the next: no herd)."""
        with self._lock:
            while self._waking:
                sleeper = self._waking.popleft()
                if sleeper.state == _WAITING:
                    sleeper.state = _WOKEN
                    sleeper.lock.release()
                    return

    def _leave(self, keeper: bool = False) -> None:
        """The leader goes without a change: one sleeper leads next; the keeper, for async readers."""
        with self._lock:
            self._leader = False
            while self._sleepers:
                sleeper = self._sleepers.pop()
                if sleeper.state == _WAITING:
                    sleeper.state = _WOKEN
                    sleeper.lock.release()
                    break
            waiting_async = bool(self._async)
        if waiting_async and not keeper:
            self._tails.keep(self, None)

    def _refresh(
        self, waiter: Waiter | None, keeper_round: int | None, offset: int = -1, buffer: deque[Any] | None = None
    ) -> bool:
        """Read past the window's end for every reader: the leader with this tail's ``waiter`` (and
        its ``offset`` and ``buffer``), or the keeper in its ``keeper_round``; True if the window
        changed (then everyone is woken and the leadership is over)."""
        start, values, _ = self.state  # type: ignore[misc]  # waits happen only at a window's end
        end = start + len(values)
        if waiter is not None:
            published = waiter.take_published(end)  # committed by this process: no query
            if published:
                return self._append(published, False, False, None, offset, buffer)
            waiter.arm()
        if self.stream_id is None:
            found = self._tails.storage.find_stream(self.workflow_id, self.key)
            if found is None:
                raise WorkflowNotFoundError(self.workflow_id)
            if found[0] is None:
                return found[1] and self._append([], True, False, keeper_round)
            self._found(found[0])
        rows, ended = self._tails.storage.read_values(self.stream_id, end, BATCH, False, self.workflow_id)
        if not rows and not ended:
            return False
        caught_up = waiter is not None and len(rows) < BATCH and not ended
        return self._append(rows, ended, caught_up, keeper_round, offset, buffer)

    def _append(
        self,
        rows: list[tuple[int, Any]],
        ended: bool,
        caught_up: bool,
        keeper_round: int | None,
        offset: int = -1,
        buffer: deque[Any] | None = None,
    ) -> bool:
        """Add values read at the window's end, and wake everyone. A leader that is the stream's only
        reader here (at ``offset``, the end) takes them into its ``buffer`` alone, and the window
        just moves past them (a reader who comes later reads its own)."""
        start, values, _ = self.state  # type: ignore[misc]
        end = start + len(values)
        if offset != end or self.users != 1:
            buffer = None
        if buffer is not None:
            decode = self._tails.decode
            buffer.extend([decode(encoding, data) for encoding, data in rows])
            entries, size = [], 0
        else:
            entries, size = self._entries(rows)
        with self._lock:
            if buffer is not None:
                start, values = end + len(rows), entries
                self._bytes = 0
            else:
                values.extend(entries)
                self._bytes += size
                if len(values) > WINDOW or self._bytes > WINDOW_BYTES:
                    start, values = self._trimmed(start, values)
            self.state = (start, values, ended)
            self.version += 1
            if keeper_round is not None:
                self.kept = (keeper_round, self.version)
            self._caught_up = caught_up
            self._leader = False
            if self._sleepers:
                self._waking.extend(self._sleepers)
                self._sleepers = []
            woken, self._async = self._async, []
        if self._waking:
            self._wake_next()
        if woken:
            _resolve(woken, True)
        if ended:
            self._tails.forget(self)
        return True

    def _trimmed(self, start: int, values: list[Any]) -> tuple[int, list[Any]]:
        """Keep the newest values within half the bounds (bytes estimated from the mean size);
        readers still behind read their own."""
        keep, size = len(values), self._bytes
        while keep > 1 and (keep > WINDOW // 2 or size > WINDOW_BYTES // 2):
            size = size * (keep // 2) // keep
            keep //= 2
        self._bytes = size
        return start + len(values) - keep, values[len(values) - keep :]

    # ---- async readers ----------------------------------------------------------------------

    def future(self, loop: Any, version: int) -> Any:
        """Register an async reader of ``loop`` waiting at ``version``: a future that the next change
        resolves (None: it changed already). While no reader thread leads, the keeper reads for it."""
        with self._lock:
            if self.version != version:
                return None
            future = loop.create_future()
            self._async.append((loop, future))
            lead = self._leader
        if not lead and self.kept != (self._tails.round, version):  # (keep checks again, locked)
            self._tails.keep(self, version)
        return future

    def drop_future(self, loop: Any, future: Any) -> None:
        """An async reader stops waiting (its deadline passed, or it was cancelled)."""
        with self._lock, contextlib.suppress(ValueError):
            self._async.remove((loop, future))

    def keep(self, keeper_round: int) -> bool:
        """The keeper's read for this tail's async readers (unless a thread leads it now); True if
        the window changed."""
        with self._lock:
            if self._leader or not self._async:
                return False
            self._leader = True
            version = self.version
        try:
            changed = self._refresh(None, keeper_round)
        except Exception as exc:  # the async readers get it, as a thread that led would
            self.fail_async(exc)
            self._leave(keeper=True)
            return False
        if not changed:
            self.kept = (keeper_round, version)
            self._leave(keeper=True)
        return changed

    def fail_async(self, error: BaseException) -> None:
        """Raise ``error`` in the async readers waiting here."""
        with self._lock:
            failed, self._async = self._async, []
        _resolve(failed, error)

    def awaited(self) -> bool:
        """Whether async readers wait here."""
        return bool(self._async)

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()


def _settle(future: Any, result: Any) -> None:
    if not future.done():
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _settle_all(futures: list[Any], result: Any) -> None:
    for future in futures:
        _settle(future, result)


def _resolve(waiting: list[tuple[Any, Any]], result: Any) -> None:
    """Settle async readers' futures on their loops (one call per loop)."""
    if not waiting:
        return
    by_loop: dict[Any, list[Any]] = {}
    for loop, future in waiting:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody awaits there any more
            loop.call_soon_threadsafe(_settle_all, futures, result)


class StreamTails:
    """A client's stream tails, by (workflow id, key), and the keeper: a thread that reads for async
    readers while no reader thread leads their tail (one for all tails; it stops when idle)."""

    def __init__(self, storage: Storage, codec: Codec, unpickle: bool, feed: ChangeFeed, wait: str) -> None:
        self.storage, self.codec, self.unpickle, self.feed, self.wait = storage, codec, unpickle, feed, wait
        self._lock = threading.RLock()  # (a reader's __del__ may release it in a thread that holds it)
        self._tails: dict[tuple[str, str], StreamTail] = {}
        self._keeper: threading.Thread | None = None
        self._keeper_waiter: Waiter | None = None
        self._work = threading.Event()
        self.round = 0  # the keeper's rounds: each arms its waiter, then reads every awaited tail
        self._closed = False

    def decode(self, encoding: int, data: Any) -> Any:
        """A stored value, as `Codec.decode` gives it. Plain JSON goes to json's scanner alone: the
        JSON litedur stores has no whitespace around it, so json.loads' wrappers would only cost time
        (anything else, a malformed document included, takes the codec's way)."""
        if encoding == JSON and type(data) is str:
            try:
                value, end = _scan_json(data, 0)
            except (StopIteration, ValueError):
                pass
            else:
                if end == len(data):
                    return value
        elif encoding == TEXT:
            return data
        return self.codec.decode(encoding, data, unpickle=self.unpickle)

    def acquire(self, workflow_id: str, key: str) -> StreamTail:
        """The tail of a stream for one more reader (`release` it when the reader is done)."""
        with self._lock:
            tail = self._tails.get((workflow_id, key))
            if tail is None:
                tail = self._tails[(workflow_id, key)] = StreamTail(self, workflow_id, key)
            tail.users += 1
        return tail

    def release(self, tail: StreamTail) -> None:
        with self._lock:
            tail.users -= 1
            if tail.users:
                return
            if self._tails.get((tail.workflow_id, tail.key)) is tail:
                del self._tails[(tail.workflow_id, tail.key)]
        tail.close()

    def forget(self, tail: StreamTail) -> None:
        """An ended tail serves its readers to their end; a later reader starts afresh (a resume
        may reopen the stream)."""
        with self._lock:
            if self._tails.get((tail.workflow_id, tail.key)) is tail:
                del self._tails[(tail.workflow_id, tail.key)]

    def keep(self, tail: StreamTail, version: int | None) -> None:
        """Async readers of ``tail`` wait at ``version`` (None: unknown) and no thread leads it: make
        sure the keeper reads it (it does already if it read that version since it last armed)."""
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                if self._keeper is None:
                    self._keeper = threading.Thread(target=self._keep, name="litedur-stream-keeper", daemon=True)
                    self._keeper.start()
                elif tail.kept == (self.round, version) and self._keeper_waiter is not None:
                    return
                self._work.set()
                if self._keeper_waiter is not None:  # (rung under the lock: the keeper closes it under it)
                    self._keeper_waiter.ring()
        if closed:
            tail.fail_async(DatabaseError(f"stopped reading: the client of {self.storage.path} was closed"))

    def _keep(self) -> None:
        waiter = self.feed.waiter(self.wait)
        with self._lock:
            self._keeper_waiter = waiter
        try:
            while True:
                self._work.clear()
                with self._lock:
                    if self._closed:
                        return
                    self.round += 1  # what an earlier round armed was used up by its wait
                    keeper_round = self.round
                    tails = [tail for tail in self._tails.values() if tail.awaited()]
                if not tails:
                    if not self._work.wait(IDLE_EXIT) and self._retire():
                        return
                    continue
                waiter.arm()
                changed = False
                for tail in tails:
                    changed = tail.keep(keeper_round) or changed
                if changed:
                    waiter.progressed()
                else:
                    waiter.found_nothing()
                waiter.wait(None)
        finally:
            with self._lock:
                if self._keeper_waiter is waiter:
                    self._keeper_waiter = None
            waiter.close()

    def _retire(self) -> bool:
        with self._lock:
            if self._work.is_set() or any(tail.awaited() for tail in self._tails.values()):
                return False
            self._keeper, self._keeper_waiter = None, None
            return True

    def close(self) -> None:
        """Stop the keeper; async readers still waiting raise DatabaseError."""
        with self._lock:
            self._closed = True
            keeper = self._keeper
            tails = list(self._tails.values())
            self._work.set()
            if self._keeper_waiter is not None:
                self._keeper_waiter.ring()
        for tail in tails:
            tail.fail_async(DatabaseError(f"stopped reading: the client of {self.storage.path} was closed"))
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join()


class StreamReader(Iterator[Any]):
    """Iterator over one stream's values from ``start``; blocks for new ones until the stream ends."""

    def __init__(
        self, tails: StreamTails, workflow_id: str, key: str, start: int = 0, timeout: float | None = None
    ) -> None:
        if not isinstance(workflow_id, str):
            raise TypeError(f"workflow_id must be a str, not {type(workflow_id).__name__}")
        check_key(key)
        if type(start) is not int or start < 0:
            raise ValueError(f"start must be an int >= 0, not {start!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"timeout must be None or a number >= 0, not {timeout!r}")
        self.workflow_id = workflow_id
        self.key = key
        self.offset = start
        self.timeout = timeout
        self._buffer: deque[Any] = deque()
        self._ended = False
        self._sleeper = _Sleeper()
        self._tails = tails
        self._released = True
        if tails.storage.get_workflow(workflow_id) is None:
            raise WorkflowNotFoundError(workflow_id)
        self._tail = tails.acquire(workflow_id, key)
        self._released = False

    def __iter__(self) -> StreamReader:
        return self

    def __next__(self) -> Any:
        if not self._buffer and not self.fill():
            raise StopIteration
        self.offset += 1
        return self._buffer.popleft()

    def fill(self) -> bool:
        """Block until values are buffered (True) or the stream has ended (False).

        Raises TimeoutError when ``timeout`` passes with no new value.
        """
        if self._buffer:
            return True
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            kind, found = self._look()
            if kind is _TAKE:
                return True
            if kind is _END:
                return False
            if kind is _READ:
                if self._read_own():
                    return True
                continue
            refuse_on_loop("iterating read_stream()", "read_stream_async()")
            changed = self._tail.wait(self.offset, found, deadline, self._sleeper, self._buffer)
            if self._buffer:  # (read by this reader alone, as the stream's only reader)
                return True
            if changed is None and self._read_own():  # a last read of its own before giving up
                return True
            if not changed and not self._ended:
                raise self._timed_out()

    def _look(self) -> tuple[str, Any]:
        """What to do next (see `StreamTail.look`); values it may take are buffered at once."""
        if self._ended:
            self.close()
            return _END, None
        kind, found = self._tail.look(self.offset)
        if kind is _TAKE:
            decode, append = self._tails.decode, self._buffer.append
            for value in found:
                append(decode(value.encoding, value.data) if type(value) is _Encoded else value)
        elif kind is _END:
            self.close()
        return kind, found

    def _read_own(self) -> bool:
        """Read from storage itself; True if values were buffered (when it also learns the end)."""
        rows, ended = self._tail.read(self.offset)
        decode, append = self._tails.decode, self._buffer.append
        for encoding, data in rows:
            append(decode(encoding, data))
        if ended:
            self._ended = True
        return bool(rows)

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(
            f"no value at offset {self.offset} of stream {self.key!r} of workflow "
            f"{self.workflow_id!r} within {self.timeout} s"
        )

    @property
    def _waiter(self) -> Waiter:
        """The wake-up this stream's reader threads sleep on (whether it polls: ``_waiter.polling``)."""
        return self._tail.waiter

    def close(self) -> None:
        """Stop reading; the last reader of the stream in this client releases its wake-up."""
        self._ended = True
        if not self._released:
            self._released = True
            self._tails.release(self._tail)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def buffered(self) -> int:
        """Values already fetched and not yet returned."""
        return len(self._buffer)


class AsyncStreamReader(AsyncIterator[Any]):
    """The same reader as an async iterator: it waits on a future, holding no thread; its own
    reads from storage (catching up) run in a worker thread."""

    def __init__(self, reader: StreamReader) -> None:
        self._reader = reader
        self._future: Any = None  # what the current wait awaits
        self._deadline: float | None = None  # when it ends (time.monotonic, like the loop's clock)
        self._timer: Any = None  # one timer per reader, moved on lazily: no timer per value
        self._timer_loop: Any = None

    @property
    def offset(self) -> int:
        return self._reader.offset

    def buffered(self) -> int:
        """Values already fetched and not yet returned (the next ones come without waiting)."""
        return self._reader.buffered()

    def __aiter__(self) -> AsyncStreamReader:
        return self

    async def __anext__(self) -> Any:
        import asyncio  # here, not at module level: it costs more to import than all of litedur

        reader = self._reader
        if reader.buffered():
            return next(reader)
        deadline = None if reader.timeout is None else time.monotonic() + reader.timeout
        while True:
            kind, found = reader._look()
            if kind is _TAKE:
                return next(reader)
            if kind is _END:
                self._stop_timer()
                raise StopAsyncIteration
            if kind is _READ:
                if await asyncio.to_thread(reader._read_own):
                    return next(reader)
                continue
            if not await self._wait(asyncio.get_running_loop(), found, deadline):
                if await asyncio.to_thread(reader._read_own):  # a last look of its own before giving up
                    return next(reader)
                raise reader._timed_out()

    async def _wait(self, loop: Any, version: int, deadline: float | None) -> bool:
        """Await the next change of the tail (True), or ``deadline`` (False)."""
        tail = self._reader._tail
        future = tail.future(loop, version)
        if future is None:
            return True
        self._future, self._deadline = future, deadline
        if deadline is not None and (self._timer is None or self._timer_loop is not loop):
            self._stop_timer()
            self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, loop)
            self._timer_loop = loop
        changed = False
        try:
            changed = await future
        finally:
            self._future = None
            if not changed:  # (a change took it off the tail's list already)
                tail.drop_future(loop, future)
        return changed

    def _expire(self, loop: Any) -> None:
        """The timer: end the current wait if its deadline passed, else come back at that deadline."""
        self._timer = None
        future, deadline = self._future, self._deadline
        if future is None or future.done() or deadline is None:
            return  # not waiting: the next wait sets a timer
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self._timer = loop.call_later(remaining, self._expire, loop)
        else:
            future.set_result(False)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            with contextlib.suppress(RuntimeError):  # (its loop is closed)
                self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Stop reading (see `StreamReader.close`)."""
        self._stop_timer()
        self._reader.close()


class StreamWriter:
    """Commits stream values in groups from one background thread (started on first use)."""

    def __init__(self, storage: Storage, feed: ChangeFeed, executor_id: str) -> None:
        self._storage = storage
        self._feed = feed
        self._executor_id = executor_id  # every write is fenced on the run still being this executor's
        self._condition = threading.Condition(threading.Lock())
        self._pending: list[tuple[str, str, int, int, tuple[int, Any]]] = []
        self._queued = 0
        self._committed = 0
        self._last_append = float("-inf")
        self._last_queued: dict[str, int] = {}
        self._failures: dict[str, BaseException] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False

    def append(self, workflow_id: str, key: str, position: int, attempt: int, encoded: tuple[int, Any]) -> bool:
        """Queue one value to be committed within about a millisecond; True if queued.

        False means "commit it yourself, now": the value comes alone (nothing queued or being
        committed, and no write in the last ``QUIET_GAP`` seconds), so a commit in the caller's
        thread is cheaper and reaches readers sooner than waking the writer thread. Bursts queue.
        """
        now = time.monotonic()
        with self._condition:
            alone = now - self._last_append >= QUIET_GAP and self._committed == self._queued
            self._last_append = now
            if alone:
                return False
            if self._thread is None:
                self._start()
            while len(self._pending) >= MAX_PENDING:
                self._condition.wait()
            self._pending.append((workflow_id, key, position, attempt, encoded))
            self._queued += 1
            self._last_queued[workflow_id] = self._queued
            if len(self._pending) == 1:
                self._condition.notify_all()
        return True

    def flush(self, workflow_id: str) -> None:
        """Wait until every value queued for ``workflow_id`` is committed; raise what failed, if anything."""
        if self._last_queued.get(workflow_id, 0) > self._committed or workflow_id in self._failures:
            with self._condition:
                target = self._last_queued.get(workflow_id, 0)
                while self._committed < target:
                    self._condition.wait()
                self._last_queued.pop(workflow_id, None)
                failure = self._failures.pop(workflow_id, None)
            if failure is not None:
                raise failure

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="litedur-stream-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._stopping:
                    self._condition.wait()
                if not self._pending:
                    self._thread = None
                    return
                batch, self._pending = self._pending, []
                upto = self._queued
                self._condition.notify_all()  # writers held back by MAX_PENDING may go on
            failures, placed = self._commit(batch)
            with self._condition:
                self._committed = upto
                self._failures.update(failures)
                self._condition.notify_all()
            self._feed.publish(placed)

    def _commit(
        self, batch: list[tuple[str, str, int, int, tuple[int, Any]]]
    ) -> tuple[dict[str, BaseException], list[tuple[int, int, list[tuple[int, Any]]]]]:
        groups: list[StreamGroup] = []
        for workflow_id, key, position, attempt, encoded in batch:
            last = groups[-1] if groups else None
            if last is not None and last[:4] == (workflow_id, key, position, attempt):
                last.values.append(encoded)
            else:
                groups.append(StreamGroup(workflow_id, key, position, attempt, [encoded]))
        try:
            return self._storage.append_groups(groups, self._executor_id)
        except Exception as exc:  # e.g. disk full: every step in the batch learns it at its flush
            return {group.workflow_id: exc for group in groups}, []
