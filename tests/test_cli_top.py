"""`litedur top`: the live view in a real pseudo-terminal against a file a worker process writes,
and its one-shot snapshots (plain text and JSON)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from litedur.cli import main
from litedur.cli import top as top_view
from support import SideEffectLog, finish, kill, spawn, wait_until

import litedur
from litedur import StreamInfo

posix_terminal = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a POSIX pseudo-terminal")
PLAIN_ENV = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None, "COLUMNS": None, "LITEDUR_DB": None}
ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>78]")
HOME = b"\x1b[H"  # every redraw of the full screen starts by moving the cursor home
LEAVE_SCREEN, SHOW_CURSOR = b"\x1b[?1049l", b"\x1b[?25h"

# `python -m litedur` on the terminal given as stdin, made its controlling terminal (so Ctrl-C typed
# there interrupts it), with Python's own SIGINT handler even where this test runs with SIGINT ignored.
ON_TERMINAL = (
    "import fcntl, runpy, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'litedur'; runpy.run_module('litedur', run_name='__main__', alter_sys=True)"
)


class Terminal:
    """``litedur --db DB top`` on a pseudo-terminal of ``rows`` x ``columns``: what it drew, keys to type."""

    def __init__(self, db: Path, rows: int = 24, columns: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, columns)
        env = {name: value for name, value in os.environ.items() if name not in PLAIN_ENV and name != "LINES"}
        env["TERM"] = "xterm-256color"
        self.process = subprocess.Popen(
            [sys.executable, "-c", ON_TERMINAL, "--db", str(db), "top"],
            stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True, env=env,
        )  # fmt: skip
        self.output = b""

    def read(self, until: Callable[[bytes], object], timeout: float = 20.0, since: int = 0) -> str:
        """Read what it draws until ``until(output[since:])`` holds; fail after ``timeout`` s. The text, plain."""
        deadline = time.monotonic() + timeout
        while not until(self.output[since:]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not drawn within {timeout} s; the screen shows:\n{self.last_screen()}")
            if select.select([self.master], [], [], left)[0]:
                self.output += os.read(self.master, 65536)
        return plain(self.output[since:])

    def shows(self, pattern: str, since: int = 0, timeout: float = 20.0) -> str:
        """Wait until the screen, drawn after byte ``since``, shows a line matching ``pattern``."""
        return self.read(lambda drawn: re.search(pattern, plain(drawn), re.M), timeout, since)

    def read_for(self, seconds: float) -> None:
        """Read what it draws for ``seconds`` (to measure what it does meanwhile)."""
        deadline = time.monotonic() + seconds
        with contextlib.suppress(AssertionError):
            self.read(lambda drawn: False, timeout=max(0.0, deadline - time.monotonic()))

    def screen(self, holds: Callable[[list[str]], object], since: int = 0, timeout: float = 20.0) -> list[str]:
        """Wait for a redraw after byte ``since`` whose lines satisfy ``holds``; its lines."""

        def found(drawn: bytes) -> list[str] | None:
            return next((lines for lines in screens(drawn) if holds(lines)), None)

        self.read(found, timeout, since)
        result = found(self.output[since:])
        assert result is not None
        return result

    def last_screen(self) -> str:
        frames = self.output.split(HOME)
        return plain(frames[-2] if len(frames) > 2 else frames[-1])

    def resize(self, rows: int, columns: int) -> None:
        """Change the terminal's size (the kernel tells the process with SIGWINCH)."""
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def exit_code(self, timeout: float = 10.0) -> int:
        code = finish(self.process, timeout)
        while select.select([self.master], [], [], 0)[0]:  # the last bytes it wrote
            self.output += os.read(self.master, 65536)
        return code

    def local_modes(self) -> int:
        import termios

        return termios.tcgetattr(self.slave)[3]

    def cpu_seconds(self) -> float:
        """User and system CPU time the process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        kill(self.process)
        os.close(self.master)
        os.close(self.slave)


def screens(drawn: bytes) -> list[list[str]]:
    """The lines of each redraw in ``drawn`` (the last one perhaps incomplete)."""
    return [plain(frame).splitlines() for frame in drawn.split(HOME)[1:]]


def fills(lines: list[str], rows: int, columns: int) -> bool:
    """Whether a redraw is complete on a terminal of that size (rich pads every line to the width)."""
    return len(lines) == rows and all(len(line) == columns for line in lines)


def plain(drawn: bytes) -> str:
    """The text drawn, each redraw starting on a line of its own."""
    return ESCAPES.sub(b"", drawn.replace(HOME, b"\n")).decode("utf-8", "replace")


@pytest.fixture
def terminals():
    """Start `Terminal` s that are killed and closed after the test."""
    started: list[Terminal] = []

    def start(db: Path, **size: int) -> Terminal:
        started.append(Terminal(db, **size))
        return started[-1]

    yield start
    for terminal in started:
        terminal.close()


def stream_length(db: Path, workflow_id: str, key: str) -> int:
    with litedur.Client(db, unpickle=False) as client:
        return next((s.length for s in client.list_streams(workflow_id) if s.key == key), 0)


@pytest.fixture
def busy_db(tmp_path, children) -> tuple[Path, Path]:
    """A file a live worker writes: ticker-1 streams "ticks" (50 a second until STOP exists), job-0 runs
    in the queue "jobs" (concurrency 1) waiting for a message, job-1 and job-2 wait ENQUEUED."""
    db, log, stop = tmp_path / "top.db", tmp_path / "worker.log", tmp_path / "stop"
    children.append(spawn("top_worker.py", db, log, stop))
    wait_until(lambda: SideEffectLog(log).lines() == ["ready"])
    wait_until(lambda: stream_length(db, "ticker-1", "ticks") > 0)
    with litedur.Client(db) as client:
        wait_until(lambda: client.get_status("job-0").status == "PENDING")
    return db, stop


# ---- the live view -------------------------------------------------------------------------------


@posix_terminal
def test_the_live_view_shows_counts_queues_and_a_growing_stream_and_follows_changes(busy_db, terminals):
    db, stop = busy_db
    terminal = terminals(db)
    terminal.shows(r"^workflows 4 +PENDING 2 +ENQUEUED 2 +SUCCESS 0 +ERROR 0")
    terminal.shows(r"^jobs +2 +1 +1 +- +- +off")  # NAME ENQUEUED RUNNING CONCURRENCY PER-WORKER RATE PRIORITY
    terminal.shows(r"^ticker-1 +ticks +\d+ +[1-9]\d*")  # growing: values per second above 0
    terminal.shows(r"^q to quit +last change")
    assert not terminal.local_modes() & _canonical_and_echo()  # the keyboard is read key by key
    mark = len(terminal.output)
    with litedur.Client(db) as client:
        client.send("job-0", "go", topic="go")  # the worker finishes job-0 and takes job-1 from the queue
    terminal.shows(r"^workflows 4 +PENDING 2 +ENQUEUED 1 +SUCCESS 1 +ERROR 0", since=mark)  # no key pressed
    terminal.shows(r"^jobs +1 +1 ", since=mark)
    stop.touch()  # the ticker closes its stream and ends: no open stream is left
    terminal.shows(r"^no open streams", since=len(terminal.output))
    pressed = time.monotonic()
    terminal.type(b"q")
    assert terminal.exit_code() == 0
    assert time.monotonic() - pressed < 3
    assert terminal.output.endswith(SHOW_CURSOR + LEAVE_SCREEN)  # the screen and the cursor are back
    assert terminal.local_modes() & _canonical_and_echo() == _canonical_and_echo()  # the terminal is restored


@posix_terminal
@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("SIGTERM", 128 + signal.SIGTERM)])
def test_ctrl_c_or_sigterm_leaves_the_live_view_and_restores_the_terminal(busy_db, terminals, how, code):
    db, _ = busy_db
    terminal = terminals(db)
    terminal.shows(r"^workflows 4 ")
    if how == "ctrl-c":
        terminal.type(b"\x03")  # the terminal sends SIGINT
    else:
        terminal.process.send_signal(signal.SIGTERM)
    assert terminal.exit_code() == code
    assert LEAVE_SCREEN in terminal.output
    assert terminal.local_modes() & _canonical_and_echo() == _canonical_and_echo()
    assert "Traceback" not in plain(terminal.output)


@posix_terminal
def test_the_live_view_redraws_to_a_new_terminal_size_and_keeps_the_footer_on_the_last_line(tmp_path, terminals):
    db = tmp_path / "a-file-with-a-rather-long-name-to-show-where-the-footer-is-cut.db"
    assert finish(spawn("cli_writer.py", db, "wf", 3)) == 0
    terminal = terminals(db, rows=12, columns=80)
    lines = terminal.screen(lambda lines: fills(lines, 12, 80))
    assert lines[0].startswith("workflows 1 ")
    assert lines[-1].startswith("q to quit") and lines[-1].rstrip().endswith("…")  # cut to 80 columns
    mark = len(terminal.output)
    terminal.resize(30, 200)
    lines = terminal.screen(lambda lines: fills(lines, 30, 200), since=mark)
    assert lines[-1].startswith("q to quit") and lines[-1].rstrip().endswith(str(db))
    terminal.type(b"q")
    assert terminal.exit_code() == 0


@posix_terminal
def test_a_killed_worker_and_the_recovery_of_its_work_appear_live(busy_db, terminals, children):
    db, stop = busy_db
    terminal = terminals(db, rows=30, columns=160)
    terminal.shows(r"^no recovered workflows")
    kill(children[0])  # SIGKILL: nothing is committed; its files closing (or the safety net) wake the view
    terminal.shows(r"is gone: 2 PENDING workflows wait for recovery", since=len(terminal.output))
    mark, second_log = len(terminal.output), db.parent / "second.log"
    children.append(spawn("top_worker.py", db, second_log, stop))
    terminal.shows(r"^ticker-1 +ticker +PENDING +1 ", since=mark)  # WORKFLOW NAME STATUS RECOVERIES
    terminal.shows(r"^ticker-1 +ticks +\d+ +[1-9]", since=mark)  # and it streams again
    wait_until(lambda: SideEffectLog(second_log).lines() == ["ready"])
    terminal.type(b"q")
    assert terminal.exit_code() == 0


@posix_terminal
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_the_live_view_sleeps_while_nothing_changes(tmp_path, terminals):
    db = tmp_path / "idle.db"
    assert finish(spawn("cli_writer.py", db, "wf", 3)) == 0
    terminal = terminals(db)
    terminal.shows(r"^workflows 1 +PENDING 0 +ENQUEUED 0 +SUCCESS 1")
    terminal.read_for(0.5)  # past the one re-read after the start
    cpu, drawn = terminal.cpu_seconds(), terminal.output.count(HOME)
    terminal.read_for(3.0)
    assert terminal.cpu_seconds() - cpu < 0.3  # a busy loop would take the 3 s
    assert terminal.output.count(HOME) - drawn <= 1  # at most the safety-net redraw
    terminal.type(b"q")
    assert terminal.exit_code() == 0


def _canonical_and_echo() -> int:
    import termios

    return termios.ICANON | termios.ECHO


# ---- snapshots -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recovered_db(tmp_path_factory) -> Path:
    """A workflow whose writer was killed after 3 values, then recovered and finished by a second one."""
    path = tmp_path_factory.mktemp("top") / "recovered.db"
    assert finish(spawn("cli_writer.py", path, "wf", 10, "--die-at", 2)) == -9
    assert finish(spawn("cli_writer.py", path, "wf", 10)) == 0
    return path


@pytest.fixture(scope="module")
def orphaned_db(tmp_path_factory) -> Path:
    """A workflow left PENDING by a killed writer, with 3 values in its open stream."""
    path = tmp_path_factory.mktemp("top") / "orphaned.db"
    assert finish(spawn("cli_writer.py", path, "wf", 10, "--die-at", 2)) == -9
    return path


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env=PLAIN_ENV)


def test_json_snapshot_of_a_workflow_whose_executor_died(orphaned_db):
    result = run("--db", orphaned_db, "top", "--json")
    assert result.exit_code == 0, result.output
    snapshot = json.loads(result.stdout)
    assert snapshot["path"] == str(orphaned_db)
    assert snapshot["changed_at"] == pytest.approx(time.time(), abs=600)
    assert snapshot["workflows"] == {"PENDING": 1}
    assert snapshot["queues"] == []
    assert snapshot["streams"] == [{"workflow_id": "wf", "key": "tokens", "length": 3}]
    assert snapshot["recoveries"] == []
    [owner] = snapshot["executors"]
    assert (owner["pending"], owner["alive"]) == (1, False)
    assert owner["executor_id"].startswith(owner["hostname"])


def test_json_snapshot_lists_the_recovered_workflow(recovered_db):
    snapshot = json.loads(run("--db", recovered_db, "top", "--json").stdout)
    assert snapshot["workflows"] == {"SUCCESS": 1}
    assert snapshot["streams"] == [] and snapshot["executors"] == []
    [recovery] = snapshot["recoveries"]
    assert {key: recovery[key] for key in ("workflow_id", "name", "status", "recovery_attempts")} == {
        "workflow_id": "wf", "name": "writer", "status": "SUCCESS", "recovery_attempts": 1,
    }  # fmt: skip


def test_once_prints_a_plain_snapshot_that_fits_80_columns(orphaned_db, recovered_db):
    result = run("--db", orphaned_db, "top", "--once")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"file         {orphaned_db}"
    assert re.fullmatch(r"last change  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[1])
    assert lines[3] == "workflows 1   PENDING 1   ENQUEUED 0   SUCCESS 0   ERROR 0"
    assert "no queues" in lines
    assert re.search(r"^wf +tokens +3$", result.stdout, re.M)  # no rates in a snapshot
    assert "is gone: 1 PENDING workflow waits for recovery" in " ".join(lines)
    assert all(len(line) <= 80 for line in lines)
    recovered = run("--db", recovered_db, "top").stdout  # stdout is not a terminal: a snapshot too
    assert re.search(r"^wf +writer +SUCCESS +1 +\S+ +\d\d-\d\d \d\d:\d\d:\d\d$", recovered, re.M)
    assert "no open streams" in recovered


def test_a_missing_database_exits_2_and_creates_nothing(tmp_path):
    missing = tmp_path / "nope.db"
    for args in (["top"], ["top", "--json"], ["top", "--once"]):
        result = run("--db", missing, *args)
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr == f"Error: no litedur database at {missing} (give --db PATH or set LITEDUR_DB)\n"
    (tmp_path / "notes.txt").write_text("not a database")
    result = run("--db", tmp_path / "notes.txt", "top")
    assert result.exit_code == 2 and "notes.txt" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


# ---- pieces --------------------------------------------------------------------------------------


def test_rates_are_values_per_second_between_samples():
    meter = top_view.RateMeter()
    assert meter.update(100.0, [StreamInfo("a", "k", 10, False, None)]) == {("a", "k"): None}
    rates = meter.update(100.5, [StreamInfo("a", "k", 60, False, None), StreamInfo("b", "k", 5, False, None)])
    assert rates == {("a", "k"): 100.0, ("b", "k"): 10.0}  # a new stream counts from 0
    assert meter.update(110.0, [StreamInfo("a", "k", 60, False, None)]) == {("a", "k"): 0.0}


def test_rows_are_shared_in_turn_with_at_least_one_each():
    assert top_view.share_rows(10, [2, 20, 20]) == [2, 4, 4]
    assert top_view.share_rows(0, [3, 0, 5]) == [1, 0, 1]
    assert top_view.share_rows(100, [3, 4, 5]) == [3, 4, 5]
