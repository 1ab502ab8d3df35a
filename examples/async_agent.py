"""An async agent: tool calls fanned out as concurrent steps, then an answer streamed token by token.

The workflow ``agent`` is an ``async def``. It calls three fake tools at once with
``asyncio.gather`` (each an async step with its own latency: a weather lookup, a calendar, a price
list): they run concurrently, so together they take as long as the slowest, yet they take their
step positions in call order, so a replay matches each record to the same call. Each tool writes
its result to the stream ``tools`` when it finishes (fastest first). Then an async step streams the
answer from an offline fake model to the stream ``answer``, token by token, resuming after the
tokens an interrupted attempt already wrote (``already_written``).

A worker process runs the workflow (``await app.start_workflow_async``, ``await
handle.get_result_async``); this process reads both streams with ``read_stream_async`` and prints
them, then the steps with their positions and times. ``--crash`` SIGKILLs the worker half-way
through the answer and starts another: it recovers the workflow, the tools are not called again
(their results are recorded), the answer goes on from the next token, and the reader prints every
token once. Run it again with the same ``--db`` and ``--id`` and it prints the recorded run.

    python examples/async_agent.py [--db PATH] [--id ID] [--rate TOKENS_PER_SECOND] [--crash]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

import litedur

QUESTION = "I'm in Lisbon on Friday with two friends. What should we do in the evening?"

# The fake tools: name -> (latency in seconds, result). They run at once, so the three take ~0.3 s.
TOOLS = {
    "weather": (0.30, {"city": "Lisbon", "day": "Friday", "sky": "clear", "evening_c": 19}),
    "calendar": (0.15, {"day": "Friday", "free_from": "18:30"}),
    "prices": (0.05, {"item": "fado show", "each_eur": 24.5}),
}


def compose(question: str, facts: dict) -> str:
    """What the fake model answers, given the tools' results (deterministic, so a retry says the same)."""
    weather, calendar, prices = facts["weather"], facts["calendar"], facts["prices"]
    total = prices["each_eur"] * 3
    return (
        f"You are free from {calendar['free_from']} on {weather['day']}, and the evening will be "
        f"{weather['sky']} at about {weather['evening_c']} degrees, so start with a walk up to a "
        f"miradouro for the sunset, then see a {prices['item']} in Alfama: three tickets at "
        f"{prices['each_eur']:.2f} EUR come to {total:.2f} EUR."
    )


async def fake_model(question: str, facts: dict, rate: float, skip: int = 0):
    """An offline stand-in for an async model client: yields the answer word by word at ``rate``/s."""
    for token in [word + " " for word in compose(question, facts).split()][skip:]:
        await asyncio.sleep(1 / rate)
        yield token


def build(db: str, rate: float) -> tuple[litedur.Engine, object]:
    app = litedur.Engine(db)

    async def call_tool(name: str) -> dict:
        latency, result = TOOLS[name]
        await asyncio.sleep(latency)  # stands in for an HTTP call
        app.write_stream("tools", {"tool": name, "result": result})  # live: readers see it as it lands
        return result

    @app.step()
    async def weather(city: str, day: str) -> dict:
        return await call_tool("weather")

    @app.step()
    async def calendar(day: str) -> dict:
        return await call_tool("calendar")

    @app.step()
    async def prices(item: str) -> dict:
        return await call_tool("prices")

    @app.step(max_attempts=3, interval=0.1)
    async def stream_answer(question: str, facts: dict, key: str) -> str:
        earlier = app.already_written(key)  # tokens an interrupted attempt already streamed
        text = "".join(earlier)
        async for token in fake_model(question, facts, rate, skip=len(earlier)):
            app.write_stream(key, token)
            text += token
        return text

    @app.workflow(name="agent")
    async def agent(question: str) -> dict:
        found = await asyncio.gather(weather("Lisbon", "Friday"), calendar("Friday"), prices("fado show"))
        app.close_stream("tools")
        facts = dict(zip(("weather", "calendar", "prices"), found, strict=True))
        answer = await stream_answer(question, facts, "answer")
        app.close_stream("answer")
        return {"tools": len(found), "words": len(answer.split())}

    return app, agent


def worker(db: str, rate: float, workflow_id: str) -> None:
    """Run (or recover) the agent until it ends."""
    app, agent = build(db, rate)

    async def run() -> None:
        with litedur.SetWorkflowID(workflow_id):  # an existing id: a handle to that workflow
            handle = await app.start_workflow_async(agent, QUESTION)
        await handle.get_result_async()

    with app:  # launch(): a workflow left by a killed worker is recovered here, on the engine's loop
        asyncio.run(run())


def spawn_worker(db: str, rate: float, workflow_id: str) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", "--db", db, "--rate", str(rate), "--id", workflow_id]
    return subprocess.Popen(command)


async def show(db: str, workflow_id: str, rate: float, crash: bool) -> None:
    """Print the tools' results and the answer as they stream (killing the writer half-way if asked)."""
    writer = spawn_worker(db, rate, workflow_id)
    client = await wait_for_workflow(db, workflow_id)
    async for value in client.read_stream_async(workflow_id, "tools"):
        print(f"tool {value['tool']}: {value['result']}", flush=True)
    crash_after = len(compose(QUESTION, {name: result for name, (_, result) in TOOLS.items()}).split()) // 2
    count = 0
    async for token in client.read_stream_async(workflow_id, "answer"):
        print(token, end="", flush=True)
        count += 1
        if crash and count == crash_after and client.get_status(workflow_id).status == "PENDING":
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            print("\n[worker killed with SIGKILL mid-answer; starting a new one]", file=sys.stderr, flush=True)
            writer = spawn_worker(db, rate, workflow_id)
    print()
    result = await client.retrieve_workflow(workflow_id).get_result_async(timeout=60)
    writer.wait()
    status = client.get_status(workflow_id)
    print(f"result: {result}  status: {status.status}  recoveries: {status.recovery_attempts}")
    steps = client.list_steps(workflow_id)
    origin = min(step.started_at for step in steps)
    for step in steps:
        start, end = (1000 * (moment - origin) for moment in (step.started_at, step.finished_at))
        print(f"step {step.position}: {step.name:<20} attempts {step.attempts}  ran {start:5.0f} ms -> {end:5.0f} ms")
    tools = [step for step in steps if step.name.rpartition(".")[2] in TOOLS]
    together = max(step.finished_at for step in tools) - min(step.started_at for step in tools)
    print(f"the {len(tools)} tools ran at once: {1000 * together:.0f} ms in all, "
          f"{1000 * sum(step.duration for step in tools):.0f} ms one after another")  # fmt: skip


async def wait_for_workflow(db: str, workflow_id: str, timeout: float = 30.0) -> litedur.Client:
    """A client on ``db`` once the worker has created it and recorded the workflow."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = litedur.Client(db)
            client.get_status(workflow_id)
            return client
        except (litedur.DatabaseError, litedur.WorkflowNotFoundError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database file (default: a new temporary file)")
    parser.add_argument("--id", default="agent-1", help="workflow id (default: agent-1)")
    parser.add_argument("--rate", type=float, default=40.0, help="tokens per second (default: 40)")
    parser.add_argument("--crash", action="store_true", help="SIGKILL the worker half-way through the answer")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    db = options.db or os.path.join(tempfile.mkdtemp(prefix="litedur-agent-"), "agent.db")
    if options.worker:
        worker(db, options.rate, options.id)
        return
    print(f"database: {db}\nquestion: {QUESTION}", file=sys.stderr)
    asyncio.run(show(db, options.id, options.rate, options.crash))


if __name__ == "__main__":
    main()
