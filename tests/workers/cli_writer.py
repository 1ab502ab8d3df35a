"""A writer for the CLI process tests: a workflow whose step streams numbered words to "tokens".

    cli_writer.py DB WORKFLOW_ID TOTAL [--gate N FILE] [--die-at N] [--fail]

``--gate N FILE``: after writing N words, wait until FILE exists (the test lets it go on).
``--die-at N``: SIGKILL this process right after writing word N (a crash at a known point).
``--fail``: the workflow raises ValueError after the words, before closing the stream: ERROR.
A run without these on the same file recovers an interrupted workflow and finishes it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import SideEffectLog  # noqa: E402

import litedur  # noqa: E402


def word(index: int) -> str:
    return f"wörd{index} "


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("workflow_id")
    parser.add_argument("total", type=int)
    parser.add_argument("--gate", nargs=2, metavar=("N", "FILE"))
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--log", help="side-effect log: one line per word written")
    options = parser.parse_args()
    log = SideEffectLog(options.log) if options.log else None
    # A crash at a known point needs each value committed before write_stream returns.
    app = litedur.Engine(options.db, group_writes=options.die_at is None)

    @app.step(max_attempts=3, interval=0.01)
    def produce(key: str, total: int) -> int:
        for index in range(len(app.already_written(key)), total):
            if options.gate and index == int(options.gate[0]):
                while not os.path.exists(options.gate[1]):
                    time.sleep(0.005)
            app.write_stream(key, word(index))
            if log:
                log.record(f"word {index}")
            if options.die_at is not None and index == options.die_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return total

    @app.workflow(name="writer")
    def writer(total: int) -> int:
        count = produce("tokens", total)
        if options.fail:  # before closing: termination closes the stream, readers see ERROR
            raise ValueError("the writer failed on purpose")
        app.close_stream("tokens")
        return count

    with app:
        with litedur.SetWorkflowID(options.workflow_id):
            handle = app.start_workflow(writer, options.total)
        with contextlib.suppress(ValueError):  # --fail: the ERROR is what the test wants
            handle.get_result(timeout=60)


if __name__ == "__main__":
    main()
