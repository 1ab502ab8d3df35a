"""Every example runs offline, fast, and does what its docstring says."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from support import finish, kill, spawn, stream_entries, wait_until

import litedur

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import approval  # noqa: E402
import async_agent  # noqa: E402
import chat  # noqa: E402
import two_terminals  # noqa: E402

OFFLINE = {key: value for key, value in os.environ.items() if key not in ("OPENAI_API_KEY", "FORCE_COLOR")}


def run_example(name: str, *args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, str(EXAMPLES / name), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=OFFLINE)
    assert done.returncode == 0, done.stderr
    return done


def stream_length(db: Path, workflow_id: str, key: str) -> int:
    try:
        with litedur.Client(db, unpickle=False) as client:
            return next((s.length for s in client.list_streams(workflow_id) if s.key == key), 0)
    except (litedur.DatabaseError, litedur.WorkflowNotFoundError):
        return 0


def test_chat_prints_every_token_once_although_the_writer_is_killed(tmp_path):
    done = run_example("chat.py", "--db", tmp_path / "chat.db", "--rate", 400)
    text, result, steps = done.stdout.splitlines()
    assert text == " ".join(chat.ANSWER.split()) + " "
    assert result.startswith("result: {'words': ") and "status: SUCCESS" in result
    assert steps.split(", ")[1:3] == ["1:build.stream_completion", "2:build.count_words"]
    assert "killed with SIGKILL" in done.stderr


def test_progress_draws_a_bar_and_a_second_process_can_watch_it(tmp_path):
    db = tmp_path / "progress.db"
    watcher = spawn(EXAMPLES / "progress.py", "--db", db, "--id", "p", "--watch",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=OFFLINE)  # fmt: skip
    try:
        done = run_example("progress.py", "--db", db, "--id", "p", "--items", 25, "--rate", 2000)
        out, _ = watcher.communicate(timeout=30)
    finally:
        kill(watcher)
    assert watcher.returncode == 0
    assert "25/25" in done.stdout and done.stdout.endswith("result: {'processed': 25}\n")
    assert "25/25" in out and out.endswith("watched 25 items; result: {'processed': 25}\n")
    result = subprocess.run([sys.executable, "-m", "litedur", "--db", str(db), "tail", "p", "progress", "--from", "24"],
                            capture_output=True, text=True)  # fmt: skip
    assert json.loads(result.stdout) == {"done": 25, "total": 25, "item": "item-25"}


def test_two_terminals_recipe_tail_follows_a_writer_killed_and_restarted(tmp_path):
    db = tmp_path / "story.db"
    writer = spawn(EXAMPLES / "two_terminals.py", "--db", db, "--rate", 300, stderr=subprocess.DEVNULL)
    out = tmp_path / "tail.out"
    tail = None
    try:
        wait_until(lambda: stream_length(db, "story", "tokens") >= 3)
        with out.open("wb") as stdout:
            tail = subprocess.Popen([sys.executable, "-m", "litedur", "--db", str(db), "tail", "story", "tokens"],
                                    stdout=stdout, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_until(lambda: out.stat().st_size > 0)
        kill(writer)  # terminal 1 closed half-way (or already done: the recipe holds either way)
        writer = spawn(EXAMPLES / "two_terminals.py", "--db", db, "--rate", 300, stderr=subprocess.DEVNULL)
        assert finish(writer) == 0
        assert finish(tail) == 0
    finally:
        kill(writer)
        if tail is not None:
            kill(tail)
    assert out.read_text() == two_terminals.STORY


def test_two_terminals_tells_only_the_first_words_when_asked(tmp_path):
    db = tmp_path / "story.db"
    run_example("two_terminals.py", "--db", db, "--rate", 1000, "--words", 5)
    with litedur.Client(db) as client:
        assert "".join(client.read_stream("story", "tokens")) == "Once upon a time a "
        assert client.get_status("story").output == "5 words"


def test_openai_chat_falls_back_to_the_fake_llm_offline(tmp_path):
    done = run_example("openai_chat.py", "Hi", "--db", tmp_path / "c.db", "--id", "c1", "--rate", 1000)
    text, result = done.stdout.splitlines()
    assert text == " ".join(chat.ANSWER.split()) + " "
    assert result == f"result: {{'chars': {len(text)}, 'model': 'fake'}}"
    assert "offline fake LLM" in done.stderr


def phase(db: Path, workflow_id: str) -> object:
    try:
        with litedur.Client(db) as client:
            return client.list_events(workflow_id).get("phase")
    except (litedur.DatabaseError, litedur.WorkflowNotFoundError):
        return None


def test_approval_answered_by_itself_posts_the_draft_once(tmp_path):
    db = tmp_path / "approval.db"
    done = run_example("approval.py", "--db", db, "--answer", "approve", "--rate", 1000)
    draft = approval.DRAFTS[0]
    assert done.stdout == f"{draft} \nresult: {{'outcome': 'posted', 'drafts': 1, 'words': {len(draft.split())}}}\n"
    assert '[answering "approve"]' in done.stderr
    assert Path(f"{db}.outbox").read_text() == f"POSTED: {draft}\n"
    with litedur.Client(db) as client:
        assert client.list_events("approval-1") == {"phase": "posted"}
        assert client.get_status("approval-1").status == "SUCCESS"


def test_approval_revises_on_reject_and_edit_and_escalates_when_nobody_answers(tmp_path):
    db = tmp_path / "approval.db"
    edit = json.dumps({"edit": "Hi Sam, your new screen ships today."})
    done = run_example("approval.py", "--db", db, "--rate", 1000, "--answer", "reject", "--answer", edit,
                       "--answer", "approve")  # fmt: skip
    drafts = done.stdout.splitlines()
    assert drafts == [approval.DRAFTS[0] + " ", approval.DRAFTS[1] + " ", "Hi Sam, your new screen ships today. ",
                      "result: {'outcome': 'posted', 'drafts': 3, 'words': 7}"]  # fmt: skip
    assert Path(f"{db}.outbox").read_text() == "POSTED: Hi Sam, your new screen ships today.\n"

    done = run_example("approval.py", "--db", db, "--id", "quiet", "--rate", 1000, "--wait", 0.2)
    words = len(approval.DRAFTS[0].split())
    assert done.stdout.splitlines()[-1] == f"result: {{'outcome': 'escalated', 'drafts': 1, 'words': {words}}}"
    assert "send quiet '\"approve\"' --topic decision" in done.stderr
    assert Path(f"{db}.outbox").read_text().splitlines()[-1].startswith("ESCALATED: " + approval.REQUEST)


def test_approval_killed_while_waiting_recovers_and_acts_on_the_decision_once(tmp_path):
    db, out = tmp_path / "approval.db", tmp_path / "agent.out"
    command = (EXAMPLES / "approval.py", "--db", db, "--id", "a1", "--rate", 1000)
    agent = spawn(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: phase(db, "a1") == "waiting for a decision")
        kill(agent)  # SIGKILL while it waits
        with litedur.Client(db) as client:
            first_executor = client.get_status("a1").executor_id
        with out.open("w") as stdout:
            agent = spawn(*command, stdout=stdout, stderr=subprocess.DEVNULL)  # the same command again
        with litedur.Client(db) as client:
            wait_until(lambda: client.get_status("a1").executor_id != first_executor)  # recovered by the new run
            wait_until(lambda: out.read_text().startswith(approval.DRAFTS[0]))  # printed from the stream
            send = [sys.executable, "-m", "litedur", "--db", str(db), "send", "a1", '"approve"', "--topic", "decision"]
            assert subprocess.run(send, capture_output=True).returncode == 0  # terminal 2
            assert finish(agent) == 0
            status, steps = client.get_status("a1"), client.list_steps("a1")
    finally:
        kill(agent)
    draft = approval.DRAFTS[0]
    assert out.read_text() == f"{draft} \nresult: {{'outcome': 'posted', 'drafts': 1, 'words': {len(draft.split())}}}\n"
    assert (status.status, status.recovery_attempts) == ("SUCCESS", 1)
    assert [(s.name, s.attempts) for s in steps if not s.name.startswith("litedur.")] == [
        ("build.write_draft", 1), ("build.deliver", 1)]  # fmt: skip
    assert [s.output for s in steps if s.name == "litedur.recv"] == ["approve"]
    entries = stream_entries(db, "a1", "draft-1")
    assert [offset for offset, *_ in entries] == list(range(len(draft.split())))
    assert "".join(value for _, value, _, _ in entries) == draft + " "  # every token once
    assert {attempt for *_, attempt in entries} == {1}  # the draft was written once, not re-drafted
    assert Path(f"{db}.outbox").read_text() == f"POSTED: {draft}\n"


def wait_deadlines(db: Path, workflow_id: str) -> list[float]:
    """The deadlines recorded for the workflow's durable waits, read from the file with plain SQL."""
    import apsw  # never the stdlib sqlite3 in this process (see support.stream_entries)

    try:
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.CantOpenError:
        return []  # not created yet
    try:
        conn.set_busy_timeout(30_000)
        query = "SELECT deadline FROM timers WHERE workflow_id = ? ORDER BY position"
        return [deadline for (deadline,) in conn.execute(query, (workflow_id,))]
    except apsw.SQLError:
        return []  # no schema yet
    finally:
        conn.close()


def test_approval_restarted_after_a_kill_keeps_the_original_deadline_of_its_wait(tmp_path):
    db = tmp_path / "approval.db"
    command = (EXAMPLES / "approval.py", "--db", db, "--id", "a2", "--rate", 1000, "--wait", 3)
    agent = spawn(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (deadline,) = wait_until(lambda: wait_deadlines(db, "a2"))  # recv has recorded its deadline
        kill(agent)
        wait_until(lambda: time.time() > deadline - 2, timeout=5)  # the agent stays down for a second
        agent = spawn(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert finish(agent) == 0
    finally:
        kill(agent)
    with litedur.Client(db) as client:
        assert client.retrieve_workflow("a2").get_result()["outcome"] == "escalated"
        timed_out = next(s.finished_at for s in client.list_steps("a2") if s.name == "litedur.recv")
    assert wait_deadlines(db, "a2") == [deadline]
    # It timed out at the deadline recorded before the kill; a fresh 3 s wait would end 4 s after it.
    assert deadline <= timed_out < deadline + 0.9


def agent_answer() -> str:
    facts = {name: result for name, (_, result) in async_agent.TOOLS.items()}
    return async_agent.compose(async_agent.QUESTION, facts) + " "


def test_async_agent_runs_its_tools_at_once_and_streams_its_answer(tmp_path):
    db = tmp_path / "agent.db"
    done = run_example("async_agent.py", "--db", db, "--rate", 1000)
    lines = done.stdout.splitlines()
    tools = [f"tool {name}: {async_agent.TOOLS[name][1]}" for name in ("prices", "calendar", "weather")]
    assert lines[:3] == tools  # as they finished: fastest first
    assert lines[3] == " ".join(agent_answer().split()) + " "
    assert lines[4] == "result: {'tools': 3, 'words': 45}  status: SUCCESS  recoveries: 0"
    steps = [line.split()[:5] for line in lines[5:9]]
    assert steps == [["step", f"{position}:", f"build.{name}", "attempts", "1"] for position, name in
                     enumerate(("weather", "calendar", "prices", "stream_answer"))]  # call order  # fmt: skip
    assert lines[9].startswith("the 3 tools ran at once: ") and len(lines) == 10
    with litedur.Client(db) as client:
        recorded = client.list_steps("agent-1")
    tool_steps, answer_step = recorded[:3], recorded[3]
    assert max(s.started_at for s in tool_steps) < min(s.finished_at for s in tool_steps)  # they overlapped
    assert answer_step.started_at >= max(s.finished_at for s in tool_steps)  # the answer waited for all three
    assert answer_step.output == agent_answer()
    assert [value for _, value, _, _ in stream_entries(db, "agent-1", "answer")] == [
        word + " " for word in agent_answer().split()]  # fmt: skip


def test_async_agent_killed_mid_answer_is_recovered_without_calling_its_tools_again(tmp_path):
    db = tmp_path / "agent.db"
    done = run_example("async_agent.py", "--db", db, "--rate", 200, "--crash")
    assert "killed with SIGKILL mid-answer" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[3] == " ".join(agent_answer().split()) + " "  # every token once, in order
    assert lines[4] == "result: {'tools': 3, 'words': 45}  status: SUCCESS  recoveries: 1"
    with litedur.Client(db) as client:
        steps = client.list_steps("agent-1")
    assert [(s.position, s.name.split(".")[1], s.attempts) for s in steps] == [
        (0, "weather", 1), (1, "calendar", 1), (2, "prices", 1), (3, "stream_answer", 2)]  # fmt: skip
    tools = stream_entries(db, "agent-1", "tools")
    assert sorted((value["tool"], position, attempt) for _, value, position, attempt in tools) == [
        ("calendar", 1, 1), ("prices", 2, 1), ("weather", 0, 1)]  # each tool called once, at its position  # fmt: skip
    answer = stream_entries(db, "agent-1", "answer")
    assert [offset for offset, *_ in answer] == list(range(len(agent_answer().split())))
    assert "".join(value for _, value, _, _ in answer) == agent_answer()
    assert {attempt for *_, attempt in answer} == {1, 2}  # the second attempt went on after the first's tokens

    again = run_example("async_agent.py", "--db", db, "--rate", 200, "--crash")  # a rerun prints the recorded run
    assert again.stdout.splitlines()[:5] == lines[:5] and "SIGKILL" not in again.stderr


def busiest(intervals_by_job: dict[str, list[tuple[float, float]]]) -> int:
    """The most jobs that had a step running at one instant (a job counts once however many steps)."""
    edges = []
    for intervals in intervals_by_job.values():
        merged: list[list[float]] = []
        for start, end in sorted(intervals):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        edges += [(start, 1) for start, _ in merged] + [(end, -1) for _, end in merged]
    most = now = 0
    for _, change in sorted(edges):  # at a tie an end (-1) comes first: touching is not overlapping
        now += change
        most = max(most, now)
    return most


def test_rate_limited_queue_finishes_every_job_exactly_once_within_its_limits_after_a_kill(tmp_path):
    db = tmp_path / "jobs.db"
    started = time.monotonic()
    done = run_example("rate_limited.py", "--db", db)
    took = time.monotonic() - started
    lines = done.stdout.splitlines()
    assert any(line.startswith("30/30 jobs done in ") for line in lines), done.stdout
    killed = next(line for line in lines if " was SIGKILLed running jobs " in line)
    assert "each job exactly once" in lines[-3] and "most jobs running at once" in lines[-2]
    assert "killed with SIGKILL while running jobs" in done.stderr

    effects = Path(f"{db}.effects").read_text().splitlines()
    counts = collections.Counter(int(line.split()[1]) for line in effects)
    assert counts == {n: 1 for n in range(1, 31)}  # each job's side effect happened once

    with litedur.Client(db) as client:
        jobs = client.list_workflows(queue="jobs")
        steps = {job.workflow_id: client.list_steps(job.workflow_id) for job in jobs}
    assert len(jobs) == 30 and {job.status for job in jobs} == {"SUCCESS"}
    victim = killed.split()[1]
    requeued = [job for job in jobs if job.recovery_attempts]
    assert requeued and all(f"worker-{victim}-" not in job.executor_id for job in requeued)  # the other one
    intervals = {wid: [(s.started_at, s.finished_at) for s in recorded] for wid, recorded in steps.items()}
    assert busiest(intervals) <= 3  # concurrency=3 across both processes, as recorded in the file
    assert f"most jobs running at once (the steps' recorded times): {busiest(intervals)} " in lines[-2]
    starts = sorted(start for recorded in intervals.values() for start, _ in recorded)
    # 10 starts per second: the 11th start after any start comes a period later (less a little: a step
    # starts a few ms after the dequeue that the limiter counted).
    assert min(later - first for first, later in zip(starts, starts[10:], strict=False)) > 1.0 - 0.25
    assert took < 15

    again = run_example("rate_limited.py", "--db", db)  # a rerun on the file finds every job done
    assert any(line.startswith("30/30 jobs done in ") for line in again.stdout.splitlines())
    assert "SIGKILL" not in again.stdout + again.stderr
    assert Path(f"{db}.effects").read_text().splitlines() == effects
