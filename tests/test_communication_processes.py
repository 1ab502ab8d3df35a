"""Communication and management across real processes: messages, durable sleep, child workflows,
events, cross-process wake-ups, cancel/resume with a stream reader attached, fork, and timeouts.

Every scenario runs a workflow in a child process (tests/workers/comm_*.py), SIGKILLs it at a chosen
point, and lets a second process launch() and recover it, while this process sends, waits, reads and
manages through a `litedur.Client`. Side effects are counted in O_APPEND logs, which survive the kills;
what is durable is read back through the Client (checkpoints, events, messages) or on disk
(`stream_entries`, `timer_deadline`).

Synchronisation is by bounded polls of the database or of the logs. The only plain sleeps are
`pause_until`, which places a kill at a moment of the scenario (for example "1 s into a 3 s sleep").
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
from support import ReaderThread, SideEffectLog, exists, finish, kill, raw_rows, spawn, stream_entries, wait_until

import litedur

RECV = "litedur.recv"


@pytest.fixture
def db(location, monkeypatch):
    monkeypatch.delenv("LITEDUR_WAIT", raising=False)  # file-change notification, in the children too
    path = location("comm.db")
    litedur.Engine(path).close()  # the file exists before any child or client opens it
    return path


@pytest.fixture
def client(db):
    with litedur.Client(db) as opened:
        yield opened


def start(children: list, script: str, *args: object) -> subprocess.Popen:
    """Spawn a worker of tests/workers; the ``children`` fixture kills it if the test leaves it running."""
    process = spawn(script, *args)
    children.append(process)
    return process


def logged_result(log: SideEffectLog) -> object:
    """The decoded ``result JSON`` line a worker logged (exactly one)."""
    [line] = [line for line in log.lines() if line.startswith("result ")]
    return json.loads(line[len("result ") :])


def wait_for_lines(log: SideEffectLog, prefix: str, process: subprocess.Popen, count: int = 1) -> list[list[str]]:
    """Wait until ``count`` lines start with ``prefix``; fail at once if the child exits first."""

    def seen() -> list[list[str]] | None:
        found = log.words_after(prefix)
        if len(found) >= count:
            return found
        if process.poll() is not None:
            raise AssertionError(f"child exited with {process.returncode} before logging {prefix!r}: {log.lines()}")
        return None

    return wait_until(seen, timeout=30)


def sigkill(process: subprocess.Popen) -> float:
    """SIGKILL a child; returns when (epoch seconds)."""
    at = time.time()
    kill(process)
    assert process.returncode == -signal.SIGKILL
    return at


def pause_until(epoch: float) -> None:
    """Scenario timing, not synchronisation: let the clock reach ``epoch`` (a moment to kill at)."""
    time.sleep(max(0.0, epoch - time.time()))


def on_disk(db: str, sql: str, *params: object) -> list[tuple]:
    """A plain query on a connection of its own (see support.raw_rows)."""
    return raw_rows(db, sql, *params)


def timer_deadline(db: str, workflow_id: str, position: int) -> float | None:
    """The deadline a durable wait recorded at ``position`` before it first waited, or None."""
    rows = on_disk(db, "SELECT deadline FROM timers WHERE workflow_id = ? AND position = ?", workflow_id, position)
    return rows[0][0] if rows else None


def event_times(db: str, workflow_id: str) -> dict[str, float]:
    """When each event of the workflow was last set."""
    return dict(on_disk(db, "SELECT key, updated_at FROM events WHERE workflow_id = ?", workflow_id))


def steps_named(client: litedur.Client, workflow_id: str, name: str) -> list[litedur.StepInfo]:
    return [step for step in client.list_steps(workflow_id) if step.name == name]


# ---- 1. messages: each consumed exactly once, in order, across a kill ------------------------------------

N_MESSAGES = 20
FIRST_BATCH = 10


def test_each_message_is_received_exactly_once_in_fifo_order_across_a_kill_and_relaunch(db, log, children, client):
    """Messages sent from this process to a worker killed mid-way: the recorded receptions (recv's
    checkpoints, committed with the consumption) are exactly the messages in the order sent. A side
    effect logged after recv repeats only if the kill fell between it and its step's record; retried
    sends with the same idempotency key land once; another topic's messages stay queued."""
    messages = [f"m{i:02d}" for i in range(N_MESSAGES)]
    noise = [f"noise{i}" for i in range(3)]
    first = start(children, "comm_inbox.py", db, log.path, "start", N_MESSAGES)
    wait_for_lines(log, "started ", first)
    for i in range(FIRST_BATCH):
        client.send("inbox", messages[i], idempotency_key=f"k{i}")
        if i % 4 == 0:
            client.send("inbox", noise[i // 4], topic="other")  # another topic: never received
    wait_for_lines(log, "got ", first, count=3)
    sigkill(first)

    # What the dead run left: the received messages are exactly the checkpoints, the rest still queued.
    at_kill = [step.output for step in steps_named(client, "inbox", RECV)]
    noted = len(steps_named(client, "inbox", "note"))
    logged_before = [message for message, _ in log.words_after("got ")]
    assert 3 <= len(at_kill) < FIRST_BATCH  # killed mid-way, with messages still waiting
    assert at_kill == messages[: len(at_kill)]
    assert [m.message for m in client.list_messages("inbox") if m.topic is None] == messages[len(at_kill) : FIRST_BATCH]
    assert len(at_kill) in (noted, noted + 1)  # a recv commits before the step after it
    # The log line comes after recv returned: at most one line whose step was not recorded yet.
    assert logged_before == messages[: len(logged_before)]
    assert len(logged_before) in (noted, noted + 1)

    second = start(children, "comm_inbox.py", db, log.path, "recover", N_MESSAGES)
    for i in range(FIRST_BATCH):  # a sender retrying after a crash: each key lands once
        client.send("inbox", messages[i], idempotency_key=f"k{i}")
    for i in range(FIRST_BATCH, N_MESSAGES):
        client.send("inbox", messages[i], idempotency_key=f"k{i}")
    assert finish(second) == 0

    assert logged_result(log) == messages
    status = client.get_status("inbox")
    assert (status.status, status.output, status.recovery_attempts) == ("SUCCESS", messages, 1)
    # The recorded receptions: every message once, in the order sent, none lost, none twice.
    assert [step.output for step in steps_named(client, "inbox", RECV)] == messages
    assert [step.position for step in steps_named(client, "inbox", RECV)] == list(range(0, 2 * N_MESSAGES, 2))
    assert [step.output for step in steps_named(client, "inbox", "note")] == messages
    assert [(m.topic, m.message) for m in client.list_messages("inbox")] == [("other", x) for x in noise]
    # Side effects: the relaunch noted exactly what the dead run had not recorded as noted.
    lines = log.words_after("got ")
    after = [message for message, pid in lines if pid == str(second.pid)]
    assert after == messages[noted:]
    assert [message for message, pid in lines if pid == str(first.pid)] == logged_before
    for i, message in enumerate(messages):
        assert [m for m, _ in lines].count(message) == (2 if i == noted < len(logged_before) else 1), message


# ---- 2. durable sleep keeps its deadline ---------------------------------------------------------------------


def test_a_sleep_killed_one_second_in_wakes_at_its_original_deadline_after_a_relaunch(db, log, children, client):
    """app.sleep(3) killed 1 s in and relaunched at once ends about 3 s after the start, not 1 + 3 s."""
    first = start(children, "comm_timers.py", db, log.path, "start", "nap", "nap:3")
    deadline = wait_until(lambda: timer_deadline(db, "nap", 1))  # recorded as the sleep began
    created = client.get_status("nap").created_at
    assert 3.0 <= deadline - created < 3.5
    pause_until(deadline - 2.0)
    killed_at = sigkill(first)
    assert killed_at >= deadline - 2.0  # a sleep restarted now would end at deadline + 1 s or later

    second = start(children, "comm_timers.py", db, log.path, "recover", "nap")
    assert finish(second) == 0
    status = client.get_status("nap")
    assert (status.status, status.output, status.recovery_attempts) == ("SUCCESS", 3.0, 1)
    [sleep] = steps_named(client, "nap", "litedur.sleep")
    # It woke at the recorded deadline: not before, and well before a restarted 3 s sleep (>= 4 s) would.
    assert deadline <= sleep.finished_at < deadline + 0.6
    assert 3.0 <= sleep.finished_at - created < 3.75
    [[_, launched]] = log.words_after("launching ")
    assert float(launched) < deadline  # the relaunch really waited for the rest
    assert [pid for pid, _ in log.words_after("before ")] == [str(first.pid)]
    [[pid, after]] = log.words_after("after ")
    assert pid == str(second.pid) and float(after) >= deadline


def test_a_sleep_whose_deadline_passed_while_no_process_ran_ends_at_once_on_relaunch(db, log, children, client):
    """A sleep whose deadline passed while no process ran it ends as soon as a relaunch recovers it."""
    first = start(children, "comm_timers.py", db, log.path, "start", "late", "nap:1")
    deadline = wait_until(lambda: timer_deadline(db, "late", 1))
    sigkill(first)
    assert client.get_status("late").status == "PENDING"
    pause_until(deadline + 0.3)

    second = start(children, "comm_timers.py", db, log.path, "recover", "late")
    assert finish(second) == 0
    [[_, launched]] = log.words_after("launching ")
    status = client.get_status("late")
    assert (status.status, status.output) == ("SUCCESS", 1.0)
    [sleep] = steps_named(client, "late", "litedur.sleep")
    assert float(launched) >= deadline + 0.3
    assert sleep.finished_at - float(launched) < 0.5  # no second second of sleep
    assert status.updated_at - float(launched) < 0.5
    assert [pid for pid, _ in log.words_after("after ")] == [str(second.pid)]


# ---- 3. a child workflow is started once, across a kill of its parent's process ---------------------------


def test_a_relaunched_parent_never_starts_a_second_child_and_gets_its_result(db, log, children, client):
    """The process of a parent and its child (waiting in recv) is killed; the relaunch replays the
    parent's start_workflow checkpoint, recovers the one child, and the parent gets its result."""
    first = start(children, "comm_family.py", db, log.path, "start")
    wait_until(lambda: timer_deadline(db, "family-0", 1))  # the child waits in recv
    sigkill(first)
    [dead_child] = client.list_workflows(name="child")
    assert (dead_child.workflow_id, dead_child.status, dead_child.parent_id) == ("family-0", "PENDING", "family")
    assert [s.name for s in client.list_steps("family")] == ["litedur.start_workflow"]
    assert log.words_after("effect ") == [["7", str(first.pid)]]

    second = start(children, "comm_family.py", db, log.path, "recover")
    client.send("family-0", "go!", topic="go")
    assert finish(second) == 0

    expected = {"child": "family-0", "result": "70:go!"}
    assert logged_result(log) == expected
    [child] = client.list_workflows(name="child")
    assert (child.workflow_id, child.status, child.output) == ("family-0", "SUCCESS", "70:go!")
    assert (child.parent_id, child.recovery_attempts) == ("family", 1)
    assert len(client.list_workflows()) == 2
    parent = client.get_status("family")
    assert (parent.status, parent.output, parent.recovery_attempts) == ("SUCCESS", expected, 1)
    assert [(s.name, s.output) for s in client.list_steps("family")] == [
        ("litedur.start_workflow", "family-0"),
        ("litedur.get_result", "70:go!"),
    ]
    assert log.words_after("effect ") == [["7", str(first.pid)]]  # the child's step ran once, before the kill


# ---- 4. events survive a kill, and later set_events update them --------------------------------------------


def test_events_set_before_a_kill_are_still_there_and_later_sets_update_them(db, log, children, client):
    """Events set before a kill are readable while nobody runs the workflow, are not set again by the
    replay, and the recovered run's set_events update them and wake a waiter of this process."""
    first = start(children, "comm_events.py", db, log.path, "start")
    wait_until(lambda: exists(client, "pub"))
    assert client.get_event("pub", "phase", timeout=20) == "one"  # waits across processes for the first set
    wait_until(lambda: timer_deadline(db, "pub", 4))  # blocked in recv, after every first set_event
    sigkill(first)
    dead = client.get_status("pub")
    before = {"phase": "one", "progress": {"done": 1, "of": 2}, "origin": "first run"}
    assert client.list_events("pub") == before
    assert client.get_event("pub", "progress", timeout=0) == {"done": 1, "of": 2}
    assert client.get_event("pub", "note", timeout=0) is None  # not set yet: None at the timeout
    set_at = event_times(db, "pub")

    note: list = []
    waiter = threading.Thread(target=lambda: note.append(client.get_event("pub", "note", timeout=20)), daemon=True)
    waiter.start()  # waits across the relaunch for an event that only the recovered run sets
    second = start(children, "comm_events.py", db, log.path, "recover")
    wait_until(lambda: client.get_status("pub").executor_id != dead.executor_id)  # recovered
    assert client.list_events("pub") == before
    assert client.get_event("pub", "origin", timeout=0) == "first run"
    client.send("pub", "hello", topic="next")
    waiter.join(30)
    assert note == ["hello"]
    assert finish(second) == 0

    assert client.list_events("pub") == {
        "phase": "two", "progress": {"done": 2, "of": 2}, "origin": "first run", "note": "hello",
    }  # fmt: skip
    assert client.get_event("pub", "phase", timeout=0) == "two"
    assert event_times(db, "pub")["origin"] == set_at["origin"]  # the replay did not set it again
    assert event_times(db, "pub")["phase"] > set_at["phase"]
    status = client.get_status("pub")
    assert (status.status, status.output, status.recovery_attempts) == ("SUCCESS", "finished", 1)
    assert [s.name for s in client.list_steps("pub")] == [
        "litedur.set_event:phase", "litedur.set_event:progress", "litedur.set_event:origin", "published", RECV,
        "litedur.set_event:phase", "litedur.set_event:progress", "litedur.set_event:note",
    ]  # fmt: skip
    assert log.words_after("published ") == [[str(first.pid)]]


# ---- 5. waits across processes are woken by the change, not by polling -----------------------------------


def ring_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {how: after[how] - before[how] for how in after}


def test_cross_process_waits_are_woken_by_the_signal_file_in_both_directions(db, log, children, client, tmp_path):
    """A recovered recv in a worker is woken by this process's send, and a get_event waiter here by the
    worker's set_event: both through file-change notification (rings "file", no "poll" nor
    "safety-net" ring in between), within a loose 200 ms of the change."""
    gate = tmp_path / "gate"
    first = start(children, "comm_echo.py", db, log.path, gate, "start")
    wait_for_lines(log, f"blocked {first.pid} 0 ", first)
    sigkill(first)

    # A recovered recv in a worker, woken by a send from this process.
    second = start(children, "comm_echo.py", db, log.path, gate, "recover")
    [[before]] = wait_for_lines(log, f"blocked {second.pid} 0 ", second)
    sent_at = time.time()
    client.send("echo", "hi", topic="ping")
    [[_, after]] = wait_for_lines(log, "report ", second)
    woken = ring_delta(json.loads(before), json.loads(after))
    assert woken["file"] >= 1, woken  # inotify on this process's signal file
    assert woken["poll"] == 0 and woken["safety-net"] == 0, woken
    [received] = steps_named(client, "echo", RECV)
    assert received.output == "hi"
    assert 0 <= received.finished_at - sent_at < 0.2  # send -> recv, loosely (well under 1 ms expected)

    # The other way: a get_event waiter in this process, woken by the worker's set_event.
    with litedur.Client(db) as waiting:
        got: list = []

        def wait_for_pong() -> None:
            value = waiting.get_event("echo", "pong", timeout=20)
            got.append((value, time.time()))

        waiter = threading.Thread(target=wait_for_pong, daemon=True)
        waiter.start()
        wait_until(lambda: waiting._signals.blocked("echo") > 0)
        rings_before = dict(waiting._signals.rings)
        gate.touch()  # the worker may set the event now
        waiter.join(30)
        assert not waiter.is_alive()
        woken = ring_delta(rings_before, waiting._signals.rings)
    [(value, got_at)] = got
    assert value == "HI"
    assert woken["file"] >= 1, woken
    assert woken["poll"] == 0 and woken["safety-net"] == 0, woken
    [published] = steps_named(client, "echo", "litedur.set_event:pong")
    assert 0 <= got_at - published.finished_at < 0.2  # set_event -> get_event, loosely

    assert finish(second) == 0
    assert logged_result(log) == "hi"
    assert client.get_status("echo").recovery_attempts == 1


# ---- 6. cancel while a reader is attached; resume; a reader from the old offset gets the rest -------------

TICKS = 120


def start_reader(client, workflow_id: str, key: str, start: int = 0) -> ReaderThread:
    return ReaderThread(client.read_stream(workflow_id, key, start=start, timeout=30))


def test_cancel_ends_an_attached_reader_and_stops_the_writer_then_resume_delivers_the_rest(db, log, children, client):
    """A slow stream writer, killed and relaunched, is cancelled from this process while a reader is
    attached: the reader ends, nothing more is written, the step sees WorkflowCancelledError. A resume
    lets the launched worker finish, and a reader from the old offset gets exactly the rest."""
    first = start(children, "comm_ticker.py", db, log.path, "start", TICKS)
    wait_until(lambda: exists(client, "ticker"))
    reader = start_reader(client, "ticker", "ticks")
    wait_until(lambda: len(reader.values) >= 10)
    sigkill(first)
    killed_with = len(stream_entries(db, "ticker", "ticks"))
    assert 10 <= killed_with < TICKS

    second = start(children, "comm_ticker.py", db, log.path, "serve", TICKS)  # recovers it, stays up
    wait_until(lambda: len(reader.values) >= killed_with + 10)
    assert reader.is_alive()
    assert client.cancel_workflow("ticker") is True
    at_cancel = len(stream_entries(db, "ticker", "ticks"))  # nothing of the run commits after the cancel
    assert killed_with + 10 <= at_cancel < TICKS
    values = reader.result()  # the attached reader ends: the cancel closed the stream by termination
    assert values == list(range(at_cancel))
    [[at, pid]] = wait_for_lines(log, "cancelled at ", second)  # the step's next write raised
    assert (int(at), pid) == (at_cancel, str(second.pid))
    assert len(stream_entries(db, "ticker", "ticks")) == at_cancel  # nothing written after the cancel
    status = client.get_status("ticker")
    assert (status.status, status.cancel_reason) == ("CANCELLED", "cancelled on request")
    [info] = client.list_streams("ticker")
    assert (info.length, info.closed, info.closed_by) == (at_cancel, True, "termination")
    assert client.cancel_workflow("ticker") is False  # already ended: a no-op

    resumed_at = time.monotonic()
    client.resume_workflow("ticker")  # the launched worker picks it up at once (woken, not its 2 s round)
    rest = start_reader(client, "ticker", "ticks", start=reader.stream.offset)  # where the first reader stopped
    wait_until(lambda: client.get_status("ticker").executor_id is not None)
    assert time.monotonic() - resumed_at < 1.0
    assert rest.result() == list(range(at_cancel, TICKS))  # no gap, no duplicate
    wait_for_lines(log, "done", second)
    assert finish(second) == 0

    entries = stream_entries(db, "ticker", "ticks")
    assert [offset for offset, *_ in entries] == list(range(TICKS))
    assert [value for _, value, _, _ in entries] == list(range(TICKS))
    attempts = [attempt for *_, attempt in entries]
    assert attempts == sorted(attempts) and set(attempts) == {1, 2, 3}  # killed, cancelled, resumed
    assert attempts.count(1) == killed_with
    assert [(pid, int(skipped)) for pid, skipped in log.words_after("attempt ")] == [
        (str(first.pid), 0), (str(second.pid), killed_with), (str(second.pid), at_cancel),
    ]  # fmt: skip
    status = client.get_status("ticker")
    assert (status.status, status.output, status.cancel_reason) == ("SUCCESS", at_cancel, None)
    [info] = client.list_streams("ticker")
    assert (info.length, info.closed, info.closed_by) == (TICKS, True, "workflow")


# ---- 7. a fork re-runs from a step and produces what the original did --------------------------------------

FORK_FROM = 2


def test_a_fork_run_in_other_processes_across_a_kill_equals_the_original(db, log, children, client):
    """A fork from step 2, made here and run by a worker process (killed mid-step, then relaunched),
    ends with the original's output, checkpoints, events and stream, re-running only steps 2.."""
    assert finish(start(children, "comm_fork.py", db, log.path, "run")) == 0
    original = client.get_status("orig")
    assert original.status == "SUCCESS"
    original_pid = log.words_after("stage 0 ")[0][0]

    holder = start(children, "comm_fork.py", db, log.path, "serve", "forked", "3.1")
    wait_for_lines(log, "ready ", holder)  # launched: it takes the fork as soon as it exists
    with litedur.SetWorkflowID("forked"):
        handle = client.fork_workflow("orig", FORK_FROM)
    assert handle.workflow_id == "forked"
    # Taken because the fork woke it: the holder's periodic recovery round is an hour (comm_fork.py).
    wait_until(lambda: client.get_status("forked").executor_id is not None, timeout=30)
    wait_for_lines(log, "held ", holder)  # stage 3 of the fork wrote one value
    sigkill(holder)
    relaunch = start(children, "comm_fork.py", db, log.path, "serve", "forked")
    assert finish(relaunch) == 0

    fork = client.get_status("forked")
    assert (fork.status, fork.output, fork.inputs) == ("SUCCESS", original.output, original.inputs)
    assert fork.recovery_attempts == 1
    assert [(s.position, s.name, s.output) for s in client.list_steps("forked")] == [
        (s.position, s.name, s.output) for s in client.list_steps("orig")
    ]
    assert client.list_events("forked") == client.list_events("orig") == {"final": original.output}
    forked_entries = stream_entries(db, "forked", "out")
    original_entries = stream_entries(db, "orig", "out")
    assert [entry[:3] for entry in forked_entries] == [entry[:3] for entry in original_entries]
    assert [offset for offset, *_ in forked_entries] == list(range(15))
    [info] = client.list_streams("forked")
    assert (info.length, info.closed, info.closed_by) == (15, True, "workflow")
    # Stages before FORK_FROM ran only in the original; the rest ran again in the fork's processes,
    # stage 3 twice: killed after one value, then resumed after it (already_written).
    stages = [(int(i), pid, int(skipped)) for i, pid, skipped in log.words_after("stage ")]
    assert stages == [(i, original_pid, 0) for i in range(5)] + [
        (2, str(holder.pid), 0), (3, str(holder.pid), 0), (3, str(relaunch.pid), 1), (4, str(relaunch.pid), 0),
    ]  # fmt: skip


# ---- 8. a workflow timeout holds across a restart ----------------------------------------------------------


def test_a_timeout_cancels_a_relaunched_workflow_at_its_original_deadline(db, log, children, client):
    """@workflow(timeout=2) blocked in recv, killed 0.5 s in and relaunched: cancelled at the deadline
    recorded by the first run, with a reason naming the timeout."""
    first = start(children, "comm_timers.py", db, log.path, "start", "bounded", "recv")
    wait_until(lambda: timer_deadline(db, "bounded", 1))  # blocked in recv
    started = client.get_status("bounded")
    assert started.timeout == 2.0 and 1.95 <= started.deadline - started.created_at < 2.2
    pause_until(started.created_at + 0.5)
    sigkill(first)
    assert client.get_status("bounded").status == "PENDING"

    second = start(children, "comm_timers.py", db, log.path, "recover", "bounded")
    assert finish(second) == 0
    [[_, launched]] = log.words_after("launching ")
    assert float(launched) < started.deadline  # recovered before its deadline, then ran into it
    status = client.get_status("bounded")
    assert (status.status, status.recovery_attempts) == ("CANCELLED", 1)
    assert "timed out" in status.cancel_reason and "timeout 2 s" in status.cancel_reason, status.cancel_reason
    assert started.deadline <= status.updated_at < started.deadline + 0.5  # at the original deadline
    assert [line.split()[0] for line in log.lines()] == ["before", "launching", "cancelled"]
    assert "timed out" in log.lines()[-1]
    assert [s.name for s in client.list_steps("bounded")] == ["mark"]  # no recv or later step recorded


def test_a_workflow_relaunched_after_its_deadline_is_cancelled_at_once_without_running_a_step(
    db, log, children, client
):
    """SetWorkflowTimeout(1) killed inside a step, relaunched after the deadline: cancelled at once; the
    unfinished step does not run again and its queued message stays unread."""
    first = start(children, "comm_timers.py", db, log.path, "start", "overdue", "hold", 1.0)
    wait_for_lines(log, "hold ", first)  # inside a step that never returns in that process
    started = client.get_status("overdue")
    assert started.timeout == 1.0  # SetWorkflowTimeout overrides the decorator's 2 s
    sigkill(first)
    client.send("overdue", "unread")
    pause_until(started.deadline + 0.3)
    assert client.get_status("overdue").status == "PENDING"  # nobody ran it to enforce the deadline

    second = start(children, "comm_timers.py", db, log.path, "recover", "overdue")
    assert finish(second) == 0
    [[_, launched]] = log.words_after("launching ")
    status = client.get_status("overdue")
    assert (status.status, status.recovery_attempts) == ("CANCELLED", 1)
    assert "timed out" in status.cancel_reason and "timeout 1 s" in status.cancel_reason, status.cancel_reason
    assert 0 <= status.updated_at - float(launched) < 0.5  # at once
    # The unfinished step did not run again, nor anything after it.
    assert log.words_after("hold ") == [[str(first.pid)]]
    assert log.words_after("after ") == []
    assert [s.name for s in client.list_steps("overdue")] == ["mark"]
    assert [m.message for m in client.list_messages("overdue")] == ["unread"]
