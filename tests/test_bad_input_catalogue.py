"""The bad-input catalogue: every case gets an exact exception type (or CLI exit code), a message that
names the culprit, and leaves the database as it was (a logical dump of litedur's tables, or the
sha256 of every file, compared before and after).

Already covered elsewhere and not repeated here: in tests/test_database_errors.py, foreign SQLite
files (three journal modes), files that are not SQLite (text, short, binary), a corrupt header, a
directory, a newer schema version, a missing parent directory, a client on a missing file, an
unwritable directory and a read-only file by permission bits (skipped as root; done here as the user
"nobody" and on a read-only mount), unknown workflow ids for every read call, unstorable workflow
arguments and paths of the wrong type; in tests/test_cli.py, the CLI on a missing database, a text
file, a directory, unknown workflow ids and bad options; in tests/test_streams.py and
tests/test_engine.py, stream calls outside a workflow, already_written in a body, unstorable stream
values, step outputs and results, a workflow id taken by another name.

Cases that need what a test process cannot do to itself run in a child process
(tests/workers/bad_input_child.py): a read-only mount and a tiny full file system (each in a
private mount namespace: ``unshare -m``), dropping root for "nobody" (so permission bits apply), a
file-size limit, another process holding a write transaction or an executor id. Each is skipped,
with the reason, where the machine does not allow it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest
from click.testing import CliRunner, Result
from litedur.cli import main as cli_main
from support import finish, kill, spawn, wait_until

import litedur
import litedur.storage

CHILD = "bad_input_child.py"


# ---- the database every case starts from -------------------------------------------------------------------


def make_db(path: Path) -> Path:
    """kept-1 (SUCCESS): a step wrote "Hello", " world" to the stream "tokens", then the body closed it."""
    app = litedur.Engine(path)

    @app.step(name="say")
    def say() -> str:
        app.write_stream("tokens", "Hello")
        app.write_stream("tokens", " world")
        return "Hello world"

    @app.workflow(name="kept")
    def kept() -> str:
        text = say()
        app.close_stream("tokens")
        return text

    with app, litedur.SetWorkflowID("kept-1"):
        assert kept() == "Hello world"
    return path


@pytest.fixture
def db(tmp_path) -> Path:
    return make_db(tmp_path / "app.db")


def dump(path: Path) -> list:
    """Every row of litedur's tables except the executors' (launching a process registers one)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(30_000)
        return [
            conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("workflows", "steps", "streams", "stream_entries")
        ]
    finally:
        conn.close()


def digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` ("dir" for directories).

    SQLite's ``-shm`` index and an empty ``-wal`` are left out: they hold no data, and a reader of a
    WAL-mode file may create them (and, when the file turns out to be corrupt, leave them behind).
    """
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.name.endswith("-shm") or (path.name.endswith("-wal") and path.stat().st_size == 0):
            continue
        found[str(path.relative_to(directory))] = (
            "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
    return found


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(cli_main, [str(arg) for arg in args], env={"LITEDUR_DB": None, "NO_COLOR": "1"})


# ---- wrong arguments and misuse of the API -----------------------------------------------------------------


@pytest.fixture
def app(db):
    engine = litedur.Engine(db)

    @engine.workflow(name="kept")
    def kept() -> str:
        return "never run again"

    engine.launch()
    yield engine
    engine.shutdown(timeout=10)


def _start(app: litedur.Engine, workflow_id: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` as the body of a new workflow that reports ``(exception type, message)`` or its result."""

    @app.workflow(name=f"probe-{workflow_id}")
    def probe() -> Any:
        try:
            return fn()
        except Exception as exc:
            return [type(exc).__name__, str(exc)]

    with litedur.SetWorkflowID(workflow_id):
        return app.start_workflow(probe).get_result(timeout=30)


def _decorate(factory: Callable[[], Callable]) -> None:
    factory()(lambda: None)


API_CASES = [
    # (id, call(app, client, db), exception type, fragments its message must contain)
    ("SetWorkflowID of an int", lambda a, c, d: litedur.SetWorkflowID(42), TypeError, ["workflow id", "42"]),
    ("SetWorkflowID of ''", lambda a, c, d: litedur.SetWorkflowID(""), TypeError, ["workflow id", "''"]),
    ("read_stream with an int id", lambda a, c, d: c.read_stream(42, "tokens"), TypeError, ["workflow_id", "int"]),
    ("read_stream with an int key", lambda a, c, d: c.read_stream("kept-1", 7), TypeError, ["stream key", "int", "7"]),
    ("read_stream from -1", lambda a, c, d: c.read_stream("kept-1", "tokens", start=-1), ValueError, ["start", "-1"]),
    ("read_stream from '0'", lambda a, c, d: c.read_stream("kept-1", "tokens", start="0"), ValueError,
     ["start", "'0'"]),
    ("read_stream timeout 'soon'", lambda a, c, d: c.read_stream("kept-1", "tokens", timeout="soon"), ValueError,
     ["timeout", "soon"]),
    ("get_status(None)", lambda a, c, d: c.get_status(None), TypeError, ["workflow_id", "NoneType"]),
    ("list_workflows limit -1", lambda a, c, d: c.list_workflows(limit=-1), ValueError, ["limit", "-1"]),
    ("list_workflows limit '5'", lambda a, c, d: c.list_workflows(limit="5"), ValueError, ["limit", "'5'"]),
    ("retrieve_workflow('')", lambda a, c, d: c.retrieve_workflow(""), litedur.WorkflowNotFoundError, ["''"]),
    ("Engine durability 'fast'", lambda a, c, d: litedur.Engine(d, durability="fast"), ValueError,
     ["durability", "fast"]),
    ("Engine executor_id 7", lambda a, c, d: litedur.Engine(d, executor_id=7), TypeError, ["executor_id", "7"]),
    ("Engine max_workers 0", lambda a, c, d: litedur.Engine(d, max_workers=0), ValueError, ["max_workers", "0"]),
    ("Client wait 'sometimes'", lambda a, c, d: litedur.Client(d, wait="sometimes"), ValueError,
     ["wait", "sometimes"]),
    ("step max_attempts 0", lambda a, c, d: a.step(max_attempts=0), ValueError, ["max_attempts", "0"]),
    ("step interval -1", lambda a, c, d: a.step(interval=-1), ValueError, ["interval", "-1"]),
    ("step backoff 'x'", lambda a, c, d: a.step(backoff="x"), ValueError, ["backoff", "'x'"]),
    ("workflow max_recovery_attempts -1", lambda a, c, d: a.workflow(max_recovery_attempts=-1), ValueError,
     ["max_recovery_attempts", "-1"]),
    ("workflow name 5", lambda a, c, d: a.workflow(name=5), TypeError, ["workflow name", "int"]),
    ("start_workflow of a plain function", lambda a, c, d: a.start_workflow(len), TypeError,
     ["len", "not a workflow"]),
    ("a second workflow of the same name", lambda a, c, d: _decorate(lambda: a.workflow(name="kept")),
     litedur.LitedurError, ["'kept'", "already registered"]),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "fragments"), [case[1:] for case in API_CASES],
                         ids=[case[0] for case in API_CASES])  # fmt: skip
def test_a_bad_api_call_raises_its_exact_error_naming_the_culprit_and_changes_nothing(app, db, call, error, fragments):
    with litedur.Client(db) as client:
        before = dump(db)
        with pytest.raises(error) as info:
            call(app, client, db)
        assert type(info.value) is error
        for fragment in fragments:
            assert fragment in str(info.value)
        assert dump(db) == before


IN_WORKFLOW_CASES = [
    # (id, body(app), exception type name, fragments)
    ("write_stream with an int key", lambda a: a.write_stream(42, "v"), "TypeError", ["stream key", "int"]),
    ("close_stream with an int key", lambda a: a.close_stream(42), "TypeError", ["stream key", "int"]),
    ("write_stream to a stream the workflow closed", lambda a: a.write_stream("done", "v"),
     "StreamClosedError", ["'done'", "is closed"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "error", "fragments"), [case[1:] for case in IN_WORKFLOW_CASES],
                         ids=[case[0] for case in IN_WORKFLOW_CASES])  # fmt: skip
def test_a_bad_call_inside_a_workflow_raises_there_and_writes_nothing(app, db, body, error, fragments):
    def close_then(fn: Callable[[], Any]) -> Any:
        app.close_stream("done")
        return fn()

    before = dump(db)
    outcome = _start(app, "misuse", lambda: close_then(lambda: body(app)))
    assert outcome[0] == error
    assert all(fragment in outcome[1] for fragment in fragments), outcome
    assert dump(db)[3] == before[3] + [(2, 0, -1, None, -1, 0, None)]  # only the close's end-of-stream entry
    assert [(s.key, s.length) for s in app.list_streams("misuse")] == [("done", 0)]


@pytest.mark.parametrize("group_writes", [True, False], ids=["grouped writes", "one commit per write"])
def test_a_step_writing_to_a_closed_stream_gets_stream_closed_error_naming_it(tmp_path, group_writes):
    app = litedur.Engine(make_db(tmp_path / "app.db"), group_writes=group_writes)

    @app.step()
    def late() -> list:
        try:
            app.write_stream("tokens", "too late")
        except litedur.StreamClosedError as exc:
            return [type(exc).__name__, str(exc), app.already_written("tokens")]
        return ["accepted"]

    @app.workflow(name="closer")
    def closer() -> list:
        app.write_stream("tokens", "only")
        app.close_stream("tokens")
        return late()

    with app:
        before = dump(app.path)
        with litedur.SetWorkflowID("closer-1"):
            outcome = app.start_workflow(closer).get_result(timeout=30)
        assert outcome == ["StreamClosedError", "stream 'tokens' of workflow 'closer-1' is closed", []]
        assert list(app.read_stream("closer-1", "tokens", timeout=10)) == ["only"]
        assert dump(app.path)[3][: len(before[3])] == before[3]  # kept-1's entries untouched


def test_already_written_with_an_int_key_is_a_type_error_in_a_step(app, db):
    @app.step()
    def step() -> list:
        try:
            app.already_written(42)
        except TypeError as exc:
            return ["TypeError", str(exc)]
        return ["accepted"]

    before = dump(db)
    assert _start(app, "aw", step) == ["TypeError", "stream key must be a str, not int (42)"]
    assert dump(db)[2:] == before[2:]  # no stream, no entry


def test_an_unknown_stream_key_of_a_finished_workflow_reads_as_empty_and_creates_nothing(app, db):
    before = dump(db)
    assert list(app.read_stream("kept-1", "no-such-key", timeout=5)) == []
    assert app.list_streams("kept-1")[0].key == "tokens"
    result = run_cli("--db", db, "tail", "kept-1", "no-such-key")
    assert (result.exit_code, result.stdout) == (0, "")
    assert dump(db) == before


def test_waiting_on_a_pending_workflow_times_out_naming_it_and_its_key(app, db):
    gate = threading.Event()

    @app.workflow(name="parked")
    def parked() -> str:
        app.write_stream("tokens", "one")
        gate.wait(30)
        return "done"

    try:
        with litedur.SetWorkflowID("parked-1"):
            handle = app.start_workflow(parked)
        with pytest.raises(TimeoutError) as info:
            handle.get_result(timeout=0.05)
        assert "'parked-1'" in str(info.value) and "0.05" in str(info.value)
        reader = app.read_stream("parked-1", "no-such-key", timeout=0.05)
        with pytest.raises(TimeoutError) as info:
            next(reader)
        assert "'no-such-key'" in str(info.value) and "'parked-1'" in str(info.value)
        reader.close()
    finally:
        gate.set()
    assert handle.get_result(timeout=30) == "done"


def test_an_executor_id_held_by_another_live_process_is_refused_naming_it(db):
    holder = spawn(CHILD, "hold-executor", db, "shared-executor", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = dump(db)
        app = litedur.Engine(db, executor_id="shared-executor")
        with pytest.raises(litedur.ExecutorError) as info:
            app.launch()
        assert "'shared-executor'" in str(info.value) and "another live process" in str(info.value)
        app.shutdown(timeout=5)
        assert dump(db) == before
    finally:
        holder.stdin.close()
        assert finish(holder) == 0


# ---- files and paths that are not usable databases ---------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scramble_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(5)
    data[4096:] = bytes(rng.randrange(256) for _ in range(len(data) - 4096))  # page 1 (the schema) stays
    path.write_bytes(bytes(data))


def _empty_sqlite(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA page_size = 4096; VACUUM")  # a valid SQLite file without a table
    conn.close()


FILE_CASES = [
    # (id, how to spoil the file of a made database, fragments of the error the first read gets)
    ("truncated to half", _truncate, ["corrupt"]),
    ("pages after the first overwritten with random bytes", _scramble_pages, ["corrupt"]),
    ("an empty file", lambda path: path.write_bytes(b""), ["no litedur database", "empty"]),
    ("an empty SQLite database of another tool", lambda path: (path.unlink(), _empty_sqlite(path)),
     ["no litedur database", "empty"]),
]  # fmt: skip


@pytest.mark.parametrize(("spoil", "fragments"), [case[1:] for case in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_a_spoilt_file_gives_a_database_error_to_readers_and_exit_2_and_stays_as_it_is(db, spoil, fragments):
    spoil(db)
    directory = db.parent
    before = digest(directory)

    def first_read() -> None:
        with litedur.Client(db) as client:
            client.list_workflows()

    with pytest.raises(litedur.DatabaseError) as info:
        first_read()
    assert str(db) in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)
    for args in (["workflows"], ["info"], ["show", "kept-1"], ["tail", "kept-1", "tokens"]):
        result = run_cli("--db", db, *args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("Error: ") and str(db) in result.stderr
        assert "Traceback" not in result.output
    assert digest(directory) == before


@pytest.mark.parametrize("spoil", [_truncate, _scramble_pages], ids=["truncated", "scrambled"])
def test_an_engine_on_a_corrupt_file_fails_clearly_and_changes_nothing(db, spoil):
    spoil(db)
    before = digest(db.parent)
    with pytest.raises(litedur.DatabaseError) as info:
        app = litedur.Engine(db)
        try:
            app.launch()
        finally:
            app.shutdown(timeout=5)
    assert str(db) in str(info.value) and "corrupt" in str(info.value)
    after = digest(db.parent)
    after.pop(f"{db.name}-executors", None)  # its lock directory, made before the database refused
    before.pop(f"{db.name}-executors", None)
    assert after == before


def test_a_foreign_sqlite_file_or_a_newer_schema_exits_2_in_the_cli(tmp_path, db):
    foreign = tmp_path / "foreign.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE people (name TEXT); INSERT INTO people VALUES ('alice')")
    conn.close()
    newer = db
    conn = apsw.Connection(str(newer))
    conn.execute(f"PRAGMA user_version = {litedur.storage.SCHEMA_VERSION + 1}")
    conn.close()
    before = digest(tmp_path)
    for path, fragment in ((foreign, "another application"), (newer, "upgrade litedur")):
        result = run_cli("--db", path, "info")
        assert result.exit_code == 2
        assert str(path) in result.stderr and fragment in result.stderr
    assert digest(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_at_the_path_is_a_database_error_and_exit_2(tmp_path):
    path = tmp_path / "pipe.db"
    os.mkfifo(path)
    for opener in (litedur.Engine, litedur.Client):
        with pytest.raises(litedur.DatabaseError) as info:
            opener(path)
        assert str(path) in str(info.value)
    assert run_cli("--db", path, "workflows").exit_code == 2
    assert sorted(os.listdir(tmp_path)) == ["pipe.db"]


def test_a_dangling_symlink_is_not_followed_into_a_new_database(tmp_path):
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "missing-dir" / "target.db")
    with pytest.raises(litedur.DatabaseError) as info:
        litedur.Client(link)
    assert str(link) in str(info.value) and "no litedur database" in str(info.value)
    with pytest.raises(litedur.DatabaseError) as info:
        litedur.Engine(link)
    assert str(link) in str(info.value)
    result = run_cli("--db", link, "info")
    assert result.exit_code == 2 and str(link) in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["link.db"]


def test_an_executors_path_taken_by_a_file_is_a_database_error_naming_it(db):
    blocker = Path(f"{db}-executors")
    shutil.rmtree(blocker)
    blocker.write_text("not a directory")
    before = dump(db)
    app = litedur.Engine(db)
    with pytest.raises(litedur.DatabaseError) as info:
        app.launch()
    assert str(blocker) in str(info.value) and "File exists" in str(info.value)
    app.shutdown(timeout=5)
    assert dump(db) == before and blocker.read_text() == "not a directory"


def test_cli_usage_errors_name_the_option(db):
    for args, option in ((["tail", "kept-1", "tokens", "--from", "abc"], "--from"),
                         (["workflows", "--limit", "-3"], "--limit")):  # fmt: skip
        result = run_cli("--db", db, *args)
        assert result.exit_code == 2 and option in result.stderr, result.output
    result = run_cli("--db", db, "streams", "")
    assert (result.exit_code, result.stderr) == (2, "Error: no workflow with id ''\n")


# ---- a file another process holds locked -------------------------------------------------------------------


@pytest.fixture
def lock_holder(db):
    """A child process holding a write transaction (BEGIN IMMEDIATE + an update) on ``db`` until released."""
    holder = spawn(CHILD, "hold-lock", db, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"

    def release() -> None:
        if holder.poll() is None:
            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert finish(holder) == 0

    yield release
    release()
    kill(holder)


def test_a_file_locked_by_another_process_still_reads_and_a_writer_fails_clearly_after_the_busy_timeout(
    db, lock_holder, monkeypatch
):
    monkeypatch.setattr(litedur.storage.sqlite, "BUSY_TIMEOUT_MS", 1000)
    before = dump(db)
    with litedur.Client(db) as client:  # readers are not blocked by a writer
        assert client.get_status("kept-1").output == "Hello world"
        assert list(client.read_stream("kept-1", "tokens", timeout=5)) == ["Hello", " world"]
    result = run_cli("--db", db, "tail", "kept-1", "tokens")
    assert (result.exit_code, result.stdout) == (0, "Hello world")
    app = litedur.Engine(db)

    @app.workflow(name="fresh")
    def fresh() -> str:
        return "fresh"

    with pytest.raises(litedur.DatabaseError) as info:
        app.launch()
    message = str(info.value)
    assert str(db) in message and "locked" in message and "another connection" in message
    lock_holder()
    assert dump(db) == before  # the holder rolled back; the refused writer wrote nothing
    app.launch()  # the lock is gone: writing works
    with litedur.SetWorkflowID("fresh-1"):
        assert fresh() == "fresh"
    app.shutdown(timeout=10)


def test_a_writer_waits_out_another_process_write_transaction_and_loses_nothing(db, lock_holder):
    app = litedur.Engine(db)

    @app.workflow(name="fresh")
    def fresh() -> str:
        app.write_stream("out", "written")
        return "fresh"

    outcome: dict[str, Any] = {}

    def write() -> None:
        outcome["started"] = True
        try:
            app.launch()
            with litedur.SetWorkflowID("waited"):
                outcome["result"] = fresh()
        except BaseException as exc:
            outcome["error"] = exc

    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: outcome.get("started"))
    assert "result" not in outcome  # it cannot have written while the other process holds the lock
    lock_holder()
    writer.join(30)
    assert outcome.get("result") == "fresh", outcome
    assert list(app.read_stream("waited", "out", timeout=5)) == ["written"]
    app.shutdown(timeout=10)


# ---- read-only, full and size-limited files (child processes) ----------------------------------------------


@functools.lru_cache(maxsize=1)
def mount_namespaces() -> str | None:
    """None if this process may make private mounts (``unshare -m``), else why not."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs Linux with unshare(1) and mount(8)"
    with tempfile.TemporaryDirectory() as scratch:
        probe = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o size=64k tmpfs {scratch} && mount -o remount,ro {scratch}"],
            capture_output=True, timeout=30,
        )  # fmt: skip
    if probe.returncode != 0:
        return f"cannot make private mounts here (needs CAP_SYS_ADMIN): {probe.stderr.decode().strip()}"
    return None


def in_mount_namespace(setup: str, *args: object) -> dict:
    """Run the child with ``args`` in a private mount namespace after the shell commands ``setup``."""
    command = " ".join(f"'{arg}'" for arg in [sys.executable, str(Path(__file__).parent / "workers" / CHILD), *args])
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", f"{setup} && exec {command}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def failed_with(result: dict, error: str, *fragments: str) -> None:
    assert not result["ok"], result
    assert result["type"] == error, result
    for fragment in fragments:
        assert fragment.lower() in result["message"].lower(), (fragment, result)


def test_on_a_read_only_mount_readers_and_the_cli_work_and_writers_fail_clearly(db):
    if mount_namespaces():
        pytest.skip(mount_namespaces())
    directory = db.parent
    before = digest(directory)
    results = in_mount_namespace(f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory}",
                                 "readonly", db)  # fmt: skip
    assert results["read"] == {"ok": True, "type": None, "message": "",
                               "value": ["Hello world", ["Hello", " world"], ["kept-1"]]}  # fmt: skip
    failed_with(results["launch"], "DatabaseError", str(db), "read-only")
    failed_with(results["run a workflow"], "DatabaseError", str(db), "read-only")
    for command in ("workflows", "show", "tail", "info"):
        assert results[f"cli {command}"]["value"][0] == 0, results[f"cli {command}"]
    assert results["cli tail"]["value"][1] == "Hello world"
    assert json.loads(results["cli workflows"]["value"][1])[0]["workflow_id"] == "kept-1"
    assert digest(directory) == before


@pytest.fixture
def shared_directory():
    """A directory that the user "nobody" owns (tmp_path's parents are closed to other users)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop to the user nobody; tests/test_database_errors.py covers the rest")
    directory = Path(tempfile.mkdtemp(prefix="litedur-nobody-"))
    directory.chmod(0o755)
    os.chown(directory, 65534, -1)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.parametrize("executors", ["new", "another user's"])
def test_a_file_nobody_may_write_reads_and_refuses_writers_clearly(shared_directory, executors):
    db = make_db(shared_directory / "app.db")  # root's, mode 0600: nobody may not even read it
    db.chmod(0o644)
    lock_directory = Path(f"{db}-executors")
    if executors == "new":
        shutil.rmtree(lock_directory)
    before = db.read_bytes()
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "workers" / CHILD), "unprivileged", str(db)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["read"]["value"] == ["Hello world", ["Hello", " world"], ["kept-1"]], results["read"]
    if executors == "new":
        failed_with(results["launch"], "DatabaseError", str(db), "read-only")
    else:  # root's lock directory: the executor cannot even make its lock file
        failed_with(results["launch"], "DatabaseError", str(lock_directory), "Permission denied")
    assert results["run a workflow"]["type"] == "DatabaseError"
    assert db.read_bytes() == before


def test_a_full_disk_is_a_clear_error_earlier_data_stays_and_writing_works_once_space_is_back(tmp_path):
    if mount_namespaces():
        pytest.skip(mount_namespaces())
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    results = in_mount_namespace(f"mount -t tmpfs -o size=4m tmpfs {mount_point}", "disk-full", mount_point)
    full_db = str(mount_point / "full.db")
    assert results["before"]["value"] == 5
    failed_with(results["start while full"], "DatabaseError", full_db, "disk full", "create workflow 'refused'")
    assert results["unchanged by the refused start"]["value"] is True
    assert results["read while full"]["value"] is True
    failed_with(results["full mid-stream"], "DatabaseError", full_db, "disk full", "'during'")
    assert results["status of the interrupted workflow"]["value"] == "PENDING"  # resumed later, never lost
    written = results["its values so far"]["value"]
    assert written == [f"{i:04d}" for i in range(len(written))] and len(written) < 40
    assert results["after"]["value"] == 5  # space is back: writing works
    assert results["interrupted workflow after a restart"]["value"] == 40
    assert results["lengths"]["value"] == [5, 40, 5]  # every value once, the interrupted run's kept
    assert results["integrity"]["value"] == [["ok"]]


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_a_file_size_limit_is_a_clear_error_and_writing_works_once_it_is_raised(db):
    before = dump(db)
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "workers" / CHILD), "file-size-limit", str(db)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    failed_with(
        results["over the limit"], "DatabaseError", str(db), "append to stream 'values' of 'too-big'", "I/O error"
    )
    assert results["read"]["value"] == "Hello world"
    assert results["after"]["value"] == 20
    # The run that hit the limit could not record its error either: it stayed PENDING, and the same
    # live process resumed it (its periodic recovery used to skip its own executor's workflows, so
    # it waited for a restart, and get_result in that process never returned).
    assert results["resumed in this process"]["value"] == 400, results["resumed in this process"]
    after = dump(db)
    assert [row for row in after[0] if row[0] == "kept-1"] == before[0]  # earlier data intact
    with litedur.Client(db) as client:
        assert list(client.read_stream("fits", "values", timeout=5)) == [f"{i:04d}" + "y" * 2000 for i in range(20)]
        big = list(client.read_stream("too-big", "values", timeout=5))
        assert big == [f"{i:04d}" + "y" * 2000 for i in range(400)]  # each value once, none lost
        assert client.get_status("too-big").recovery_attempts >= 1
