"""Bad input gets a clear litedur error naming what was wrong, and nothing on disk changes.

Each case snapshots the files involved (sha256 of every file, and which files exist) before and
after the failing call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

import litedur
from litedur.storage import SCHEMA_VERSION

ROOT_REASON = "running as root (with CAP_DAC_OVERRIDE): permission bits do not stop this process"


@pytest.fixture
def permissions_enforced(tmp_path_factory):
    """Skip unless permission bits stop this process (they do not stop root)."""
    probe = tmp_path_factory.mktemp("probe")
    probe.chmod(0o500)
    try:
        (probe / "x").touch()
    except PermissionError:
        return
    finally:
        probe.chmod(0o700)
    pytest.skip(ROOT_REASON)


class Unstorable:
    """A value no serializer can store."""

    def __reduce__(self):
        raise TypeError("refuses to be pickled")


def snapshot(directory: Path, *, skip_shm: bool = False) -> dict[str, str]:
    """Every path under ``directory``: the sha256 of each file, "dir" for each directory.

    ``skip_shm`` leaves out SQLite's ``-shm`` index, which readers of a WAL file may touch.
    """
    found = {}
    for path in sorted(directory.rglob("*")):
        if skip_shm and path.name.endswith("-shm"):
            continue
        name = str(path.relative_to(directory))
        found[name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def refuse(opener, path: Path, *fragments: str) -> litedur.DatabaseError:
    """``opener(path)`` raises a DatabaseError whose message names the path and every fragment."""
    with pytest.raises(litedur.DatabaseError) as info:
        opener(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, litedur.LitedurError)
    return info.value


OPENERS = [pytest.param(litedur.Engine, id="Engine"), pytest.param(litedur.Client, id="Client")]


def make_litedur_file(path: Path) -> None:
    """A litedur database holding one finished workflow, closed cleanly."""
    app = litedur.Engine(path)

    @app.workflow(name="kept")
    def kept(x):
        return {"kept": x}

    with litedur.SetWorkflowID("kept-1"):
        assert kept(1) == {"kept": 1}
    app.shutdown()


# ---- files that are not litedur databases -----------------------------------------------------


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("journal", ["delete", "wal", "empty-with-app-id"])
def test_a_foreign_sqlite_file_is_refused_and_left_unchanged(tmp_path, opener, journal):
    path = tmp_path / "foreign.db"
    with contextlib.closing(sqlite3.connect(path)) as foreign:
        if journal == "empty-with-app-id":
            foreign.execute("PRAGMA application_id = 12345")
        else:
            foreign.execute(f"PRAGMA journal_mode = {journal}")
            foreign.execute("CREATE TABLE people (name TEXT, age INTEGER)")
            foreign.execute("INSERT INTO people VALUES ('alice', 30), ('bob', 40)")
        foreign.commit()
    before = snapshot(tmp_path)
    refuse(opener, path, "another application")
    assert snapshot(tmp_path) == before
    if journal != "empty-with-app-id":
        with contextlib.closing(sqlite3.connect(path)) as foreign:  # its owner can still use it
            assert foreign.execute("SELECT count(*) FROM people").fetchone() == (2,)


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize(
    "content",
    [b"name,age\nalice,30\n" * 50, b"hi", bytes(range(256)) * 16],
    ids=["text", "short text", "binary"],
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path, opener, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    refuse(opener, path, "not a SQLite file")
    assert snapshot(tmp_path) == before
    assert path.read_bytes() == content


@pytest.mark.parametrize("opener", OPENERS)
def test_a_corrupt_sqlite_file_is_refused_and_left_unchanged(tmp_path, opener):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)
    before = snapshot(tmp_path)
    refuse(opener, path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("opener", OPENERS)
def test_a_directory_is_refused_and_left_unchanged(tmp_path, opener):
    path = tmp_path / "a-directory"
    path.mkdir()
    (path / "inside.txt").write_text("keep me")
    before = snapshot(tmp_path)
    refuse(opener, path, "directory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("opener", OPENERS)
def test_a_newer_schema_version_is_refused_and_left_unchanged(tmp_path, opener):
    path = tmp_path / "future.db"
    make_litedur_file(path)
    newer = SCHEMA_VERSION + 98
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute(f"PRAGMA user_version = {newer}")
        other.commit()
    before = snapshot(tmp_path)
    refuse(opener, path, str(newer), "upgrade litedur")
    assert snapshot(tmp_path) == before
    with contextlib.closing(sqlite3.connect(path)) as other:  # nothing lost
        assert other.execute("SELECT workflow_id, status FROM workflows").fetchall() == [("kept-1", "SUCCESS")]
        assert other.execute("PRAGMA user_version").fetchone() == (newer,)


# ---- locations that cannot hold a database -------------------------------------------------------


@pytest.mark.parametrize("opener", OPENERS)
def test_a_missing_parent_directory_is_an_error_and_is_not_created(tmp_path, opener):
    path = tmp_path / "missing" / "deeper" / "app.db"
    error = refuse(opener, path)
    if opener is litedur.Engine:
        assert "does not exist" in str(error)
    assert snapshot(tmp_path) == {}


def test_a_client_never_creates_a_database(tmp_path):
    path = tmp_path / "absent.db"
    refuse(litedur.Client, path, "no litedur database")
    assert snapshot(tmp_path) == {}


def test_an_unwritable_directory_is_an_error_and_nothing_is_created(tmp_path, permissions_enforced):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refuse(litedur.Engine, locked / "app.db", "not writable")
        assert sorted(os.listdir(locked)) == []
    finally:
        locked.chmod(0o700)


def test_a_read_only_file_can_be_read_but_not_written_and_is_left_unchanged(tmp_path, permissions_enforced):
    path = tmp_path / "readonly.db"
    make_litedur_file(path)
    path.chmod(0o400)
    try:
        before = path.read_bytes()
        with litedur.Client(path) as client:  # readers still work
            assert client.get_status("kept-1").output == {"kept": 1}
        app = litedur.Engine(path)
        try:
            with pytest.raises(litedur.DatabaseError) as info:
                app.launch()
            assert "read-only" in str(info.value) and str(path) in str(info.value)
        finally:
            app.shutdown(timeout=5)
        assert path.read_bytes() == before
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size == 0  # SQLite may leave an empty one
        assert list(Path(f"{path}-executors").iterdir()) == []  # no executor lock left behind
    finally:
        path.chmod(0o600)


# ---- bad calls on a good file ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Engine", "Client"])
def test_an_unknown_workflow_id_is_a_clear_error_and_changes_nothing(tmp_path, kind):
    path = tmp_path / "app.db"
    make_litedur_file(path)
    app = litedur.Engine(path)
    app.launch()
    reader = app if kind == "Engine" else litedur.Client(path)
    try:
        before = snapshot(tmp_path, skip_shm=True)
        calls = {
            "get_status": lambda: reader.get_status("ghost-42"),
            "retrieve_workflow": lambda: reader.retrieve_workflow("ghost-42"),
            "list_steps": lambda: reader.list_steps("ghost-42"),
            "list_streams": lambda: reader.list_streams("ghost-42"),
            "read_stream": lambda: list(reader.read_stream("ghost-42", "tokens", timeout=5)),
        }
        for name, call in calls.items():
            with pytest.raises(litedur.WorkflowNotFoundError) as info:
                call()
            assert "ghost-42" in str(info.value), name
            assert info.value.workflow_id == "ghost-42"
            assert isinstance(info.value, litedur.LitedurError)
        assert snapshot(tmp_path, skip_shm=True) == before
        assert [w.workflow_id for w in reader.list_workflows()] == ["kept-1"]
    finally:
        if reader is not app:
            reader.close()
        app.shutdown(timeout=10)


def test_a_non_serializable_argument_is_a_clear_error_and_changes_nothing(tmp_path):
    path = tmp_path / "app.db"
    make_litedur_file(path)
    app = litedur.Engine(path)

    @app.workflow(name="kept")
    def kept(x):
        return {"kept": x}

    app.launch()
    try:
        before = snapshot(tmp_path, skip_shm=True)
        with litedur.SetWorkflowID("bad-arg"), pytest.raises(litedur.SerializationError, match="Unstorable"):
            app.start_workflow(kept, Unstorable())
        with pytest.raises(litedur.SerializationError, match="Unstorable"):
            kept({"nested": [Unstorable()]})
        assert snapshot(tmp_path, skip_shm=True) == before
        assert [w.workflow_id for w in app.list_workflows()] == ["kept-1"]
    finally:
        app.shutdown(timeout=10)


@pytest.mark.parametrize("bad", [123, b"bytes.db", ["list.db"]], ids=repr)
def test_a_path_of_the_wrong_type_is_a_type_error(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    for opener in (litedur.Engine, litedur.Client):
        with pytest.raises(TypeError, match="path"):
            opener(bad)
    assert snapshot(tmp_path) == {}


# ---- new files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=["umask 022", "umask 000"])
def test_a_new_database_file_is_readable_by_its_owner_only(tmp_path, mask):
    path = tmp_path / "private.db"
    with umask(mask):
        app = litedur.Engine(path)

        @app.workflow(name="write")
        def write():
            return "written"

        app.launch()
        try:
            assert write() == "written"
            for suffix in ("", "-wal", "-shm"):
                sidecar = Path(f"{path}{suffix}")
                if sidecar.exists():
                    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600, suffix
            assert Path(f"{path}-wal").exists()
            executors = Path(f"{path}-executors")  # the executors' lock files
            assert stat.S_IMODE(executors.stat().st_mode) & 0o077 == 0
        finally:
            app.shutdown(timeout=10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("how", ["start_workflow", "direct call"])
def test_a_non_serializable_argument_to_a_fresh_engine_writes_nothing_at_all(tmp_path, how):
    path = tmp_path / "app.db"
    make_litedur_file(path)
    before = snapshot(tmp_path)
    app = litedur.Engine(path)  # opened, never launched: the failing call is its first write

    @app.workflow(name="kept")
    def kept(x):
        return {"kept": x}

    try:
        with pytest.raises(litedur.SerializationError, match="Unstorable"):
            if how == "start_workflow":
                app.start_workflow(kept, Unstorable())
            else:
                kept(Unstorable())
    finally:
        app.shutdown(timeout=10)
    assert snapshot(tmp_path) == before
