"""A child process of the contention suite: THREADS threads that start workflows and read streams.

    contention_worker.py DB NAME THREADS SECONDS GATE

Prints ``ready`` once its engine is launched, waits for the file GATE to exist, then for SECONDS
every thread repeats: start a workflow (a step writes N values to "values", the body writes two
to "body", both streams are closed), read its "values" stream live while it runs, check its result;
and every third round read the whole of a random finished workflow of any process (through a
Client, as a dashboard would) and check it. Every exception is caught and reported. At the end it
prints one JSON line: its counts, its workflow ids and the errors (there must be none: no
SQLITE_BUSY or "database is locked" may reach a caller).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback

import litedur


def expected_values(workflow_id: str, count: int) -> list[str]:
    return [f"{workflow_id}:{i}" for i in range(count)]


def main() -> int:
    db, name, threads, seconds, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    app = litedur.Engine(db)
    client = litedur.Client(db)

    @app.step()
    def produce(workflow_id: str, count: int) -> int:
        for value in expected_values(workflow_id, count)[len(app.already_written("values")) :]:
            app.write_stream("values", value)
        return count

    @app.workflow(name="contended")
    def contended(workflow_id: str, count: int) -> int:
        app.write_stream("body", "first")
        produced = produce(workflow_id, count)
        app.close_stream("values")
        app.write_stream("body", "last")
        app.close_stream("body")
        return produced

    lock = threading.Lock()
    totals = {"workflows": 0, "written": 0, "read": 0, "foreign_reads": 0}
    ids: list[str] = []
    errors: list[str] = []

    def check_foreign(rng: random.Random) -> int:
        finished = client.list_workflows(status="SUCCESS", limit=50)
        if not finished:
            return 0
        status = rng.choice(finished)
        workflow_id, count = status.inputs["args"]
        values = list(client.read_stream(status.workflow_id, "values", timeout=30))
        if values != expected_values(workflow_id, count) or status.output != count:
            raise AssertionError(f"{status.workflow_id}: read {values!r}, output {status.output!r}")
        if list(client.read_stream(status.workflow_id, "body", timeout=30)) != ["first", "last"]:
            raise AssertionError(f"{status.workflow_id}: wrong body stream")
        if [step.name.rsplit(".", 1)[-1] for step in client.list_steps(status.workflow_id)][1:2] != ["produce"]:
            raise AssertionError(f"{status.workflow_id}: wrong steps")
        return len(values) + 2

    def work(number: int) -> None:
        rng = random.Random(f"{name}-{number}")
        deadline = time.monotonic() + seconds
        rounds = 0
        while rounds == 0 or time.monotonic() < deadline:  # at least one round, however loaded the machine
            rounds += 1
            workflow_id = f"{name}-t{number}-{rounds}"
            count = rng.randint(1, 60)
            try:
                with litedur.SetWorkflowID(workflow_id):
                    handle = app.start_workflow(contended, workflow_id, count)
                values = list(app.read_stream(workflow_id, "values", timeout=30))
                if values != expected_values(workflow_id, count):
                    raise AssertionError(f"{workflow_id}: read {values!r}")
                if handle.get_result(timeout=30) != count:
                    raise AssertionError(f"{workflow_id}: wrong result")
                foreign = check_foreign(rng) if rounds % 3 == 0 else 0
            except BaseException as exc:
                with lock:
                    errors.append(f"{workflow_id}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                continue
            with lock:
                ids.append(workflow_id)
                totals["workflows"] += 1
                totals["written"] += count + 2
                totals["read"] += count + foreign
                totals["foreign_reads"] += foreign > 0

    app.launch()
    print("ready", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.001)
    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(number,)) for number in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.monotonic() - started
    app.shutdown()
    client.close()
    print(json.dumps({**totals, "seconds": elapsed, "ids": ids, "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
