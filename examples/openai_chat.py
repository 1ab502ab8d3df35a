"""Chat through a durable stream with a real OpenAI-compatible model, or offline with the fake one.

When the ``openai`` package is installed and ``OPENAI_API_KEY`` is set, the tokens come from a real
model (``--model``; ``OPENAI_BASE_URL`` points it at any OpenAI-compatible server, a local one
included). Otherwise, or with ``--offline``, they come from the fake LLM of ``chat.py``, so the
example always runs. Either way the tokens go through a durable stream: follow them from another
terminal with ``litedur --db PATH tail ID tokens``. If the step is retried after a failure half-way,
the model is asked to continue after the text that readers already saw, instead of starting over.

    python examples/openai_chat.py ["your prompt"] [--db PATH] [--id ID] [--model NAME] [--offline]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator

from chat import PROMPT, fake_llm  # the offline stand-in, next to this file

import litedur


def real_model_available() -> bool:
    """True when the ``openai`` package and an API key are both present."""
    if not os.environ.get("OPENAI_API_KEY"):
        return False
    try:
        import openai  # noqa: F401
    except ImportError:
        return False
    return True


def openai_tokens(model: str, prompt: str, written: str) -> Iterator[str]:
    """Stream a completion; after an interrupted attempt, ask the model to continue ``written``."""
    import openai

    messages = [{"role": "user", "content": prompt}]
    if written:
        messages += [
            {"role": "assistant", "content": written},
            {"role": "user", "content": "Continue exactly where you stopped, without repeating anything."},
        ]
    stream = openai.OpenAI().chat.completions.create(model=model, messages=messages, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


def build(db: str, model: str | None, rate: float) -> tuple[litedur.Engine, object]:
    app = litedur.Engine(db)

    @app.step(max_attempts=3, interval=1.0)
    def complete(prompt: str, key: str) -> str:
        earlier = app.already_written(key)  # tokens an interrupted attempt already streamed
        text = "".join(earlier)
        tokens = openai_tokens(model, prompt, text) if model else fake_llm(prompt, rate, skip=len(earlier))
        for token in tokens:
            app.write_stream(key, token)
            text += token
        return text

    @app.workflow(name="openai_chat")
    def chat(prompt: str) -> dict:
        answer = complete(prompt, "tokens")
        app.close_stream("tokens")
        return {"chars": len(answer), "model": model or "fake"}

    return app, chat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default=PROMPT)
    parser.add_argument("--db", help="database file (default: a new temporary file)")
    parser.add_argument("--id", help="workflow id (default: a new one)")
    parser.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), help="model name")
    parser.add_argument("--offline", action="store_true", help="use the fake LLM even if a real one is available")
    parser.add_argument("--rate", type=float, default=40.0, help="tokens per second of the fake LLM")
    options = parser.parse_args()
    model = options.model if real_model_available() and not options.offline else None
    db = options.db or os.path.join(tempfile.mkdtemp(prefix="litedur-openai-"), "chat.db")
    print(f"database: {db}  model: {model or 'offline fake LLM'}", file=sys.stderr)
    app, chat = build(db, model, options.rate)
    with app:
        with litedur.SetWorkflowID(options.id or f"chat-{uuid.uuid4().hex[:8]}"):
            handle = app.start_workflow(chat, options.prompt)
        for token in app.read_stream(handle.workflow_id, "tokens"):
            print(token, end="", flush=True)
        print()
        print(f"result: {handle.get_result()}")


if __name__ == "__main__":
    main()
