"""Async workflows and steps: replay, retries, recovery after SIGKILL, gathered steps, cancellation,
the async waits, the refusal of blocking waits on an event loop, and many workflows on few threads.

Where async workflows run (the decided semantics): called directly (``await wf(x)``) in the caller's
event loop; started with ``start_workflow``/``start_workflow_async``, recovered or dequeued, on the
engine's own loop thread, named "litedur-async". A sync step awaited from an async workflow runs in a
worker thread.

A "crash" is `Crash`, a BaseException nothing records: the workflow stays PENDING, the engine is shut
down (its executor lock released) and a second Engine on the same file recovers it. The SIGKILL test
runs tests/workers/async_agent.py. pytest-asyncio is not used: each test drives its coroutines with
``asyncio.run``. Nothing sleeps to synchronise: waits are bounded polls or results with timeouts.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from support import SideEffectLog, finish, kill, spawn, stream_entries, wait_until

import litedur

LOOP_THREAD = "litedur-async"


class Crash(BaseException):
    """Stands in for the process dying mid-workflow: not an Exception, so nothing records it."""


@pytest.fixture
def db(location) -> str:
    return location("async.db")


def steps_by_position(client: litedur.Client, workflow_id: str) -> dict[int, litedur.StepInfo]:
    return {step.position: step for step in client.list_steps(workflow_id)}


# ---- replay -------------------------------------------------------------------------------------


def _replay_app(app: litedur.Engine, calls: dict[str, int], seen: list[str], crash: list[bool]):
    """The same async workflow and steps registered on an engine (the same names on every engine)."""

    @app.step()
    async def fetch(x: int) -> int:
        calls["fetch"] += 1
        await asyncio.sleep(0)
        return x * 10

    @app.step()
    async def enrich(value: int) -> dict:
        calls["enrich"] += 1
        return {"value": value + 1}

    @app.workflow()
    async def pipeline(x: int) -> dict:
        seen.append(threading.current_thread().name)
        fetched = await fetch(x)
        enriched = await enrich(fetched)
        if crash and crash.pop():
            raise Crash("the process dies here")
        calls["after"] += 1
        done = await fetch(enriched["value"])
        return {"fetched": fetched, "enriched": enriched, "done": done}

    return pipeline


def test_async_workflow_replays_recorded_steps_after_a_crash(db, engines):
    """A direct ``await wf(x)`` runs in the caller's loop; after a crash a second engine recovers the
    workflow on its own loop thread, replays the two recorded steps (their bodies do not run again)
    and runs the rest."""
    calls = {"fetch": 0, "enrich": 0, "after": 0}
    first_seen: list[str] = []
    app = engines(db)
    pipeline = _replay_app(app, calls, first_seen, crash=[True])

    async def main() -> None:
        with litedur.SetWorkflowID("replayed"):
            call = pipeline(4)  # the id is taken at the call, before the await
        await call

    with pytest.raises(Crash):
        asyncio.run(main())
    assert first_seen == [threading.current_thread().name]  # the caller's loop, in this thread
    assert calls == {"fetch": 1, "enrich": 1, "after": 0}
    assert app.get_status("replayed").status == "PENDING"
    assert sorted(steps_by_position(app, "replayed")) == [0, 1]
    app.shutdown(timeout=10)

    second_seen: list[str] = []
    recovering = engines(db)
    _replay_app(recovering, calls, second_seen, crash=[])
    recovering.launch()
    result = recovering.retrieve_workflow("replayed").get_result(timeout=10)
    assert result == {"fetched": 40, "enriched": {"value": 41}, "done": 410}
    assert calls == {"fetch": 2, "enrich": 1, "after": 1}  # the recorded fetch(4) and enrich did not re-run
    assert second_seen == [LOOP_THREAD]  # recovered work runs on the engine's loop thread
    steps = steps_by_position(recovering, "replayed")
    assert [(p, s.name, s.output) for p, s in sorted(steps.items())] == [
        (0, "_replay_app.fetch", 40),
        (1, "_replay_app.enrich", {"value": 41}),
        (2, "_replay_app.fetch", 410),
    ]
    status = recovering.get_status("replayed")
    assert status.status == "SUCCESS" and status.recovery_attempts >= 1


def test_started_and_dequeued_async_workflows_run_on_the_engine_loop_a_direct_call_in_the_callers(db, engines):
    app = engines(db)
    where: list[tuple[str, int]] = []

    @app.workflow()
    async def locate(tag: str) -> str:
        where.append((tag, id(asyncio.get_running_loop())))
        return threading.current_thread().name

    queue = app.queue("async-jobs")
    with app:
        assert app.start_workflow(locate, "started").get_result(timeout=10) == LOOP_THREAD
        assert queue.enqueue(locate, "dequeued").get_result(timeout=10) == LOOP_THREAD

        async def main() -> tuple[str, str, str, int]:
            handle = await app.start_workflow_async(locate, "started async")
            in_loop = await handle.get_result_async(timeout=10)
            queued = await (await queue.enqueue_async(locate, "dequeued async")).get_result_async(timeout=10)
            return in_loop, queued, await locate("direct"), id(asyncio.get_running_loop())

        started_async, dequeued_async, direct, caller_loop = asyncio.run(main())
    assert started_async == dequeued_async == LOOP_THREAD
    assert direct == threading.current_thread().name
    loops = dict(where)
    assert loops["direct"] == caller_loop
    engine_loop = loops["started"]
    assert engine_loop != caller_loop
    assert loops["started async"] == loops["dequeued"] == loops["dequeued async"] == engine_loop


# ---- retries --------------------------------------------------------------------------------------


def test_async_step_retries_with_interval_and_backoff_without_blocking_the_loop(db, engines):
    app = engines(db)
    ticks = [0]
    attempts: list[tuple[float, int]] = []  # (time, ticks) at the start of each attempt

    @app.step(max_attempts=3, interval=0.05, backoff=2.0)
    async def flaky() -> str:
        attempts.append((time.monotonic(), ticks[0]))
        if len(attempts) < 3:
            raise ConnectionError("try again")  # no await before it: only the retry sleep can yield
        return "ok"

    @app.workflow()
    async def calls_flaky() -> str:
        return await flaky()

    async def main() -> str:
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks[0] += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        try:
            with litedur.SetWorkflowID("flaky"):
                return await calls_flaky()
        finally:
            stop.set()
            await task

    assert asyncio.run(main()) == "ok"
    assert len(attempts) == 3
    (t0, k0), (t1, k1), (t2, k2) = attempts
    assert t1 - t0 >= 0.045 and t2 - t1 >= 0.095  # interval * backoff**n: 0.05, then 0.1
    assert k1 - k0 >= 3 and k2 - k1 >= 3  # the ticker ran during each retry sleep: the loop was free
    [step] = app.list_steps("flaky")
    assert (step.attempts, step.output, step.error) == (3, "ok", None)


def test_async_step_that_exhausts_its_attempts_records_its_last_error(db, engines):
    app = engines(db)
    runs = [0]

    @app.step(max_attempts=2, interval=0.01, backoff=1.0)
    async def broken() -> None:
        runs[0] += 1
        raise ValueError(f"attempt {runs[0]} failed")

    @app.workflow()
    async def calls_broken() -> str:
        try:
            await broken()
        except ValueError as exc:
            return f"caught: {exc}"
        return "unreachable"

    with app:
        handle = app.start_workflow(calls_broken)
        assert handle.get_result(timeout=10) == "caught: attempt 2 failed"
        [step] = app.list_steps(handle.workflow_id)
    assert step.attempts == 2 and isinstance(step.error, ValueError) and runs == [2]


def test_retry_sleep_on_the_engine_loop_lets_other_async_workflows_run(db, engines):
    app = engines(db)
    attempts: list[float] = []

    @app.step(max_attempts=2, interval=1.0, backoff=1.0)
    async def slow_retry() -> int:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise TimeoutError("rate limited")
        return len(attempts)

    @app.workflow()
    async def retrying() -> int:
        return await slow_retry()

    @app.workflow()
    async def quick(x: int) -> int:
        return x + 1

    with app:
        retry = app.start_workflow(retrying)
        wait_until(lambda: attempts)
        # While the first workflow sleeps before its second attempt (1 s), the same loop runs another.
        assert app.start_workflow(quick, 1).get_result(timeout=5) == 2
        assert len(attempts) == 1
        assert retry.get_result(timeout=10) == 2
    assert attempts[1] - attempts[0] >= 0.95


# ---- concurrent steps ---------------------------------------------------------------------------


def _gather_app(app: litedur.Engine, calls: dict[str, int], finished: list[str], crash: list[bool]):
    @app.step()
    async def work(label: str, delay: float) -> str:
        calls[label] = calls.get(label, 0) + 1
        await asyncio.sleep(delay)
        finished.append(label)
        return f"out-{label}"

    @app.workflow()
    async def fan_out() -> dict:
        # Called in the order slow, mid, fast: they finish fast, mid, slow.
        gathered = await asyncio.gather(work("slow", 0.15), work("mid", 0.08), work("fast", 0.0))
        # Positions are taken when a step is called, not when it is awaited.
        first, second = work("called-first", 0.0), work("called-second", 0.0)
        later = [await second, await first]
        if crash and crash.pop():
            raise Crash("dies after the gather")
        calls["after"] = calls.get("after", 0) + 1
        return {"gathered": gathered, "later": later}

    return fan_out


def test_gathered_async_steps_take_positions_in_call_order_and_replay_there(db, engines):
    calls: dict[str, int] = {}
    finished: list[str] = []
    app = engines(db)
    fan_out = _gather_app(app, calls, finished, crash=[True])
    with app:
        handle = app.start_workflow(fan_out)
        wait_until(lambda: len(app.list_steps(handle.workflow_id)) == 5)
    # shutdown waited for the run, which ended in the crash right after the fifth step: nothing recorded it
    with litedur.Client(db) as client:
        assert client.get_status(handle.workflow_id).status == "PENDING"
    assert "after" not in calls
    assert finished[:3] == ["fast", "mid", "slow"]  # they really finished out of order

    recovering = engines(db)
    _gather_app(recovering, calls, finished, crash=[])
    recovering.launch()
    result = recovering.retrieve_workflow(handle.workflow_id).get_result(timeout=10)
    assert result == {
        "gathered": ["out-slow", "out-mid", "out-fast"],  # by call order, not by the order they ended
        "later": ["out-called-second", "out-called-first"],
    }
    assert calls == {"slow": 1, "mid": 1, "fast": 1, "called-first": 1, "called-second": 1, "after": 1}
    steps = steps_by_position(recovering, handle.workflow_id)
    assert {p: s.output for p, s in steps.items()} == {
        0: "out-slow",
        1: "out-mid",
        2: "out-fast",
        3: "out-called-first",
        4: "out-called-second",
    }
    assert steps[2].finished_at <= steps[1].finished_at <= steps[0].finished_at  # recorded as they ended


# ---- recovery after SIGKILL in another process ------------------------------------------------------


def test_async_workflow_killed_mid_gather_is_recovered_by_another_process(db, tmp_path, children):
    litedur.Engine(db).close()  # the file exists before the child or the client opens it
    log = SideEffectLog(tmp_path / "effects.log")
    first = spawn("async_agent.py", db, log.path, "start")
    children.append(first)
    with litedur.Client(db) as client:

        def gathered_but_slow() -> bool:
            if first.poll() is not None:
                raise AssertionError(f"the first child exited early ({first.returncode})")
            if not any(line.startswith("start slow") for line in log.lines()):
                return False
            try:
                return {0, 2, 3} <= set(steps_by_position(client, "agent"))
            except litedur.WorkflowNotFoundError:
                return False

        wait_until(gathered_but_slow, timeout=20)
        kill(first)
        assert client.get_status("agent").status == "PENDING"
        assert 1 not in steps_by_position(client, "agent")  # "slow" was running, never recorded
        assert client.send("agent", "reply")  # waits for the recovered run's recv_async

        second = spawn("async_agent.py", db, log.path, "recover")
        children.append(second)
        assert finish(second, timeout=60) == 0
        status = client.get_status("agent")
        steps = steps_by_position(client, "agent")

    p1, p2 = str(first.pid), str(second.pid)
    [result] = [json.loads(line[len("result ") :]) for line in log.lines() if line.startswith("result ")]
    assert result == {
        "head": "HELLO",
        "parts": [f"slow:{p2}", f"a:{p1}", f"b:{p1}"],  # in call order; a and b replayed from the first process
        "reply": "reply",
        "tail": f"HELLO+slow:{p2}+a:{p1}+b:{p1}+reply",
    }
    lines = log.lines()
    assert [x for x in lines if x.startswith("effect ")] == [f"effect {p1}"]  # the recorded side effect: once
    assert [x for x in lines if x.startswith(("start a", "start b"))] == [f"start a {p1}", f"start b {p1}"]
    assert [x for x in lines if x.startswith("start slow")] == [f"start slow {p1}", f"start slow {p2}"]
    assert f"body {LOOP_THREAD} {p1}" in lines and f"body {LOOP_THREAD} {p2}" in lines
    [concluded] = [x.split() for x in lines if x.startswith("conclude ")]
    assert concluded[1] != LOOP_THREAD and concluded[2] == p2  # the sync step ran off the loop thread
    assert status.status == "SUCCESS" and status.recovery_attempts >= 1
    assert [(p, s.name) for p, s in sorted(steps.items())] == [
        (0, "effect"), (1, "fetch"), (2, "fetch"), (3, "fetch"), (4, "litedur.recv"), (5, "conclude"),
    ]  # fmt: skip


# ---- cancellation -----------------------------------------------------------------------------------


def test_cancel_of_an_async_workflow_waiting_in_recv_async_leaves_the_loop_healthy(db, engines):
    app = engines(db)

    @app.workflow()
    async def inbox(tag: str) -> str:
        message = await app.recv_async(timeout=60)
        return f"{tag} got {message}"

    with app:
        doomed = app.start_workflow(inbox, "doomed")
        other = app.start_workflow(inbox, "other")
        wait_until(lambda: app._signals.blocked(doomed.workflow_id) and app._signals.blocked(other.workflow_id))
        began = time.monotonic()
        with litedur.Client(db) as client:
            assert client.cancel_workflow(doomed.workflow_id)
        with pytest.raises(litedur.WorkflowCancelledError):
            doomed.get_result(timeout=5)
        # Its run left recv_async (woken by the cancel, not by the 60 s timeout) and ended.
        wait_until(lambda: doomed.workflow_id not in app._executor.running, timeout=2)
        assert not app._signals.blocked(doomed.workflow_id)
        assert time.monotonic() - began < 2.0
        assert app.get_status(doomed.workflow_id).status == "CANCELLED"
        assert app._runner.thread is not None and app._runner.thread.is_alive()

        # The loop goes on: the other waiting workflow and a new one still finish.
        assert app._signals.blocked(other.workflow_id)
        app.send(other.workflow_id, "hello")
        assert other.get_result(timeout=5) == "other got hello"
        late = app.start_workflow(inbox, "late")
        app.send(late.workflow_id, "welcome")
        assert late.get_result(timeout=5) == "late got welcome"
        assert app.list_steps(doomed.workflow_id) == []  # its recv recorded nothing after the cancel


# ---- the async waits ------------------------------------------------------------------------------


def test_recv_async_receives_by_topic_in_order_and_times_out_with_none(db, engines):
    app = engines(db)

    @app.workflow()
    async def listener() -> list:
        first = await app.recv_async("chat", timeout=10)
        second = await app.recv_async("chat", timeout=10)
        other = await app.recv_async(timeout=10)
        began = time.monotonic()
        nothing = await app.recv_async("chat", timeout=0.2)
        return [first, second, other, nothing, time.monotonic() - began]

    async def main() -> list:
        handle = await app.start_workflow_async(listener)
        app.send(handle.workflow_id, {"n": 1}, topic="chat")
        app.send(handle.workflow_id, "default topic")
        app.send(handle.workflow_id, {"n": 2}, topic="chat")
        return await handle.get_result_async(timeout=10)

    with app:
        first, second, other, nothing, waited = asyncio.run(main())
    assert (first, second, other, nothing) == ({"n": 1}, {"n": 2}, "default topic", None)
    assert 0.19 <= waited < 5


def test_get_event_async_waits_for_the_event_times_out_and_is_a_checkpoint_in_a_body(db, engines):
    app = engines(db)

    @app.workflow()
    async def publisher() -> str:
        app.set_event("phase", "waiting")
        answer = await app.recv_async(timeout=10)
        app.set_event("answer", answer)
        return await app.recv_async(timeout=10)

    @app.workflow()
    async def watcher(target: str) -> list:
        seen = await app.get_event_async(target, "answer", timeout=10)
        missing = await app.get_event_async(target, "never", timeout=0.1)
        return [seen, missing]

    async def main() -> tuple:
        pub = await app.start_workflow_async(publisher)
        assert await app.get_event_async(pub.workflow_id, "phase", timeout=10) == "waiting"
        began = time.monotonic()
        assert await app.get_event_async(pub.workflow_id, "never", timeout=0.2) is None
        timed_out_after = time.monotonic() - began

        async def answer_once_the_waiter_blocks() -> None:
            # Two waits on the publisher block now: its own recv_async and the get_event_async below.
            deadline = time.monotonic() + 10
            while app._signals.blocked(pub.workflow_id) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # the loop runs on while get_event_async waits
            app.send(pub.workflow_id, 42)

        answer, _ = await asyncio.gather(
            app.get_event_async(pub.workflow_id, "answer", timeout=10), answer_once_the_waiter_blocks()
        )
        watching = await app.start_workflow_async(watcher, pub.workflow_id)
        watched = await watching.get_result_async(timeout=10)
        app.send(pub.workflow_id, "finish")
        return answer, timed_out_after, watched, await pub.get_result_async(timeout=10), watching.workflow_id

    with app:
        answer, timed_out_after, watched, final, watcher_id = asyncio.run(main())
        watcher_steps = [(s.name, s.output) for s in app.list_steps(watcher_id)]
    assert answer == 42
    assert 0.19 <= timed_out_after < 5
    assert watched == [42, None]
    assert final == "finish"
    assert watcher_steps == [("litedur.get_event", 42), ("litedur.get_event", None)]


def test_sleep_async_is_durable_in_a_body_and_plain_outside(db, engines):
    app = engines(db)
    ticks = [0]

    @app.workflow()
    async def napper(seconds: float) -> float:
        began = time.monotonic()
        await app.sleep_async(seconds)
        return time.monotonic() - began

    async def main() -> tuple[float, int]:
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks[0] += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        with litedur.SetWorkflowID("napper"):
            slept = await napper(0.2)
        before = ticks[0]
        await app.sleep_async(0.01)  # outside a workflow: asyncio.sleep
        stop.set()
        await task
        return slept, before

    with app:
        slept, ticks_during = asyncio.run(main())
        started = app.start_workflow(napper, 0.05)
        assert started.get_result(timeout=10) >= 0.045
        [step] = app.list_steps("napper")
    assert slept >= 0.195
    assert ticks_during >= 10  # the ticker ran through the 0.2 s durable sleep
    assert step.name == "litedur.sleep" and step.error is None


def test_get_result_async_returns_raises_and_times_out(db, engines):
    app = engines(db)

    @app.workflow()
    async def waits_forever() -> None:
        await app.recv_async(timeout=60)

    @app.workflow()
    async def fails() -> None:
        raise KeyError("missing")

    @app.workflow()
    async def doubles(x: int) -> int:
        return 2 * x

    async def main() -> float:
        assert await (await app.start_workflow_async(doubles, 21)).get_result_async(timeout=10) == 42
        with pytest.raises(KeyError, match="missing"):
            await (await app.start_workflow_async(fails)).get_result_async(timeout=10)
        stuck = await app.start_workflow_async(waits_forever)
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await stuck.get_result_async(timeout=0.2)
        waited = time.monotonic() - began
        app.send(stuck.workflow_id, "bye")
        assert await stuck.get_result_async(timeout=10) is None
        return waited

    with app:
        waited = asyncio.run(main())
    assert 0.19 <= waited < 5


# ---- blocking waits refused on an event loop ----------------------------------------------------------


def test_blocking_waits_on_an_event_loop_raise_an_error_naming_the_async_form(db, engines):
    app = engines(db)

    @app.workflow()
    async def idle() -> None:
        await app.recv_async(timeout=30)

    @app.workflow()
    def streams() -> None:
        app.write_stream("out", 1)
        app.recv(timeout=30)

    with app:
        handle = app.start_workflow(idle)
        streaming = app.start_workflow(streams)
        wait_until(lambda: app._signals.blocked(streaming.workflow_id))

        async def main() -> dict[str, str]:
            refused: dict[str, str] = {}
            attempts = {
                "get_result": lambda: handle.get_result(timeout=5),
                "get_event": lambda: app.get_event(handle.workflow_id, "k", timeout=5),
                "sleep": lambda: app.sleep(1),
                "read_stream": lambda: list(app.read_stream(streaming.workflow_id, "out", timeout=5)),
            }
            for name, attempt in attempts.items():
                began = time.monotonic()
                with pytest.raises(litedur.LitedurError) as raised:
                    attempt()
                assert time.monotonic() - began < 1  # refused at once, not after the wait
                refused[name] = str(raised.value)
            return refused

        refused = asyncio.run(main())
        assert "get_result_async" in refused["get_result"]
        assert "get_event_async" in refused["get_event"]
        assert "sleep_async" in refused["sleep"]
        assert "read_stream_async" in refused["read_stream"]
        # The same calls work from a thread with no loop.
        app.send(handle.workflow_id, "done")
        assert handle.get_result(timeout=5) is None
        app.send(streaming.workflow_id, "done")
        assert list(app.read_stream(streaming.workflow_id, "out", timeout=5)) == [1]


def test_blocking_waits_in_an_async_workflow_body_name_their_async_forms(db, engines):
    app = engines(db)

    @app.workflow()
    async def wrong_recv() -> None:
        app.recv(timeout=5)

    @app.workflow()
    async def wrong_sleep() -> None:
        app.sleep(5)

    @app.workflow()
    async def alive() -> str:
        return "alive"

    @app.workflow()
    async def wrong_get_result() -> None:
        child = await app.start_workflow_async(alive)
        child.get_result(timeout=5)

    with app:
        cases = ((wrong_recv, "recv_async"), (wrong_sleep, "sleep_async"), (wrong_get_result, "get_result_async"))
        for workflow, expected in cases:
            handle = app.start_workflow(workflow)
            began = time.monotonic()
            with pytest.raises(litedur.LitedurError, match=expected):
                handle.get_result(timeout=5)
            assert time.monotonic() - began < 2
            assert app.get_status(handle.workflow_id).status == "ERROR"
        # The loop thread was never blocked: another async workflow still runs on it.
        assert app.start_workflow(alive).get_result(timeout=5) == "alive"


# ---- sync steps from async workflows ---------------------------------------------------------------


def test_sync_step_awaited_from_an_async_workflow_runs_in_a_worker_thread(db, engines):
    app = engines(db)
    gate = threading.Event()

    @app.step()
    def blocking(label: str) -> dict:
        opened = gate.wait(5)  # blocks its thread; the loop must stay free to open the gate
        app.write_stream("log", label)  # the worker thread still sees the run and the step
        return {"thread": threading.current_thread().name, "opened": opened}

    @app.step()
    async def open_gate() -> str:
        await asyncio.sleep(0)
        gate.set()
        return threading.current_thread().name

    @app.workflow()
    async def mixed(tag: str) -> dict:
        loop_thread = threading.current_thread().name
        gate.clear()
        blocked, opener = await asyncio.gather(blocking(tag), open_gate())
        app.close_stream("log")
        return {"loop": loop_thread, "step": blocked, "opener": opener}

    with app:
        started = app.start_workflow(mixed, "started").get_result(timeout=10)

        async def main() -> dict:
            with litedur.SetWorkflowID("direct-mixed"):
                return await mixed("direct")

        direct = asyncio.run(main())
        step_names = [s.name for s in app.list_steps("direct-mixed")]
    assert started["loop"] == LOOP_THREAD == started["opener"]
    assert started["step"]["opened"] and started["step"]["thread"] not in (LOOP_THREAD, "MainThread")
    assert direct["loop"] == threading.current_thread().name == direct["opener"]
    assert direct["step"]["opened"] and direct["step"]["thread"] != direct["loop"]
    assert [value for _, value, _, _ in stream_entries(db, "direct-mixed", "log")] == ["direct"]
    assert step_names[:2] == [
        "test_sync_step_awaited_from_an_async_workflow_runs_in_a_worker_thread.blocking",
        "test_sync_step_awaited_from_an_async_workflow_runs_in_a_worker_thread.open_gate",
    ]


# ---- streams and events from async code ---------------------------------------------------------------


def _streaming_app(app: litedur.Engine, calls: dict[str, int], crash: list[bool]):
    @app.step()
    async def tokens(prefix: str, count: int) -> int:
        calls[prefix] = calls.get(prefix, 0) + 1
        for i in range(count):
            app.write_stream("tokens", f"{prefix}{i}")
            await asyncio.sleep(0)  # the two gathered producers interleave
        app.set_event(f"done-{prefix}", count)
        return count

    @app.workflow()
    async def talker() -> int:
        app.write_stream("tokens", "begin")  # a body write: a checkpoint
        app.set_event("phase", "streaming")
        counts = await asyncio.gather(tokens("a", 3), tokens("b", 3))
        app.write_stream("tokens", "end")
        app.close_stream("tokens")
        app.set_event("phase", "closed")
        if crash and crash.pop():
            raise Crash("dies after closing its stream")
        return sum(counts)

    return talker


def test_streams_and_events_written_from_async_code_are_read_live_and_not_repeated_on_replay(db, engines):
    calls: dict[str, int] = {}
    app = engines(db)
    talker = _streaming_app(app, calls, crash=[True])

    async def main() -> list:
        with litedur.SetWorkflowID("talker"):
            run = asyncio.ensure_future(talker())
        await asyncio.sleep(0)  # one turn: the task runs to its first suspension, having recorded the workflow
        read = [value async for value in app.read_stream_async("talker", "tokens", timeout=10)]
        with pytest.raises(Crash):
            await run
        return read

    read = asyncio.run(main())
    assert read[0] == "begin" and read[-1] == "end"
    assert sorted(read[1:-1]) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert read.index("b0") < read.index("a2")  # the two steps' writes interleaved
    app.shutdown(timeout=10)

    recovering = engines(db)
    _streaming_app(recovering, calls, crash=[])
    recovering.launch()
    assert recovering.retrieve_workflow("talker").get_result(timeout=10) == 6
    assert calls == {"a": 1, "b": 1}
    entries = stream_entries(db, "talker", "tokens")
    assert [value for _, value, _, _ in entries] == read  # nothing appended again by the replay
    assert [offset for offset, _, _, _ in entries] == list(range(8))
    steps = steps_by_position(recovering, "talker")
    positions = {value: position for _, value, position, _ in entries}
    token_steps = sorted(p for p, s in steps.items() if s.name.endswith(".tokens"))
    assert token_steps == [2, 3]  # begin (0), set_event (1), then the gathered steps in call order
    assert {positions[f"a{i}"] for i in range(3)} == {2} and {positions[f"b{i}"] for i in range(3)} == {3}
    assert recovering.list_events("talker") == {"phase": "closed", "done-a": 3, "done-b": 3}
    assert [(s.key, s.closed) for s in recovering.list_streams("talker")] == [("tokens", True)]


# ---- many workflows, few threads ----------------------------------------------------------------------


def test_two_thousand_async_workflows_waiting_in_recv_async_finish_on_few_threads(db, engines):
    count = 2000
    app = engines(db)

    @app.workflow()
    async def waiter(i: int) -> int:
        message = await app.recv_async(timeout=60)
        return message + i

    threads_seen = [threading.active_count()]
    with app:
        handles = [app.start_workflow(waiter, i) for i in range(count)]
        threads_seen.append(threading.active_count())
        ids = [h.workflow_id for h in handles]
        wait_until(lambda: all(app._signals.blocked(w) for w in ids), timeout=30, interval=0.05)
        threads_seen.append(threading.active_count())
        for i, workflow_id in enumerate(ids):
            app.send(workflow_id, 1000 * i)
            if i % 250 == 0:
                threads_seen.append(threading.active_count())
        results = [h.get_result(timeout=30) for h in handles]
        threads_seen.append(threading.active_count())
        statuses = {s.status for s in app.list_workflows(limit=count + 1)}
    assert results == [1001 * i for i in range(count)]
    assert statuses == {"SUCCESS"}
    assert max(threads_seen) < 20, threads_seen
