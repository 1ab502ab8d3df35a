"""Child processes of the bad-input catalogue, for what a test process cannot do to itself.

    bad_input_child.py readonly DB         # run on a read-only mount: reads, writes, the CLI
    bad_input_child.py unprivileged DB     # drops root for "nobody", then reads and writes
    bad_input_child.py disk-full DIR       # DIR is a tiny file system: fill it, write, free, write
    bad_input_child.py file-size-limit DB  # RLIMIT_FSIZE just above the file: write, raise it, write
    bad_input_child.py hold-lock DB        # BEGIN IMMEDIATE + an insert, held until a line on stdin
    bad_input_child.py hold-executor DB ID # a live executor with id ID until a line on stdin

The scenario modes print one JSON object: for each attempt, ``{"ok": bool, "type": exception type,
"message": str, "value": result}``; the holding modes print ``ready`` once they hold what they hold.
The database given was made by tests/test_bad_input_catalogue.py: workflow "kept-1" (SUCCESS) with
the closed stream "tokens" = ["Hello", " world"].
"""

from __future__ import annotations

# asyncio, concurrent.futures, ctypes and traceback: litedur imports them only when first needed, and
# the interpreter's library (under /root here) is unreadable once this child is the user nobody.
import asyncio  # noqa: F401
import concurrent.futures  # noqa: F401
import contextlib
import ctypes  # noqa: F401
import json
import os
import resource
import signal
import subprocess
import sys
import traceback  # noqa: F401
from collections.abc import Callable
from typing import Any

import apsw
import litedur.cli  # noqa: F401  (imported while the whole environment is still readable)

import litedur

results: dict[str, dict[str, Any]] = {}


def attempt(name: str, call: Callable[[], Any]) -> Any:
    try:
        value = call()
    except BaseException as exc:
        results[name] = {"ok": False, "type": type(exc).__name__, "message": str(exc), "value": None}
        return None
    shown = value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    results[name] = {"ok": True, "type": None, "message": "", "value": shown}
    return value


def reads(db: str) -> None:
    def read() -> Any:
        with litedur.Client(db) as client:
            return [
                client.get_status("kept-1").output,
                list(client.read_stream("kept-1", "tokens", timeout=10)),
                [w.workflow_id for w in client.list_workflows()],
            ]

    attempt("read", read)


def writes(db: str, prefix: str = "") -> None:
    app = attempt(f"{prefix}open engine", lambda: litedur.Engine(db))
    if app is None:
        return

    @app.workflow(name="fresh")
    def fresh() -> str:
        app.write_stream("tokens", "new")
        return "fresh"

    attempt(f"{prefix}launch", app.launch)
    with litedur.SetWorkflowID("fresh-1"):
        attempt(f"{prefix}run a workflow", fresh)
    attempt(f"{prefix}shutdown", lambda: app.shutdown(timeout=10))


def cli(db: str) -> None:
    for args in (["workflows", "--json"], ["show", "kept-1"], ["tail", "kept-1", "tokens"], ["info"]):
        done = subprocess.run(
            [sys.executable, "-m", "litedur", "--db", db, *args], capture_output=True, text=True, timeout=60
        )
        results[f"cli {args[0]}"] = {"ok": done.returncode == 0, "type": None, "message": done.stderr,
                                     "value": [done.returncode, done.stdout]}  # fmt: skip


def drop_root() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def dump(db: str) -> list:
    """Every row of litedur's tables but the executors' (which launching a process changes)."""
    conn = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("workflows", "steps", "streams", "stream_entries")]  # fmt: skip
    finally:
        conn.close()


def fill(path: str) -> None:
    with open(path, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass


def disk_full(directory: str) -> None:
    """Workflows that write 1 KB values on a file system that fills up, then has space again."""
    db = os.path.join(directory, "full.db")
    app = litedur.Engine(db)

    @app.workflow(name="filler")
    def filler(count: int) -> int:
        for i in range(count):
            app.write_stream("values", f"{i:04d}" + "x" * 1020)
        app.close_stream("values")
        return count

    def values(workflow_id: str) -> list:
        """The values stored so far (without waiting for more)."""
        got: list = []
        with litedur.Client(db) as client, contextlib.suppress(TimeoutError):  # the stream is still open
            got.extend(client.read_stream(workflow_id, "values", timeout=0))
        return got

    app.launch()
    with litedur.SetWorkflowID("before"):
        attempt("before", lambda: filler(5))
    slack, filler_path = os.path.join(directory, "slack"), os.path.join(directory, "filler")
    with open(slack, "wb") as file:
        file.write(b"\0" * 65536)
    fill(filler_path)
    unchanged = dump(db)
    with litedur.SetWorkflowID("refused"):
        attempt("start while full", lambda: filler(3))
    attempt("unchanged by the refused start", lambda: dump(db) == unchanged)
    attempt("read while full", lambda: values("before") == [f"{i:04d}" + "x" * 1020 for i in range(5)])
    os.remove(slack)  # a little space: the next workflow starts, then fills the disk mid-stream
    with litedur.SetWorkflowID("during"):
        attempt("full mid-stream", lambda: filler(40))
    with litedur.Client(db) as client:
        attempt("status of the interrupted workflow", lambda: client.get_status("during").status)
    attempt("its values so far", lambda: [value[:4] for value in values("during")])
    os.remove(filler_path)  # space is back
    with litedur.SetWorkflowID("after"):
        attempt("after", lambda: filler(5))
    app.shutdown(timeout=10)
    restarted = litedur.Engine(db)  # a restart recovers the interrupted workflow if it is still PENDING

    @restarted.workflow(name="filler")
    def filler_again(count: int) -> int:
        for i in range(count):
            restarted.write_stream("values", f"{i:04d}" + "x" * 1020)
        restarted.close_stream("values")
        return count

    restarted.launch()
    attempt(
        "interrupted workflow after a restart", lambda: restarted.retrieve_workflow("during").get_result(timeout=30)
    )
    attempt("lengths", lambda: [len(values(w)) for w in ("before", "during", "after")])
    attempt("integrity", lambda: apsw.Connection(db).execute("PRAGMA integrity_check").fetchall())
    restarted.shutdown(timeout=10)


def file_size_limit(db: str) -> None:
    """RLIMIT_FSIZE just above the database's size: a workflow's writes fail; raised again, they work,
    and the interrupted workflow is resumed by this same (live) process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    app = litedur.Engine(db)

    @app.workflow(name="big")
    def big(count: int) -> int:
        for i in range(count):
            app.write_stream("values", f"{i:04d}" + "y" * 2000)
        app.close_stream("values")
        return count

    app.launch()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = max(os.path.getsize(db), os.path.getsize(f"{db}-wal")) + 8192
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    with litedur.SetWorkflowID("too-big"):
        attempt("over the limit", lambda: big(400))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    attempt("read", lambda: litedur.Client(db).get_status("kept-1").output)
    with litedur.SetWorkflowID("fits"):
        attempt("after", lambda: big(20))
    # The interrupted run left "too-big" PENDING in this live process: its recovery resumes it.
    attempt("resumed in this process", lambda: app.retrieve_workflow("too-big").get_result(timeout=30))
    app.shutdown(timeout=10)


def main() -> int:
    mode, db = sys.argv[1], sys.argv[2]
    if mode == "hold-lock":
        conn = apsw.Connection(db)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE workflows SET updated_at = updated_at + 1")  # a write, never committed
        print("ready", flush=True)
        sys.stdin.readline()
        conn.execute("ROLLBACK")
        conn.close()
        return 0
    if mode == "hold-executor":
        app = litedur.Engine(db, executor_id=sys.argv[3])
        app.launch()
        print("ready", flush=True)
        sys.stdin.readline()
        app.shutdown(timeout=10)
        return 0
    if mode == "readonly":
        reads(db)
        writes(db)
        cli(db)
    elif mode == "unprivileged":
        drop_root()
        reads(db)
        writes(db)
    elif mode == "disk-full":
        disk_full(db)
    elif mode == "file-size-limit":
        file_size_limit(db)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
