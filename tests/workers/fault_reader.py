"""The reader process of the crash-injection harness: stays attached through every trial.

    fault_reader.py

Reads one JSON command per line on stdin: ``{"db": PATH, "workflow_id": ID, "keys": [KEY, ...]}``.
For each, it waits until the workflow exists (its first process may be killed before creating
it), then follows every key from offset 0 in its own thread, live, through the kills and
relaunches of the writers, until each stream ends. It then prints one JSON line on stdout:
``{"workflow_id": ID, "values": {KEY: [...]}, "error": null or "..."}``. Commands are served one
after another; the process exits at the end of stdin.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import litedur

WAIT_FOR_WORKFLOW = 120.0
VALUE_TIMEOUT = 120.0


def follow(client: litedur.Client, workflow_id: str, key: str, into: dict, errors: list) -> None:
    values: list = []
    into[key] = values
    try:
        for value in client.read_stream(workflow_id, key, timeout=VALUE_TIMEOUT):
            values.append(value)
    except BaseException as exc:  # reported to the harness, which fails the trial
        errors.append(f"{key}: {type(exc).__name__}: {exc}")


def serve(command: dict) -> dict:
    workflow_id = command["workflow_id"]
    deadline = time.monotonic() + WAIT_FOR_WORKFLOW
    while True:  # the trial's first process creates the file (it may be killed doing so)
        try:
            client = litedur.Client(command["db"])
            break
        except litedur.DatabaseError as exc:
            if not str(exc).startswith("no litedur database") or time.monotonic() > deadline:
                return {"workflow_id": workflow_id, "values": {}, "error": f"{type(exc).__name__}: {exc}"}
            time.sleep(0.002)
    with client:
        while True:
            try:
                client.get_status(workflow_id)
                break
            except litedur.WorkflowNotFoundError:
                if time.monotonic() > deadline:
                    return {"workflow_id": workflow_id, "values": {}, "error": "the workflow never appeared"}
                time.sleep(0.002)
        values: dict = {}
        errors: list = []
        threads = [
            threading.Thread(target=follow, args=(client, workflow_id, key, values, errors)) for key in command["keys"]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {"workflow_id": workflow_id, "values": values, "error": "; ".join(errors) or None}


def main() -> int:
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(serve(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
