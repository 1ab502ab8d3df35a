"""A child process that runs (or recovers) one stream-writing workflow until it ends.

    stream_writer.py DB WORKFLOW_ID MODE N

Every mode writes the ints ``0 .. N-1`` to the stream "values":

- ``body``: from the workflow body (each write is a checkpoint), then closes the stream;
- ``step-resume``: from a step that skips what ``already_written`` returns, then closes the stream;
  the workflow returns how many values earlier attempts had written;
- ``step-ignore``: from a step that writes everything again on every attempt (same return value);
- ``raise``: from the workflow body, then raises ValueError (the workflow ends in ERROR).

Environment: ``STREAM_PACE`` (seconds) sleeps after each write, so a reader sees the values live;
``STREAM_GATES=m:path[,m:path...]`` holds the writer before value ``m`` until ``path`` exists (for
ever if nobody creates it: the test then kills the writer there or earlier).
The same command relaunched after a SIGKILL recovers the workflow and finishes it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import litedur

KEY = "values"


def main() -> None:
    db, workflow_id, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    pace = float(os.environ.get("STREAM_PACE", "0"))
    gates = dict(gate.split(":", 1) for gate in os.environ.get("STREAM_GATES", "").split(",") if gate)
    gates = {int(at): path for at, path in gates.items()}
    app = litedur.Engine(db)

    def write_from(first: int) -> None:
        for i in range(first, n):
            if i in gates:
                while not os.path.exists(gates[i]):
                    time.sleep(0.002)
            app.write_stream(KEY, i)
            if pace:
                time.sleep(pace)

    @app.step()
    def produce_resuming() -> int:
        earlier = app.already_written(KEY)
        write_from(len(earlier))
        return len(earlier)

    @app.step()
    def produce_ignoring() -> int:
        earlier = app.already_written(KEY)
        write_from(0)
        return len(earlier)

    @app.workflow(name="body")
    def body() -> int:
        write_from(0)
        app.close_stream(KEY)
        return n

    @app.workflow(name="step-resume")
    def step_resume() -> int:
        earlier = produce_resuming()
        app.close_stream(KEY)
        return earlier

    @app.workflow(name="step-ignore")
    def step_ignore() -> int:
        earlier = produce_ignoring()
        app.close_stream(KEY)
        return earlier

    @app.workflow(name="raise")
    def raising() -> int:
        write_from(0)
        raise ValueError(f"boom after {n} values")

    flows = {"body": body, "step-resume": step_resume, "step-ignore": step_ignore, "raise": raising}
    with app:
        with litedur.SetWorkflowID(workflow_id):
            handle = app.start_workflow(flows[mode])
        with contextlib.suppress(ValueError):  # the "raise" mode's recorded error
            handle.get_result()


if __name__ == "__main__":
    main()
