"""A child process for test_pg_storage: ``pg_storage_worker.py MODE URL ARGS...``.

Every mode prints "ready" and waits for a line on stdin before it starts, so a test can release all
its children at once; then it prints one JSON line with what it did (or, for "hold", nothing more).
"""

from __future__ import annotations

import json
import sys
import time

from litedur.storage.postgres import PostgresStorage
from litedur.storage.records import QueueRow


def append(storage: PostgresStorage, workflow_id: str, executor_id: str, tag: str, count: str) -> dict:
    """Append ``count`` values ``"<tag>-<i>"`` one by one; the offsets they got."""
    stream_id, _ = storage.open_stream(workflow_id, "k", executor_id)
    offsets = []
    for index in range(int(count)):
        offsets.append(storage.append_one(stream_id, (0, f"{tag}-{index}"), 1, 1, workflow_id, executor_id))
    return {"offsets": offsets}


def dequeue(storage: PostgresStorage, queue_name: str, executor_id: str, concurrency: str) -> dict:
    """Take work until the queue is empty, finishing each workflow taken; the most running seen."""
    queue = QueueRow(queue_name, int(concurrency), None, None, None, 0, time.time())
    finished, most = [], 0
    while True:
        taken, _ = storage.dequeue(queue, executor_id, ["job"], 2)
        counts = {found.name: found for _, found in storage.list_queues()}
        most = max(most, counts[queue_name].running)
        for row in taken:
            if storage.finish_workflow(row.workflow_id, "SUCCESS", executor_id, output=(1, "1"), has_streams=False):
                finished.append(row.workflow_id)
        if not taken and counts[queue_name].enqueued == 0 and counts[queue_name].running == 0:
            return {"finished": finished, "most_running": most}


def grab(storage: PostgresStorage, queue_name: str, executor_id: str, attempts: str) -> dict:
    """Try to take work ``attempts`` times without finishing any (the declared limits apply)."""
    queue = storage.get_queue(queue_name)
    assert queue is not None
    taken = []
    for _ in range(int(attempts)):
        rows, _ = storage.dequeue(queue, executor_id, ["job"], 5)
        taken.extend(row.workflow_id for row in rows)
    return {"taken": taken}


def hold(storage: PostgresStorage, executor_id: str) -> None:
    """Hold the executor lock until killed."""
    storage.executor_lock(executor_id)
    print("locked", flush=True)
    sys.stdin.readline()


def write(storage: PostgresStorage, executor_id: str) -> dict:
    """One write transaction (it notifies every listener)."""
    storage.register_executor(executor_id, 1, "worker")
    return {}


MODES = {"append": append, "dequeue": dequeue, "grab": grab, "hold": hold, "write": write}


def main() -> None:
    mode, url, *args = sys.argv[1:]
    storage = PostgresStorage(url, create=False)
    print("ready", flush=True)
    sys.stdin.readline()
    result = MODES[mode](storage, *args)
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
