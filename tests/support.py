"""Shared test tools: bounded waits, child processes, and side-effect logs that survive SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).parent
WORKERS = TESTS / "workers"


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def spawn(script: str | Path, *args: object, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Start ``tests/workers/<script>`` (or a path) with this interpreter."""
    path = Path(script) if os.path.isabs(script) else WORKERS / script
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, str(path), *map(str, args)], env=full_env, **popen)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL a child and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def finish(process: subprocess.Popen, timeout: float = 60.0) -> int:
    """Wait for a child to exit on its own; fail (after killing it) if it takes too long."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(process)
        raise AssertionError(f"child {process.args} did not finish within {timeout} s") from None


class SideEffectLog:
    """Counts side effects across processes: one line per effect, appended with O_APPEND."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def words_after(self, prefix: str) -> list[list[str]]:
        """The lines that start with ``prefix``, split into words after it."""
        return [line[len(prefix) :].split() for line in self.lines() if line.startswith(prefix)]


class ReaderThread(threading.Thread):
    """Reads a stream to its end in a thread; `result` returns what it got or re-raises its error."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.polling = stream._waiter.polling  # how it waits (a reader that ended lets go of its watch)
        self.values: list = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for value in self.stream:
                self.values.append(value)
        except BaseException as exc:  # re-raised in the test's thread by result()
            self.error = exc

    def result(self, timeout: float = 60) -> list:
        self.join(timeout)
        assert not self.is_alive(), f"reader still waiting after {timeout} s with {len(self.values)} values"
        if self.error is not None:
            raise self.error
        return self.values


def _text(data: str | bytes) -> str:
    return data.decode() if isinstance(data, bytes) else data


def stream_entries(db_path: str | Path, workflow_id: str, key: str) -> list[tuple[int, Any, int, int]]:
    """``(offset, value, position, attempt)`` of every value stored in a stream, by offset (`raw_rows`)."""
    import json
    import pickle

    rows = raw_rows(
        db_path,
        "SELECT e.offset, e.encoding, e.value, e.position, e.attempt FROM stream_entries e "
        "JOIN streams s ON s.stream_id = e.stream_id WHERE s.workflow_id = ? AND s.key = ? "
        "ORDER BY e.offset",
        workflow_id,
        key,
    )
    decode = {0: _text, 1: json.loads, 2: pickle.loads}  # litedur.values TEXT, JSON, PICKLED
    return [
        (offset, decode[encoding](data), position, attempt)
        for offset, encoding, data, position, attempt in rows
        if encoding in decode  # not a marker of storage's own, such as an end-of-stream entry
    ]


def start_writer(children: list, db: str, workflow_id: str, mode: str, n: int,
                 gates: dict | None = None, **env: object) -> subprocess.Popen:  # fmt: skip
    """Start ``stream_writer.py`` (see it for ``mode`` and ``env``) and add it to ``children``;
    ``gates`` maps a value index to a file the writer waits for before writing that value."""
    if gates:
        env["STREAM_GATES"] = ",".join(f"{at}:{path}" for at, path in gates.items())
    process = spawn("stream_writer.py", db, workflow_id, mode, n, env={k: str(v) for k, v in env.items()})
    children.append(process)
    return process


def exists(client: Any, workflow_id: str) -> bool:
    """Whether ``client`` finds the workflow (it may not be recorded yet)."""
    import litedur

    try:
        client.get_status(workflow_id)
    except litedur.WorkflowNotFoundError:
        return False
    return True


def on_sqlite(location: object) -> bool:
    """True if a test's database ``location`` is a SQLite file (not a PostgreSQL URL)."""
    from litedur.storage import is_url

    return not is_url(str(location))


def raw_rows(location: str | Path, sql: str, *params: object) -> list[tuple]:
    """Rows of a plain SQL query (``?`` placeholders) on a connection of its own, not through
    litedur, so a test sees what is stored: apsw for a SQLite file (never the stdlib sqlite3: two
    SQLite libraries in one process do not share POSIX locks, and closing one's file descriptor drops
    the other's locks), psycopg for a PostgreSQL URL (in its schema; BYTEA comes back as bytes)."""
    if on_sqlite(location):
        import apsw

        db = apsw.Connection(str(location), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            db.set_busy_timeout(30_000)
            return db.execute(sql, params).fetchall()
        finally:
            db.close()
    import psycopg

    from litedur.storage.postgres import split_url

    conninfo, schema = split_url(str(location))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), params).fetchall()]
