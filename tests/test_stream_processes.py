"""Durable streams across real processes: live readers, a writer SIGKILLed and relaunched, many readers.

The writer is always a child process (tests/workers/stream_writer.py); readers are threads of this
process or child processes (tests/workers/stream_reader.py) that print what they received. Every
reader test runs twice: with file-change notification ("auto", inotify on Linux) and with the
polling fallback forced (``wait="poll"`` here, ``LITEDUR_WAIT=poll`` in the children).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import support
from support import ReaderThread, exists, finish, kill, spawn, stream_entries, wait_until

import litedur

KEY = "values"
N = 200


@pytest.fixture(params=["auto", "poll"])
def wait_mode(request, monkeypatch):
    if request.param == "poll":
        monkeypatch.setenv("LITEDUR_WAIT", "poll")
    else:
        monkeypatch.delenv("LITEDUR_WAIT", raising=False)
    return request.param


@pytest.fixture
def db(location):
    path = location("streams.db")
    litedur.Engine(path).close()  # the file exists before any child or client opens it
    return path


def start_reader(client, workflow_id: str, start: int = 0) -> ReaderThread:
    return ReaderThread(client.read_stream(workflow_id, KEY, start=start, timeout=30))


class ReaderProcess:
    """A reader in a child process; `result` returns the values it printed once the stream ended."""

    def __init__(self, children: list, db: str, workflow_id: str, start: int = 0) -> None:
        # Unbuffered: readline takes the header byte by byte and leaves the values to communicate().
        self.process = spawn("stream_reader.py", db, workflow_id, KEY, start, stdout=subprocess.PIPE, bufsize=0)
        children.append(self.process)
        self.polling: bool | None = None

    def ready(self) -> ReaderProcess:
        """Wait until the child has made its reader; returns self."""
        header = self.process.stdout.readline()
        assert header, "the reader process died before making its reader"
        self.polling = json.loads(header)["polling"]
        return self

    def result(self, timeout: float = 60) -> list:
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(self.process)
            raise AssertionError(f"reader process did not finish within {timeout} s") from None
        assert self.process.returncode == 0, f"reader process exited with {self.process.returncode}"
        return [json.loads(line) for line in out.splitlines()]



def start_writer(children: list, db: str, workflow_id: str, mode: str, n: int = N, **options: object):
    """The writer child (see `support.start_writer`), writing ``N`` values unless told."""
    return support.start_writer(children, db, workflow_id, mode, n, **options)


@pytest.fixture
def client_for(db, wait_mode):
    """``client_for(workflow_id)``: a Client of this process in the test's wait mode, once the workflow exists."""
    opened: list[litedur.Client] = []

    def open_when_created(workflow_id: str) -> litedur.Client:
        client = litedur.Client(db, wait=wait_mode)
        opened.append(client)
        wait_until(lambda: exists(client, workflow_id))
        return client

    yield open_when_created
    for client in opened:
        client.close()


def check_wait_path(reader: ReaderThread, wait_mode: str) -> None:
    """The forced fallback really polls, and "auto" really waits on file-change notification."""
    assert reader.polling is (wait_mode == "poll")


def stream_state(client: litedur.Client, workflow_id: str) -> tuple[int, bool, str | None]:
    [info] = client.list_streams(workflow_id)
    return info.length, info.closed, info.closed_by


# ---- one writer, one reader -----------------------------------------------------------------------


def test_reader_gets_every_value_in_order_from_a_writer_in_another_process(db, wait_mode, children, client_for):
    writer = start_writer(children, db, "live", "body", STREAM_PACE=0.0005)
    client = client_for("live")
    reader = start_reader(client, "live")
    assert reader.result() == list(range(N))
    assert finish(writer) == 0
    assert client.retrieve_workflow("live").get_result(timeout=10) == N
    assert stream_state(client, "live") == (N, True, "workflow")
    check_wait_path(reader, wait_mode)


# ---- the writer is SIGKILLed and relaunched --------------------------------------------------------


@pytest.fixture
def killed_writer(db, wait_mode, children, client_for, tmp_path):
    """``killed_writer(workflow_id, mode)``: the writer's first run is SIGKILLed mid-stream and
    relaunched while two readers read, a thread of this process and a child process, which must
    both get the same values and end.

    Returns (client, values the readers got, how many values the killed writer had stored).
    """

    def run(workflow_id: str, mode: str) -> tuple[litedur.Client, list, int]:
        go = tmp_path / "go"
        gates = {0: go, 3 * N // 4: tmp_path / "never"}
        writer = start_writer(children, db, workflow_id, mode, gates=gates, STREAM_PACE=0.0005)
        client = client_for(workflow_id)
        reader = start_reader(client, workflow_id)
        other = ReaderProcess(children, db, workflow_id).ready()
        assert other.polling is (wait_mode == "poll")
        go.touch()  # both readers wait: the writer starts
        wait_until(lambda: len(reader.values) >= N // 4)
        kill(writer)
        stored = len(stream_entries(db, workflow_id, KEY))
        assert N // 4 <= stored <= 3 * N // 4  # killed mid-stream, before the writer's gate at 3N/4
        assert client.get_status(workflow_id).status == "PENDING"
        assert reader.is_alive()  # a dead writer does not end the stream
        assert finish(start_writer(children, db, workflow_id, mode)) == 0
        values = reader.result()
        assert other.result() == values
        status = client.get_status(workflow_id)
        assert (status.status, status.recovery_attempts) == ("SUCCESS", 1)
        assert client.list_streams(workflow_id)[0].closed_by == "workflow"
        check_wait_path(reader, wait_mode)
        return client, values, stored

    return run


def test_body_writer_killed_and_relaunched_reader_gets_every_value_once(db, killed_writer):
    client, values, _ = killed_writer("body-kill", "body")
    assert values == list(range(N))
    assert stream_state(client, "body-kill") == (N, True, "workflow")
    # Each body write is its own checkpoint, at its own position; none was appended twice.
    assert stream_entries(db, "body-kill", KEY) == [(i, i, i, 1) for i in range(N)]


def test_step_writer_using_already_written_resumes_after_a_kill_exactly_once(db, killed_writer):
    client, values, stored = killed_writer("step-resume", "step-resume")
    assert values == list(range(N))
    assert client.retrieve_workflow("step-resume").get_result(timeout=10) == stored  # already_written's length
    assert stream_state(client, "step-resume") == (N, True, "workflow")
    entries = stream_entries(db, "step-resume", KEY)
    assert [(offset, value) for offset, value, _, _ in entries] == [(i, i) for i in range(N)]
    assert {position for _, _, position, _ in entries} == {0}
    assert [attempt for *_, attempt in entries] == [1] * stored + [2] * (N - stored)


def test_step_writer_ignoring_already_written_appends_the_new_attempt_after_the_old(db, killed_writer):
    client, values, stored = killed_writer("step-ignore", "step-ignore")
    assert values == list(range(stored)) + list(range(N))
    assert client.retrieve_workflow("step-ignore").get_result(timeout=10) == stored
    assert stream_state(client, "step-ignore") == (stored + N, True, "workflow")
    entries = stream_entries(db, "step-ignore", KEY)
    assert [offset for offset, *_ in entries] == list(range(stored + N))
    assert [value for _, value, _, _ in entries] == values
    assert [attempt for *_, attempt in entries] == [1] * stored + [2] * N


# ---- many readers, failing writers -------------------------------------------------------------------


def test_twenty_reader_threads_and_four_reader_processes_all_get_the_full_sequence(
    db, wait_mode, children, client_for, tmp_path
):
    gate = tmp_path / "gate"
    writer = start_writer(children, db, "many", "step-resume", gates={N // 2: gate}, STREAM_PACE=0.0002)
    client = client_for("many")
    processes = [ReaderProcess(children, db, "many") for _ in range(4)]
    threads = [start_reader(client, "many") for _ in range(20)]
    for process in processes:
        process.ready()
    wait_until(lambda: all(len(thread.values) == N // 2 for thread in threads))
    gate.touch()  # every reader exists and is waiting: the second half arrives live
    for thread in threads:
        assert thread.result() == list(range(N))
    for process in processes:
        assert process.polling is (wait_mode == "poll")
        assert process.result() == list(range(N))
    assert finish(writer) == 0
    check_wait_path(threads[0], wait_mode)


def test_a_workflow_that_raises_after_writing_ends_every_reader_and_is_error(
    db, wait_mode, children, client_for, tmp_path
):
    gate = tmp_path / "gate"
    writer = start_writer(children, db, "raising", "raise", 50, gates={25: gate})
    client = client_for("raising")
    thread = start_reader(client, "raising")
    process = ReaderProcess(children, db, "raising").ready()
    late = start_reader(client, "raising", start=40)
    wait_until(lambda: len(thread.values) == 25)
    gate.touch()
    assert thread.result() == list(range(50))
    assert process.result() == list(range(50))
    assert late.result() == list(range(40, 50))
    assert finish(writer) == 0
    status = client.get_status("raising")
    assert status.status == "ERROR"
    assert isinstance(status.error, ValueError) and "boom" in str(status.error)
    assert stream_state(client, "raising") == (50, True, "termination")
    check_wait_path(thread, wait_mode)


def test_reader_processes_read_from_a_start_offset(db, wait_mode, children, client_for, tmp_path):
    gate = tmp_path / "gate"
    writer = start_writer(children, db, "offsets", "body", 40, gates={20: gate})
    client = client_for("offsets")
    wait_until(lambda: len(stream_entries(db, "offsets", KEY)) == 20)
    behind, ahead = ReaderProcess(children, db, "offsets", start=10), ReaderProcess(children, db, "offsets", start=30)
    behind.ready()
    ahead.ready()
    gate.touch()
    assert behind.result() == list(range(10, 40))
    assert ahead.result() == list(range(30, 40))
    assert finish(writer) == 0
    assert client.get_status("offsets").status == "SUCCESS"
