"""`litedur migrate` (`litedur.storage.transfer.copy_database`): a SQLite file with real history copied
into PostgreSQL and back into a new file, compared row for row; refusals, all-or-nothing, the CLI.

The PostgreSQL parts skip, with the fixture's reason, when no server can be started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import pytest
from pg_server import pg_server_url, pg_url
from support import raw_rows, wait_until

import litedur
from litedur.storage import HttpEntry, HttpProducer, HttpStreamSpec, open_storage
from litedur.storage.transfer import TABLES, copy_database

FIXTURES = (pg_server_url, pg_url)  # imported for pytest, which finds them by name
BULK = 2_500  # stream values of one workflow: more than two batches of the copy
NOT_COMPARED = {"workflow_changes"}  # each database's own wake-up feed: not copied
MAYBE_EMPTY = {"purging"}  # a deletion this small finishes at once


# ---- the history: real engine activity on a SQLite file ------------------------------------------


def build_history(path: str) -> None:
    """Workflows that succeed, fail, have a child, stream (text, JSON, pickles, thousands of values),
    set events, receive one message and leave one pending, sleep; a queue holding work, a schedule,
    a deleted workflow (its stream ids stay used), HTTP streams with a producer and a tombstone, and
    a crashed executor's record."""
    app = litedur.Engine(path)
    jobs = app.queue("jobs", concurrency=2, limiter={"limit": 10, "period": 60}, priority_enabled=True)

    @app.step()
    def tokens(prompt: str) -> str:
        for word in prompt.split():
            app.write_stream("tokens", word + " ")
        app.write_stream("blobs", b"\x00\xffraw")
        return prompt.upper()

    @app.workflow(name="chat")
    def chat(prompt: str) -> dict:
        app.set_event("phase", "streaming")
        answer = tokens(prompt)
        app.close_stream("tokens")
        app.set_event("phase", {"done": True, "at": 1.5})
        app.write_stream("log", ("a tuple", 1))
        return {"answer": answer, "pickled": {1, 2}}

    @app.step()
    def explode() -> None:
        app.write_stream("partial", "héllo ✓ 🎉")
        raise ValueError("boom")

    @app.workflow(name="fails")
    def fails() -> None:
        explode()

    @app.workflow(name="helper")
    def helper(n: int) -> int:
        return n * 2

    @app.workflow(name="parent")
    def parent() -> int:
        return app.start_workflow(helper, 21).get_result()

    @app.workflow(name="listener")
    def listener() -> Any:
        first = app.recv(topic="go", timeout=30)
        app.sleep(0.01)
        return first

    @app.step()
    def many() -> int:
        for i in range(BULK):
            app.write_stream("numbers", i)
        return BULK

    @app.workflow(name="bulk")
    def bulk() -> int:
        return many()

    @app.scheduled("0 0 1 1 *", name="yearly")
    @app.workflow(name="new_year")
    def new_year(scheduled_time: Any, actual_time: Any) -> None:
        return None

    with app:
        _run(app, "chat-1", chat, "durable streams keep order")
        with litedur.SetWorkflowID("fail-1"), pytest.raises(ValueError):
            fails()
        _run(app, "parent-1", parent)
        _run(app, "bulk-1", bulk)
        with litedur.SetWorkflowID("listen-1"):
            waiting = app.start_workflow(listener)
        app.send("listen-1", "first", topic="go")
        app.send("listen-1", {"second": [1, 2]}, topic="go")
        assert waiting.get_result(timeout=30) == "first"
        assert jobs.enqueue(helper, 5).get_result(timeout=30) == 10
        with litedur.SetEnqueueOptions(priority=3, delay_seconds=3600):
            jobs.enqueue(helper, 6)
        app.enqueue("jobs", "offline_job", 7)  # registered by no process: stays ENQUEUED
        _run(app, "gone-1", chat, "deleted soon")
        app.delete_workflow("gone-1")
    _add_storage_rows(path)


def _run(app: litedur.Engine, workflow_id: str, fn: Any, *args: Any) -> Any:
    with litedur.SetWorkflowID(workflow_id):
        return fn(*args)


def _add_storage_rows(path: str) -> None:
    """HTTP streams as `litedur serve` writes them, and the record of an executor that crashed."""
    storage = open_storage(path)
    now = time.time()
    try:
        storage.register_executor("crashed-executor", 4242, "elsewhere")
        feed = HttpStreamSpec("/v1/feed", "application/json", "application/json", True, ttl=3600)
        storage.create_http_stream(feed, HttpEntry(b'{"a":1}\n', 1), now)
        appended = storage.append_http_stream(
            "/v1/feed", HttpEntry(b'{"b":2}\n', 1), "application/json", producer=HttpProducer("p1", 0, 0), now=now
        )
        assert appended.outcome == "appended"
        closed = HttpStreamSpec("/v1/text", "text/plain", "text/plain", False, closed=True)
        storage.create_http_stream(closed, HttpEntry(b"hi \xe2\x9c\x93", 5), now)
        storage.create_http_stream(HttpStreamSpec("/v1/old", "text/plain", "text/plain", False), None, now)
        assert storage.delete_http_stream("/v1/old", now) == "deleted"
    finally:
        storage.close()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("migrate") / "history.db")
    build_history(path)
    return path


# ---- reading every row of a file -------------------------------------------------------------------


def dump(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (workflows with their rowid, and sqlite_sequence), sorted."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        found = {}
        for name in names:
            if name in NOT_COMPARED:
                continue
            columns = "rowid, *" if name == "workflows" else "*"
            found[name] = sorted(conn.execute(f"SELECT {columns} FROM {name}"), key=repr)
        return found
    finally:
        conn.close()


def counter(path: str, table: str) -> int:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchall()
        return rows[0][0] if rows else 0
    finally:
        conn.close()


# ---- the round trip ----------------------------------------------------------------------------------


def test_history_covers_every_table(history: str) -> None:
    rows = dump(history)
    assert {table.name for table in TABLES} <= set(rows)
    empty = {name for name, found in rows.items() if not found} - MAYBE_EMPTY
    assert not empty, f"the history leaves these tables empty: {empty}"
    assert counter(history, "streams") > max(row[0] for row in rows["streams"])  # gone-1's ids stay used


def test_round_trip_through_postgres_keeps_every_row(history: str, pg_url: str, tmp_path: Path) -> None:
    expected = {name: len(found) for name, found in dump(history).items() if name in {t.name for t in TABLES}}

    assert copy_database(history, pg_url) == expected
    back = str(tmp_path / "back.db")
    assert copy_database(pg_url, back) == expected

    first, last = dump(history), dump(back)
    assert set(first) == set(last)
    for name in first:
        assert first[name] == last[name], f"table {name} differs after the round trip"


def test_postgres_copy_reads_like_the_file(history: str, pg_url: str) -> None:
    copy_database(history, pg_url)
    with litedur.Client(history) as original, litedur.Client(pg_url) as copied:
        assert _workflows(copied) == _workflows(original)
        assert "".join(copied.read_stream("chat-1", "tokens", timeout=5)) == "durable streams keep order "
        assert list(copied.read_stream("chat-1", "blobs", timeout=5)) == [b"\x00\xffraw"]
        assert list(copied.read_stream("chat-1", "log", timeout=5)) == [("a tuple", 1)]
        assert list(copied.read_stream("fail-1", "partial", timeout=5)) == ["héllo ✓ 🎉"]
        assert list(copied.read_stream("bulk-1", "numbers", timeout=5)) == list(range(BULK))
        assert copied.get_event("chat-1", "phase", timeout=0) == {"done": True, "at": 1.5}
        assert _steps(copied, "chat-1") == _steps(original, "chat-1")
        assert isinstance(copied.get_status("fail-1").error, ValueError)
        assert copied.get_status("chat-1").output == {"answer": "DURABLE STREAMS KEEP ORDER", "pickled": {1, 2}}
        assert [message.message for message in copied.list_messages("listen-1")] == [{"second": [1, 2]}]
        assert copied.get_status("parent-1-0").parent_id == "parent-1"
        jobs = {queue.name: queue for queue in copied.list_queues()}["jobs"]
        assert jobs.enqueued == 2 and jobs.concurrency == 2
        assert [schedule.name for schedule in copied.list_schedules()] == ["yearly"]


def _workflows(client: litedur.Client) -> list[tuple[Any, ...]]:
    return [
        (s.workflow_id, s.name, s.status, s.created_at, s.updated_at, s.inputs, repr(s.error), s.queue_name)
        for s in client.list_workflows()
    ]


def _steps(client: litedur.Client, workflow_id: str) -> list[tuple[Any, ...]]:
    return [(step.position, step.name, step.output) for step in client.list_steps(workflow_id)]


def test_new_ids_in_the_destinations_follow_the_copied_ones(history: str, pg_url: str, tmp_path: Path) -> None:
    copy_database(history, pg_url)
    back = str(tmp_path / "back.db")
    copy_database(pg_url, back)
    used = counter(history, "streams")
    for location in (pg_url, back):
        _run_fresh_workflow(location)
        with litedur.Client(location) as client:
            assert [s.workflow_id for s in client.list_workflows(limit=1)] == ["fresh-1"]  # newest, after the copies
        assert _stream_id(location, "fresh-1") > used


def _run_fresh_workflow(location: str) -> None:
    """``fresh-1``, which writes one value to a new stream, run on ``location``."""
    app = litedur.Engine(location)

    @app.workflow(name="fresh")
    def fresh() -> None:
        app.write_stream("new", 1)

    with app, litedur.SetWorkflowID("fresh-1"):
        fresh()


def _stream_id(location: str, workflow_id: str) -> int:
    if location.startswith("postgresql"):
        import psycopg

        from litedur.storage.postgres import split_url

        conninfo, schema = split_url(location)
        with psycopg.connect(conninfo) as conn:
            query = f'SELECT stream_id FROM "{schema}".streams WHERE workflow_id = %s'
            return conn.execute(query, (workflow_id,)).fetchall()[0][0]
    conn = apsw.Connection(location, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT stream_id FROM streams WHERE workflow_id = ?", (workflow_id,)).fetchall()[0][0]
    finally:
        conn.close()


# ---- refusals and all-or-nothing ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "destination.db")
    return request.getfixturevalue("pg_url")


def test_a_non_empty_destination_is_refused_and_replace_empties_it(history: str, destination: str) -> None:
    other = litedur.Engine(destination)

    @other.workflow(name="local")
    def local() -> str:
        other.write_stream("s", "mine")
        return "mine"

    with other, litedur.SetWorkflowID("local-1"):
        local()

    with pytest.raises(
        litedur.DatabaseError, match=r"is not empty \(it holds rows in workflows, .*\): pass replace=True"
    ):
        copy_database(history, destination)
    assert _ids(destination) == {"local-1"}

    counts = copy_database(history, destination, replace=True)
    assert counts["workflows"] == len(_ids(history))
    assert _ids(destination) == _ids(history)


def test_a_failure_part_way_leaves_the_destination_as_it_was(history: str, destination: str) -> None:
    copy_database(history, destination)
    before = _ids(destination)
    seen: list[tuple[str, int]] = []

    def stop_in_stream_entries(table: str, rows: int) -> None:
        seen.append((table, rows))
        if table == "stream_entries" and rows > 1000:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        copy_database(history, destination, replace=True, progress=stop_in_stream_entries)
    assert ("stream_entries", 2000) in seen  # batches of 1,000 rows
    assert _ids(destination) == before
    with litedur.Client(destination) as client:
        assert list(client.read_stream("bulk-1", "numbers", timeout=5)) == list(range(BULK))


def _ids(location: str) -> set[str]:
    with litedur.Client(location) as client:
        return {status.workflow_id for status in client.list_workflows()}


def test_a_missing_source_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    destination = tmp_path / "out.db"
    with pytest.raises(litedur.DatabaseError, match=r"source: no litedur database at .*missing\.db"):
        copy_database(str(tmp_path / "missing.db"), str(destination))
    assert not destination.exists()


def test_a_missing_postgres_schema_is_refused_and_nothing_is_created(pg_url: str, tmp_path: Path) -> None:
    destination = tmp_path / "out.db"
    with pytest.raises(litedur.DatabaseError, match=r"source: no litedur database at postgresql://.*does not exist"):
        copy_database(pg_url, str(destination))
    assert not destination.exists()


def test_a_source_that_is_not_litedur_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x')")
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just some text that is long enough\n" * 20)
    destination = tmp_path / "out.db"
    with pytest.raises(litedur.DatabaseError, match=r"source: .*foreign\.db is a SQLite database of another"):
        copy_database(str(foreign), str(destination))
    with pytest.raises(litedur.DatabaseError, match=r"source: .*notes\.txt"):
        copy_database(str(text), str(destination))
    assert not destination.exists()


def test_a_destination_that_is_not_litedur_is_refused_untouched(history: str, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(litedur.DatabaseError, match=r"destination: .*foreign\.db is a SQLite database of another"):
        copy_database(history, str(foreign))
    assert foreign.read_bytes() == before


def test_the_source_file_itself_is_refused_as_destination(history: str, tmp_path: Path) -> None:
    before = dump(history)
    link = tmp_path / "link.db"
    os.symlink(history, link)
    for same in (history, os.path.relpath(history), str(link)):
        with pytest.raises(litedur.DatabaseError, match="into itself"):
            copy_database(history, same, replace=True)
    assert dump(history) == before


def test_the_source_schema_itself_is_refused_as_destination(history: str, pg_url: str) -> None:
    copy_database(history, pg_url)
    for same in (pg_url, pg_url + "&sslmode=disable"):
        with pytest.raises(litedur.DatabaseError, match="into itself"):
            copy_database(pg_url, same, replace=True)
    assert _ids(pg_url) == _ids(history)


def test_a_live_source_is_copied_in_one_snapshot(tmp_path: Path) -> None:
    """A workflow keeps appending while the file is copied: the copy holds a dense prefix."""
    source, copied = str(tmp_path / "live.db"), str(tmp_path / "copy.db")
    app = litedur.Engine(source)
    stop, started = threading.Event(), threading.Event()

    @app.step()
    def writer() -> int:
        written = 0
        while not stop.is_set():
            app.write_stream("live", written)
            written += 1
            if written == 100:
                started.set()
        return written

    @app.workflow(name="live")
    def live() -> int:
        return writer()

    with app:
        with litedur.SetWorkflowID("live-1"):
            handle = app.start_workflow(live)
        assert started.wait(30)
        wait_until(lambda: raw_rows(source, "SELECT count(*) FROM stream_entries")[0][0] >= 100)  # committed
        copy_database(source, copied)
        stop.set()
        total = handle.get_result(timeout=30)
    conn = apsw.Connection(copied, flags=apsw.SQLITE_OPEN_READONLY)
    offsets = [row[0] for row in conn.execute('SELECT "offset" FROM stream_entries ORDER BY "offset"')]
    status = conn.execute("SELECT status FROM workflows WHERE workflow_id = 'live-1'").fetchall()[0][0]
    conn.close()
    assert 100 <= len(offsets) <= total and offsets == list(range(len(offsets)))
    assert status == "PENDING"


# ---- the command line ----------------------------------------------------------------------------------


def migrate(*args: object) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "LITEDUR_DB"}
    command = [sys.executable, "-m", "litedur", "migrate", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_cli_migrate_copies_refuses_and_replaces(history: str, tmp_path: Path) -> None:
    destination = tmp_path / "cli.db"
    done = migrate(history, destination, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["destination"] == str(destination)
    assert report["rows"]["workflows"] == len(_ids(history))
    assert report["rows"]["stream_entries"] > BULK

    refused = migrate(history, destination)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "is not empty" in refused.stderr and "--replace" in refused.stderr

    replaced = migrate(history, destination, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "stream_entries" in replaced.stdout and "copied" in replaced.stderr

    missing = migrate(tmp_path / "nope.db", tmp_path / "other.db")
    assert missing.returncode == 2 and "no litedur database" in missing.stderr
    assert not (tmp_path / "other.db").exists()


def test_cli_migrate_into_postgres_and_back(history: str, pg_url: str, tmp_path: Path) -> None:
    there = migrate(history, pg_url, "--json")
    assert there.returncode == 0, there.stderr
    back = tmp_path / "back.db"
    returned = migrate(pg_url, back)
    assert returned.returncode == 0, returned.stderr
    assert json.loads(there.stdout)["rows"]["workflows"] == len(_ids(str(back)))
