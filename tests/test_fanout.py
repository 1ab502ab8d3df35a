"""Many readers of one stream in one process share one read per commit (issue 12, item 4).

The writer is a real workflow in a child process (tests/workers/stream_writer.py: the ints 0..N-1 to
the key "values", one commit each at STREAM_PACE, held before a value while its gate file is missing);
the readers are threads and async readers of one `Client` of this process, on a real file. Sharing
itself is checked by counting the client's stream queries, which would be about one per reader and
commit if each reader read for itself.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import support
from support import ReaderThread, exists, finish, wait_until

import litedur
from litedur import streams

KEY = "values"
N = 200


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "fanout.db")
    litedur.Engine(path).close()  # the file exists before any child or client opens it
    return path


def start_writer(children: list, db: str, workflow_id: str, mode: str = "step-resume", n: int = N,
                 gates: dict[int, Path] | None = None, pace: float = 0.001):  # fmt: skip
    """The writer child, paced so readers see the values live."""
    return support.start_writer(children, db, workflow_id, mode, n, gates, STREAM_PACE=pace)


@pytest.fixture
def client(db):
    with litedur.Client(db) as opened:
        yield opened


def opened_when_created(client: litedur.Client, workflow_id: str) -> litedur.Client:
    wait_until(lambda: exists(client, workflow_id))
    return client


def count_queries(client: litedur.Client) -> list[int]:
    """Count the client's stream queries (storage's read of the values after an offset)."""
    counted = [0]
    storage = client._storage
    read_values = storage.read_values

    def counting(*args, **kwargs):
        counted[0] += 1
        return read_values(*args, **kwargs)

    storage.read_values = counting  # type: ignore[method-assign]
    return counted


class AsyncReaders(threading.Thread):
    """Async readers of one stream, all on one event loop in a thread; `result` gives their values."""

    def __init__(self, client: litedur.Client, workflow_id: str, starts: list[int], timeout: float = 30) -> None:
        super().__init__(daemon=True)
        self.readers = [client.read_stream_async(workflow_id, KEY, start=start, timeout=timeout) for start in starts]
        self.values: list[list] = [[] for _ in starts]
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        async def follow(reader, into: list) -> None:
            async for value in reader:
                into.append(value)

        async def main() -> None:
            pairs = zip(self.readers, self.values, strict=True)
            await asyncio.gather(*(follow(reader, into) for reader, into in pairs))

        try:
            asyncio.run(main())
        except BaseException as exc:  # re-raised in the test's thread by result()
            self.error = exc

    def result(self, timeout: float = 60) -> list[list]:
        self.join(timeout)
        assert not self.is_alive(), f"async readers still waiting after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.values


def tail_of(client: litedur.Client, workflow_id: str) -> streams.StreamTail:
    return client._tails._tails[(workflow_id, KEY)]


# ---- many readers, one read per commit -------------------------------------------------------------


def test_fifty_threads_and_async_readers_get_every_value_once_in_order_with_one_query_per_commit(
    db, client, children, tmp_path
):
    go = tmp_path / "go"
    writer = start_writer(children, db, "fan", gates={0: go})
    opened_when_created(client, "fan")
    queries = count_queries(client)
    threads = [ReaderThread(client.read_stream("fan", KEY, timeout=30)) for _ in range(50)]
    asynchronous = AsyncReaders(client, "fan", [0, 0, 0, 0])
    go.touch()
    for thread in threads:
        assert thread.result() == list(range(N))
    assert asynchronous.result() == [list(range(N))] * 4
    assert finish(writer) == 0
    # One commit per value: reading alone, each of the 54 readers would query about N times.
    assert queries[0] <= 3 * N + 60, f"{queries[0]} queries for {N} commits: the readers did not share them"
    assert client._tails._tails == {}, "the last reader of a stream lets go of its tail"


def test_async_readers_alone_share_the_keepers_read_and_a_cancelled_one_leaves_the_others(
    db, client, children, tmp_path
):
    go = tmp_path / "go"
    writer = start_writer(children, db, "async-fan", gates={0: go, N // 2: tmp_path / "half"})
    opened_when_created(client, "async-fan")
    queries = count_queries(client)
    values: list[list] = [[] for _ in range(20)]
    half = threading.Event()

    async def follow(reader, into: list) -> None:
        async for value in reader:
            into.append(value)
            if len(into) == N // 2:
                half.set()

    async def main() -> list:
        tasks = [asyncio.create_task(follow(client.read_stream_async("async-fan", KEY, timeout=30), into))
                 for into in values]  # fmt: skip
        go.touch()
        await asyncio.to_thread(wait_until, lambda: all(len(into) == N // 2 for into in values))
        tasks[0].cancel()  # a client that goes away while waiting for the next value
        (tmp_path / "half").touch()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert values[0] == list(range(N // 2))
    assert values[1:] == [list(range(N))] * 19
    assert finish(writer) == 0
    assert queries[0] <= 3 * N + 40, f"{queries[0]} queries for {N} commits: the async readers did not share them"


# ---- offsets, late joiners, slow readers ------------------------------------------------------------


def test_readers_at_different_offsets_and_readers_joining_mid_stream_get_their_part(db, client, children, tmp_path):
    go, half = tmp_path / "go", tmp_path / "half"
    writer = start_writer(children, db, "offsets", gates={0: go, N // 2: half})
    opened_when_created(client, "offsets")
    starts = [0, 0, 5, N // 4, N // 2 + 10, N - 1, N]  # some past what exists now (or ever: N)
    early = [ReaderThread(client.read_stream("offsets", KEY, start=start, timeout=30)) for start in starts]
    early_async = AsyncReaders(client, "offsets", [3, N // 2 + 10])
    go.touch()
    wait_until(lambda: len(early[0].values) == N // 2)  # the writer waits at its gate: half is written
    joined = [ReaderThread(client.read_stream("offsets", KEY, start=start, timeout=30))
              for start in (0, 7, N // 2, N // 2 + 3)]  # fmt: skip
    wait_until(lambda: len(joined[0].values) == N // 2)  # caught up with what exists, now waits live
    half.touch()
    for start, thread in zip([*starts, 0, 7, N // 2, N // 2 + 3], early + joined, strict=True):
        assert thread.result() == list(range(start, N)), f"reader from {start}"
    assert early_async.result() == [list(range(3, N)), list(range(N // 2 + 10, N))]
    assert finish(writer) == 0
    late = ReaderThread(client.read_stream("offsets", KEY, start=N // 3, timeout=30))  # after the end
    assert late.result() == list(range(N // 3, N))


def test_a_slow_reader_holds_up_nobody_falls_behind_the_window_and_still_gets_everything(
    db, client, children, tmp_path, monkeypatch
):
    monkeypatch.setattr(streams, "WINDOW", 16)  # a small window: the slow reader falls behind it
    go = tmp_path / "go"
    writer = start_writer(children, db, "slow", gates={0: go})
    opened_when_created(client, "slow")
    slow = client.read_stream("slow", KEY, timeout=30)
    fast = [ReaderThread(client.read_stream("slow", KEY, timeout=30)) for _ in range(5)]
    go.touch()
    got = [next(slow)]  # it takes one value, then does not ask for more until the others are done
    for thread in fast:
        assert thread.result() == list(range(N))
    start, values, ended = slow._tail.state
    assert ended and len(values) <= 16 and start > 1, "the window keeps only the newest values"
    got.extend(slow)
    assert got == list(range(N))
    assert finish(writer) == 0


# ---- timeouts and the end ------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["patient", "hasty"])
def test_each_reader_keeps_its_own_timeout_and_a_leader_that_gives_up_hands_over(
    db, client, children, tmp_path, first
):
    """Whichever waits first leads (reads for both): the hasty reader times out either way, and the
    patient one, leading or not, gets every value once the writer goes on."""
    go = tmp_path / "go"
    writer = start_writer(children, db, f"timeouts-{first}", gates={0: go})
    wid = opened_when_created(client, f"timeouts-{first}") and f"timeouts-{first}"
    hasty = client.read_stream(wid, KEY, timeout=0.3)
    patient_reader = client.read_stream(wid, KEY)
    tail = tail_of(client, wid)
    failure: list[BaseException] = []

    def hasty_waits() -> None:
        try:
            next(hasty)
        except TimeoutError as exc:
            failure.append(exc)

    if first == "patient":
        patient = ReaderThread(patient_reader)
        wait_until(lambda: tail._leader)
        hasty_waits()
    else:
        waiting = threading.Thread(target=hasty_waits)
        waiting.start()
        wait_until(lambda: tail._leader)
        patient = ReaderThread(patient_reader)
        wait_until(lambda: tail._sleepers)  # the patient reader sleeps; the hasty one leads
        waiting.join(10)
    assert len(failure) == 1 and isinstance(failure[0], TimeoutError) and "offset 0" in str(failure[0])
    assert patient.is_alive() and patient.values == []
    go.touch()
    assert patient.result() == list(range(N))
    assert list(hasty) == list(range(N))  # a timeout bounds one wait: the reader goes on after it
    assert finish(writer) == 0


def test_an_async_readers_timeout_bounds_each_wait_not_the_whole_stream(db, client, children, tmp_path):
    go, half = tmp_path / "go", tmp_path / "half"
    writer = start_writer(children, db, "async-timeout", gates={0: go, N // 2: half}, pace=0.002)
    opened_when_created(client, "async-timeout")

    async def main() -> list:
        reader = client.read_stream_async("async-timeout", KEY, timeout=0.15)  # less than the first half takes
        got: list = []
        go.touch()
        with pytest.raises(TimeoutError, match=f"offset {N // 2}"):
            async for value in reader:
                got.append(value)
        assert got == list(range(N // 2))  # the writer waits at its gate: only then did the wait time out
        half.touch()
        got.extend([value async for value in reader])  # a timeout ends one wait, not the reader
        return got

    assert asyncio.run(main()) == list(range(N))
    assert finish(writer) == 0


def test_the_workflow_ending_ends_every_reader_after_its_last_value(db, client, children, tmp_path):
    go = tmp_path / "go"
    writer = start_writer(children, db, "raising", mode="raise", gates={0: go})
    opened_when_created(client, "raising")
    threads = [ReaderThread(client.read_stream("raising", KEY, timeout=30)) for _ in range(10)]
    never_written = [ReaderThread(client.read_stream("raising", "never-written", timeout=30)) for _ in range(3)]
    asynchronous = AsyncReaders(client, "raising", [0, N - 5])
    go.touch()
    for thread in threads:
        assert thread.result() == list(range(N))
    for thread in never_written:
        assert thread.result() == []
    assert asynchronous.result() == [list(range(N)), list(range(N - 5, N))]
    assert finish(writer) == 0
    assert client.get_status("raising").status == "ERROR"


def test_a_closed_client_stops_its_async_readers_with_an_error(db, children, tmp_path):
    writer = start_writer(children, db, "closing", gates={0: tmp_path / "never"})
    client = opened_when_created(litedur.Client(db), "closing")

    async def main() -> None:
        reader = client.read_stream_async("closing", KEY)
        waiting = asyncio.create_task(reader.__anext__())
        await asyncio.to_thread(wait_until, lambda: tail_of(client, "closing").awaited())
        client.close()
        with pytest.raises(litedur.DatabaseError, match="closed"):
            await waiting

    asyncio.run(main())
    writer.kill()
    writer.wait()
