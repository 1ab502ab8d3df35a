"""Durable streams in one process: offsets, checkpoints, attempts, closing, termination, readers.

Every test uses a real SQLite file; stored entries (offset, value, position, attempt) are checked
with a plain SQL query (`support.stream_entries`), the rest through the public API. A crash is a
BaseException escaping the workflow, after which a second Engine on the file recovers it; real
processes and SIGKILL are in test_stream_processes.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from support import ReaderThread, stream_entries, wait_until

import litedur

KEY = "values"


class Crash(BaseException):
    """Stands for the process dying mid-workflow: litedur records nothing for a BaseException."""


class Unstorable:
    """A value that no serializer can store."""

    def __reduce__(self):
        raise TypeError("refuses to be pickled")


@pytest.fixture
def db(location):
    return location("streams.db")


@pytest.fixture
def app(db):
    engine = litedur.Engine(db)
    engine.launch()
    yield engine
    engine.shutdown(timeout=10)


def read_all(reader_source, workflow_id: str, key: str, start: int = 0) -> list:
    """Every value of a stream that should end: a reader that hangs fails the test instead."""
    return list(reader_source.read_stream(workflow_id, key, start=start, timeout=10))


def offsets(entries):
    return [entry[0] for entry in entries]


# ---- offsets and values ---------------------------------------------------------------------------


def test_offsets_are_dense_from_zero_per_workflow_and_key_under_concurrent_writers(app, db):
    @app.step()
    def produce(key: str, n: int) -> None:
        for i in range(n):
            app.write_stream(key, f"{key}-{i}")

    @app.workflow()
    def flow(n: int) -> None:
        app.write_stream("a", "a-body")
        produce("a", n)
        produce("b", n)
        app.write_stream("b", "b-body")

    handles = [app.start_workflow(flow, 40) for _ in range(4)]
    for handle in handles:
        handle.get_result(timeout=30)
    for handle in handles:
        for key in ("a", "b"):
            assert offsets(stream_entries(db, handle.workflow_id, key)) == list(range(41))
        assert read_all(app, handle.workflow_id, "a") == ["a-body"] + [f"a-{i}" for i in range(40)]
        assert read_all(app, handle.workflow_id, "b") == [f"b-{i}" for i in range(40)] + ["b-body"]
        streams = {s.key: s.length for s in app.list_streams(handle.workflow_id)}
        assert streams == {"a": 41, "b": 41}


def test_one_commit_per_value_stays_dense_when_another_connection_appends_or_closes(db):
    """append_one remembers each stream's next offset; a stale one must never leave a gap or pass a close."""
    from litedur.storage import open_storage

    first, second = open_storage(db), open_storage(db)
    owner = "test-executor"  # a PENDING workflow of this executor, so its writes pass the fence
    try:
        first.create_workflow("w", "holder", (1, '{"args":[],"kwargs":{}}'), owner)
        stream_id, closed = first.open_stream("w", KEY, owner)
        assert not closed
        assert [first.append_one(stream_id, (0, f"a{i}"), 0, 1, "w", owner) for i in range(3)] == [0, 1, 2]
        assert second.append_one(stream_id, (0, "b3"), 0, 1, "w", owner) == 3  # `first` still expects 3 next
        assert first.append_one(stream_id, (0, "a4"), 0, 1, "w", owner) == 4
        second.close_stream("w", KEY, owner)
        assert first.append_one(stream_id, (0, "after close"), 0, 1, "w", owner) is None
    finally:
        first.close()
        second.close()
    expected = list(enumerate(["a0", "a1", "a2", "b3", "a4"]))
    assert [entry[:2] for entry in stream_entries(db, "w", KEY)] == expected


def test_values_of_every_kind_come_back_equal_and_json_stays_plain(app, db):
    values = ["tok", "", 7, 2.5, True, None, [1, "x"], {"k": [None, 1.5]}, (1, 2), {1: "int key"}, b"raw"]

    @app.workflow()
    def flow() -> None:
        for value in values:
            app.write_stream(KEY, value)

    handle = app.start_workflow(flow)
    handle.get_result(timeout=10)
    got = read_all(app, handle.workflow_id, KEY)
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]
    with litedur.Client(db) as client:
        assert read_all(client, handle.workflow_id, KEY) == values
    assert [entry[1] for entry in stream_entries(db, handle.workflow_id, KEY)] == values


# ---- checkpoints, positions and attempts --------------------------------------------------------


def _replay_app(db: str, crash: bool, step_runs: list[int]) -> tuple[litedur.Engine, object]:
    app = litedur.Engine(db)

    @app.step()
    def produce() -> str:
        step_runs.append(1)
        app.write_stream(KEY, "from-step")
        return "step-output"

    @app.workflow(name="replayed")
    def flow() -> str:
        app.write_stream(KEY, "first")
        output = produce()
        app.write_stream(KEY, "second")
        if crash:
            raise Crash
        app.write_stream(KEY, "third")
        app.close_stream(KEY)
        return output

    return app, flow


def test_a_body_write_is_a_checkpoint_and_is_not_appended_again_on_replay(db):
    step_runs: list[int] = []
    first, flow = _replay_app(db, crash=True, step_runs=step_runs)
    with litedur.SetWorkflowID("replay-1"), pytest.raises(Crash):
        flow()
    first.shutdown()  # the executor is gone; its workflow is still PENDING
    with litedur.Client(db) as client:
        assert client.get_status("replay-1").status == "PENDING"
        assert [entry[1] for entry in stream_entries(db, "replay-1", KEY)] == ["first", "from-step", "second"]
    second, _ = _replay_app(db, crash=False, step_runs=step_runs)
    with second:
        assert second.retrieve_workflow("replay-1").get_result(timeout=20) == "step-output"
        assert read_all(second, "replay-1", KEY) == ["first", "from-step", "second", "third"]
        status = second.get_status("replay-1")
        assert (status.status, status.recovery_attempts) == ("SUCCESS", 1)
    assert step_runs == [1]
    assert stream_entries(db, "replay-1", KEY) == [
        (0, "first", 0, 1),
        (1, "from-step", 1, 1),
        (2, "second", 2, 1),
        (3, "third", 3, 1),
    ]


def test_a_retried_step_sees_earlier_attempts_values_and_entries_record_position_and_attempt(app, db):
    seen: list[list] = []

    @app.step(max_attempts=3, interval=0)
    def produce() -> list:
        earlier = app.already_written(KEY)
        seen.append(earlier)
        assert app.already_written("other-key") == []
        attempt = len(seen)
        app.write_stream(KEY, f"attempt-{attempt}")
        if attempt < 3:
            raise RuntimeError(f"attempt {attempt} fails")
        return earlier

    @app.workflow()
    def flow() -> list:
        app.write_stream(KEY, "body")
        return produce()

    handle = app.start_workflow(flow)
    assert handle.get_result(timeout=10) == ["attempt-1", "attempt-2"]
    assert seen == [[], ["attempt-1"], ["attempt-1", "attempt-2"]]
    assert stream_entries(db, handle.workflow_id, KEY) == [
        (0, "body", 0, 1),
        (1, "attempt-1", 1, 1),
        (2, "attempt-2", 1, 2),
        (3, "attempt-3", 1, 3),
    ]
    assert [(s.position, s.attempts) for s in app.list_steps(handle.workflow_id)][-1] == (1, 3)
    assert read_all(app, handle.workflow_id, KEY) == ["body", "attempt-1", "attempt-2", "attempt-3"]


def test_values_of_a_dead_attempt_stay_and_the_recovered_attempt_resumes_after_them(db):
    def build(crash_after: int | None) -> tuple[litedur.Engine, object]:
        app = litedur.Engine(db)

        @app.step()
        def produce(n: int) -> int:
            earlier = app.already_written(KEY)
            for i in range(len(earlier), n):
                if i == crash_after:
                    raise Crash
                app.write_stream(KEY, i)
            return len(earlier)

        @app.workflow(name="resuming")
        def flow(n: int) -> int:
            return produce(n)

        return app, flow

    first, flow = build(crash_after=3)
    with litedur.SetWorkflowID("resume-1"), pytest.raises(Crash):
        flow(6)
    first.shutdown()
    second, _ = build(crash_after=None)
    with second:
        assert second.retrieve_workflow("resume-1").get_result(timeout=20) == 3
        assert read_all(second, "resume-1", KEY) == [0, 1, 2, 3, 4, 5]
    assert [(e[1], e[2], e[3]) for e in stream_entries(db, "resume-1", KEY)] == [
        (0, 0, 1), (1, 0, 1), (2, 0, 1), (3, 0, 2), (4, 0, 2), (5, 0, 2),
    ]  # fmt: skip


# ---- closing -------------------------------------------------------------------------------------


def test_close_stream_is_idempotent_and_a_write_after_close_raises(app, db):
    @app.step()
    def write_late() -> str:
        try:
            app.write_stream(KEY, "from a step")
        except litedur.StreamClosedError as exc:
            return f"step: {exc}"
        return "step: no error"

    @app.workflow()
    def flow() -> list[str]:
        app.write_stream(KEY, 1)
        app.close_stream(KEY)
        app.close_stream(KEY)
        app.close_stream("never-written")
        try:
            app.write_stream(KEY, 2)
            outcome = "body: no error"
        except litedur.StreamClosedError as exc:
            outcome = f"body: {exc}"
        return [outcome, write_late()]

    handle = app.start_workflow(flow)
    outcomes = handle.get_result(timeout=10)
    assert outcomes[0].startswith("body: ") and KEY in outcomes[0] and "closed" in outcomes[0]
    assert outcomes[1].startswith("step: ") and KEY in outcomes[1] and "closed" in outcomes[1]
    assert stream_entries(db, handle.workflow_id, KEY) == [(0, 1, 0, 1)]
    streams = {s.key: (s.length, s.closed, s.closed_by) for s in app.list_streams(handle.workflow_id)}
    assert streams == {KEY: (1, True, "workflow"), "never-written": (0, True, "workflow")}
    assert read_all(app, handle.workflow_id, KEY) == [1]
    assert read_all(app, handle.workflow_id, "never-written") == []


@pytest.mark.parametrize("outcome", ["SUCCESS", "ERROR"])
def test_termination_closes_open_streams_and_keeps_the_workflows_own_close(app, outcome):
    closed, finish = threading.Event(), threading.Event()

    @app.workflow()
    def flow() -> str:
        app.write_stream("left-open", "a")
        app.write_stream("closed-by-me", "b")
        app.close_stream("closed-by-me")
        closed.set()
        finish.wait(20)
        app.write_stream("left-open", "last")
        if outcome == "ERROR":
            raise ValueError("boom")
        return "done"

    handle = app.start_workflow(flow)
    reader = ReaderThread(app.read_stream(handle.workflow_id, "left-open", timeout=20))
    assert closed.wait(10)
    wait_until(lambda: reader.values == ["a"])
    assert reader.is_alive()  # the stream is open and the workflow running: the reader waits
    assert {s.key: s.closed_by for s in app.list_streams(handle.workflow_id)} == {
        "left-open": None,
        "closed-by-me": "workflow",
    }
    finish.set()
    assert reader.result() == ["a", "last"]
    if outcome == "ERROR":
        with pytest.raises(ValueError, match="boom"):
            handle.get_result(timeout=10)
    else:
        assert handle.get_result(timeout=10) == "done"
    assert handle.get_status().status == outcome
    streams = {s.key: (s.length, s.closed, s.closed_by) for s in app.list_streams(handle.workflow_id)}
    assert streams == {"left-open": (2, True, "termination"), "closed-by-me": (1, True, "workflow")}
    assert read_all(app, handle.workflow_id, "left-open") == ["a", "last"]
    assert read_all(app, handle.workflow_id, "never-written") == []


# ---- readers ---------------------------------------------------------------------------------------


def test_read_stream_of_an_unknown_workflow_raises_workflow_not_found(app, db):
    with pytest.raises(litedur.WorkflowNotFoundError, match="nope"):
        read_all(app, "nope", KEY)
    with pytest.raises(litedur.WorkflowNotFoundError):
        app.read_stream_async("nope", KEY)
    with pytest.raises(litedur.WorkflowNotFoundError):
        app.list_streams("nope")
    with litedur.Client(db) as client, pytest.raises(litedur.WorkflowNotFoundError):
        read_all(client, "nope", KEY)


def test_a_reader_waits_for_the_first_value_and_timeout_bounds_each_wait(app):
    release, finish = threading.Event(), threading.Event()

    @app.workflow()
    def flow() -> None:
        release.wait(20)
        app.write_stream(KEY, "late")
        finish.wait(20)

    handle = app.start_workflow(flow)
    waiting = ReaderThread(app.read_stream(handle.workflow_id, KEY))
    bounded = app.read_stream(handle.workflow_id, KEY, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=KEY):
        next(bounded)
    assert 0.5 <= time.monotonic() - started < 5
    assert waiting.is_alive() and waiting.values == []
    release.set()
    # More than the timeout has passed since the reader was made: the bound is per value.
    assert next(bounded) == "late"
    wait_until(lambda: waiting.values == ["late"])
    with pytest.raises(TimeoutError):
        next(bounded)
    finish.set()
    handle.get_result(timeout=10)
    assert list(bounded) == []
    assert waiting.result() == ["late"]


def test_reading_from_a_start_offset(app, db):
    release = threading.Event()

    @app.workflow()
    def flow() -> None:
        for i in range(5):
            app.write_stream(KEY, i)
        release.wait(20)
        for i in range(5, 10):
            app.write_stream(KEY, i)

    handle = app.start_workflow(flow)
    wid = handle.workflow_id
    wait_until(lambda: len(stream_entries(db, wid, KEY)) == 5)
    ahead = ReaderThread(app.read_stream(wid, KEY, start=7))  # waits for offsets that do not exist yet
    middle = ReaderThread(app.read_stream(wid, KEY, start=3))
    wait_until(lambda: middle.values == [3, 4])
    assert ahead.values == []
    release.set()
    handle.get_result(timeout=10)
    assert middle.result() == list(range(3, 10))
    assert ahead.result() == [7, 8, 9]
    assert read_all(app, wid, KEY, start=0) == list(range(10))
    assert read_all(app, wid, KEY, start=9) == [9]
    assert read_all(app, wid, KEY, start=10) == []
    with litedur.Client(db) as client:
        assert read_all(client, wid, KEY, start=6) == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="start"):
        app.read_stream(wid, KEY, start=-1)


def test_a_reader_starting_past_the_end_of_an_ended_stream_ends_at_once(app):
    @app.workflow()
    def flow() -> None:
        for i in range(3):
            app.write_stream("closed-by-me", i)
            app.write_stream("closed-by-termination", i)
        app.close_stream("closed-by-me")

    handle = app.start_workflow(flow)
    handle.get_result(timeout=10)
    for key in ("closed-by-me", "closed-by-termination"):
        assert read_all(app, handle.workflow_id, key, start=3) == []
        assert read_all(app, handle.workflow_id, key, start=4) == []
        assert read_all(app, handle.workflow_id, key, start=25) == []
    assert read_all(app, handle.workflow_id, "never-written", start=25) == []


def test_a_reader_sees_values_committed_by_its_own_thread(app):
    """A workflow called in this thread reads its own stream between writes: every commit is this thread's."""

    @app.workflow()
    def flow() -> list:
        reader = app.read_stream("reads-itself", KEY, timeout=5)
        got = []
        for i in range(3):
            app.write_stream(KEY, i)
            got.append(next(reader))
        app.close_stream(KEY)
        got.extend(reader)
        return got

    with litedur.SetWorkflowID("reads-itself"):
        assert flow() == [0, 1, 2]


def test_a_step_value_that_comes_alone_is_committed_before_write_stream_returns(app, db):
    """Grouping is for bursts: after a quiet gap a step's value is on disk when write_stream returns."""
    from litedur.streams import QUIET_GAP

    @app.step()
    def slow_producer() -> list:
        on_disk = []
        for i in range(3):
            time.sleep(QUIET_GAP * 5)  # the gap itself is what is tested, not a synchronisation
            app.write_stream(KEY, i)
            on_disk.append([entry[1] for entry in stream_entries(db, "slow", KEY)])
        return on_disk

    @app.workflow()
    def flow() -> list:
        return slow_producer()

    with litedur.SetWorkflowID("slow"):
        assert flow() == [[0], [0, 1], [0, 1, 2]]


def test_in_process_readers_get_every_value_once_from_bursts_and_lone_writes(app):
    """Readers in the writer's process take committed values from memory: same order, own copies."""
    from litedur.streams import QUIET_GAP

    @app.step()
    def produce(rounds: int) -> None:
        for i in range(rounds):
            for j in range(i % 7):  # a burst, committed in groups by the writer thread
                app.write_stream(KEY, [i, j])
            time.sleep(QUIET_GAP * 2)  # then a pause, so the next value comes alone
            app.write_stream(KEY, [i, "alone"])

    @app.workflow()
    def flow(rounds: int) -> None:
        produce(rounds)

    rounds = 60
    expected = [[i, j] for i in range(rounds) for j in [*range(i % 7), "alone"]]
    with litedur.SetWorkflowID("handover"):
        handle = app.start_workflow(flow, rounds)
    readers = [ReaderThread(app.read_stream("handover", KEY, timeout=10)) for _ in range(3)]
    handle.get_result(timeout=30)
    got = [reader.result() for reader in readers]
    assert all(values == expected for values in got)
    got[0][0].append("changed by one reader")
    assert got[1][0] == [0, "alone"], "readers must not share decoded objects"


def test_async_reader_reads_live_without_blocking_the_event_loop(app):
    release = threading.Event()

    @app.workflow()
    def flow() -> None:
        release.wait(20)
        for i in range(10):
            app.write_stream(KEY, i)

    handle = app.start_workflow(flow)

    async def consume() -> list:
        return [value async for value in app.read_stream_async(handle.workflow_id, KEY, start=2, timeout=10)]

    async def open_the_gate() -> None:
        await asyncio.sleep(0)  # runs only while the reader awaits: a blocking reader would time out
        release.set()

    async def main() -> list:
        got, _ = await asyncio.gather(consume(), open_the_gate())
        return got

    assert asyncio.run(main()) == list(range(2, 10))
    handle.get_result(timeout=10)


def test_async_reader_timeout_raises_timeout_error(app):
    release = threading.Event()

    @app.workflow()
    def flow() -> None:
        release.wait(20)

    handle = app.start_workflow(flow)

    async def first_value():
        async for value in app.read_stream_async(handle.workflow_id, KEY, timeout=0.2):
            return value

    try:
        with pytest.raises(TimeoutError):
            asyncio.run(first_value())
    finally:
        release.set()
    handle.get_result(timeout=10)
    assert asyncio.run(first_value()) is None  # terminated, nothing written: the reader just ends


# ---- misuse ------------------------------------------------------------------------------------------


def test_stream_calls_outside_a_workflow_raise_a_litedur_error(app):
    @app.step()
    def plain_call() -> None:  # a step called outside a workflow is a plain call
        app.write_stream(KEY, 1)

    for call in (
        lambda: app.write_stream(KEY, 1),
        lambda: app.close_stream(KEY),
        lambda: app.already_written(KEY),
        plain_call,
    ):
        with pytest.raises(litedur.LitedurError, match="inside a workflow") as caught:
            call()
        assert type(caught.value) is not litedur.LitedurError
    assert app.list_workflows() == []
    with pytest.raises(TypeError, match="key"):
        app.write_stream(3, "x")


def test_already_written_in_a_workflow_body_raises(app):
    @app.workflow()
    def flow() -> str:
        try:
            app.already_written(KEY)
        except litedur.LitedurError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    outcome = app.start_workflow(flow).get_result(timeout=10)
    assert outcome.startswith("NotInWorkflowError") and "inside a step" in outcome


def test_an_unstorable_value_raises_serialization_error_before_anything_is_written(app, db):
    errors: list[str] = []

    @app.step()
    def produce() -> None:
        app.write_stream(KEY, "step")
        try:
            app.write_stream(KEY, Unstorable())
        except litedur.SerializationError as exc:
            errors.append(str(exc))

    @app.workflow()
    def flow() -> None:
        try:
            app.write_stream("fresh", Unstorable())
        except litedur.SerializationError as exc:
            errors.append(str(exc))
        app.write_stream(KEY, "body")
        try:
            app.write_stream(KEY, [1, Unstorable()])
        except litedur.SerializationError as exc:
            errors.append(str(exc))
        produce()
        app.write_stream(KEY, "after")

    handle = app.start_workflow(flow)
    handle.get_result(timeout=10)
    assert len(errors) == 3
    assert "Unstorable" in errors[0] and "Unstorable" in errors[2]
    assert "list" in errors[1]
    # Nothing was written for the failed values: no stream "fresh", no gap, no position taken.
    assert stream_entries(db, handle.workflow_id, KEY) == [(0, "body", 0, 1), (1, "step", 1, 1), (2, "after", 2, 1)]
    assert [s.key for s in app.list_streams(handle.workflow_id)] == [KEY]
