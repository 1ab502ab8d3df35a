"""Every example runs offline, fast, and does what its docstring says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import finish, kill, spawn, wait_until

import litedur

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

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
