"""Durable streams: the grouped writer, and readers that follow a stream in order, live, across crashes.

`StreamWriter` commits the values steps write in groups from one background thread: a write in a
burst returns at once, the thread commits whatever has accumulated in one transaction (so values are
visible within about a millisecond, and a busy writer gets many values per commit), and a step's
output is recorded only after `StreamWriter.flush` has committed every value of that step. A value
that comes alone (a slow producer) is committed in the caller's thread before the write returns.

A reader asks storage for entries from its offset in one snapshot that also says whether the stream
has ended (closed, or its workflow reached a final status). When there is nothing new it waits on the
process's `ChangeFeed` and asks again. Ending only on an empty snapshot that says "ended" means every
value committed together with the final status is delivered first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .errors import WorkflowNotFoundError
from .runner import refuse_on_loop
from .storage import SQLiteStorage, StreamGroup
from .values import Codec
from .wakeup import ChangeFeed

BATCH = 1000
MAX_PENDING = 100_000
QUIET_GAP = 0.001  # a value written this long after the previous one is committed at once, not queued


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"stream key must be a str, not {type(key).__name__} ({key!r})")
    return key


class StreamReader(Iterator[Any]):
    """Iterator over one stream's values from ``start``; blocks for new ones until the stream ends."""

    def __init__(
        self,
        storage: SQLiteStorage,
        codec: Codec,
        feed: ChangeFeed,
        workflow_id: str,
        key: str,
        start: int = 0,
        timeout: float | None = None,
        wait: str = "auto",
        unpickle: bool = True,
    ) -> None:
        if not isinstance(workflow_id, str):
            raise TypeError(f"workflow_id must be a str, not {type(workflow_id).__name__}")
        check_key(key)
        if type(start) is not int or start < 0:
            raise ValueError(f"start must be an int >= 0, not {start!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"timeout must be None or a number >= 0, not {timeout!r}")
        self._storage = storage
        self._codec = codec
        self._unpickle = unpickle
        self.workflow_id = workflow_id
        self.key = key
        self.offset = start
        self.timeout = timeout
        self._buffer: deque[Any] = deque()
        self._ended = False
        self._stream_id: int | None = None
        self._caught_up = False
        self._read_before = False
        if storage.get_workflow(workflow_id) is None:
            raise WorkflowNotFoundError(workflow_id)
        self._waiter = feed.waiter(wait)

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
        if self._ended:
            self.close()
            return False
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if self._caught_up:
                # The last read got everything visible; the waiter was armed before it, so any
                # commit since then wakes the wait below at once. No need to ask the database again.
                self._caught_up = False
            elif self._take_published():
                return True
            else:
                self._waiter.arm()
                fetched = self._fetch()
                if fetched:
                    self._waiter.progressed()
                    self._caught_up = fetched < BATCH and not self._ended
                    return True
                if self._ended:
                    self.close()
                    return False
                self._waiter.found_nothing()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no value at offset {self.offset} of stream {self.key!r} of workflow "
                    f"{self.workflow_id!r} within {self.timeout} s"
                )
            refuse_on_loop("iterating read_stream()", "read_stream_async()")
            self._waiter.wait(deadline)

    def _take_published(self) -> bool:
        """Buffer values this process committed and handed over during the wait (no query)."""
        values = self._waiter.take_published(self.offset + len(self._buffer))
        self._decode_into_buffer(values)
        return bool(values)

    def _decode_into_buffer(self, values: list[tuple[int, Any]]) -> None:
        append, decode, unpickle = self._buffer.append, self._codec.decode, self._unpickle
        for encoding, data in values:
            append(decode(encoding, data, unpickle=unpickle))

    def _fetch(self) -> int:
        """Buffer what follows; returns how many values arrived. Sets ``_ended`` when the stream ends."""
        if self._stream_id is None:
            found = self._storage.find_stream(self.workflow_id, self.key)
            if found is None:
                raise WorkflowNotFoundError(self.workflow_id)
            self._stream_id, workflow_is_final = found
            self._waiter.stream_id = self._stream_id
            if self._stream_id is None:
                self._ended = workflow_is_final  # it ended without ever writing to this key
                return 0
        first_read, self._read_before = not self._read_before, True
        values, self._ended = self._storage.read_values(
            self._stream_id, self.offset + len(self._buffer), BATCH, first_read
        )
        self._decode_into_buffer(values)
        return len(values)

    def close(self) -> None:
        """Stop reading and release the reader's wake-up descriptors."""
        self._ended = True
        self._waiter.close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def buffered(self) -> int:
        """Values already fetched and not yet returned."""
        return len(self._buffer)


class AsyncStreamReader(AsyncIterator[Any]):
    """The same reader as an async iterator; blocking waits run in a worker thread."""

    def __init__(self, reader: StreamReader) -> None:
        self._reader = reader

    @property
    def offset(self) -> int:
        return self._reader.offset

    def __aiter__(self) -> AsyncStreamReader:
        return self

    async def __anext__(self) -> Any:
        import asyncio  # here, not at module level: it costs more to import than all of litedur

        if not self._reader.buffered() and not await asyncio.to_thread(self._reader.fill):
            raise StopAsyncIteration
        return next(self._reader)


class StreamWriter:
    """Commits stream values in groups from one background thread (started on first use)."""

    def __init__(self, storage: SQLiteStorage, feed: ChangeFeed, executor_id: str) -> None:
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
