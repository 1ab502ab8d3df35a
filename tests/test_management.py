"""Cancel, resume, fork and timeouts in one process, on a real file (real kills: test_communication_processes)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support import stream_entries, wait_until
from test_communication import file_digest

import litedur


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "manage.db"


@pytest.fixture
def app(db):
    engine = litedur.Engine(db)
    engine.launch()
    yield engine
    engine.shutdown(timeout=10)


def status(app: litedur.Client, workflow_id: str) -> str:
    return app.get_status(workflow_id).status


# ---- cancel -------------------------------------------------------------------------------------------


def test_cancel_wakes_a_waiting_workflow_ends_its_readers_and_says_why(app, db):
    @app.workflow(name="waits")
    def waits() -> object:
        app.write_stream("progress", "waiting")
        return app.recv(timeout=60)

    with litedur.SetWorkflowID("c-1"):
        handle = app.start_workflow(waits)
    reader = app.read_stream("c-1", "progress", timeout=10)
    assert next(reader) == "waiting"
    wait_until(lambda: app.list_steps("c-1") and len(app.list_steps("c-1")) == 1)
    started = time.monotonic()
    assert app.cancel_workflow("c-1") is True
    assert list(reader) == []  # the reader ends: cancel closed the stream
    with pytest.raises(litedur.WorkflowCancelledError, match="cancelled on request"):
        handle.get_result(timeout=10)
    assert time.monotonic() - started < 5
    found = app.get_status("c-1")
    assert (found.status, found.cancel_reason) == ("CANCELLED", "cancelled on request")
    assert [(s.key, s.closed_by) for s in app.list_streams("c-1")] == [("progress", "termination")]
    assert app.cancel_workflow("c-1") is False  # already ended: a no-op


def test_a_cancelled_run_starts_no_step_and_records_nothing_more(app, db, log):
    in_step, release = threading.Event(), threading.Event()

    @app.step(name="long")
    def long_step() -> str:
        in_step.set()
        release.wait(10)
        app.write_stream("out", "after cancel")  # refused: the stream was closed by the cancel
        return "long done"

    @app.step(name="next")
    def next_step() -> None:
        log.record("next step ran")

    @app.workflow(name="two_steps")
    def two_steps() -> None:
        long_step()
        next_step()

    with litedur.SetWorkflowID("c-2"):
        handle = app.start_workflow(two_steps)
    assert in_step.wait(10)
    app.cancel_workflow("c-2")
    release.set()
    with pytest.raises(litedur.WorkflowCancelledError):
        handle.get_result(timeout=10)
    wait_until(lambda: "c-2" not in app._executor.running)
    assert app.list_steps("c-2") == []
    assert stream_entries(db, "c-2", "out") == []
    assert log.lines() == []
    assert status(app, "c-2") == "CANCELLED"


def test_cancelling_a_parent_cancels_its_children_and_resume_brings_them_back(app):
    @app.workflow(name="kid")
    def kid() -> object:
        return app.recv(timeout=60)

    @app.workflow(name="mother")
    def mother() -> list:
        handles = [app.start_workflow(kid) for _ in range(2)]
        return [h.get_result() for h in handles]

    with litedur.SetWorkflowID("m"):
        handle = app.start_workflow(mother)
    wait_until(lambda: len(app.list_workflows(name="kid")) == 2)
    app.cancel_workflow("m")
    for kid_id in ("m-0", "m-1"):
        found = app.get_status(kid_id)
        assert found.status == "CANCELLED"
        assert found.cancel_reason.startswith("cancelled with its parent 'm'")
    app.resume_workflow("m")
    wait_until(lambda: status(app, "m-0") == status(app, "m-1") == "PENDING" and status(app, "m") == "PENDING")
    wait_until(lambda: all(app.get_status(k).executor_id for k in ("m-0", "m-1")))
    app.send("m-0", "a")
    app.send("m-1", "b")
    assert handle.get_result(timeout=10) == ["a", "b"]


def test_cancel_of_a_finished_workflow_changes_nothing(app, db):
    @app.workflow()
    def quick() -> int:
        return 1

    done = app.start_workflow(quick)
    done.get_result(timeout=10)
    before = file_digest(db)
    assert app.cancel_workflow(done.workflow_id) is False
    with pytest.raises(litedur.WorkflowNotFoundError):
        app.cancel_workflow("nobody")
    assert file_digest(db) == before
    assert status(app, done.workflow_id) == "SUCCESS"


# ---- resume -------------------------------------------------------------------------------------------


def test_resume_continues_from_the_last_checkpoint_and_a_reader_gets_the_rest(app, db, log):
    gate = threading.Event()

    @app.step(name="produce", max_attempts=1)
    def produce(n: int) -> int:
        done = len(app.already_written("numbers"))
        for i in range(done, n):
            if i == 3 and not gate.is_set():
                log.record("paused at 3")
                gate.wait(30)
            app.write_stream("numbers", i)
        return n

    @app.workflow(name="numbers")
    def numbers() -> int:
        app.write_stream("closed_early", "x")
        app.close_stream("closed_early")
        total = produce(6)
        app.close_stream("numbers")
        return total

    with litedur.SetWorkflowID("r-1"):
        handle = app.start_workflow(numbers)
    wait_until(lambda: log.count("paused at 3"))
    first_reader = app.read_stream("r-1", "numbers", timeout=10)
    app.cancel_workflow("r-1")
    seen = list(first_reader)
    assert seen == [0, 1, 2]
    gate.set()  # the run wakes up, its next write is refused, and it stops
    with pytest.raises(litedur.WorkflowCancelledError):
        handle.get_result(timeout=10)
    wait_until(lambda: "r-1" not in app._executor.running)
    assert [e[1] for e in stream_entries(db, "r-1", "numbers")] == [0, 1, 2]
    app.resume_workflow("r-1")
    assert app.retrieve_workflow("r-1").get_result(timeout=10) == 6
    rest = list(app.read_stream("r-1", "numbers", start=len(seen), timeout=10))
    assert seen + rest == [0, 1, 2, 3, 4, 5]
    assert [e[0] for e in stream_entries(db, "r-1", "numbers")] == list(range(6))
    streams = {s.key: s.closed_by for s in app.list_streams("r-1")}
    assert streams == {"closed_early": "workflow", "numbers": "workflow"}


def test_resume_refuses_a_workflow_that_is_not_stopped_and_changes_nothing(app, db):
    @app.workflow()
    def waiting() -> object:
        return app.recv(timeout=30)

    @app.workflow()
    def quick() -> int:
        return 2

    running = app.start_workflow(waiting)
    finished = app.start_workflow(quick)
    finished.get_result(timeout=10)
    before = file_digest(db)
    with pytest.raises(litedur.WorkflowStatusError, match="PENDING") as caught:
        app.resume_workflow(running.workflow_id)
    assert caught.value.status == "PENDING"
    with pytest.raises(litedur.WorkflowStatusError, match="SUCCESS"):
        app.resume_workflow(finished.workflow_id)
    with pytest.raises(litedur.WorkflowNotFoundError):
        app.resume_workflow("nobody")
    assert file_digest(db) == before
    app.send(running.workflow_id, "done")
    assert running.get_result(timeout=10) == "done"


def test_resume_after_max_recovery_attempts_runs_the_workflow_again(db):
    with litedur.Engine(db) as app:

        @app.workflow(name="fragile", max_recovery_attempts=0)
        def fragile() -> str:
            return "finally"

        row = app._storage.create_workflow("f-1", "fragile", (1, '{"args":[],"kwargs":{}}'), "dead-executor")
        assert row[0]
        app._recover(include_own=True)
        wait_until(lambda: status(app, "f-1") == "MAX_RECOVERY_ATTEMPTS_EXCEEDED")
        app.resume_workflow("f-1")
        assert app.retrieve_workflow("f-1").get_result(timeout=10) == "finally"
        assert app.get_status("f-1").recovery_attempts == 0  # a resumed run is a first run, not a recovery


# ---- fork ---------------------------------------------------------------------------------------------


def test_fork_reuses_the_steps_before_its_start_and_equals_a_fresh_run(app, db, log):
    @app.step(name="count")
    def count(i: int) -> int:
        log.record(f"step {i}")
        app.write_stream("trace", f"value {i}")
        return i * i

    @app.workflow(name="squares")
    def squares(n: int) -> list:
        return [count(i) for i in range(n)]

    with litedur.SetWorkflowID("orig"):
        original = squares(4)
    with litedur.SetWorkflowID("fork-2"):
        forked = app.fork_workflow("orig", 2)
    assert forked.workflow_id == "fork-2"
    assert forked.get_result(timeout=10) == original == [0, 1, 4, 9]
    assert log.lines() == ["step 0", "step 1", "step 2", "step 3", "step 2", "step 3"]
    assert [e[1] for e in stream_entries(db, "fork-2", "trace")] == [f"value {i}" for i in range(4)]
    assert [e[0] for e in stream_entries(db, "fork-2", "trace")] == [0, 1, 2, 3]
    assert app.get_status("fork-2").inputs == app.get_status("orig").inputs
    generated = app.fork_workflow("orig", 0)
    assert generated.workflow_id not in ("orig", "fork-2")
    assert generated.get_result(timeout=10) == original


def test_fork_bad_inputs(app, db):
    @app.workflow(name="one")
    def one() -> int:
        return 1

    with litedur.SetWorkflowID("o"):
        one()
    before = file_digest(db)
    with pytest.raises(litedur.WorkflowNotFoundError):
        app.fork_workflow("nobody", 0)
    with pytest.raises(ValueError, match="start_step"):
        app.fork_workflow("o", -1)
    with litedur.SetWorkflowID("o"), pytest.raises(litedur.WorkflowConflictError, match="exists"):
        app.fork_workflow("o", 0)
    assert file_digest(db) == before


# ---- timeouts -----------------------------------------------------------------------------------------


def test_a_workflow_timeout_cancels_it_with_a_reason(app):
    @app.workflow(name="sleepy", timeout=0.3)
    def sleepy() -> None:
        app.sleep(30)

    started = time.monotonic()
    handle = app.start_workflow(sleepy)
    with pytest.raises(litedur.WorkflowCancelledError, match="timed out"):
        handle.get_result(timeout=10)
    assert 0.3 <= time.monotonic() - started < 5
    found = app.get_status(handle.workflow_id)
    assert found.status == "CANCELLED" and "timeout 0.3 s" in found.cancel_reason
    assert found.timeout == 0.3 and found.deadline is not None


def test_set_workflow_timeout_applies_to_its_block_and_bounds_children(app):
    inside = threading.Event()

    @app.step(name="stuck")
    def stuck() -> str:
        inside.set()
        time.sleep(1.0)  # a long step: the deadline passes in the middle of it
        return "too late"

    @app.workflow(name="slow_child")
    def slow_child() -> str:
        return stuck()

    @app.workflow(name="patient_parent")
    def patient_parent() -> str:
        return app.start_workflow(slow_child).get_result()

    with litedur.SetWorkflowTimeout(0.3):
        handle = app.start_workflow(patient_parent)
    assert inside.wait(10)
    with pytest.raises(litedur.WorkflowCancelledError):
        handle.get_result(timeout=10)
    child = app.get_status(f"{handle.workflow_id}-0")
    parent = app.get_status(handle.workflow_id)
    assert child.deadline == parent.deadline
    wait_until(lambda: status(app, child.workflow_id) == "CANCELLED")
    assert app.get_status(child.workflow_id).updated_at < parent.created_at + 1.0  # on time, mid-step
    wait_until(lambda: child.workflow_id not in app._executor.running)
    assert app.list_steps(child.workflow_id) == []  # the step's late output was refused
    with litedur.SetWorkflowTimeout(None):
        assert app.start_workflow(slow_child).get_result(timeout=10) == "too late"


def test_resume_clears_the_deadline_of_a_timed_out_workflow(app):
    @app.workflow(name="needs_answer", timeout=0.2)
    def needs_answer() -> object:
        return app.recv(timeout=30)

    handle = app.start_workflow(needs_answer)
    with pytest.raises(litedur.WorkflowCancelledError):
        handle.get_result(timeout=10)
    app.resume_workflow(handle.workflow_id)
    assert app.get_status(handle.workflow_id).deadline is None
    wait_until(lambda: app.get_status(handle.workflow_id).executor_id is not None)
    app.send(handle.workflow_id, "answer")
    assert handle.get_result(timeout=10) == "answer"
