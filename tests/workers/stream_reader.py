"""A child process that reads one stream to its end and prints what it received.

    stream_reader.py DB WORKFLOW_ID KEY [START]

Prints one JSON line ``{"polling": bool}`` as soon as the reader exists (how it waits: LITEDUR_WAIT
decides), then one JSON line per value, flushed at once. Exits 0 when the stream ends, 3 if a
value takes more than 30 s to come.
"""

from __future__ import annotations

import json
import sys

import litedur


def main() -> int:
    db, workflow_id, key = sys.argv[1], sys.argv[2], sys.argv[3]
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    client = litedur.Client(db)
    reader = client.read_stream(workflow_id, key, start=start, timeout=30)
    print(json.dumps({"polling": reader._waiter.polling}), flush=True)
    try:
        for value in reader:
            print(json.dumps(value), flush=True)
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
