"""A child for test_queues: a plain script that enqueues by name and has no workflow functions.

    queue_client.py DB QUEUE WORKFLOW WID ARGS_JSON

It imports nothing but litedur, opens a `litedur.Client` (which registers no workflows and never
creates a file) and, under ``SetWorkflowID(WID)``, calls ``Client.enqueue(QUEUE, WORKFLOW, *ARGS)``.
It prints ``enqueued ID STATUS`` and exits 0, or prints ``error TYPE MESSAGE`` and exits 2.
"""

from __future__ import annotations

import json
import sys

import litedur

db, queue, workflow, wid, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
try:
    with litedur.Client(db) as client, litedur.SetWorkflowID(wid):
        handle = client.enqueue(queue, workflow, *args)
        print(f"enqueued {handle.workflow_id} {handle.get_status().status}", flush=True)
except litedur.LitedurError as exc:
    print(f"error {type(exc).__name__} {exc}", flush=True)
    sys.exit(2)
