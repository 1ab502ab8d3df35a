"""Events, messages, durable sleep and child workflows in one process, on a real file.

A "crash" here is `Crash`, a BaseException nothing records: the workflow stays PENDING, the engine is
shut down (its executor lock released) and a second Engine on the same file recovers it. Kills of
real processes are in test_communication_processes.py.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from support import SideEffectLog, on_sqlite, raw_rows, wait_until

import litedur


class Crash(BaseException):
    """Stands in for the process dying mid-workflow."""


class Unstorable:
    def __reduce__(self):
        raise TypeError("refuses to be pickled")


@pytest.fixture
def db(location) -> str:
    return location("talk.db")


def file_digest(db: str) -> str:
    """The database's content, every row of every table, as a plain client sees it."""
    if on_sqlite(db):
        tables = raw_rows(db, "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
    else:
        schema = db.rsplit("schema=", 1)[1]
        tables = raw_rows(db, "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", schema)
    dump = [(table, raw_rows(db, f"SELECT * FROM {table} ORDER BY 1, 2")) for (table,) in sorted(tables)]
    return hashlib.sha256(repr(dump).encode()).hexdigest()


def steps_named(app: litedur.Client, workflow_id: str, name: str) -> list[litedur.StepInfo]:
    return [step for step in app.list_steps(workflow_id) if step.name == name]


# ---- events ---------------------------------------------------------------------------------------


def test_latest_event_value_wins_and_every_key_is_listed(db, engines):
    app = engines(db)

    @app.step()
    def in_step() -> None:
        app.set_event("from_step", {"ok": True})

    @app.workflow()
    def phases() -> str:
        app.set_event("phase", "drafting")
        app.set_event("phase", "done")
        in_step()
        return "ok"

    with app:
        handle = app.start_workflow(phases)
        assert handle.get_result(timeout=10) == "ok"
        assert app.get_event(handle.workflow_id, "phase", timeout=1) == "done"
        assert app.list_events(handle.workflow_id) == {"phase": "done", "from_step": {"ok": True}}
    with litedur.Client(db) as client:
        assert client.list_events(handle.workflow_id) == {"phase": "done", "from_step": {"ok": True}}


def test_get_event_waits_until_the_key_is_set_and_is_woken_by_it(db, engines):
    app = engines(db)
    release = threading.Event()

    @app.workflow()
    def slow_phase() -> None:
        release.wait(10)
        app.set_event("phase", "ready")
        app.recv(timeout=10)

    with app:
        handle = app.start_workflow(slow_phase)
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(app.get_event(handle.workflow_id, "phase", timeout=10)))
        waiter.start()
        release.set()
        waiter.join(10)
        assert got == ["ready"]
        app.send(handle.workflow_id, "bye")
        handle.get_result(timeout=10)


def test_get_event_returns_none_on_timeout_and_at_once_for_an_ended_workflow(db, engines):
    app = engines(db)

    @app.workflow()
    def quiet() -> None:
        app.recv(timeout=10)

    with app:
        handle = app.start_workflow(quiet)
        started = time.monotonic()
        assert app.get_event(handle.workflow_id, "never", timeout=0.2) is None
        assert 0.2 <= time.monotonic() - started < 5
        app.send(handle.workflow_id, "end")
        handle.get_result(timeout=10)
        started = time.monotonic()
        assert app.get_event(handle.workflow_id, "never", timeout=30) is None
        assert time.monotonic() - started < 5  # the workflow ended: nobody can set it any more


def test_set_event_in_a_body_is_a_checkpoint_and_survives_a_crash(db, engines, tmp_path):
    log = SideEffectLog(tmp_path / "effects.log")
    first = engines(db)

    def define(app: litedur.Engine, crash: bool):
        @app.workflow(name="evented")
        def evented() -> dict:
            app.set_event("phase", "one")
            log.record("after set")
            if crash:
                raise Crash()
            app.set_event("phase", "two")
            return app.list_events(app_id[0])

        return evented

    app_id: list[str] = []
    evented = define(first, crash=True)
    with litedur.SetWorkflowID("ev-1"):
        app_id.append("ev-1")
        with pytest.raises(Crash):
            evented()
    first.shutdown()
    with litedur.Client(db) as client:
        assert client.list_events("ev-1") == {"phase": "one"}
    second = engines(db)
    define(second, crash=False)
    second.launch()
    assert second.retrieve_workflow("ev-1").get_result(timeout=10) == {"phase": "two"}
    assert [step.name for step in second.list_steps("ev-1")] == ["litedur.set_event:phase"] * 2
    assert log.count("after set") == 2  # the body re-ran; the recorded set_event was not repeated


# ---- messages ---------------------------------------------------------------------------------------


def test_messages_are_received_in_order_per_topic(db, engines):
    app = engines(db)

    @app.workflow()
    def inbox() -> dict:
        return {
            "b": [app.recv("b", timeout=10) for _ in range(2)],
            "none": [app.recv(timeout=10) for _ in range(3)],
        }

    with app:
        handle = app.start_workflow(inbox)
        for value in [1, {"two": 2}, [3]]:
            app.send(handle.workflow_id, value)
        app.send(handle.workflow_id, "b1", topic="b")
        app.send(handle.workflow_id, "b2", topic="b")
        assert handle.get_result(timeout=10) == {"b": ["b1", "b2"], "none": [1, {"two": 2}, [3]]}
        assert app.list_messages(handle.workflow_id) == []


def test_recv_returns_none_after_its_timeout(db, engines):
    app = engines(db)

    @app.workflow()
    def impatient() -> object:
        return app.recv(timeout=0.2)

    with app:
        started = time.monotonic()
        assert impatient() is None
        assert 0.2 <= time.monotonic() - started < 5


def test_a_message_consumed_before_a_crash_is_not_received_again(db, engines):
    first = engines(db)

    def define(app: litedur.Engine, crash: bool):
        @app.workflow(name="once")
        def once() -> list:
            got = [app.recv(timeout=10)]
            if crash:
                raise Crash()
            got.append(app.recv(timeout=10))
            return got

        return once

    once = define(first, crash=True)
    with litedur.SetWorkflowID("m-1"):
        handle = first.start_workflow(once)
    first.send("m-1", "first")
    wait_until(lambda: steps_named(first, "m-1", "litedur.recv"))
    first.send("m-1", "second")
    first.shutdown(timeout=10)  # the run died of Crash after its first recv
    second = engines(db)
    define(second, crash=False)
    second.launch()
    assert handle.workflow_id == "m-1"
    assert second.retrieve_workflow("m-1").get_result(timeout=10) == ["first", "second"]
    assert [s.output for s in steps_named(second, "m-1", "litedur.recv")] == ["first", "second"]


def test_an_idempotency_key_makes_a_retried_send_land_once(db, engines):
    app = engines(db)

    @app.workflow()
    def two() -> list:
        return [app.recv(timeout=10), app.recv(timeout=0.3)]

    with app:
        handle = app.start_workflow(two)
        for _ in range(3):
            app.send(handle.workflow_id, "pay", idempotency_key="order-7")
        assert handle.get_result(timeout=10) == ["pay", None]


def test_a_send_from_a_workflow_body_is_a_checkpoint(db, engines):
    first = engines(db)

    def define(app: litedur.Engine, crash: bool):
        @app.workflow(name="receiver")
        def receiver() -> list:
            return [app.recv(timeout=10), app.recv(timeout=0.3)]

        @app.workflow(name="sender")
        def sender(target: str) -> None:
            app.send(target, "hello")
            if crash:
                raise Crash()

        return receiver, sender

    receiver, sender = define(first, crash=True)
    first.launch()
    with litedur.SetWorkflowID("r-1"):
        first.start_workflow(receiver)
    with litedur.SetWorkflowID("s-1"), pytest.raises(Crash):
        sender("r-1")
    first.shutdown(timeout=10)
    second = engines(db)
    define(second, crash=False)
    second.launch()
    second.retrieve_workflow("s-1").get_result(timeout=10)
    assert second.retrieve_workflow("r-1").get_result(timeout=10) == ["hello", None]


def test_sending_to_an_ended_workflow_names_its_status_and_writes_nothing(db, engines):
    app = engines(db)

    @app.workflow()
    def done() -> int:
        return 1

    with app:
        done_id = app.start_workflow(done).workflow_id
        app.retrieve_workflow(done_id).get_result(timeout=10)
    before = file_digest(db)
    with litedur.Client(db) as client:
        with pytest.raises(litedur.WorkflowStatusError, match="SUCCESS") as caught:
            client.send(done_id, "too late")
        assert caught.value.status == "SUCCESS"
        with pytest.raises(litedur.WorkflowNotFoundError, match="nobody"):
            client.send("nobody", "hi")
        with pytest.raises(litedur.SerializationError, match="Unstorable"):
            client.send(done_id, Unstorable())
        with pytest.raises(TypeError, match="topic"):
            client.send(done_id, "x", topic=3)
    assert file_digest(db) == before


def test_a_refused_send_inside_a_workflow_is_recorded_and_raised_again_on_replay(db, engines):
    app = engines(db)

    @app.workflow()
    def ended() -> None:
        return None

    @app.workflow(name="stubborn")
    def stubborn(target: str) -> str:
        try:
            app.send(target, "late")
        except litedur.WorkflowStatusError as exc:
            return f"refused: {exc.status}"
        return "sent"

    with app:
        target = app.start_workflow(ended)
        target.get_result(timeout=10)
        assert stubborn(target.workflow_id) == "refused: SUCCESS"


# ---- durable sleep ----------------------------------------------------------------------------------


def test_sleep_keeps_its_original_deadline_across_a_restart(db, engines):
    def define(app: litedur.Engine):
        @app.workflow(name="napper")
        def napper() -> float:
            app.sleep(1.0)
            return time.time()

        return napper

    first = engines(db)
    napper = define(first)
    first.launch()
    started = time.time()
    with litedur.SetWorkflowID("nap-1"):
        first.start_workflow(napper)
    deadline = wait_until(lambda: _timer_of(db, "nap-1"))  # recorded before the first wait
    assert started + 1.0 <= deadline < started + 2.0
    first.shutdown(timeout=10)  # interrupts the sleep: the workflow stays PENDING
    with litedur.Client(db) as client:
        assert client.get_status("nap-1").status == "PENDING"
    second = engines(db)
    define(second)
    second.launch()
    woke = second.retrieve_workflow("nap-1").get_result(timeout=10)
    assert deadline <= woke < deadline + 0.5
    assert [s.name for s in second.list_steps("nap-1")] == ["litedur.sleep"]


def _timer_of(db: Path, workflow_id: str) -> float | None:
    rows = raw_rows(db, "SELECT deadline FROM timers WHERE workflow_id = ?", workflow_id)
    return rows[0][0] if rows else None


def test_a_passed_sleep_deadline_wakes_at_once_on_recovery(db, engines):
    first = engines(db)

    @first.workflow(name="short_nap")
    def short_nap() -> str:
        app_sleep(0.3)
        return "awake"

    app_sleep = first.sleep
    first.launch()
    with litedur.SetWorkflowID("nap-2"):
        first.start_workflow(short_nap)
    wait_until(lambda: _timer_of(db, "nap-2"))
    first.shutdown(timeout=10)
    wait_until(lambda: time.time() > (_timer_of(db, "nap-2") or 0) + 0.2, timeout=5)
    second = engines(db)

    @second.workflow(name="short_nap")
    def short_nap_again() -> str:
        second.sleep(0.3)
        return "awake"

    started = time.monotonic()
    second.launch()
    assert second.retrieve_workflow("nap-2").get_result(timeout=10) == "awake"
    assert time.monotonic() - started < 1.0


def test_shutdown_interrupts_waits_without_recording_anything(db, engines):
    app = engines(db)

    @app.workflow(name="waiter")
    def waiter() -> object:
        return app.recv(timeout=60)

    app.launch()
    with litedur.SetWorkflowID("w-1"):
        app.start_workflow(waiter)
    wait_until(lambda: _timer_of(db, "w-1"))
    started = time.monotonic()
    app.shutdown(timeout=30)
    assert time.monotonic() - started < 5
    with litedur.Client(db) as client:
        assert client.get_status("w-1").status == "PENDING"
        assert client.list_steps("w-1") == []
        client.send("w-1", "later")
    again = engines(db)

    @again.workflow(name="waiter")
    def waiter_again() -> object:
        return again.recv(timeout=60)

    again.launch()
    assert again.retrieve_workflow("w-1").get_result(timeout=10) == "later"


# ---- children ---------------------------------------------------------------------------------------


def test_a_child_started_in_a_body_is_a_checkpoint_with_a_derived_id(db, engines, tmp_path):
    log = SideEffectLog(tmp_path / "children.log")
    first = engines(db)

    def define(app: litedur.Engine, crash: bool):
        @app.step(name="child_effect")
        def child_effect(n: int) -> None:
            log.record(f"child {n}")

        @app.workflow(name="child")
        def child(n: int) -> int:
            child_effect(n)
            return n * 10

        @app.workflow(name="parent")
        def parent() -> list:
            handles = [app.start_workflow(child, n) for n in range(2)]
            if crash:
                for handle in handles:
                    wait_until(lambda h=handle: app.get_status(h.workflow_id).status == "SUCCESS")
                raise Crash()
            return [handle.get_result() for handle in handles]

        return parent

    parent = define(first, crash=True)
    first.launch()
    with litedur.SetWorkflowID("p-1"), pytest.raises(Crash):
        parent()
    first.shutdown(timeout=10)
    second = engines(db)
    define(second, crash=False)
    second.launch()
    assert second.retrieve_workflow("p-1").get_result(timeout=10) == [0, 10]
    children = sorted(w.workflow_id for w in second.list_workflows(name="child"))
    assert children == ["p-1-0", "p-1-1"]
    assert all(second.get_status(c).parent_id == "p-1" for c in children)
    assert sorted(log.lines()) == ["child 0", "child 1"]
    names = [s.name for s in second.list_steps("p-1")]
    assert names == ["litedur.start_workflow", "litedur.start_workflow", "litedur.get_result", "litedur.get_result"]


def test_a_childs_exception_is_recorded_by_the_parents_get_result(db, engines):
    app = engines(db)

    @app.workflow(name="failing_child")
    def failing_child() -> None:
        raise ValueError("child broke")

    @app.workflow(name="careful_parent")
    def careful_parent() -> str:
        try:
            app.start_workflow(failing_child).get_result()
        except ValueError as exc:
            return f"caught {exc}"
        return "no error"

    with app:
        with litedur.SetWorkflowID("cp"):
            assert careful_parent() == "caught child broke"
        (get_result,) = steps_named(app, "cp", "litedur.get_result")
        assert isinstance(get_result.error, ValueError)


def test_bad_inputs_are_clear_errors(db, engines):
    app = engines(db)

    @app.workflow()
    def listener() -> object:
        return app.recv(timeout=0)

    with app:
        with pytest.raises(litedur.NotInWorkflowError, match="recv.*outside a workflow"):
            app.recv()
        with pytest.raises(litedur.NotInWorkflowError, match="set_event"):
            app.set_event("k", 1)
        with pytest.raises(litedur.WorkflowNotFoundError, match="ghost"):
            app.get_event("ghost", "k", timeout=0)
        with pytest.raises(litedur.WorkflowNotFoundError, match="ghost"):
            app.list_events("ghost")
        with pytest.raises(ValueError, match="timeout"):
            app.get_event("ghost", "k", timeout=-1)
        with pytest.raises(TypeError, match="event key"):
            app.get_event("ghost", 5, timeout=0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="sleep"):
            app.sleep(-1)
        assert listener() is None


def test_parents_waiting_for_children_do_not_starve_a_small_pool(db, engines):
    app = engines(db, max_workers=2)

    @app.workflow(name="kid")
    def kid(n: int) -> int:
        return n * 2

    @app.workflow(name="parent")
    def parent(n: int) -> int:
        return app.start_workflow(kid, n).get_result()

    with app:
        handles = [app.start_workflow(parent, n) for n in range(10)]  # 10 waiting parents, 2 slots
        assert [handle.get_result(timeout=20) for handle in handles] == [n * 2 for n in range(10)]
