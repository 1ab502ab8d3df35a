"""A long task reports its progress to a durable stream; a reader draws it as a rich progress bar.

The task is a workflow whose step works through items one by one and writes
``{"done": i, "total": n, "item": name}`` to the stream ``progress`` after each. The reader here is
the same process, but it can be any other: ``--watch`` only draws the bar of a task that another
process runs, and ``litedur tail ID progress`` prints the raw values. Kill the process half-way and
run it again with the same ``--db`` and ``--id``: the step resumes after the last item it reported.

    python examples/progress.py [--db PATH] [--id ID] [--items N] [--rate ITEMS_PER_SECOND]
    python examples/progress.py --db PATH --id ID --watch      # draw the bar of a running task
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import litedur


def build(db: str, rate: float) -> tuple[litedur.Engine, object]:
    app = litedur.Engine(db)

    @app.step(max_attempts=3, interval=0.1)
    def work_through(items: int) -> int:
        done = len(app.already_written("progress"))  # items an interrupted attempt already reported
        for index in range(done, items):
            time.sleep(1 / rate)  # stands in for the real work on one item
            app.write_stream("progress", {"done": index + 1, "total": items, "item": f"item-{index + 1}"})
        return items

    @app.workflow(name="long_task")
    def long_task(items: int) -> dict:
        processed = work_through(items)
        app.close_stream("progress")
        return {"processed": processed}

    return app, long_task


def draw(reader: litedur.StreamReader, items: int | None) -> int:
    """Render the stream's values as a progress bar until the stream ends; return items done."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    done = 0
    with Progress(*columns) as bar:
        task = bar.add_task("working", total=items)
        for value in reader:
            done = value["done"]
            bar.update(task, completed=done, total=value["total"], description=value["item"])
    return done


def wait_for_workflow(db: str, workflow_id: str, timeout: float = 30.0) -> litedur.Client:
    """A client on ``db`` once some process has recorded the workflow."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = litedur.Client(db)
            client.get_status(workflow_id)
            return client
        except (litedur.DatabaseError, litedur.WorkflowNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database file (default: a new temporary file)")
    parser.add_argument("--id", default="progress-1", help="workflow id (default: progress-1)")
    parser.add_argument("--items", type=int, default=200, help="items to work through (default: 200)")
    parser.add_argument("--rate", type=float, default=40.0, help="items per second (default: 40)")
    parser.add_argument("--watch", action="store_true", help="only draw the bar of a task another process runs")
    options = parser.parse_args()
    if options.watch:
        if not options.db:
            parser.error("--watch needs --db")
        client = wait_for_workflow(options.db, options.id)
        done = draw(client.read_stream(options.id, "progress"), None)
        result = client.retrieve_workflow(options.id).get_result(timeout=60)
        print(f"watched {done} items; result: {result}")
        return

    db = options.db or os.path.join(tempfile.mkdtemp(prefix="litedur-progress-"), "progress.db")
    print(f"database: {db}  (watch from elsewhere: litedur --db {db} tail {options.id} progress)", file=sys.stderr)
    app, long_task = build(db, options.rate)
    with app:
        with litedur.SetWorkflowID(options.id):
            handle = app.start_workflow(long_task, options.items)
        draw(app.read_stream(handle.workflow_id, "progress"), options.items)
        print(f"result: {handle.get_result()}")


if __name__ == "__main__":
    main()
