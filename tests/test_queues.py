"""Durable queues across real processes: exact limits, priorities, recovery, deduplication, and bad input.

Workers are child processes (tests/workers/queue_worker.py) on one file; this process enqueues by name
through a `litedur.Client`, as a web handler would, and SIGSTOPs/SIGKILLs workers at chosen points.
Every limit is checked afterwards *from the record*, never from what a process remembers:

- each queued workflow runs one step ``work`` whose recorded ``started_at``/``finished_at`` lie inside
  the time its workflow held a queue slot (after the dequeue committed, before the final status did),
  so the maximum overlap of those intervals is a lower bound of what ran at once, and it must not
  exceed ``concurrency`` (per executor: ``worker_concurrency``);
- the step's output carries the workflow's ``updated_at`` as the dequeue wrote it (the ``now`` the
  dequeue transaction counted its rate window with) and the executor that ran it, so limiter windows
  and per-process limits are checked against the very values the queue used;
- side effects are counted in an O_APPEND log (``run WID PID``) that survives SIGKILL.

Synchronisation is by bounded waits on the database, the logs, or a child's exit; no plain sleeps.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from support import WORKERS, SideEffectLog, finish, kill, raw_rows, spawn, wait_until

import litedur

# ---- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture
def db(location, monkeypatch):
    monkeypatch.delenv("LITEDUR_WAIT", raising=False)  # file-change notification, in the children too
    path = location("queues.db")
    litedur.Engine(path).close()  # the file exists before any child or client opens it
    return path


@pytest.fixture
def client(db):
    with litedur.Client(db) as opened:
        yield opened


def start_worker(
    children: list, db: str, log: SideEffectLog, profile: str, max_workers: int = 4
) -> tuple[subprocess.Popen, str]:
    """Spawn a launched worker; returns it and its executor id once it logged ``ready``."""
    process = spawn("queue_worker.py", db, log.path, profile, max_workers)
    children.append(process)

    def ready() -> str | None:
        for words in log.words_after("ready "):
            if words[0] == str(process.pid):
                return words[1]
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode} before it was ready")
        return None

    return process, wait_until(ready, timeout=30)


def declare(db: str, log: SideEffectLog, profile: str) -> None:
    """Declare a profile's queues from a worker that exits at once (no worker runs afterwards)."""
    assert finish(spawn("queue_worker.py", db, log.path, profile, 1, "declare"), timeout=30) == 0


def runs_of(log: SideEffectLog) -> dict[str, list[str]]:
    """The pids that ran the step ``work`` of each workflow (one per ``run WID PID`` line)."""
    found: dict[str, list[str]] = defaultdict(list)
    for wid, pid in log.words_after("run "):
        found[wid].append(pid)
    return found


def on_disk(db: str, sql: str, *params: object) -> list[tuple]:
    """A plain query on a connection of its own (see support.raw_rows)."""
    return raw_rows(db, sql, *params)


def count(db: str, where: str, *params: object) -> int:
    return on_disk(db, f"SELECT count(*) FROM workflows WHERE {where}", *params)[0][0]


def snapshot(db: str) -> dict[str, list[str]]:
    """Everything a queue operation could write, to prove that a refused one wrote nothing."""
    return {
        table: sorted(map(repr, on_disk(db, f"SELECT * FROM {table}")))
        for table in ("workflows", "steps", "queues", "queue_starts")
    }


def enqueue(client: litedur.Client, queue: str, wid: str, *args: object, **options: object) -> litedur.WorkflowHandle:
    """``Client.enqueue`` of the workflow ``job`` (or ``gated``) under the id ``wid``."""
    name = "gated" if args and isinstance(args[0], str) else "job"
    with litedur.SetWorkflowID(wid), litedur.SetEnqueueOptions(**options):  # type: ignore[arg-type]
        return client.enqueue(queue, name, wid, *(args or (0.0,)))


def work_step(client: litedur.Client, wid: str) -> litedur.StepInfo:
    """The one recorded ``work`` step of a workflow (its position is 0)."""
    steps = client.list_steps(wid)
    assert [(step.position, step.name) for step in steps][:1] == [(0, "work")], steps
    return steps[0]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals ``[start, end)`` that contain one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, delta in events:  # at equal times an end (-1) sorts before a start (+1)
        running += delta
        most = max(most, running)
    return most


def most_in_window(times: list[float], period: float) -> int:
    """The most of ``times`` that fall in one window ``[t, t + period)``."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - period:
            first += 1
        most = max(most, last - first + 1)
    return most


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (``T`` once a SIGSTOP took effect)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


# ---- 1. three workers x four threads, 300 + 40 workflows, one worker SIGKILLed mid-run ------------------

N_JOBS = 300  # queue "jobs": concurrency 6, worker_concurrency 3
N_PACED = 40  # queue "paced": limiter 8 starts per 0.3 s
JOBS_CONCURRENCY, JOBS_PER_WORKER = 6, 3
PACED_LIMIT, PACED_PERIOD = 8, 0.3
PACE = 0.01  # seconds each step sleeps


def test_three_workers_hold_every_limit_and_finish_each_workflow_once_across_a_sigkill(db, log, children, client):
    """3 worker processes x 4 threads take 300 workflows from a queue with concurrency 6 and
    worker_concurrency 3, and 40 from a queue limited to 8 starts per 0.3 s; all enqueued from this
    process by name. One worker is frozen (SIGSTOP) while it runs queued work, its running workflows
    read from the file, then SIGKILLed. From the record afterwards: never more than 6 steps of "jobs"
    overlapping, never more than 3 in one executor, never more than 8 starts of "paced" in any 0.3 s
    window (at the times the dequeues counted with); every workflow SUCCESS with one recorded step;
    exactly the killed worker's running workflows were requeued (recovery_attempts 1) and finished by
    the others soon after the kill; a step body ran twice only for those, once in the dead process."""
    workers = [start_worker(children, db, log, "load", max_workers=4) for _ in range(3)]
    queue_of = {}
    for i in range(N_JOBS):
        queue_of[f"j{i:03d}"] = "jobs"
        enqueue(client, "jobs", f"j{i:03d}", PACE)
        if i % 7 == 0 and i // 7 < N_PACED:
            queue_of[f"p{i // 7:02d}"] = "paced"
            enqueue(client, "paced", f"p{i // 7:02d}", PACE)
    assert len(queue_of) == N_JOBS + N_PACED

    # Freeze the first worker at a moment it runs queued work, read that work, then SIGKILL it.
    victim, victim_id = workers[0]
    wait_until(lambda: count(db, "status = 'SUCCESS'") >= 60, timeout=30)

    def frozen_with_work() -> list[str] | None:
        victim.send_signal(signal.SIGSTOP)
        wait_until(lambda: process_state(victim.pid) == "T", timeout=10)
        running = [row[0] for row in on_disk(db, "SELECT workflow_id FROM workflows WHERE status = 'PENDING' "
                                                 "AND executor_id = ?", victim_id)]  # fmt: skip
        if running:
            return running
        victim.send_signal(signal.SIGCONT)
        return None

    in_flight = set(wait_until(frozen_with_work, timeout=30))
    left_at_kill = count(db, "status = 'ENQUEUED'")
    killed_at = time.time()
    kill(victim)
    assert victim.returncode == -signal.SIGKILL
    assert left_at_kill > 0, "the kill came too late to be mid-run"

    wait_until(lambda: count(db, "status = 'SUCCESS'") == len(queue_of), timeout=60)
    assert count(db, "true") == len(queue_of)  # no second row for anything

    statuses = {wid: client.get_status(wid) for wid in queue_of}
    steps = {wid: work_step(client, wid) for wid in queue_of}
    runs = runs_of(log)
    live_pids = {str(process.pid) for process, _ in workers[1:]}
    for wid, status in statuses.items():
        step = steps[wid]
        assert (status.status, status.queue_name, status.output) == ("SUCCESS", queue_of[wid], step.output), wid
        assert len(client.list_steps(wid)) == 1 and step.attempts == 1, wid
        if wid in in_flight:  # requeued once and finished by another worker
            assert status.recovery_attempts == 1 and status.executor_id != victim_id, wid
            if step.output["executor"] == victim_id:  # recorded before the kill: replayed, not run again
                assert runs[wid] == [str(victim.pid)], wid
            else:  # run again elsewhere; the dead process may have run the body once before it died
                assert str(step.output["pid"]) in live_pids and step.output["taken_at"] > killed_at, wid
                ran_in = str(step.output["pid"])
                assert sorted(runs[wid]) in ([ran_in], sorted([ran_in, str(victim.pid)])), wid
        else:  # never requeued: its body ran exactly once, in the process whose record stands
            assert status.recovery_attempts == 0, wid
            assert runs[wid] == [str(step.output["pid"])], wid
    assert set(runs) == set(queue_of)

    # The dead worker's slots were freed soon after the kill: its work was taken again and finished promptly.
    retaken_after = max(statuses[wid].updated_at for wid in in_flight) - killed_at
    assert retaken_after < 5.0, f"the killed worker's queued work finished only {retaken_after:.2f} s later"

    # Concurrency, checked from the recorded step intervals (each inside its workflow's slot).
    jobs = [wid for wid in queue_of if queue_of[wid] == "jobs"]
    overall = max_overlap([(steps[wid].started_at, steps[wid].finished_at) for wid in jobs])
    assert overall <= JOBS_CONCURRENCY
    by_executor: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for wid in jobs:
        by_executor[steps[wid].output["executor"]].append((steps[wid].started_at, steps[wid].finished_at))
    per_executor = {executor: max_overlap(intervals) for executor, intervals in by_executor.items()}
    assert max(per_executor.values()) <= JOBS_PER_WORKER, per_executor
    assert set(by_executor) <= {executor for _, executor in workers}
    assert len(by_executor) >= 2 and overall > JOBS_PER_WORKER  # the limits were actually reached across processes

    # Limiter windows, at the times the dequeues themselves counted with.
    paced_taken = [steps[wid].output["taken_at"] for wid in queue_of if queue_of[wid] == "paced"]
    assert most_in_window(paced_taken, PACED_PERIOD) <= PACED_LIMIT
    assert max(paced_taken) - min(paced_taken) >= (N_PACED / PACED_LIMIT - 1) * PACED_PERIOD  # it did hold them back

    [jobs_info] = [info for info in client.list_queues() if info.name == "jobs"]
    assert (jobs_info.enqueued, jobs_info.running, jobs_info.concurrency, jobs_info.worker_concurrency) == (0, 0, 6, 3)
    [paced_info] = [info for info in client.list_queues() if info.name == "paced"]
    assert paced_info.limiter == {"limit": PACED_LIMIT, "period": PACED_PERIOD}
    print(
        f"\n{left_at_kill} still enqueued at the kill, {len(in_flight)} in flight there, all finished "
        f"{retaken_after:.3f} s after it; max overlap {overall} (per executor {sorted(per_executor.values())}); "
        f"most paced starts in a window {most_in_window(paced_taken, PACED_PERIOD)}"
    )


# ---- 1b. priorities ---------------------------------------------------------------------------------------


def test_a_priority_queue_starts_lower_priority_first_then_in_enqueue_order(db, log, children, client):
    """20 workflows enqueued (by a Client, no worker running) with mixed priorities, some without one,
    into a priority_enabled queue with concurrency 1; one worker then runs them strictly in order of
    (priority, enqueue order), as the recorded step start times show."""
    declare(db, log, "ranked")
    priorities = [None, 3, 1, 0, 2, None, 1, 3, 0, 2, 1, None, 0, 3, 2, 1, 0, None, 2, 3]
    for i, priority in enumerate(priorities):
        enqueue(client, "ranked", f"r{i:02d}", 0.002, priority=priority)
    [info] = client.list_queues()
    assert (info.name, info.enqueued, info.running, info.priority_enabled) == ("ranked", len(priorities), 0, True)
    assert client.get_status("r01").priority == 3 and client.get_status("r00").priority == 0

    start_worker(children, db, log, "ranked")
    for i in range(len(priorities)):
        client.retrieve_workflow(f"r{i:02d}").get_result(timeout=30)
    steps = {f"r{i:02d}": work_step(client, f"r{i:02d}") for i in range(len(priorities))}
    started_order = sorted(steps, key=lambda wid: steps[wid].started_at)
    expected = [f"r{i:02d}" for i in sorted(range(len(priorities)), key=lambda i: (priorities[i] or 0, i))]
    assert started_order == expected
    assert max_overlap([(step.started_at, step.finished_at) for step in steps.values()]) == 1


# ---- 2. a recovered workflow never strands a concurrency-1 queue ---------------------------------------------


def test_a_concurrency_one_queue_is_not_stranded_by_a_worker_killed_in_its_only_slot(
    db, log, children, client, tmp_path
):
    """Two running workers share a queue with concurrency 1. The worker that took its first workflow is
    SIGKILLed inside a step; the other worker (not relaunched) must notice the dead slot holder, take the
    workflow back, finish it and then the rest of the queue, in order and one at a time, within seconds."""
    gate = tmp_path / "gate"
    first, second = start_worker(children, db, log, "solo"), start_worker(children, db, log, "solo")
    enqueue(client, "solo", "g", str(gate))
    for i in range(5):
        enqueue(client, "solo", f"s{i}", 0.005)

    [work] = wait_until(lambda: client.list_steps("g"), timeout=30)  # recorded: its run now waits in `hold`
    victim, survivor = (first, second) if work.output["executor"] == first[1] else (second, first)
    assert work.output["executor"] == victim[1] == client.get_status("g").executor_id
    # While it holds the only slot, nothing else of the queue runs.
    assert [client.get_status(f"s{i}").status for i in range(5)] == ["ENQUEUED"] * 5
    [info] = client.list_queues()
    assert (info.enqueued, info.running) == (5, 1)

    killed_at = time.time()
    kill(victim[0])
    gate.touch()  # only the next run can pass the gate
    client.retrieve_workflow("g").get_result(timeout=30)
    for i in range(5):
        client.retrieve_workflow(f"s{i}").get_result(timeout=30)

    status = client.get_status("g")
    assert (status.status, status.executor_id, status.recovery_attempts) == ("SUCCESS", survivor[1], 1)
    work, hold = client.list_steps("g")
    assert work.output["executor"] == victim[1]  # recorded before the kill, replayed, not re-run
    assert log.words_after("released ") == [["g", str(survivor[0].pid)]]
    assert runs_of(log)["g"] == [str(victim[0].pid)]
    resumed_after = hold.started_at - killed_at
    assert resumed_after < 4.0, f"the stranded queue moved only {resumed_after:.2f} s after the kill"

    steps = [work_step(client, f"s{i}") for i in range(5)]
    assert [step.output["executor"] for step in steps] == [survivor[1]] * 5
    assert [step.started_at for step in steps] == sorted(step.started_at for step in steps)  # FIFO
    assert all(step.started_at > hold.finished_at for step in steps)
    assert max_overlap([(step.started_at, step.finished_at) for step in [hold, *steps]]) == 1
    print(f"\nthe surviving worker took the dead worker's slot {resumed_after:.3f} s after the kill")


# ---- 3. deduplication, enqueue by name from a plain process, ids, cancel, delay, bad input --------------------


def test_deduplication_names_the_holder_and_frees_the_id_when_it_ends(db, log, children, client, tmp_path):
    """A deduplication id held by an ENQUEUED, then a PENDING, workflow refuses a second enqueue with
    DuplicateWorkflowError naming the holder (writing nothing); other ids and other queues are free;
    once the holder ends the same id can be enqueued again, and that workflow runs too."""
    gate = tmp_path / "gate"
    declare(db, log, "misc")
    enqueue(client, "dedup", "d1", str(gate), deduplication_id="order-7")
    before = snapshot(db)
    with pytest.raises(litedur.DuplicateWorkflowError) as refused:
        enqueue(client, "dedup", "d2", 0.0, deduplication_id="order-7")
    assert refused.value.workflow_id == "d1" and "'d1'" in str(refused.value) and "order-7" in str(refused.value)
    assert snapshot(db) == before
    enqueue(client, "dedup", "d3", 0.0, deduplication_id="order-8")  # another id
    enqueue(client, "plain", "d4", 0.0, deduplication_id="order-7")  # another queue

    start_worker(children, db, log, "misc")
    wait_until(lambda: runs_of(log).get("d1"), timeout=30)
    assert client.get_status("d1").status == "PENDING"
    with pytest.raises(litedur.DuplicateWorkflowError) as refused:  # held while it runs, too
        enqueue(client, "dedup", "d2", 0.0, deduplication_id="order-7")
    assert refused.value.workflow_id == "d1"

    gate.touch()
    assert client.retrieve_workflow("d1").get_result(timeout=30)["pid"] > 0
    again = enqueue(client, "dedup", "d2", 0.0, deduplication_id="order-7")  # free again
    again.get_result(timeout=30)
    for wid in ("d3", "d4"):
        client.retrieve_workflow(wid).get_result(timeout=30)
    assert {wid: len(pids) for wid, pids in runs_of(log).items()} == {"d1": 1, "d2": 1, "d3": 1, "d4": 1}
    assert client.get_status("d2").deduplication_id == "order-7"


def test_a_plain_script_enqueues_by_name_and_an_existing_id_returns_its_workflow(db, log, children, client):
    """A child that only has litedur.Client enqueues a workflow by name (ENQUEUED: it registered none); a
    worker runs it. An unknown queue fails there with a clear error and writes nothing. Enqueueing an
    id that exists (ENQUEUED, or finished) returns that workflow's handle: no second row, no second run;
    the same id for another workflow name is refused. A name no worker registered waits, untaken."""
    declare(db, log, "misc")

    def from_child(queue: str, workflow: str, wid: str, *args: object) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, str(WORKERS / "queue_client.py"), db, queue, workflow, wid, json.dumps(args)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stdout.strip()

    assert from_child("plain", "job", "c1", "c1", 0.0) == (0, "enqueued c1 ENQUEUED")
    before = snapshot(db)
    code, out = from_child("nope", "job", "c2", "c2", 0.0)
    assert code == 2 and out.startswith("error LitedurError no queue named 'nope'") and db in out
    assert snapshot(db) == before
    assert from_child("plain", "job", "c1", "c1", 0.0) == (0, "enqueued c1 ENQUEUED")  # the same workflow
    assert enqueue(client, "plain", "c1", 0.0).workflow_id == "c1"
    assert count(db, "workflow_id = 'c1'") == 1
    conflict = "'c1' already belongs to a workflow named 'job'"
    with pytest.raises(litedur.WorkflowConflictError, match=conflict), litedur.SetWorkflowID("c1"):
        client.enqueue("plain", "gated", "c1", "/nonexistent")
    assert from_child("plain", "nobody.has.this", "c3") == (0, "enqueued c3 ENQUEUED")

    start_worker(children, db, log, "misc")
    assert client.retrieve_workflow("c1").get_result(timeout=30)["pid"] > 0
    later = enqueue(client, "plain", "c4", 0.0)  # enqueued after c3, finished while c3 waits
    later.get_result(timeout=30)
    assert client.get_status("c3").status == "ENQUEUED"  # no process registered its workflow
    assert enqueue(client, "plain", "c1", 0.0).get_status().status == "SUCCESS"  # finished: its handle, no rerun
    assert {wid: len(pids) for wid, pids in runs_of(log).items()} == {"c1": 1, "c4": 1}
    assert count(db, "true") == 3
    inputs = client.get_status("c1").inputs
    assert (list(inputs["args"]), inputs["kwargs"]) == (["c1", 0.0], {})


def test_a_cancelled_enqueued_workflow_never_runs_and_holds_no_slot(db, log, children, client):
    """Cancel of an ENQUEUED workflow at the head of a concurrency-1 queue: CANCELLED at once, gone from
    the queue's counts; a worker started afterwards runs the rest and never that one. Resumed, it goes
    back to its queue and runs once."""
    declare(db, log, "misc")
    enqueue(client, "single", "x", 0.0)
    for i in range(3):
        enqueue(client, "single", f"y{i}", 0.002)
    assert client.cancel_workflow("x") is True
    status = client.get_status("x")
    assert (status.status, status.queue_name) == ("CANCELLED", "single")
    assert client.cancel_workflow("x") is False  # already ended
    [info] = [info for info in client.list_queues() if info.name == "single"]
    assert (info.enqueued, info.running) == (3, 0)

    start_worker(children, db, log, "misc")
    for i in range(3):
        client.retrieve_workflow(f"y{i}").get_result(timeout=30)
    assert client.get_status("x").status == "CANCELLED"
    assert client.list_steps("x") == [] and "x" not in runs_of(log)

    assert client.resume_workflow("x").get_result(timeout=30)["pid"] > 0
    assert runs_of(log)["x"] == [log.words_after("ready ")[0][0]]


def test_resuming_a_cancelled_workflow_whose_deduplication_id_was_taken_again_is_refused_clearly(db, log, client):
    """A cancelled ENQUEUED workflow frees its deduplication id, which a new enqueue then takes; resuming
    the cancelled one must fail with a litedur error naming the holder and change nothing (it stays
    CANCELLED), never put two active workflows under one deduplication id or leak a SQLite error."""
    declare(db, log, "misc")
    enqueue(client, "dedup", "first", 0.0, deduplication_id="order-9")
    assert client.cancel_workflow("first") is True
    enqueue(client, "dedup", "second", 0.0, deduplication_id="order-9")  # the id is free again: taken
    before = snapshot(db)
    with pytest.raises(litedur.LitedurError, match="'second'"):
        client.resume_workflow("first")
    assert snapshot(db) == before
    assert client.get_status("first").status == "CANCELLED"


def test_a_delayed_workflow_is_not_started_before_its_time_even_across_a_worker_restart(db, log, children, client):
    """A workflow enqueued with delay_seconds=2 while a worker runs, that worker SIGKILLed and another
    started before the delay is over: it starts after created_at + 2 s (from the record), and not much
    later; a workflow enqueued after it without delay runs first."""
    delay = 2.0
    first, _ = start_worker(children, db, log, "misc")
    delayed = enqueue(client, "plain", "late", 0.0, delay_seconds=delay)
    enqueue(client, "plain", "now", 0.0).get_result(timeout=30)
    created = client.get_status("late").created_at
    if time.time() < created + delay:  # (always, unless this machine stalled for seconds)
        assert client.get_status("late").status == "ENQUEUED"
    kill(first)
    second, second_id = start_worker(children, db, log, "misc")
    result = delayed.get_result(timeout=30)
    step = work_step(client, "late")
    assert result["executor"] == second_id
    assert step.output["taken_at"] >= created + delay and step.started_at >= created + delay
    assert step.started_at < created + delay + 3.0, f"started {step.started_at - created:.2f} s after enqueue"
    assert work_step(client, "now").started_at < step.started_at
    assert runs_of(log)["late"] == [str(second.pid)]


def test_bad_queue_input_gets_a_clear_error_and_leaves_the_file_unchanged(db, log):
    """Unknown queue, zero or negative limits, a limiter without a period (or with a bad one),
    worker_concurrency above concurrency, a priority on a queue without priorities, bad enqueue options
    and an argument that cannot be stored: each raises a clear error and the file is as it was."""
    declare(db, log, "misc")
    app = litedur.Engine(db)
    try:

        @app.workflow(name="job")
        def job(wid: str, pace: float) -> None:
            return None

        plain = app.queue("plain")  # as the worker declared it
        before = snapshot(db)
        bad_declarations = [
            ({"concurrency": 0}, "concurrency must be None or an int >= 1, not 0"),
            ({"concurrency": -3}, "concurrency must be None or an int >= 1, not -3"),
            ({"worker_concurrency": 0}, "worker_concurrency must be None or an int >= 1, not 0"),
            ({"concurrency": 2, "worker_concurrency": 5}, r"worker_concurrency \(5\) cannot exceed concurrency \(2\)"),
            ({"limiter": {"limit": 5}}, "limiter must be a dict with exactly 'limit' and 'period'"),
            ({"limiter": {"limit": 0, "period": 1.0}}, "limiter limit must be an int >= 1, not 0"),
            ({"limiter": {"limit": -1, "period": 1.0}}, "limiter limit must be an int >= 1, not -1"),
            ({"limiter": {"limit": 5, "period": 0}}, "limiter period must be a number of seconds > 0, not 0"),
            ({"limiter": {"limit": 5, "period": -2.0}}, "limiter period must be a number of seconds > 0"),
            ({"limiter": {"limit": 5, "period": None}}, "limiter period must be a number of seconds > 0"),
        ]
        for kwargs, message in bad_declarations:
            with pytest.raises(ValueError, match=f"^queue 'fresh': {message}"):
                app.queue("fresh", **kwargs)
        with pytest.raises(TypeError, match="priority_enabled must be a bool"):
            app.queue("fresh", priority_enabled="yes")

        with pytest.raises(litedur.LitedurError, match="no queue named 'nope'"), litedur.Client(db) as client:
            client.enqueue("nope", "job", "n1", 0.0)
        with litedur.Client(db) as client:
            with pytest.raises(ValueError, match="queue 'plain' does not take priorities"):
                enqueue(client, "plain", "n2", 0.0, priority=1)
            with pytest.raises(litedur.SerializationError, match="lock"):
                client.enqueue("plain", "job", "n3", threading.Lock())
            with pytest.raises(TypeError, match="queue and workflow names must be str"):
                client.enqueue(None, "job")  # type: ignore[arg-type]
        refused = pytest.raises(ValueError, match="queue 'plain' does not take priorities")
        with refused, litedur.SetEnqueueOptions(priority=2):
            plain.enqueue(job, "n4", 0.0)
        with pytest.raises(ValueError, match="priority must be an int >= 0"):
            litedur.SetEnqueueOptions(priority=-1)
        with pytest.raises(ValueError, match="delay_seconds must be between 0"):
            litedur.SetEnqueueOptions(delay_seconds=-1)
        with pytest.raises(TypeError, match="deduplication_id must be a non-empty str"):
            litedur.SetEnqueueOptions(deduplication_id="")
        with pytest.raises(litedur.LitedurError, match="already declared here with other limits"):
            app.queue("plain", concurrency=2)
    finally:
        app.close()
    assert snapshot(db) == before
    with litedur.Client(db) as client:
        assert [info.name for info in client.list_queues()] == ["dedup", "plain", "single"]


class _Crash(BaseException):
    """Stands in for the process dying mid-workflow: nothing records it."""


def test_an_enqueue_in_a_workflow_body_is_a_checkpoint_and_a_child(tmp_path, engines):
    """Replayed after a crash, the parent's enqueue returns the same workflow and enqueues no second one;
    the queued workflow is the parent's child (id "<parent>-<position>")."""
    path = tmp_path / "enqueue.db"

    def define(app: litedur.Engine, crash: bool):
        jobs = app.queue("jobs")

        @app.workflow(name="job")
        def job(n: int) -> int:
            return n * 3

        @app.workflow(name="parent")
        def parent() -> int:
            handle = jobs.enqueue(job, 14)
            if crash:
                raise _Crash()
            return handle.get_result()

        return parent

    first = engines(path)
    parent = define(first, crash=True)
    with litedur.SetWorkflowID("P"), pytest.raises(_Crash):
        parent()
    first.shutdown(timeout=10)
    second = engines(path)
    define(second, crash=False)
    second.launch()
    assert second.retrieve_workflow("P").get_result(timeout=20) == 42
    assert [w.workflow_id for w in second.list_workflows(name="job")] == ["P-0"]
    assert second.get_status("P-0").parent_id == "P"
    assert [s.name for s in second.list_steps("P")] == ["litedur.enqueue", "litedur.get_result"]
