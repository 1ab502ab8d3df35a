"""Crash injection: seeded random workflows SIGKILLed at random moments, relaunched until they end.

Each trial draws, from its seed, a workflow shape (tests/workers/fault_shape.py: steps with side
effects, step producers resuming with ``already_written``, one step failing once and retrying,
body writes, closes, refused writes to closed streams, sometimes a final ERROR) and a plan: the
first process (tests/workers/fault_workflow.py; sometimes two at once, racing to create the file
and start the workflow) is SIGKILLed at a random moment (after a random
share of the reference run's events, or a random time after it was spawned: during start-up,
recovery or work), sometimes the relaunched process is killed again, and each relaunch is one or
two processes at once, in either mode (``start``: start_workflow with the id; ``recover``: launch
only). A reader process (tests/workers/fault_reader.py) stays attached to every stream of every
trial, live, through all of it. The same seed is also run once, uninterrupted, in this process:
the reference.

Checks, per trial:
- stuck: every process exits and the workflow reaches a final status;
- the final status, output or error message equal the reference's;
- lost / doubled: each key's stream equals the reference's exactly (offset, value, step position),
  so no value is missing or repeated (a value whose write_stream returned but which no reader
  could see yet may be lost in a kill, but the producer that resumes with already_written then
  writes it again: the *final* stream is exact); each recorded step output's token names exactly
  one side effect in the O_APPEND log; every other side effect came from a process that was
  killed (a step body never runs to completion twice in a live process), and none happened after
  the body had received that step's recorded output;
- offsets are dense from 0; the step records (positions, names) equal the reference's, and so do
  the streams' closed states;
- the attached reader received exactly the final stream of every key;
- ``PRAGMA integrity_check`` is ok.

CI runs ``LITEDUR_CRASH_TRIALS`` (default 50) trials from seed ``LITEDUR_CRASH_FIRST_SEED`` (1);
``benchmarks/crash_trials.py --trials 1000`` is the long mode, ``--seed N`` replays one trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import WORKERS, kill, on_sqlite, raw_rows, spawn, stream_entries

import litedur

sys.path.insert(0, str(WORKERS))
import fault_shape  # noqa: E402  (lives with the workers, which import it too)

TRIALS = int(os.environ.get("LITEDUR_CRASH_TRIALS", "50"))
PG_TRIALS = int(os.environ.get("LITEDUR_CRASH_PG_TRIALS", "15"))
FIRST_SEED = int(os.environ.get("LITEDUR_CRASH_FIRST_SEED", "1"))
WORKFLOW_ID = "fault-trial"
STUCK_AFTER = 60.0  # seconds the last processes get to finish the workflow
MODES = ("start", "recover")


# ---- the plan of a trial -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """Processes started together; ``kill`` says when to SIGKILL them (None: let them finish)."""

    modes: tuple[str, ...]
    kill: tuple[str, float] | None  # ("progress", share of the reference run's events) or ("time", seconds)
    victims: str = "all"  # with two processes: "all", "owner" (the one running the workflow) or "one"


def plan_of(seed: int) -> list[Launch]:
    """The launches of a trial: the first process, one or two killed relaunches at most, the last."""
    rng = random.Random(f"plan-{seed}")
    kills = 1 if rng.random() < 0.7 else 2
    launches = []
    for number in range(kills + 1):
        if number == 0:  # sometimes two processes create the file and start the workflow at once
            modes: tuple[str, ...] = ("start", "start") if rng.random() < 0.2 else ("start",)
        else:
            modes = tuple(rng.choice(MODES) for _ in range(2 if rng.random() < 0.3 else 1))
        if number == kills:
            moment = None
        elif rng.random() < 0.6:
            moment = ("progress", rng.uniform(0.0, 1.05))
        else:
            moment = ("time", rng.uniform(0.0, 0.5))
        victims = rng.choice(["all", "owner", "one"]) if len(modes) > 1 else "all"
        launches.append(Launch(modes, moment, victims))
    return launches


# ---- what a trial produces ---------------------------------------------------------------------------------


@dataclass
class Trial:
    """The outcome of one trial: its figures and, when it failed, why."""

    seed: int
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    killed: int = 0  # processes SIGKILLed while still running
    launched: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.doubled or self.stuck or self.other)

    def report(self) -> str:
        parts = [f"{name}: {'; '.join(items)}" for name, items in
                 (("lost", self.lost), ("doubled", self.doubled), ("stuck", self.stuck), ("failed", self.other))
                 if items]  # fmt: skip
        return (
            f"seed {self.seed} FAILED ({' | '.join(parts)}); "
            f"replay: python benchmarks/crash_trials.py --seed {self.seed}"
        )


@dataclass
class Reference:
    status: str
    output: Any
    error: str | None
    entries: dict[str, list[tuple[int, Any, int]]]
    closed: dict[str, str | None]
    steps: list[tuple[int, str]]
    events: int


def run_reference(seed: int, db: str) -> Reference:
    """Run the seed's workflow uninterrupted in this process (no pacing) and record what it stored."""
    shape = fault_shape.shape_of(seed)
    events: list[tuple] = []
    app = litedur.Engine(db)
    flow = fault_shape.build(app, shape, lambda *event: events.append(event), pace=0.0)
    with app:
        with litedur.SetWorkflowID(WORKFLOW_ID):
            handle = app.start_workflow(flow, seed)
        with contextlib.suppress(fault_shape.FaultError):
            handle.get_result(timeout=60)
        status = app.get_status(WORKFLOW_ID)
        closed = {info.key: info.closed_by for info in app.list_streams(WORKFLOW_ID)}
        steps = [(step.position, step.name) for step in app.list_steps(WORKFLOW_ID)]
    entries = {key: [e[:3] for e in stream_entries(db, WORKFLOW_ID, key)] for key in shape.keys}
    return Reference(
        status.status, status.output, None if status.error is None else str(status.error),
        entries, closed, steps, len(events) + 2,  # + the worker's "start" and "exit" lines
    )  # fmt: skip


# ---- processes ---------------------------------------------------------------------------------------------


class EventLog:
    """The trial's O_APPEND event log, read incrementally: ``(kind, pid, fields)`` per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[str, int, list[str]]] = []
        self._offset = 0
        self._partial = b""

    def refresh(self) -> list[tuple[str, int, list[str]]]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            kind, pid, *fields = line.decode().split(" ")
            self.events.append((kind, int(pid), fields))
        return self.events

    def count_by(self, pids: set[int]) -> int:
        return sum(1 for _, pid, _ in self.refresh() if pid in pids)


class AttachedReader:
    """The long-lived reader process: one request per trial, answers read on a thread (bounded waits)."""

    def __init__(self) -> None:
        self.process = spawn("fault_reader.py", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self._answers.put(line)

    def follow(self, db: Path, workflow_id: str, keys: list[str]) -> None:
        self.process.stdin.write(json.dumps({"db": str(db), "workflow_id": workflow_id, "keys": keys}) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float) -> dict | None:
        try:
            return json.loads(self._answers.get(timeout=timeout))
        except queue.Empty:
            return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def restart(self) -> None:
        """A new reader process (after one that stopped answering: it may still wait on a lost trial)."""
        kill(self.process)
        self.__init__()

    def close(self) -> None:
        if self.alive():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill(self.process)


def _pid_of_owner(db: Path, log: EventLog) -> int | None:
    """The pid of the process whose executor owns the workflow now (from the log's ``start`` lines)."""
    try:
        with litedur.Client(db) as client:
            owner = client.get_status(WORKFLOW_ID).executor_id
    except (litedur.DatabaseError, litedur.WorkflowNotFoundError):
        return None
    for kind, pid, fields in log.refresh():
        if kind == "start" and fields[1:2] == [owner]:
            return pid
    return None


def _wait_for_progress(log: EventLog, pids: set[int], processes: list[subprocess.Popen], target: int) -> None:
    """Until the processes logged ``target`` events, or all of them exited (bounded)."""
    deadline = time.monotonic() + STUCK_AFTER
    while log.count_by(pids) < target and any(p.poll() is None for p in processes):
        if time.monotonic() > deadline:
            return
        time.sleep(0.0005)


# ---- one trial ---------------------------------------------------------------------------------------------


def run_trial(seed: int, directory: Path, reader: AttachedReader, location: Callable[[str], str]) -> Trial:
    """Run trial ``seed`` in ``directory`` (which it creates), its databases where ``location`` puts
    them, with the attached reader; return its outcome."""
    started = time.monotonic()
    trial = Trial(seed)
    directory.mkdir(parents=True, exist_ok=True)
    shape = fault_shape.shape_of(seed)
    reference = run_reference(seed, location(f"trial-{seed}/reference.db"))
    db, log = location(f"trial-{seed}/trial.db"), EventLog(directory / "effects.log")
    reader.follow(db, WORKFLOW_ID, shape.keys)
    rng = random.Random(f"moments-{seed}")
    killed: set[int] = set()
    everyone: list[subprocess.Popen] = []
    try:
        for launch in plan_of(seed):
            processes = [spawn("fault_workflow.py", db, log.path, seed, WORKFLOW_ID, mode) for mode in launch.modes]
            everyone.extend(processes)
            trial.launched += len(processes)
            if launch.kill is None:
                break
            how, amount = launch.kill
            if how == "progress":
                _wait_for_progress(log, {p.pid for p in processes}, processes, round(amount * reference.events))
            else:
                time.sleep(amount)  # the random moment itself, not a wait for anything
            victims = processes
            if launch.victims == "one":
                victims = [rng.choice(processes)]
            elif launch.victims == "owner":
                owner = _pid_of_owner(db, log)
                victims = [p for p in processes if p.pid == owner] or [rng.choice(processes)]
            for process in victims:
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=10)
                    if process.returncode == -signal.SIGKILL:
                        killed.add(process.pid)
                        trial.killed += 1
        deadline = time.monotonic() + STUCK_AFTER
        for process in everyone:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                trial.stuck.append(f"process {process.pid} still running after {STUCK_AFTER} s")
            else:
                if process.returncode not in (0, -signal.SIGKILL) or (
                    process.returncode == -signal.SIGKILL and process.pid not in killed
                ):
                    trial.other.append(f"process {process.pid} exited with {process.returncode}")
    finally:
        for process in everyone:
            kill(process)
    answer = reader.answer(timeout=30 if not trial.stuck else 1)
    if answer is None:
        reader.restart()
    check(trial, shape, reference, db, log, killed, answer)
    trial.seconds = time.monotonic() - started
    return trial


def check(
    trial: Trial,
    shape: fault_shape.Shape,
    reference: Reference,
    db: Path,
    log: EventLog,
    killed: set[int],
    answer: dict | None,
) -> None:
    """Fill the trial's findings (see the module docstring)."""
    try:
        client = litedur.Client(db)
    except litedur.DatabaseError as exc:
        trial.stuck.append(f"no database: {exc}")
        return
    with client:
        try:
            status = client.get_status(WORKFLOW_ID)
        except litedur.WorkflowNotFoundError:
            trial.stuck.append("the workflow was never created")
            return
        if status.status not in ("SUCCESS", "ERROR"):
            trial.stuck.append(f"the workflow is {status.status}")
        elif status.status != reference.status:
            trial.other.append(f"status {status.status}, reference {reference.status}")
        elif status.status == "SUCCESS" and status.output != reference.output:
            trial.other.append(f"output {status.output!r}, reference {reference.output!r}")
        elif status.status == "ERROR" and str(status.error) != reference.error:
            trial.other.append(f"error {status.error!r}, reference {reference.error!r}")
        steps = client.list_steps(WORKFLOW_ID)
        closed = {info.key: info.closed_by for info in client.list_streams(WORKFLOW_ID)}
    if [(s.position, s.name) for s in steps] != reference.steps:
        trial.other.append(f"steps {[(s.position, s.name) for s in steps]}, reference {reference.steps}")
    if closed != reference.closed:
        trial.other.append(f"streams closed {closed}, reference {reference.closed}")

    final: dict[str, list] = {}
    for key in shape.keys:
        entries = stream_entries(db, WORKFLOW_ID, key)
        final[key] = [value for _, value, _, _ in entries]
        got, expected = [e[:3] for e in entries], reference.entries[key]
        if [offset for offset, *_ in entries] != list(range(len(entries))):
            trial.other.append(f"offsets of {key} are not dense: {[offset for offset, *_ in entries]}")
        if got != expected:
            values, wanted = [v for _, v, _ in got], [v for _, v, _ in expected]
            missing = [v for v in wanted if values.count(v) < wanted.count(v)]
            extra = [v for v in values if values.count(v) > wanted.count(v)]
            if missing:
                trial.lost.append(f"stream {key} lacks {sorted(set(missing))}")
            if extra:
                trial.doubled.append(f"stream {key} repeats {sorted(set(extra))}")
            if not missing and not extra:
                trial.other.append(f"stream {key} differs from the reference: {got} != {expected}")

    check_side_effects(trial, steps, log, killed)

    if answer is None:
        trial.other.append("the attached reader did not answer")
    elif answer.get("error"):
        trial.other.append(f"the attached reader failed: {answer['error']}")
    elif answer["values"] != final:
        trial.other.append(f"the attached reader got {answer['values']}, the streams hold {final}")

    integrity = raw_rows(db, "PRAGMA integrity_check") if on_sqlite(db) else [("ok",)]
    if integrity != [("ok",)]:
        trial.other.append(f"integrity_check: {integrity}")


def check_side_effects(trial: Trial, steps: list[litedur.StepInfo], log: EventLog, killed: set[int]) -> None:
    """Each recorded output's token names exactly one side effect; other side effects died with their process."""
    events = log.refresh()
    recorded = {int(step.name[len("step") :]): step.output for step in steps if step.name.startswith("step")}
    effects: dict[int, list[tuple[int, int, str]]] = {}  # step -> (line number, pid, token)
    first_observed: dict[int, int] = {}
    for number, (kind, pid, fields) in enumerate(events):
        if kind == "effect":
            effects.setdefault(int(fields[0]), []).append((number, pid, fields[1]))
        elif kind == "observed":
            step, token = int(fields[0]), fields[1]
            first_observed.setdefault(step, number)
            if recorded.get(step) != token:
                trial.other.append(f"step {step} returned {token} to the body, but its record is {recorded.get(step)}")
    for step, token in recorded.items():
        mine = [e for e in effects.get(step, []) if e[2] == token]
        if not mine:
            trial.lost.append(f"step {step}'s recorded output {token} has no side effect")
        for number, pid, other in effects.get(step, []):
            if other == token:
                continue
            if pid not in killed:
                trial.doubled.append(f"step {step} ran to a side effect ({other}) in live process {pid}")
            if number > first_observed.get(step, len(events)):
                trial.doubled.append(f"step {step} ran again ({other}) after its output was recorded")


# ---- the CI run --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    trials: list[Trial] = field(default_factory=list)

    def line(self) -> str:
        t = self.trials
        return (
            f"trials={len(t)} lost={sum(bool(x.lost) for x in t)} doubled={sum(bool(x.doubled) for x in t)} "
            f"stuck={sum(bool(x.stuck) for x in t)} failures={sum(x.failed for x in t)} "
            f"killed={sum(x.killed for x in t)} launched={sum(x.launched for x in t)}"
        )


@pytest.fixture(scope="module")
def attached_reader():
    reader = AttachedReader()
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def summary():
    found = Summary()
    yield found
    if found.trials:
        print(f"\ncrash injection: {found.line()}")


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + TRIALS))
def test_a_random_workflow_killed_at_random_moments_ends_with_nothing_lost_or_doubled(
    tmp_path, seed, attached_reader, summary, backend, location
):
    if backend == "postgres" and seed >= FIRST_SEED + PG_TRIALS:
        pytest.skip(f"the PostgreSQL half runs the first {PG_TRIALS} seeds (LITEDUR_CRASH_PG_TRIALS)")
    trial = run_trial(seed, tmp_path / f"trial-{seed}", attached_reader, location)
    summary.trials.append(trial)
    assert attached_reader.alive(), "the attached reader process died"
    assert not trial.failed, trial.report()
    shutil.rmtree(tmp_path / f"trial-{seed}", ignore_errors=True)


# ---- regressions found while building the harness ----------------------------------------------------------


def _inotify_instances() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            count += "inotify" in os.readlink(f"/proc/self/fd/{fd}")
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts inotify instances in /proc")
def test_a_long_lived_process_reading_many_files_keeps_no_inotify_instance_per_file(tmp_path):
    # A reader's watch is kept for the next reader of the same file; it used to stay open after the
    # last client of that file closed, one inotify instance per file for the life of the process
    # (a user has 128 by default: then every reader of every process of that user polls).
    before = _inotify_instances()
    for number in range(5):
        app = litedur.Engine(tmp_path / f"{number}.db")

        @app.workflow(name="one")
        def one(app: litedur.Engine = app, number: int = number) -> int:
            app.write_stream("k", number)
            return number

        with app:
            handle = app.start_workflow(one)
            assert list(app.read_stream(handle.workflow_id, "k", timeout=10)) == [number]
            assert handle.get_result(timeout=10) == number
        with litedur.Client(tmp_path / f"{number}.db") as client:
            assert list(client.read_stream(handle.workflow_id, "k", timeout=10)) == [number]
    assert _inotify_instances() <= before  # (another test's leftover reader may close one meanwhile)
