"""Reading a durable stream: in order, live, across crashes of the writer.

A reader asks storage for entries from its offset in one snapshot that also says whether the stream
has ended (closed, or its workflow reached a final status). When there is nothing new it waits on the
process's `ChangeFeed` and asks again. Ending only on an empty snapshot that says "ended" means every
value committed together with the final status is delivered first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .errors import WorkflowNotFoundError
from .storage import SQLiteStorage
from .values import Codec
from .wakeup import ChangeFeed

BATCH = 1000


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
            self._waiter.wait(deadline)

    def _fetch(self) -> int:
        """Buffer what follows; returns how many values arrived. Sets ``_ended`` when the stream ends."""
        if self._stream_id is None:
            found = self._storage.find_stream(self.workflow_id, self.key)
            if found is None:
                raise WorkflowNotFoundError(self.workflow_id)
            self._stream_id, workflow_is_final = found
            if self._stream_id is None:
                self._ended = workflow_is_final  # it ended without ever writing to this key
                return 0
        entries, self._ended = self._storage.read_entries(self._stream_id, self.offset + len(self._buffer), BATCH)
        decode, unpickle = self._codec.decode, self._unpickle
        self._buffer.extend(decode(e.encoding, e.value, unpickle=unpickle) for e in entries)
        return len(entries)

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
        if not self._reader.buffered() and not await asyncio.to_thread(self._reader.fill):
            raise StopAsyncIteration
        return next(self._reader)
