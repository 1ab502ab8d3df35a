"""A child for test_async: an ``async def`` workflow killed mid-gather and recovered by another process.

    async_agent.py DB LOG start     launch, start the workflow "agent" (id "agent"), log ``started PID``,
                                    then wait for ever: the test SIGKILLs the process.
    async_agent.py DB LOG recover   launch (recovering "agent" from the dead executor on the engine's
                                    loop thread), wait for its result and log ``result JSON``.

The body: an async step ``effect`` (position 0, a side effect that must happen once), three async
steps ``fetch`` gathered at positions 1..3 ("slow", "a", "b"; in the first process "slow" never ends,
so the kill finds "a" and "b" recorded and "slow" running), ``recv_async`` (position 4) and a *sync*
step ``conclude`` awaited from the async body (position 5, run in a worker thread). Every body logs
what it did with this process's pid (and the thread it ran on) to an O_APPEND log.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402

db, log_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
log = SideEffectLog(log_path)
pid = os.getpid()
app = litedur.Engine(db)
SLOW = 3600.0 if mode == "start" else 0.05  # not an input of the workflow: only the slow step's pace


@app.step(name="effect")
async def effect(topic: str) -> str:
    log.record(f"effect {pid}")
    return topic.upper()


@app.step(name="fetch")
async def fetch(label: str, delay: float) -> str:
    log.record(f"start {label} {pid}")
    await asyncio.sleep(delay)
    log.record(f"done {label} {pid}")
    return f"{label}:{pid}"


@app.step(name="conclude")
def conclude(parts: list[str]) -> str:
    log.record(f"conclude {threading.current_thread().name} {pid}")
    return "+".join(parts)


@app.workflow(name="agent")
async def agent(topic: str) -> dict:
    log.record(f"body {threading.current_thread().name} {pid}")
    head = await effect(topic)
    parts = await asyncio.gather(fetch("slow", SLOW), fetch("a", 0.01), fetch("b", 0.05))
    reply = await app.recv_async(timeout=60)
    tail = await conclude([head, *parts, reply])
    return {"head": head, "parts": list(parts), "reply": reply, "tail": tail}


app.launch()
if mode == "start":
    with litedur.SetWorkflowID("agent"):
        app.start_workflow(agent, "hello")
    log.record(f"started {pid}")
    threading.Event().wait()
else:
    result = app.retrieve_workflow("agent").get_result(timeout=60)
    log.record(f"result {json.dumps(result)}")
    app.shutdown(timeout=10)
