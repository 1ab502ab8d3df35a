"""The litedur demo: an LLM-style token stream that survives its writer being killed.

A worker process runs a chat workflow that streams tokens from an offline fake LLM. This process
reads the stream live and prints the tokens as they come. Half-way through, the worker is killed
with SIGKILL; a new worker process launches on the same file, recovers the workflow and finishes
it. The reader never notices: it prints every token once, in order, and then the recorded result.

    python examples/chat.py [--db PATH] [--rate TOKENS_PER_SECOND] [--no-crash]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import litedur

PROMPT = "Tell me why durable streams matter"
ANSWER = (
    "A durable stream keeps every token your model produced, in order, in one SQLite file. "
    "If the writer crashes, a new process recovers the workflow, the step resumes after the "
    "tokens readers already saw, and nobody sees a gap or a duplicate. "
)


def fake_llm(prompt: str, rate: float, skip: int = 0):
    """An offline stand-in for a model: yields the answer word by word at ``rate`` tokens/s."""
    tokens = [word + " " for word in ANSWER.split()]
    for token in tokens[skip:]:
        time.sleep(1 / rate)
        yield token


def build(db: str, rate: float) -> tuple[litedur.Engine, object]:
    app = litedur.Engine(db)

    @app.step(max_attempts=3, interval=0.1)
    def stream_completion(prompt: str, key: str) -> str:
        earlier = app.already_written(key)  # tokens an interrupted attempt already streamed
        text = "".join(earlier)
        for token in fake_llm(prompt, rate, skip=len(earlier)):
            app.write_stream(key, token)
            text += token
        return text

    @app.step()
    def count_words(text: str) -> int:
        return len(text.split())

    @app.workflow()
    def chat(prompt: str) -> dict:
        app.write_stream("progress", "started")
        answer = stream_completion(prompt, "tokens")
        app.close_stream("tokens")
        words = count_words(answer)
        app.write_stream("progress", "done")
        return {"words": words, "chars": len(answer)}

    return app, chat


def worker(db: str, rate: float, workflow_id: str) -> None:
    """Run (or recover) the chat workflow until it ends."""
    app, chat = build(db, rate)
    with app:
        with litedur.SetWorkflowID(workflow_id):
            handle = app.start_workflow(chat, PROMPT)
        handle.get_result()


def spawn_worker(db: str, rate: float, workflow_id: str) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", "--db", db, "--rate", str(rate), "--id", workflow_id]
    return subprocess.Popen(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database file (default: a new temporary file)")
    parser.add_argument("--rate", type=float, default=40.0, help="tokens per second")
    parser.add_argument("--no-crash", action="store_true", help="do not kill the writer")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--id", default="chat-1", help=argparse.SUPPRESS)
    options = parser.parse_args()
    db = options.db or os.path.join(tempfile.mkdtemp(prefix="litedur-demo-"), "chat.db")
    if options.worker:
        worker(db, options.rate, options.id)
        return

    print(f"database: {db}", file=sys.stderr)
    writer = spawn_worker(db, options.rate, options.id)
    client = wait_for_workflow(db, options.id)
    crash_after = None if options.no_crash else len(ANSWER.split()) // 2
    for count, token in enumerate(client.read_stream(options.id, "tokens"), start=1):
        print(token, end="", flush=True)
        if count == crash_after:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            print("\n[writer process killed with SIGKILL; starting a new one]", file=sys.stderr, flush=True)
            writer = spawn_worker(db, options.rate, options.id)
    print()
    result = client.retrieve_workflow(options.id).get_result(timeout=60)
    writer.wait()
    steps = ", ".join(f"{s.position}:{s.name}" for s in client.list_steps(options.id))
    status = client.get_status(options.id)
    print(f"result: {result}  status: {status.status}  recoveries: {status.recovery_attempts}")
    print(f"steps: {steps}")


def wait_for_workflow(db: str, workflow_id: str, timeout: float = 30.0) -> litedur.Client:
    """Open the database as a client once the worker has created it and recorded the workflow."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = litedur.Client(db)
            client.get_status(workflow_id)
            return client
        except (litedur.DatabaseError, litedur.WorkflowNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


if __name__ == "__main__":
    main()
