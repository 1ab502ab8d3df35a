"""Recovery across real processes: SIGKILL at every step boundary, two recovering processes on one
file, and a workflow that keeps killing its process. Side effects are counted in a file opened
with O_APPEND, which survives the kills; the workers are in tests/workers/core_*.py.
"""

from __future__ import annotations

import json
import signal

import pytest
from support import SideEffectLog, finish, kill, spawn, wait_until

import litedur

STEPS = 5
RESULT = f"result {json.dumps(list(range(STEPS)))}"


def wait_for_line(log: SideEffectLog, line: str, process, count: int = 1, prefix: bool = False) -> None:
    """Wait until ``line`` (or, with ``prefix``, lines starting with it) appears ``count`` times in the
    log; fail at once if the child died first."""

    def seen() -> bool:
        lines = log.lines()
        found = sum(x.startswith(line) for x in lines) if prefix else lines.count(line)
        if found >= count:
            return True
        if process.poll() is not None:
            raise AssertionError(f"child exited with {process.returncode} before logging {line!r}: {log.lines()}")
        return False

    wait_until(seen, timeout=30)


def kill_at_boundary(db, log: SideEffectLog, workflow_id: str, boundary: int) -> None:
    """Run the five-step worker until it parks at ``boundary``, then SIGKILL it."""
    child = spawn("core_five_steps.py", db, log.path, workflow_id, boundary)
    try:
        wait_for_line(log, f"boundary {boundary}", child)
    finally:
        kill(child)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("boundary", range(STEPS + 1))
def test_sigkill_at_each_step_boundary_then_relaunch_finishes_with_every_step_once(tmp_path, location, boundary):
    db = location("recovery.db")
    log = SideEffectLog(tmp_path / "effects.log")
    kill_at_boundary(db, log, "five", boundary)
    with litedur.Client(db) as client:
        dead = client.get_status("five")
        assert dead.status == "PENDING"
        assert [s.position for s in client.list_steps("five")] == list(range(boundary))

    relaunch = spawn("core_five_steps.py", db, log.path, "five", -1)
    assert finish(relaunch) == 0

    before = [f"step {i}" for i in range(boundary)]
    after = [f"step {i}" for i in range(boundary, STEPS)]
    assert log.lines() == ["body", *before, f"boundary {boundary}", "body", *after, RESULT]
    for i in range(STEPS):
        assert log.count(f"step {i}") == 1
    with litedur.Client(db) as client:
        status = client.get_status("five")
        assert status.status == "SUCCESS"
        assert status.output == list(range(STEPS))
        assert status.recovery_attempts == 1
        assert status.executor_id != dead.executor_id
        steps = client.list_steps("five")
        assert [s.position for s in steps] == list(range(STEPS))
        assert [s.output for s in steps] == [list(range(i + 1)) for i in range(STEPS)]
        assert all(s.attempts == 1 for s in steps)


def test_a_workflow_killed_again_and_again_while_recovering_still_runs_each_step_once(tmp_path, location):
    db = location("recovery.db")
    log = SideEffectLog(tmp_path / "effects.log")
    for boundary in (1, 3, 5):  # each new process gets two steps further, then dies
        kill_at_boundary(db, log, "chain", boundary)
    assert finish(spawn("core_five_steps.py", db, log.path, "chain", -1)) == 0
    assert log.lines() == [
        "body", "step 0", "boundary 1",
        "body", "step 1", "step 2", "boundary 3",
        "body", "step 3", "step 4", "boundary 5",
        "body", RESULT,
    ]  # fmt: skip
    with litedur.Client(db) as client:
        status = client.get_status("chain")
        assert (status.status, status.output, status.recovery_attempts) == ("SUCCESS", list(range(STEPS)), 3)


def test_two_processes_recover_20_pending_workflows_of_a_dead_executor_each_exactly_once(tmp_path, location):
    db = location("recovery.db")
    log = SideEffectLog(tmp_path / "effects.log")
    count = 20
    ids = [f"p{i:02d}" for i in range(count)]

    parker = spawn("core_pending.py", db, log.path, "park", count)
    try:
        wait_for_line(log, "parked", parker, count=count, prefix=True)
    finally:
        kill(parker)
    assert parker.returncode == -signal.SIGKILL
    with litedur.Client(db) as client:
        parked = client.list_workflows(status="PENDING")
        assert sorted(w.workflow_id for w in parked) == ids
        dead_executor = {w.executor_id for w in parked}
        assert len(dead_executor) == 1

    recoverers = [spawn("core_pending.py", db, log.path, "recover", count) for _ in range(2)]
    for process in recoverers:
        assert finish(process) == 0

    lines = log.lines()
    assert sorted(line for line in lines if line.startswith("parked ")) == [f"parked {i}" for i in ids]
    recovering_pids = {str(p.pid) for p in recoverers}
    done = [line.split() for line in lines if line.startswith("done ")]
    assert {pid for _, pid, _ in done} == recovering_pids
    recovering_executors = {executor for _, _, executor in done}
    for workflow_id in ids:
        assert log.count(f"first {workflow_id}") == 1
        assert log.count(f"second {workflow_id}") == 1
        bodies = [line.split()[2] for line in lines if line.startswith(f"body {workflow_id} ")]
        assert len(bodies) == 2  # once in the dead process, once (only) in one recovering process
        assert bodies[0] == str(parker.pid) and bodies[1] in recovering_pids
    with litedur.Client(db) as client:
        for workflow_id in ids:
            status = client.get_status(workflow_id)
            assert status.status == "SUCCESS"
            assert status.output == workflow_id.upper()
            assert status.recovery_attempts == 1
            assert status.executor_id in recovering_executors
            assert [s.attempts for s in client.list_steps(workflow_id)] == [1, 1]


def test_max_recovery_attempts_stops_a_workflow_that_keeps_killing_its_process(tmp_path, location):
    db = location("recovery.db")
    log = SideEffectLog(tmp_path / "effects.log")
    # max_recovery_attempts=2: the first run and two recoveries die; the third recovery gives up.
    for run in range(3):
        assert finish(spawn("core_doomed.py", db, log.path, "doomed")) == -signal.SIGKILL, run
        assert sum(line.startswith("doom ") for line in log.lines()) == run + 1
    assert finish(spawn("core_doomed.py", db, log.path, "doomed")) == 3
    assert finish(spawn("core_doomed.py", db, log.path, "doomed")) == 3  # and stays given up
    assert [line.split()[0] for line in log.lines()] == ["doom", "doom", "doom", "exceeded", "exceeded"]
    with litedur.Client(db) as client:
        status = client.get_status("doomed")
        assert status.status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
        assert status.recovery_attempts == 3
        assert client.list_steps("doomed") == []
        with pytest.raises(litedur.MaxRecoveryAttemptsExceededError, match="doomed"):
            client.retrieve_workflow("doomed").get_result(timeout=5)
