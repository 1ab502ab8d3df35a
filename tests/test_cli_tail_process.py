"""`litedur tail` as a real process: it follows a writer through SIGKILL and recovery, exits right."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import SideEffectLog, finish, kill, spawn, wait_until

import litedur


def words(count: int, start: int = 0) -> str:
    return "".join(f"wörd{index} " for index in range(start, count))


def stream_length(db: Path, workflow_id: str, key: str = "tokens") -> int:
    """Values in the stream so far; 0 while the database or the workflow does not exist yet."""
    try:
        with litedur.Client(db, unpickle=False) as client:
            return next((s.length for s in client.list_streams(workflow_id) if s.key == key), 0)
    except (litedur.DatabaseError, litedur.WorkflowNotFoundError):
        return 0


# `python -m litedur` with Python's own SIGINT handler even if this test runs where SIGINT is
# ignored (a background job), since a child inherits an ignored SIGINT and Python then keeps it.
INTERRUPTIBLE = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'litedur'; runpy.run_module('litedur', run_name='__main__', alter_sys=True)"
)


@pytest.fixture
def start_tail(tmp_path):
    """Start ``litedur --db DB tail ARGS`` with stdout and stderr in files; killed after the test."""
    started: list[subprocess.Popen] = []

    def start(db: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
        out, err = tmp_path / "tail.out", tmp_path / "tail.err"
        command = [sys.executable, "-c", INTERRUPTIBLE, "--db", str(db), "tail", *args]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            started.append(subprocess.Popen(command, stdout=stdout, stderr=stderr))
        return started[-1], out, err

    yield start
    for process in started:
        kill(process)


def text_of(path: Path) -> str:
    return path.read_bytes().decode()


def test_tail_follows_the_writer_through_sigkill_and_recovery(tmp_path, start_tail):
    db, gate, log = tmp_path / "w.db", tmp_path / "gate", tmp_path / "effects.log"
    first = spawn("cli_writer.py", db, "wf", 30, "--gate", 5, gate, "--die-at", 17, "--log", log)
    try:
        wait_until(lambda: stream_length(db, "wf") >= 5)
        tail, out, err = start_tail(db, "wf", "tokens")
        wait_until(lambda: text_of(out) == words(5))  # the tail is live before the writer goes on
        gate.touch()
        assert finish(first) == -signal.SIGKILL
        wait_until(lambda: text_of(out) == words(18))
        assert tail.poll() is None  # the writer is dead, the workflow PENDING: the tail keeps following
        second = spawn("cli_writer.py", db, "wf", 30, "--log", log)
        assert finish(second) == 0
        assert finish(tail) == 0
    finally:
        kill(first)
    assert text_of(out) == words(30)
    assert "closed after 30 values" in text_of(err)
    assert SideEffectLog(log).lines() == [f"word {index}" for index in range(30)]
    with litedur.Client(db) as client:
        status = client.get_status("wf")
    assert (status.status, status.recovery_attempts, status.output) == ("SUCCESS", 1, 30)


def test_tail_exits_1_with_the_error_when_the_workflow_fails(tmp_path, start_tail):
    db = tmp_path / "w.db"
    writer = spawn("cli_writer.py", db, "wf", 4, "--gate", 2, tmp_path / "gate", "--fail")
    try:
        wait_until(lambda: stream_length(db, "wf") >= 2)
        tail, out, err = start_tail(db, "wf", "tokens", "--json")
        (tmp_path / "gate").touch()
        assert finish(tail) == 1
        assert finish(writer) == 0
    finally:
        kill(writer)
    lines = text_of(out).splitlines()
    assert lines == [f'{{"offset": {index}, "value": "wörd{index} "}}' for index in range(4)]
    assert text_of(err) == "Error: workflow wf failed: ValueError: the writer failed on purpose\n"


def test_ctrl_c_stops_a_following_tail_quietly_with_130(tmp_path, start_tail):
    db = tmp_path / "w.db"
    writer = spawn("cli_writer.py", db, "wf", 10, "--gate", 3, tmp_path / "never")
    try:
        wait_until(lambda: stream_length(db, "wf") >= 3)
        tail, out, err = start_tail(db, "wf", "tokens")
        wait_until(lambda: text_of(out) == words(3))
        tail.send_signal(signal.SIGINT)
        assert finish(tail) == 130
    finally:
        kill(writer)
    assert text_of(out) == words(3)
    assert text_of(err) == ""


def test_no_follow_prints_what_exists_of_a_live_stream_and_exits(tmp_path, start_tail):
    db = tmp_path / "w.db"
    writer = spawn("cli_writer.py", db, "wf", 10, "--gate", 4, tmp_path / "never")
    try:
        wait_until(lambda: stream_length(db, "wf") >= 4)
        tail, out, err = start_tail(db, "wf", "tokens", "--no-follow", "--from", "1")
        assert finish(tail, timeout=20) == 0
    finally:
        kill(writer)
    assert text_of(out) == words(4, start=1)
    assert "still open at offset 4" in text_of(err)
