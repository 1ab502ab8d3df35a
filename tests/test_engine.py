"""The Engine in one process, on a real file: replay, idempotent ids, retries, recorded errors,
non-determinism, introspection, direct calls versus start_workflow, and how values are stored.

A "crash" here is `Crash`, a BaseException that nothing records: the workflow stays PENDING, the
engine is shut down (its executor lock released, so it counts as dead) and a second Engine on the
same file recovers it. Real process kills are in test_recovery.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import itertools
import math
import threading
import time

import apsw
import pytest
from support import SideEffectLog, on_sqlite, raw_rows, wait_until

import litedur
from litedur.values import JSON, PICKLED, TEXT


class Crash(BaseException):
    """Stands in for the process dying mid-workflow: not an Exception, so nothing records it."""


class Unpicklable(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be unpickled: its __init__ does not accept its own args back."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class CodedError(Exception):
    """A picklable exception with an extra attribute."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


class Unstorable:
    """A value no serializer can store."""

    def __reduce__(self):
        raise TypeError("refuses to be pickled")


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Color(enum.IntEnum):
    RED = 1


@pytest.fixture
def db(location):
    return location("engine.db")


def same(a, b) -> bool:
    """Equal, and of exactly the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k, j) and same(a[k], b[j]) for k, j in zip(a, b, strict=True))
    return a == b


def raw_row(db, sql, *params):
    """Read the file with plain SQL on a separate connection, as any other SQLite client would.

    apsw, not the stdlib sqlite3: two SQLite libraries in one process break each other's POSIX locks.
    """
    connection = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return tuple(connection.execute(sql, params).fetchall()[0])
    finally:
        connection.close()


# ---- replay -------------------------------------------------------------------------------------


def define_chain(app: litedur.Engine, log: SideEffectLog, crash_before: int | None = None):
    @app.step()
    def add(acc, i):
        log.record(f"step {i}")
        return acc + [i]

    @app.workflow()
    def chain(n):
        log.record("body")
        acc = []
        for i in range(n):
            if i == crash_before:
                raise Crash()
            acc = add(acc, i)
        return acc

    return chain


def test_replay_returns_recorded_outputs_without_running_step_bodies_again(db, log, engines):
    first = engines(db, executor_id="first")
    chain = define_chain(first, log, crash_before=3)
    with litedur.SetWorkflowID("wf"), pytest.raises(Crash):
        chain(5)
    assert first.get_status("wf").status == "PENDING"
    assert [s.output for s in first.list_steps("wf")] == [[0], [0, 1], [0, 1, 2]]
    first.shutdown()

    second = engines(db, executor_id="second")
    define_chain(second, log)
    second.launch()
    assert second.retrieve_workflow("wf").get_result(timeout=20) == [0, 1, 2, 3, 4]
    # The body ran twice; steps 0-2 were replayed from the file, 3-4 ran once in the second engine.
    assert log.lines() == ["body", "step 0", "step 1", "step 2", "body", "step 3", "step 4"]
    status = second.get_status("wf")
    assert (status.status, status.executor_id, status.recovery_attempts) == ("SUCCESS", "second", 1)
    assert [s.position for s in second.list_steps("wf")] == [0, 1, 2, 3, 4]


def test_restart_with_the_same_executor_id_recovers_its_own_workflows(db, log, engines):
    first = engines(db, executor_id="fixed")
    chain = define_chain(first, log, crash_before=1)
    with litedur.SetWorkflowID("own"), pytest.raises(Crash):
        chain(3)
    first.shutdown()

    again = engines(db, executor_id="fixed")
    define_chain(again, log)
    again.launch()
    assert again.retrieve_workflow("own").get_result(timeout=20) == [0, 1, 2]
    assert log.lines() == ["body", "step 0", "body", "step 1", "step 2"]


def test_a_finished_workflow_called_again_returns_its_record_without_running(db, log, engines):
    app = engines(db)
    chain = define_chain(app, log)
    with litedur.SetWorkflowID("done"):
        assert chain(2) == [0, 1]
    with litedur.SetWorkflowID("done"):
        assert chain(2) == [0, 1]
    with litedur.SetWorkflowID("done"):
        assert app.start_workflow(chain, 2).get_result(timeout=10) == [0, 1]
    assert log.lines() == ["body", "step 0", "step 1"]


@pytest.mark.parametrize("how", ["start_workflow", "direct call"])
def test_starting_a_dead_executors_workflow_again_by_id_resumes_it_without_launch(db, log, engines, how):
    first = engines(db, executor_id="first")
    chain = define_chain(first, log, crash_before=2)
    with litedur.SetWorkflowID("again"), pytest.raises(Crash):
        chain(4)
    first.shutdown()

    second = engines(db, executor_id="second")  # never launched: the id alone adopts the run
    chain = define_chain(second, log)
    with litedur.SetWorkflowID("again"):
        result = second.start_workflow(chain, 99).get_result(timeout=20) if how == "start_workflow" else chain(99)
    assert result == [0, 1, 2, 3]  # the recorded arguments (4), not the new ones
    assert log.lines() == ["body", "step 0", "step 1", "body", "step 2", "step 3"]
    assert second.get_status("again").executor_id == "second"


def test_a_nested_step_is_part_of_its_outer_step(db, log, engines):
    app = engines(db)

    @app.step()
    def inner(x):
        log.record(f"inner {x}")
        return x + 1

    @app.step()
    def outer(x):
        return inner(inner(x))

    @app.workflow()
    def flow():
        return outer(1)

    with litedur.SetWorkflowID("nested"):
        assert flow() == 3
    assert [s.name for s in app.list_steps("nested")] == ["test_a_nested_step_is_part_of_its_outer_step.outer"]
    assert log.lines() == ["inner 1", "inner 2"]


# ---- idempotent workflow ids ---------------------------------------------------------------------


def test_an_existing_id_returns_the_existing_workflow_and_never_runs_it_twice(db, log, engines):
    app = engines(db)
    gate = threading.Event()

    @app.step()
    def effect(x):
        log.record(f"effect {x}")
        return x * 2

    @app.workflow()
    def flow(x):
        log.record("body")
        gate.wait(20)
        return effect(x)

    app.launch()
    with litedur.SetWorkflowID("same"):
        first = app.start_workflow(flow, 1)
    wait_until(lambda: log.count("body") == 1)
    with litedur.SetWorkflowID("same"):  # still running: a handle to it, not a second run
        running = app.start_workflow(flow, 7)
    assert running.workflow_id == "same"
    assert running.get_status().status == "PENDING"
    gate.set()
    assert first.get_result(timeout=10) == 2
    assert running.get_result(timeout=10) == 2
    with litedur.SetWorkflowID("same"):  # finished: its recorded result, other arguments ignored
        assert app.start_workflow(flow, 9).get_result(timeout=10) == 2
    with litedur.SetWorkflowID("same"):
        assert flow(9) == 2
    assert log.lines() == ["body", "effect 1"]
    assert [w.workflow_id for w in app.list_workflows()] == ["same"]
    assert app.get_status("same").inputs == {"args": (1,), "kwargs": {}}


def test_set_workflow_id_applies_to_the_next_workflow_only(db, engines):
    app = engines(db)

    @app.workflow()
    def flow():
        return "ok"

    with litedur.SetWorkflowID("chosen"):
        first = app.start_workflow(flow)
        second = app.start_workflow(flow)
    third = app.start_workflow(flow)
    assert first.workflow_id == "chosen"
    assert len({first.workflow_id, second.workflow_id, third.workflow_id}) == 3
    for handle in (first, second, third):
        assert handle.get_result(timeout=10) == "ok"


def test_an_id_taken_by_another_workflow_name_is_a_conflict(db, engines):
    app = engines(db)

    @app.workflow(name="one")
    def one():
        return 1

    @app.workflow(name="two")
    def two():
        return 2

    with litedur.SetWorkflowID("taken"):
        assert one() == 1
    with litedur.SetWorkflowID("taken"), pytest.raises(litedur.WorkflowConflictError, match="taken"):
        two()
    assert app.get_status("taken").name == "one"


@pytest.mark.parametrize("how", ["start_workflow", "direct call"])
def test_one_id_from_8_threads_at_once_runs_once(db, log, engines, how):
    app = engines(db)
    gate = threading.Event()

    @app.step()
    def effect():
        log.record("effect")
        return "done"

    @app.workflow()
    def flow(caller):
        log.record(f"body {caller}")
        if how == "start_workflow":
            gate.wait(20)  # keep it running while every other thread asks for the same id
        return effect()

    app.launch()
    barrier = threading.Barrier(8)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(10)
            with litedur.SetWorkflowID("shared"):
                if how == "start_workflow":
                    results[n] = app.start_workflow(flow, n)
                else:
                    results[n] = flow(n)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    if how == "start_workflow":
        wait_until(lambda: len(results) + len(errors) == 8)
        gate.set()
    for thread in threads:
        thread.join(20)
    assert not errors
    if how == "start_workflow":
        assert {handle.workflow_id for handle in results.values()} == {"shared"}
        results = {n: handle.get_result(timeout=10) for n, handle in results.items()}
    assert list(results.values()) == ["done"] * 8
    bodies = [line for line in log.lines() if line.startswith("body")]
    assert len(bodies) == 1
    assert log.count("effect") == 1
    assert len(app.list_workflows()) == 1
    caller = int(bodies[0].split()[1])
    assert app.get_status("shared").inputs == {"args": (caller,), "kwargs": {}}


def test_an_id_running_in_another_live_engine_is_never_taken_over(db, log, engines):
    owner = engines(db, executor_id="owner")
    gate = threading.Event()

    def define(app):
        @app.step()
        def effect():
            log.record("effect")
            return "from the owner"

        @app.workflow(name="guarded")
        def guarded():
            log.record("body")
            gate.wait(20)
            return effect()

        return guarded

    owner.launch()
    with litedur.SetWorkflowID("guarded"):
        handle = owner.start_workflow(define(owner))
    wait_until(lambda: log.count("body") == 1)

    other = engines(db, executor_id="other")  # same file, its own executor lock
    guarded = define(other)
    other.launch()
    with litedur.SetWorkflowID("guarded"):
        other_handle = other.start_workflow(guarded)
    assert other.get_status("guarded").executor_id == "owner"
    gate.set()
    assert other_handle.get_result(timeout=10) == "from the owner"
    assert handle.get_result(timeout=10) == "from the owner"
    assert log.lines() == ["body", "effect"]


def test_8_threads_starting_different_workflows_at_once_all_succeed(db, engines):
    app = engines(db)

    @app.step()
    def square(x):
        return x * x

    @app.workflow()
    def flow(x):
        return square(x) + square(x + 1)

    app.launch()
    barrier = threading.Barrier(8)
    handles: list[litedur.WorkflowHandle] = []
    direct: list[int] = []

    def worker(n: int) -> None:
        barrier.wait(10)
        for i in range(10):
            handles.append(app.start_workflow(flow, n * 10 + i))
            direct.append(flow(n * 10 + i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    expected = sorted(x * x + (x + 1) ** 2 for x in range(80))
    assert sorted(direct) == expected
    assert sorted(h.get_result(timeout=20) for h in handles) == expected
    assert len(app.list_workflows(status="SUCCESS")) == 160


# ---- retries --------------------------------------------------------------------------------------


def test_a_step_retries_with_exponential_backoff(db, engines):
    app = engines(db)
    stamps: list[float] = []

    @app.step(max_attempts=4, interval=0.05, backoff=2.0)
    def flaky():
        stamps.append(time.monotonic())
        if len(stamps) < 4:
            raise ConnectionError(f"attempt {len(stamps)}")
        return "ok"

    @app.workflow()
    def flow():
        return flaky()

    with litedur.SetWorkflowID("retry"):
        assert flow() == "ok"
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2], strict=True):  # interval * backoff**n, loosely
        assert expected - 0.005 <= gap < expected + 2.0, gaps
    [step] = app.list_steps("retry")
    assert (step.attempts, step.output, step.error) == (4, "ok", None)


def test_a_step_that_keeps_failing_records_its_last_error_after_max_attempts(db, log, engines):
    app = engines(db)

    @app.step(max_attempts=3, interval=0.01, backoff=1.0)
    def broken():
        n = len(log.lines()) + 1
        log.record(f"attempt {n}")
        raise ValueError(f"attempt {n} failed")

    @app.workflow()
    def flow():
        return broken()

    app.launch()
    with litedur.SetWorkflowID("broken"):
        handle = app.start_workflow(flow)
    with pytest.raises(ValueError, match="attempt 3 failed"):
        handle.get_result(timeout=10)
    assert log.lines() == ["attempt 1", "attempt 2", "attempt 3"]
    [step] = app.list_steps("broken")
    assert step.attempts == 3
    assert isinstance(step.error, ValueError) and str(step.error) == "attempt 3 failed"
    status = app.get_status("broken")
    assert status.status == "ERROR" and isinstance(status.error, ValueError)


def test_a_step_outside_a_workflow_is_a_plain_call_without_retries(db, log, engines):
    app = engines(db)

    @app.step(max_attempts=5, interval=0.01)
    def broken(x):
        log.record("called")
        raise KeyError(x)

    @app.step()
    def double(x):
        return 2 * x

    assert double(21) == 42
    with pytest.raises(KeyError):
        broken("k")
    assert log.lines() == ["called"]
    assert app.list_workflows() == []


# ---- recorded errors --------------------------------------------------------------------------------


def make_error(kind: str) -> Exception:
    if kind == "ValueError":
        return ValueError("bad value 42")
    if kind == "CodedError":
        return CodedError("with a code", 7)
    if kind == "Unpicklable":
        return Unpicklable("holds a lock")
    if kind == "NeedsTwoArgs":
        return NeedsTwoArgs("left", "right")

    class LocalError(Exception):  # a class pickle cannot find by name
        pass

    return LocalError("defined in a function")


def define_catching(app: litedur.Engine, log: SideEffectLog, crash: bool):
    @app.step()
    def fails(kind):
        log.record(f"fails {kind}")
        raise make_error(kind)

    @app.workflow()
    def catches(kind):
        try:
            fails(kind)
        except Exception as exc:
            seen = {"type": type(exc).__name__, "text": str(exc), "code": getattr(exc, "code", None)}
            seen["recorded_type"] = getattr(exc, "type_name", None)
        if crash:
            raise Crash()
        return seen

    return catches


@pytest.mark.parametrize(
    ("kind", "replayed"),
    [
        ("ValueError", {"type": "ValueError", "text": "bad value 42", "code": None, "recorded_type": None}),
        ("CodedError", {"type": "CodedError", "text": "('with a code', 7)", "code": 7, "recorded_type": None}),
        (
            "Unpicklable",
            {"type": "RecordedError", "text": "test_engine.Unpicklable: holds a lock", "code": None,
             "recorded_type": "test_engine.Unpicklable"},
        ),
        (
            "NeedsTwoArgs",
            {"type": "RecordedError", "text": "test_engine.NeedsTwoArgs: left/right", "code": None,
             "recorded_type": "test_engine.NeedsTwoArgs"},
        ),
        (
            "LocalError",
            {"type": "RecordedError", "text": "test_engine.make_error.<locals>.LocalError: defined in a function",
             "code": None, "recorded_type": "test_engine.make_error.<locals>.LocalError"},
        ),
    ],
)  # fmt: skip
def test_a_recorded_step_error_is_raised_again_on_replay(db, log, engines, kind, replayed):
    first = engines(db, executor_id="first")
    catches = define_catching(first, log, crash=True)
    with litedur.SetWorkflowID("errs"), pytest.raises(Crash):
        catches(kind)
    first.shutdown()

    second = engines(db, executor_id="second")
    define_catching(second, log, crash=False)
    second.launch()
    assert second.retrieve_workflow("errs").get_result(timeout=20) == replayed
    assert log.lines() == [f"fails {kind}"]  # the failing body ran once; replay raised the record
    [step] = second.list_steps("errs")
    assert type(step.error).__name__ == replayed["type"]
    assert isinstance(step.error, Exception)


def test_an_error_whose_message_is_not_valid_unicode_is_still_recorded(db, engines):
    """A file name that was not UTF-8 leaves a lone surrogate in an OSError's message: the error is
    recorded all the same (the surrogate escaped in its description), not left PENDING."""
    app = engines(db)

    @app.step(max_attempts=1)
    def open_it() -> None:
        raise FileNotFoundError("no file b\udcff.txt")

    @app.workflow()
    def reads() -> None:
        open_it()

    app.launch()
    with litedur.SetWorkflowID("surrogate"), pytest.raises(FileNotFoundError):
        app.start_workflow(reads).get_result(timeout=10)
    with litedur.Client(db) as client:
        assert client.get_status("surrogate").status == "ERROR"


def test_a_workflow_error_keeps_its_type_or_falls_back_to_recorded_error(db, engines):
    app = engines(db)

    @app.workflow()
    def fails(kind):
        raise make_error(kind)

    app.launch()
    with litedur.SetWorkflowID("coded"):
        coded = app.start_workflow(fails, "CodedError")
    with pytest.raises(CodedError) as info:
        coded.get_result(timeout=10)
    assert info.value.code == 7

    with litedur.SetWorkflowID("unpicklable"):
        unpicklable = app.start_workflow(fails, "Unpicklable")
    with pytest.raises(litedur.RecordedError) as info:
        unpicklable.get_result(timeout=10)
    assert isinstance(info.value, litedur.LitedurError)
    assert info.value.type_name == "test_engine.Unpicklable"
    assert info.value.message == "holds a lock"
    assert "Unpicklable" in str(info.value) and "holds a lock" in str(info.value)

    with litedur.Client(db) as client:  # another reader decodes the same record
        assert isinstance(client.get_status("coded").error, CodedError)
        error = client.get_status("unpicklable").error
        assert isinstance(error, litedur.RecordedError) and error.type_name == "test_engine.Unpicklable"
    if on_sqlite(db):
        description = raw_row(db, "SELECT json_extract(error, '$.type') FROM workflows WHERE workflow_id = ?", "coded")
        assert description == ("test_engine.CodedError",)


# ---- non-determinism ---------------------------------------------------------------------------------


def define_ordered(app: litedur.Engine, log: SideEffectLog, order: str, crash: bool):
    @app.step()
    def alpha():
        log.record("alpha")
        return "a"

    @app.step()
    def beta():
        log.record("beta")
        return "b"

    @app.workflow(name="ordered")
    def ordered():
        if order == "stream":
            app.write_stream("events", "hello")
        else:
            (alpha if order == "alpha" else beta)()
        if crash:
            raise Crash()
        return "finished"

    return ordered


@pytest.mark.parametrize(("recorded", "replayed", "names"), [
    ("alpha", "beta", ("define_ordered.alpha", "define_ordered.beta")),
    ("stream", "alpha", ("litedur.write_stream:events", "define_ordered.alpha")),
])  # fmt: skip
def test_a_different_step_at_a_recorded_position_raises_non_determinism(db, log, engines, recorded, replayed, names):
    first = engines(db, executor_id="first")
    ordered = define_ordered(first, log, recorded, crash=True)
    with litedur.SetWorkflowID("nd"), pytest.raises(Crash):
        ordered()
    first.shutdown()

    second = engines(db, executor_id="second")
    define_ordered(second, log, replayed, crash=False)
    second.launch()
    handle = second.retrieve_workflow("nd")
    with pytest.raises(litedur.NonDeterminismError) as info:
        handle.get_result(timeout=20)
    message = str(info.value)
    assert "'nd'" in message and "position 0" in message
    assert all(name in message for name in names)
    assert isinstance(info.value, litedur.LitedurError)
    assert handle.get_status().status == "ERROR"
    assert log.lines() == (["alpha"] if recorded == "alpha" else [])  # the other step never ran


def define_writer(app, log, crash: bool):
    @app.step(name="middle")
    def middle():
        log.record("middle")
        return "m"

    @app.workflow(name="writer")
    def writer():
        app.write_stream("out", "a")
        middle()
        app.write_stream("out", "b")
        if crash:
            raise Crash()
        app.write_stream("out", "c")
        return "written"

    return writer


def crash_writer(db, log, engines, workflow_id: str) -> None:
    """Run the writer until its crash: two body writes and a step recorded, the third write not."""
    first = engines(db, executor_id="first")
    writer = define_writer(first, log, crash=True)
    with litedur.SetWorkflowID(workflow_id), pytest.raises(Crash):
        writer()
    first.shutdown()


def recover_writer(db, log, engines, workflow_id: str) -> litedur.Engine:
    second = engines(db, executor_id="second")
    define_writer(second, log, crash=False)
    second.launch()
    assert second.retrieve_workflow(workflow_id).get_result(timeout=20) == "written"
    assert list(second.read_stream(workflow_id, "out")) == ["a", "b", "c"]  # replayed writes not repeated
    return second


def test_a_body_write_is_one_stream_entry_that_is_its_own_checkpoint(db, log, engines):
    crash_writer(db, log, engines, "bw")
    if on_sqlite(db):  # no step row for a body write: the entry records when it was written
        assert raw_rows(db, "SELECT position, name FROM steps") == [(1, "middle")]
        assert raw_rows(db, "SELECT count(*) FROM stream_entries WHERE written_at IS NOT NULL") == [(2,)]

    second = recover_writer(db, log, engines, "bw")
    assert log.lines() == ["middle"]
    steps = second.list_steps("bw")
    assert [(s.position, s.name, s.attempts) for s in steps] == [
        (0, "litedur.write_stream:out", 1), (1, "middle", 1), (2, "litedur.write_stream:out", 1),
        (3, "litedur.write_stream:out", 1),
    ]  # fmt: skip
    assert steps[0].started_at == steps[0].finished_at <= steps[2].started_at <= time.time()

    with litedur.SetWorkflowID("bw-fork"):
        forked = second.fork_workflow("bw", 2)
    assert forked.get_result(timeout=20) == "written"
    assert list(second.read_stream("bw-fork", "out")) == ["a", "b", "c"]
    assert [s.name for s in second.list_steps("bw-fork")][:2] == ["litedur.write_stream:out", "middle"]
    assert log.lines() == ["middle"]  # the fork took position 1 from the original


@pytest.mark.sqlite_only
def test_a_body_write_recorded_as_a_step_row_by_schema_version_7_still_replays(db, log, engines):
    crash_writer(db, log, engines, "old")
    conn = apsw.Connection(db)  # rewrite the record as version 7 kept it: a step row per body write
    with conn:
        for position, written_at in conn.execute("SELECT position, written_at FROM stream_entries").fetchall():
            conn.execute(
                "INSERT INTO steps VALUES ('old', ?, 'litedur.write_stream:out', NULL, NULL, NULL, NULL, 1, ?, ?)",
                (position, written_at, written_at),
            )
        conn.execute("ALTER TABLE stream_entries DROP COLUMN written_at")
        conn.execute("PRAGMA user_version = 7")
    conn.close()

    second = recover_writer(db, log, engines, "old")
    assert [s.name for s in second.list_steps("old")] == ["litedur.write_stream:out", "middle"] + [
        "litedur.write_stream:out"
    ] * 2
    assert raw_rows(db, "SELECT count(*) FROM steps WHERE name LIKE 'litedur.write_stream:%'") == [(2,)]


@pytest.mark.sqlite_only
def test_a_file_is_not_upgraded_past_version_7_while_a_process_of_an_older_litedur_runs_on_it(db):
    conn = apsw.Connection(db)  # a version-7 file with an executor that is alive (its lock held here)
    list(conn.execute("PRAGMA journal_mode = WAL"))
    for migration in litedur.storage.sqlite.MIGRATIONS[:7]:
        list(conn.execute(migration))
    conn.execute(f"PRAGMA application_id = {litedur.storage.sqlite.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 7")
    conn.execute("INSERT INTO executors VALUES ('older', 4242, 'box', 0), ('gone', 4343, 'box', 0)")
    older = litedur.liveness.ExecutorLock(db, "older")
    try:
        with pytest.raises(litedur.DatabaseError) as info:
            litedur.Engine(db)
        message = str(info.value)
        assert db in message and "'older' (pid 4242 on box)" in message and "Stop them" in message
        assert "gone" not in message  # (its process is dead: nothing holds its lock)
        assert conn.execute("PRAGMA user_version").fetchall() == [(7,)]  # left as it was
    finally:
        older.release()
    with litedur.Client(db) as client:  # once it has stopped, the file is upgraded
        assert client.info()["schema_version"] == litedur.storage.SCHEMA_VERSION
    conn.close()


def test_a_body_write_where_a_dead_step_attempt_wrote_to_another_stream_replays(db, engines):
    """An edit of the code made position 0, where a step died mid-attempt writing to "z", a body write
    to "a": the checkpoint is the body write's, whatever stream names sort first."""
    first = engines(db, executor_id="first")

    @first.step(name="dies")
    def dies():
        first.write_stream("z", "from a step attempt")
        raise Crash()

    @first.workflow(name="edited")
    def before_the_edit():
        return dies()

    with litedur.SetWorkflowID("edited"), pytest.raises(Crash):
        before_the_edit()
    first.shutdown()

    def after_the_edit(app, crash: bool):
        @app.workflow(name="edited")
        def edited():
            app.write_stream("a", "body write")
            if crash:
                raise Crash()
            return "edited"

        return edited

    second = engines(db, executor_id="second")
    with litedur.SetWorkflowID("edited"), pytest.raises(Crash):
        after_the_edit(second, crash=True)()
    second.shutdown()
    third = engines(db, executor_id="third")
    after_the_edit(third, crash=False)
    third.launch()
    assert third.retrieve_workflow("edited").get_result(timeout=20) == "edited"
    assert list(third.read_stream("edited", "a")) == ["body write"]
    assert [s.name for s in third.list_steps("edited")] == ["litedur.write_stream:a"]


# ---- introspection ------------------------------------------------------------------------------------


def test_list_workflows_filters_and_orders_newest_first(db, engines):
    app = engines(db)
    gate = threading.Event()

    @app.workflow(name="ok")
    def ok(i):
        return i

    @app.workflow(name="bad")
    def bad(i):
        raise ValueError(i)

    @app.workflow(name="slow")
    def slow():
        gate.wait(20)
        return "slow"

    for i in range(6):
        with litedur.SetWorkflowID(f"w{i}"):
            if i % 3 == 2:
                with pytest.raises(ValueError):
                    bad(i)
            else:
                ok(i)
    app.launch()
    with litedur.SetWorkflowID("running"):
        running = app.start_workflow(slow)

    def ids(**filters):
        return [w.workflow_id for w in app.list_workflows(**filters)]

    assert ids() == ["running", "w5", "w4", "w3", "w2", "w1", "w0"]
    created = [w.created_at for w in app.list_workflows()]
    assert created == sorted(created, reverse=True)
    assert ids(status="ERROR") == ["w5", "w2"]
    assert ids(status="SUCCESS") == ["w4", "w3", "w1", "w0"]
    assert ids(status="PENDING") == ["running"]
    assert ids(name="ok") == ["w4", "w3", "w1", "w0"]
    assert ids(name="bad", status="SUCCESS") == []
    assert ids(name="ok", limit=3) == ["w4", "w3", "w1"]
    assert ids(limit=2) == ["running", "w5"]
    assert ids(limit=0) == []
    assert ids(name="no such workflow") == []
    assert ids(status="CANCELLED") == []
    assert all(isinstance(w, litedur.WorkflowStatus) for w in app.list_workflows())
    with pytest.raises(ValueError, match="limit"):
        app.list_workflows(limit=-1)
    gate.set()
    assert running.get_result(timeout=10) == "slow"
    assert ids(status="PENDING") == []


def test_list_steps_reports_position_name_attempts_timing_and_result(db, engines):
    app = engines(db)

    @app.step()
    def one():
        return 1

    @app.step(name="custom-two")
    def two():
        return {"two": 2}

    @app.step(max_attempts=2, interval=0)
    def boom():
        raise KeyError("k")

    @app.workflow()
    def flow():
        one()
        two()
        with contextlib.suppress(KeyError):
            boom()
        return "done"

    @app.workflow()
    def empty():
        return None

    before = time.time()
    with litedur.SetWorkflowID("steps"):
        flow()
    with litedur.SetWorkflowID("empty"):
        empty()
    steps = app.list_steps("steps")
    assert all(isinstance(s, litedur.StepInfo) and s.workflow_id == "steps" for s in steps)
    assert [s.position for s in steps] == [0, 1, 2]
    assert [s.name for s in steps] == [
        "test_list_steps_reports_position_name_attempts_timing_and_result.one",
        "custom-two",
        "test_list_steps_reports_position_name_attempts_timing_and_result.boom",
    ]
    assert [s.attempts for s in steps] == [1, 1, 2]
    assert [s.output for s in steps] == [1, {"two": 2}, None]
    assert steps[0].error is None and steps[1].error is None
    assert isinstance(steps[2].error, KeyError)
    for s in steps:
        assert before <= s.started_at <= s.finished_at <= time.time()
        assert s.duration == s.finished_at - s.started_at >= 0
    assert app.list_steps("empty") == []
    with pytest.raises(litedur.WorkflowNotFoundError, match="nope"):
        app.list_steps("nope")


def test_get_status_returns_a_frozen_workflow_status_with_every_field(db, engines):
    app = engines(db, executor_id="status-executor")
    gate = threading.Event()

    @app.workflow(name="adder")
    def adder(a, b, *, c):
        gate.wait(20)
        return {"sum": a + b + len(c)}

    app.launch()
    before = time.time()
    with litedur.SetWorkflowID("s1"):
        handle = app.start_workflow(adder, 1, 2, c=[3])
    running = handle.get_status()
    assert isinstance(running, litedur.WorkflowStatus)
    assert running.workflow_id == "s1"
    assert running.name == "adder"
    assert running.status == "PENDING"
    assert running.executor_id == "status-executor"
    assert running.recovery_attempts == 0
    assert running.inputs == {"args": (1, 2), "kwargs": {"c": [3]}}
    assert running.output is None and running.error is None
    assert before <= running.created_at <= running.updated_at <= time.time()
    gate.set()
    assert handle.get_result(timeout=10) == {"sum": 4}

    done = app.get_status("s1")
    assert done.status == "SUCCESS"
    assert done.output == {"sum": 4} and done.error is None
    assert done.created_at == running.created_at
    assert running.updated_at <= done.updated_at <= time.time()
    assert handle.get_status() == done
    with litedur.Client(db) as client:
        assert client.get_status("s1") == done
        assert client.retrieve_workflow("s1").get_result(timeout=10) == {"sum": 4}
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.status = "ERROR"  # type: ignore[misc]
    with pytest.raises(litedur.WorkflowNotFoundError, match="missing-id"):
        app.get_status("missing-id")


def test_a_direct_call_runs_in_the_callers_thread_and_start_workflow_in_another(db, engines):
    app = engines(db)
    gate = threading.Event()

    @app.workflow()
    def where(wait):
        if wait:
            gate.wait(20)
        return threading.get_ident()

    @app.workflow()
    def fails():
        raise LookupError("direct failure")

    app.launch()
    assert where(False) == threading.get_ident()

    handle = app.start_workflow(where, True)
    # start_workflow returned: the workflow is already durable, visible to another reader.
    with litedur.Client(db) as client:
        assert client.get_status(handle.workflow_id).status == "PENDING"
    with pytest.raises(TimeoutError):
        handle.get_result(timeout=0.05)
    gate.set()
    assert handle.get_result(timeout=10) != threading.get_ident()

    with litedur.SetWorkflowID("direct-failure"), pytest.raises(LookupError, match="direct failure"):
        fails()
    assert app.get_status("direct-failure").status == "ERROR"

    def not_a_workflow():
        return None

    with pytest.raises(TypeError, match="not a workflow"):
        app.start_workflow(not_a_workflow)


# ---- values ----------------------------------------------------------------------------------------


JSON_VALUES = [
    0, -1, 2**62, 1.5, -0.25, 1.0, "", "héllo ☃ \x00 \n", True, False, None, [], {},
    [1, [2, [3, "x"]]], {"a": {"b": [None, True, 1.0]}, "": 0},
]  # fmt: skip

PICKLED_VALUES = [
    (1, 2),
    [(1, 2), [3]],
    {1: "int key"},
    {"nested": (1, (2, 3))},
    {1, 2, 3},
    frozenset({"a"}),
    b"\x00bytes",
    bytearray(b"ba"),
    datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    decimal.Decimal("1.10"),
    Point(1, 2),
    Color.RED,
    float("inf"),
    complex(1, 2),
]


def define_echo(app: litedur.Engine):
    @app.step()
    def echo_step(value):
        return value

    @app.workflow(name="echo")
    def echo(value):
        return echo_step(value)

    return echo


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_plain_json_values_round_trip_exactly_and_stay_readable(db, engines, value):
    app = engines(db)
    echo = define_echo(app)
    with litedur.SetWorkflowID("json"):
        echo(value)
    with litedur.Client(db) as client:  # decoded from the file, not from memory
        status = client.get_status("json")
        assert same(status.output, value)
        assert same(status.inputs["args"][0], value)
        assert same(client.list_steps("json")[0].output, value)
    if not on_sqlite(db):
        return
    encoding, output, kind = raw_row(
        db, "SELECT output_encoding, output, typeof(output) FROM workflows WHERE workflow_id = ?", "json"
    )
    assert kind == "text"
    if type(value) is str:
        assert (encoding, output) == (TEXT, value)
    else:
        assert encoding == JSON
        # readable by any SQLite client: SQLite's own JSON functions parse the stored text
        assert raw_row(db, "SELECT json_valid(output) FROM workflows WHERE workflow_id = ?", "json") == (1,)
    assert raw_row(db, "SELECT json_valid(inputs) FROM workflows WHERE workflow_id = ?", "json") == (1,)


@pytest.mark.parametrize("value", PICKLED_VALUES, ids=repr)
def test_other_values_fall_back_to_pickle_and_keep_their_type(db, engines, value):
    app = engines(db)
    echo = define_echo(app)
    with litedur.SetWorkflowID("pickled"):
        echo(value)
    with litedur.Client(db) as client:
        status = client.get_status("pickled")
        assert same(status.output, value)
        assert same(status.inputs["args"][0], value)
        assert same(client.list_steps("pickled")[0].output, value)
    if not on_sqlite(db):
        return
    encoding, kind = raw_row(
        db, "SELECT output_encoding, typeof(output) FROM workflows WHERE workflow_id = ?", "pickled"
    )
    assert (encoding, kind) == (PICKLED, "blob")


def test_nan_is_pickled_not_stored_as_invalid_json(db, engines):
    app = engines(db)
    echo = define_echo(app)
    with litedur.SetWorkflowID("nan"):
        echo(float("nan"))
    assert math.isnan(app.get_status("nan").output)
    if on_sqlite(db):
        assert raw_row(db, "SELECT output_encoding FROM workflows WHERE workflow_id = 'nan'") == (PICKLED,)


def define_tuples(app: litedur.Engine, crash: bool):
    @app.step()
    def make():
        return (1, (2, 3)), {1: "one"}, [("a", 1)]

    @app.workflow(name="tuples")
    def tuples(arg):
        made = make()
        if crash:
            raise Crash()
        return {"arg": arg, "made": made}

    return tuples


def test_tuples_are_not_turned_into_lists_on_replay_or_in_arguments(db, engines):
    first = engines(db, executor_id="first")
    tuples = define_tuples(first, crash=True)
    with litedur.SetWorkflowID("tuples"), pytest.raises(Crash):
        tuples(("x", ["y"]))
    first.shutdown()

    second = engines(db, executor_id="second")
    define_tuples(second, crash=False)
    second.launch()
    result = second.retrieve_workflow("tuples").get_result(timeout=20)
    assert same(result, {"arg": ("x", ["y"]), "made": ((1, (2, 3)), {1: "one"}, [("a", 1)])})
    assert same(second.get_status("tuples").inputs, {"args": (("x", ["y"]),), "kwargs": {}})


@pytest.mark.parametrize("how", ["start_workflow", "direct call", "keyword", "nested"])
def test_an_argument_that_cannot_be_stored_raises_serialization_error_before_any_write(db, engines, how):
    app = engines(db)
    ran = []

    @app.workflow()
    def flow(*args, **kwargs):
        ran.append(args)
        return "ran"

    app.launch()
    with litedur.SetWorkflowID("unstorable"), pytest.raises(litedur.SerializationError) as info:
        if how == "start_workflow":
            app.start_workflow(flow, Unstorable())
        elif how == "direct call":
            flow(1, Unstorable())
        elif how == "keyword":
            flow(value=Unstorable())
        else:
            flow([1, {"deep": (Unstorable(),)}])
    assert "Unstorable" in str(info.value)
    assert isinstance(info.value, litedur.LitedurError)
    assert ran == []
    assert app.list_workflows() == []
    with pytest.raises(litedur.WorkflowNotFoundError):
        app.get_status("unstorable")
    with litedur.SetWorkflowID("unstorable"):  # the id was not taken
        assert flow("fine") == "ran"


def test_a_step_or_workflow_result_that_cannot_be_stored_fails_the_workflow_clearly(db, engines):
    app = engines(db)

    @app.step()
    def bad_step():
        return Unstorable()

    @app.workflow()
    def bad_step_flow():
        bad_step()
        return "unreachable"

    @app.workflow()
    def bad_result_flow():
        return [Unstorable()]

    app.launch()
    with litedur.SetWorkflowID("bad-step"):
        step_handle = app.start_workflow(bad_step_flow)
    with pytest.raises(litedur.SerializationError, match="Unstorable"):
        step_handle.get_result(timeout=10)
    [step] = app.list_steps("bad-step")
    assert isinstance(step.error, litedur.SerializationError) and step.output is None

    with litedur.SetWorkflowID("bad-result"):
        result_handle = app.start_workflow(bad_result_flow)
    with pytest.raises(litedur.SerializationError, match="Unstorable"):
        result_handle.get_result(timeout=10)
    status = app.get_status("bad-result")
    assert status.status == "ERROR" and status.output is None


def test_a_grouped_commit_keeps_one_callers_error_to_that_caller(tmp_path):
    """Writes queued behind the write lock commit together; a statement that fails (here: a str that
    cannot be encoded as UTF-8) is undone alone, and the others land."""
    from litedur.storage import SQLiteStorage

    storage = SQLiteStorage(tmp_path / "group.db")
    outcomes: dict[str, object] = {}

    def create(workflow_id: str, inputs: str) -> None:
        try:
            outcomes[workflow_id] = storage.create_workflow(workflow_id, "wf", (0, inputs), "executor")[0]
        except Exception as exc:
            outcomes[workflow_id] = type(exc).__name__

    try:
        with storage._write_lock:  # someone is writing: both callers queue for one commit
            threads = [threading.Thread(target=create, args=args) for args in (("good", "ok"), ("bad", "\ud800"))]
            for thread in threads:
                thread.start()
            wait_until(lambda: len(storage._grouped) == 2)
        for thread in threads:
            thread.join(10)
        assert outcomes == {"good": True, "bad": "UnicodeEncodeError"}
        assert storage.get_workflow("good") is not None and storage.get_workflow("bad") is None
    finally:
        storage.close()
