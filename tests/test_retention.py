"""Retention: garbage collection, deletion, space given back, backup, background collection, logging.

Real files and real processes: a writer process streams into a live workflow and a reader process
follows it while this process collects others; a reader of a workflow deleted under it stops with
`WorkflowNotFoundError` after a gap-free prefix.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time

import apsw
import pytest
from support import finish, kill, spawn, wait_until

import litedur
from litedur import retention

KEY = "values"


def rows_of(path, workflow_id: str) -> dict[str, int]:
    """How many rows of each table belong to a workflow, read with plain SQL."""
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        counts = {}
        for table in ("workflows", "steps", "events", "messages", "streams"):
            query = f"SELECT count(*) FROM {table} WHERE workflow_id = ?"
            counts[table] = db.execute(query, (workflow_id,)).fetchall()[0][0]
        query = "SELECT count(*) FROM stream_entries e JOIN streams s USING (stream_id) WHERE s.workflow_id = ?"
        counts["stream_entries"] = db.execute(query, (workflow_id,)).fetchall()[0][0]
        return counts
    finally:
        db.close()


@pytest.fixture
def app(engines, tmp_path):
    app = engines(tmp_path / "r.db")

    @app.step(name="produce")
    def produce(n: int) -> int:
        for i in range(n):
            app.write_stream(KEY, {"i": i, "pad": "x" * 40})
        return n

    @app.workflow(name="streamer")
    def streamer(n: int) -> int:
        app.set_event("done", n)
        return produce(n)

    @app.workflow(name="waiter")
    def waiter() -> object:
        return app.recv(timeout=60)

    app.streamer, app.waiter = streamer, waiter
    app.launch()
    return app


def test_keep_last_deletes_the_older_finished_workflows_with_everything_they_own(app, tmp_path):
    ids = []
    for n in range(5):
        with litedur.SetWorkflowID(f"done-{n}"):
            app.streamer(10)
        ids.append(f"done-{n}")
    waiting = app.start_workflow(app.waiter)
    wait_until(lambda: app.get_status(waiting.workflow_id).status == "PENDING")

    collected = app.garbage_collect(keep_last=2)

    assert sorted(collected.workflows) == ["done-0", "done-1", "done-2"]
    assert collected.values == 30
    for gone in ids[:3]:
        assert set(rows_of(tmp_path / "r.db", gone).values()) == {0}
        with pytest.raises(litedur.WorkflowNotFoundError):
            app.get_status(gone)
    assert rows_of(tmp_path / "r.db", "done-4")["stream_entries"] == 11  # ten values and the end
    assert app.get_status(waiting.workflow_id).status == "PENDING"  # live work is never touched
    app.send(waiting.workflow_id, "go")
    assert waiting.get_result(timeout=20) == "go"


def test_older_than_spares_recent_work_and_dry_run_deletes_nothing(app):
    with litedur.SetWorkflowID("recent"):
        app.streamer(3)
    assert app.garbage_collect(older_than=3600).workflows == []
    assert app.garbage_collect(older_than=0, dry_run=True).workflows == ["recent"]
    assert app.get_status("recent").status == "SUCCESS"
    assert app.garbage_collect(older_than=0).workflows == ["recent"]


def test_bad_arguments_are_refused_by_name(app):
    with pytest.raises(ValueError, match="needs older_than"):
        app.garbage_collect()
    with pytest.raises(ValueError, match="older_than must be"):
        app.garbage_collect(older_than="7d")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_last must be"):
        app.garbage_collect(keep_last=-1)
    with pytest.raises(ValueError, match="retention must be"):
        litedur.Engine(app.path, retention=0)


def test_collecting_a_million_values_gives_the_space_back(app, tmp_path):
    app.streamer(100_000)
    with litedur.SetWorkflowID("keep"):
        app.streamer(10)
    app._storage.checkpoint()
    before = os.path.getsize(tmp_path / "r.db")

    collected = app.garbage_collect(keep_last=1)

    after = os.path.getsize(tmp_path / "r.db")
    assert collected.values == 100_000 and collected.pages_freed > 0
    assert after < before / 5, (before, after)
    assert [value["i"] for value in app.read_stream("keep", KEY)] == list(range(10))


def test_delete_refuses_pending_work_and_takes_children_on_request(app, tmp_path):
    waiting = app.start_workflow(app.waiter)
    wait_until(lambda: app.get_status(waiting.workflow_id).status == "PENDING")
    with pytest.raises(litedur.WorkflowStatusError, match=f"{waiting.workflow_id}.*PENDING"):
        app.delete_workflow(waiting.workflow_id)
    assert rows_of(tmp_path / "r.db", waiting.workflow_id)["workflows"] == 1
    with pytest.raises(litedur.WorkflowNotFoundError):
        app.delete_workflow("no-such-workflow")

    @app.workflow(name="parent")
    def parent() -> int:
        return app.start_workflow(app.streamer, 2).get_result()

    with litedur.SetWorkflowID("family"):
        parent()
    child = "family-0"
    assert app.get_status(child).status == "SUCCESS"
    assert app.delete_workflow("family").workflows == ["family"]
    assert app.get_status(child).status == "SUCCESS"

    with litedur.SetWorkflowID("family-2"):
        parent()
    assert sorted(app.delete_workflow("family-2", children=True).workflows) == ["family-2", "family-2-0"]


def test_reader_of_a_deleted_workflow_stops_with_an_error_after_a_prefix(app, tmp_path):
    with litedur.SetWorkflowID("old"):
        app.streamer(5_000)
    reader = spawn("stream_reader.py", tmp_path / "r.db", "old", KEY, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
    watchdog = threading.Timer(60, reader.kill)
    watchdog.start()
    try:
        lines = [reader.stdout.readline() for _ in range(11)]  # the reader exists, and it is reading
        app.delete_workflow("old")
        lines += reader.stdout.read().splitlines()
        reader.wait()
    finally:
        watchdog.cancel()
        kill(reader)
    values = [json.loads(line)["i"] for line in lines[1:] if line.startswith("{")]
    assert values == list(range(len(values))), "a gap or a reordering"
    assert reader.returncode == 1 and len(values) < 5_000
    assert "WorkflowNotFoundError" in lines[-1] and "'old'" in lines[-1]


def test_collection_beside_a_live_writer_and_reader_loses_nothing(app, tmp_path):
    db = tmp_path / "r.db"
    for _ in range(20):
        app.streamer(200)
    cut_off = time.time()
    writer = spawn("stream_writer.py", db, "live", "step-resume", 2_000, env={"STREAM_PACE": "0.0005"})
    try:
        wait_until(lambda: app._storage.get_workflow("live") is not None)
        reader = spawn("stream_reader.py", db, "live", KEY, stdout=subprocess.PIPE, text=True)
        collected = []
        while writer.poll() is None:  # rounds while the writer writes: only what ended before the cut-off
            collected += app.garbage_collect(older_than=time.time() - cut_off).workflows
        assert finish(writer) == 0
        out, _ = reader.communicate(timeout=60)
    finally:
        kill(writer)
    assert len(collected) == 20 and "live" not in collected
    assert [json.loads(line) for line in out.splitlines()[1:]] == list(range(2_000))
    assert reader.returncode == 0
    assert app.list_workflows() and {w.workflow_id for w in app.list_workflows()} == {"live"}


def test_backup_during_a_write_opens_clean_with_a_prefix_of_every_stream(app, tmp_path):
    writer = spawn("stream_writer.py", tmp_path / "r.db", "busy", "body", 100_000)
    try:
        wait_until(lambda: len(app.list_streams("busy") if app._storage.get_workflow("busy") else []) == 1)
        wait_until(lambda: app.list_streams("busy")[0].length > 1_000)
        copy = app.backup(tmp_path / "copy.db")
    finally:
        kill(writer)
    with litedur.Client(copy) as backup:
        assert backup.info()["schema_version"] == litedur.storage.SCHEMA_VERSION
        length = backup.list_streams("busy")[0].length
        assert length >= 1_000
        reader = backup.read_stream("busy", "values", timeout=0.2)
        got = [next(reader) for _ in range(length)]
        assert got == list(range(length))
    db = apsw.Connection(copy)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    with pytest.raises(FileExistsError, match="copy.db"):
        app.backup(tmp_path / "copy.db")


def test_an_older_file_is_upgraded_to_give_space_back(tmp_path):
    path = tmp_path / "old.db"
    db = apsw.Connection(str(path))  # a file as litedur wrote it at schema version 3
    list(db.execute("PRAGMA journal_mode = WAL"))
    for migration in litedur.storage.sqlite.MIGRATIONS[:3]:
        list(db.execute(migration))
    db.execute(f"PRAGMA application_id = {litedur.storage.sqlite.APPLICATION_ID}")
    db.execute("PRAGMA user_version = 3")
    assert db.execute("PRAGMA auto_vacuum").fetchall()[0][0] == 0
    db.close()
    def auto_vacuum() -> int:
        db = apsw.Connection(str(path))
        try:
            return db.execute("PRAGMA auto_vacuum").fetchall()[0][0]
        finally:
            db.close()

    with litedur.Client(path) as client:  # a reader upgrades the schema but never rebuilds the file
        assert client.info()["schema_version"] == litedur.storage.SCHEMA_VERSION
    assert auto_vacuum() == 0
    litedur.Engine(path).close()  # an engine does, once
    assert auto_vacuum() == 2


def test_engine_retention_collects_in_the_background(engines, tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "RETENTION_CHECK_EVERY", 0.02)
    app = engines(tmp_path / "bg.db", retention=0.01)

    @app.workflow(name="quick")
    def quick() -> int:
        return 1

    with litedur.SetWorkflowID("short-lived"):
        quick()
    app.launch()
    wait_until(lambda: not app.list_workflows())


def test_logging_of_retries_and_collection(app, caplog):
    attempts = []

    @app.step(name="flaky", max_attempts=3, interval=0.001)
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 2:
            raise RuntimeError("first try fails")
        return len(attempts)

    @app.workflow(name="retrying")
    def retrying() -> int:
        return flaky()

    with caplog.at_level(logging.INFO, logger="litedur"):
        assert retrying() == 2
        app.garbage_collect(keep_last=0)
    retried = [r for r in caplog.records if r.levelno == logging.WARNING and "flaky" in r.getMessage()]
    assert retried and "attempt 1 of 3" in retried[0].getMessage() and "first try fails" in retried[0].getMessage()
    assert any("collected 1 workflows" in r.getMessage() for r in caplog.records)


def test_library_is_silent_without_logging_configured():
    handlers = logging.getLogger("litedur").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_recovery_and_exhausted_recoveries_are_logged(engines, tmp_path, caplog):
    path = tmp_path / "logs.db"

    def register(app: litedur.Engine) -> tuple:
        @app.workflow(name="patient")
        def patient() -> object:
            return app.recv(timeout=60)

        @app.workflow(name="fragile", max_recovery_attempts=0)
        def fragile() -> object:
            return app.recv(timeout=60)

        return patient, fragile

    first = engines(path, executor_id="first-executor")
    patient, fragile = register(first)
    first.launch()
    waiting = [first.start_workflow(patient), first.start_workflow(fragile)]
    wait_until(lambda: all(first.get_status(h.workflow_id).status == "PENDING" for h in waiting))
    first.shutdown()  # both stay PENDING, and their executor is gone

    second = engines(path, executor_id="second-executor")
    register(second)
    with caplog.at_level(logging.INFO, logger="litedur"):
        second.launch()
    messages = [record.getMessage() for record in caplog.records]
    patient_id, fragile_id = (handle.workflow_id for handle in waiting)
    recovered = (f"workflow {patient_id} (patient) recovered by executor second-executor "
                 "from dead executor first-executor")
    assert recovered in messages
    assert any(f"workflow {fragile_id} (fragile) reached MAX_RECOVERY_ATTEMPTS_EXCEEDED" in m for m in messages)


def test_out_of_range_arguments_are_refused(app):
    for bad in (float("nan"), float("inf"), -1):
        with pytest.raises(ValueError, match="older_than must be"):
            app.garbage_collect(older_than=bad)
    with pytest.raises(ValueError, match="keep_last must be"):
        app.garbage_collect(keep_last=2**63)
    with pytest.raises(ValueError, match="retention must be"):
        litedur.Engine(app.path, retention=float("nan"))


@pytest.mark.parametrize("group_writes", [True, False], ids=["grouped", "one commit per value"])
def test_deleting_a_cancelled_workflow_whose_step_still_runs_stops_the_run_cleanly(engines, tmp_path, group_writes):
    app = engines(tmp_path / "c.db", group_writes=group_writes)
    release, writing = threading.Event(), threading.Event()

    @app.step(name="slow")
    def slow() -> None:
        app.write_stream(KEY, 1)
        writing.set()
        release.wait(20)
        app.write_stream(KEY, 2)  # the workflow is gone by now

    @app.workflow(name="doomed")
    def doomed() -> None:
        slow()

    @app.workflow(name="other")
    def other(n: int) -> int:
        app.write_stream(KEY, n)
        return n

    app.launch()
    handle = app.start_workflow(doomed)
    assert writing.wait(20)
    assert app.cancel_workflow(handle.workflow_id)
    assert app.delete_workflow(handle.workflow_id).workflows == [handle.workflow_id]
    release.set()
    with pytest.raises((litedur.WorkflowNotFoundError, litedur.StaleRunError, litedur.WorkflowCancelledError)):
        handle.get_result(timeout=20)
    assert other(7) == 7  # the file is not left locked by the stopped run
    with litedur.Client(app.path) as client:
        assert client.get_status(app.list_workflows()[0].workflow_id).status == "SUCCESS"


def test_a_reader_of_a_deleted_workflow_never_reads_a_newer_stream(app, tmp_path):
    with litedur.SetWorkflowID("old"):
        app.streamer(20_000)  # more than a reader fetches at once
    reader = app.read_stream("old", KEY)
    assert [next(reader)["i"] for _ in range(5)] == list(range(5))
    app.delete_workflow("old")
    with litedur.SetWorkflowID("new"):
        app.streamer(3_000)
    rest = []
    with pytest.raises(litedur.WorkflowNotFoundError, match="'old'"):
        for value in reader:
            rest.append(value["i"])
    assert rest == list(range(5, 5 + len(rest))) and len(rest) < 20_000 - 5  # the old stream's, in order
    assert [stream.length for stream in app.list_streams("new")] == [3_000]
    assert [value["i"] for value in app.read_stream("new", KEY, start=2_998)] == [2_998, 2_999]


def test_an_id_deleted_but_not_yet_purged_can_run_again(app, tmp_path):
    with litedur.SetWorkflowID("again"):
        app.streamer(500)
    assert app._storage.delete_workflows(["again"]) == ["again"]  # a collection that crashed here
    assert rows_of(tmp_path / "r.db", "again")["steps"] == 2  # set_event and produce
    with litedur.SetWorkflowID("again"):
        assert app.streamer(3) == 3
    assert [value["i"] for value in app.read_stream("again", KEY)] == [0, 1, 2]
    app.garbage_collect(older_than=3600)
    assert app.get_status("again").status == "SUCCESS"
    assert [value["i"] for value in app.read_stream("again", KEY)] == [0, 1, 2]
    assert rows_of(tmp_path / "r.db", "again")["steps"] == 2  # set_event and produce


def test_a_finished_child_of_a_running_parent_is_kept(app):
    release = threading.Event()

    @app.workflow(name="slow_parent")
    def slow_parent() -> int:
        child = app.start_workflow(app.streamer, 2)
        app.recv(timeout=30)
        return child.get_result()

    with litedur.SetWorkflowID("parent"):
        handle = app.start_workflow(slow_parent)
    wait_until(lambda: app._storage.get_workflow("parent-0") and app.get_status("parent-0").status == "SUCCESS")
    assert app.garbage_collect(keep_last=0).workflows == []
    app.send("parent", "go")
    assert handle.get_result(timeout=20) == 2
    release.set()
    assert sorted(app.garbage_collect(keep_last=0).workflows) == ["parent", "parent-0"]
