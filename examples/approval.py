"""An agent drafts a reply, then waits durably for a person to approve, reject or edit it.

The workflow streams its draft token by token from an offline fake LLM to the stream ``draft-1``
(a checkpointed step), publishes its phase as the event ``phase``, and waits for a message on the
topic ``decision`` with ``app.recv``. "approve" posts the draft (a step that appends it to
``<db>.outbox``, once); "reject" or ``{"edit": "new text"}`` makes it write draft 2 (``draft-2``)
and wait again; no answer within ``--wait`` seconds, or a third draft rejected, escalates to a
human. This process prints each draft live and the command that answers it from a second terminal:

    python examples/approval.py --db approval.db                           # terminal 1: draft, wait
    litedur --db approval.db events approval-1                             # terminal 2: its phase
    litedur --db approval.db send approval-1 '"approve"' --topic decision  # terminal 2: answer

Kill terminal 1 while it waits (Ctrl-C or kill -9) and run the same command again: the process
recovers the same workflow (same ``--id``), prints the draft from the stream without drafting it
again, and keeps waiting until the original deadline. ``--answer approve`` (repeat it for later
drafts: ``--answer reject --answer approve``) answers by itself once each draft is done.

    python examples/approval.py [--db PATH] [--id ID] [--wait SECONDS] [--rate TOKENS_PER_SECOND]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import litedur

REQUEST = "My order #1042 arrived with a cracked screen. Can I get a replacement?"
DRAFTS = [
    "Hi Sam, I'm sorry your order #1042 arrived damaged. A replacement ships today at no cost, "
    "and a prepaid label for the cracked one is on its way to your inbox. Thanks for your patience!",
    "Hi Sam, sorry about the cracked screen. We'll send a new one today; keep the old one.",
    "Hi Sam, a replacement for order #1042 is on its way.",
]
ROUNDS = len(DRAFTS)


def fake_llm(request: str, feedback: object, draft: int, rate: float, skip: int = 0):
    """An offline stand-in for a model: the n-th canned draft (or the person's edit), word by word."""
    text = feedback["edit"] if isinstance(feedback, dict) and "edit" in feedback else DRAFTS[draft - 1]
    for token in [word + " " for word in text.split()][skip:]:
        time.sleep(1 / rate)
        yield token


def build(db: str, rate: float) -> tuple[litedur.Engine, object]:
    app = litedur.Engine(db)
    outbox = db + ".outbox"

    @app.step(max_attempts=3, interval=0.1)
    def write_draft(request: str, feedback: object, draft: int) -> str:
        key = f"draft-{draft}"
        earlier = app.already_written(key)  # tokens an interrupted attempt already streamed
        text = "".join(earlier)
        for token in fake_llm(request, feedback, draft, rate, skip=len(earlier)):
            app.write_stream(key, token)
            text += token
        return text.strip()

    @app.step()
    def deliver(kind: str, text: str) -> str:  # the side effect: runs once, even across crashes
        with open(outbox, "a", encoding="utf-8") as file:
            file.write(f"{kind}: {text}\n")
        return outbox

    @app.workflow(name="approval")
    def approval(request: str, wait: float) -> dict:
        feedback = None
        for draft in range(1, ROUNDS + 1):
            app.set_event("phase", "drafting" if draft == 1 else "revising")
            text = write_draft(request, feedback, draft)
            app.close_stream(f"draft-{draft}")
            app.set_event("phase", "waiting for a decision")
            feedback = app.recv(topic="decision", timeout=wait)  # durable: its deadline survives a crash
            if feedback == "approve":
                deliver("POSTED", text)
                app.set_event("phase", "posted")
                return {"outcome": "posted", "drafts": draft, "words": len(text.split())}
            if feedback is None:
                break  # nobody answered in time
        deliver("ESCALATED", f"{request} (last draft: {text})")
        app.set_event("phase", "escalated")
        return {"outcome": "escalated", "drafts": draft, "words": len(text.split())}

    return app, approval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="approval.db", help="database file (default: ./approval.db)")
    parser.add_argument("--id", default="approval-1", help="workflow id (default: approval-1)")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for a decision (default: 300)")
    parser.add_argument("--rate", type=float, default=30.0, help="tokens per second (default: 30)")
    parser.add_argument("--answer", action="append", default=[], help="answer each draft by itself (JSON or a word)")
    options = parser.parse_args()
    app, approval = build(options.db, options.rate)
    send = f"litedur --db {shlex.quote(options.db)} send {shlex.quote(options.id)}"
    try:
        with app:  # launch(): a workflow left waiting by a killed run of this command resumes here
            with litedur.SetWorkflowID(options.id):  # an existing id: a handle to that workflow
                handle = app.start_workflow(approval, REQUEST, options.wait)
            print(f"request: {REQUEST}", file=sys.stderr)
            for draft in range(1, ROUNDS + 1):
                reader = app.read_stream(options.id, f"draft-{draft}")  # waits for the draft to start
                for token in reader:
                    print(token, end="", flush=True)
                if reader.offset == 0:
                    break  # the workflow ended without another draft
                print()
                if answered(app, options.id, draft):
                    continue  # a rerun after a crash: this draft was answered already
                if len(options.answer) >= draft:
                    answer = parse(options.answer[draft - 1])
                    print(f"[answering {json.dumps(answer)}]", file=sys.stderr, flush=True)
                    # the key makes a rerun of this command send each answer once
                    app.send(options.id, answer, topic="decision", idempotency_key=f"answer-{draft}")
                else:
                    print(f"[waiting for a decision; in another terminal run\n"
                          f"  {send} '\"approve\"' --topic decision\n"
                          f"  or '\"reject\"', or '{{\"edit\": \"your text\"}}' to get another draft]",
                          file=sys.stderr, flush=True)  # fmt: skip
            print(f"result: {handle.get_result()}")
    except KeyboardInterrupt:
        print("\nstopped; run the same command again to keep waiting", file=sys.stderr)
        os._exit(130)  # leave at once, like a crash: the workflow stays PENDING for the next run


def answered(app: litedur.Engine, workflow_id: str, draft: int) -> bool:
    """True once the workflow has ended or started the next draft."""
    next_key = f"draft-{draft + 1}"
    return app.get_status(workflow_id).status != "PENDING" or any(
        stream.key == next_key for stream in app.list_streams(workflow_id)
    )


def parse(answer: str) -> object:
    try:
        return json.loads(answer)
    except ValueError:
        return answer  # a bare word such as approve


if __name__ == "__main__":
    main()
