"""litedur on PostgreSQL: W1-W5 beside a raw psycopg baseline and beside DBOS, on one server, in one run.

    python benchmarks/postgres.py [--quick] [--repeat N] [--only W1,W2] [--url URL] [--no-dbos] [--dbos-venv DIR]

Without ``--url`` it starts a throwaway PostgreSQL server (tests/pg_server.py's ``start_server()``: a
cluster in a temporary directory, unix socket only, ``fsync=off`` like the test server; ``LITEDUR_TEST_PG``
names an existing one instead) and stops it at the end. Each litedur workload gets a schema of its own
(``?schema=``); each DBOS process a database of its own on the same server; the raw baseline a table in a
schema of its own. Every round runs every selected workload for all three; the table gives the median over
``--repeat`` rounds (default 3; ``--quick``: one round at tiny sizes, a smoke test that asserts no speed),
the ratio of litedur's median to the raw baseline's and to DBOS's, and the goals of issue 14.

Workloads (ids for ``--only``; RAW always runs, the ratios need it):

- RAW  psycopg 3, autocommit: one-row INSERTs/s into a table of the stream-entry shape (one transaction each);
       and the lean cross-process reader: a writer process inserting one stamped row at 500/s, each with
       its ``pg_notify`` in the same statement, read by a process that sleeps on one LISTEN connection
       (poll on its socket, libpq's notification queue drained), then runs one SELECT on a second
       connection and parses each stamp.
- W1   one step writes five-byte strings to a stream: values/s with grouped commits (litedur's default) and
       one commit per value (``group_writes=False``). DBOS: ``DBOS.write_stream`` in a step (one
       transaction per value: it has no other mode), as many values as the second row, shown on both.
- W2   cross-process write -> read latency at 500 values/s (p50/p99/max, reader CPU per 1,000 values): a
       step of a writer process writes ``time.monotonic_ns()``; another process reads. litedur:
       ``Client(url).read_stream``; DBOS: ``DBOSClient(use_listen_notify=True).read_stream`` (DBOS at its
       defaults otherwise, e.g. its 10 ms coalescing of stream notifications).
- W3   one workflow running trivial steps: steps/s.
- W4   one-step workflows started (``start_workflow``) and then each awaited: workflows/s.
- W5   recovery: a writer SIGKILLed half-way through a stream; the time from ``launch()`` called in a new
       process to the first new value seen by a reader that kept reading across the crash; the reader
       must get every value exactly once. litedur: a step resuming after ``already_written``; DBOS (no
       such call): the workflow body writes (each write a checkpoint, so a replay does not repeat them)
       and a step that hangs in the victim only marks the crash point.

Child processes are this script (``--role NAME``; DBOS roles run on the DBOS interpreter, which is why
this module imports nothing outside the standard library at its top) or benchmarks/run.py's roles (the
litedur writers, victim and recoverer, given a URL where they take a path).

DBOS is not a dependency of litedur: the first run without ``--quick`` installs the ``dbos`` package from
PyPI into a virtual environment of its own (``--dbos-venv``, default ``$TMPDIR/litedur-bench-dbos-venv``);
``--quick`` uses it if it exists and otherwise leaves the DBOS column empty, saying why, as does
``--no-dbos`` or a failed install.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
WORKLOADS = ("RAW", "W1", "W2", "W3", "W4", "W5")
VALUE = "abcde"
RATE = 500.0  # values/s of the paced writers of W2
LATENCY_GOAL_MS = 1.0  # issue 14: cross-process stream latency p50 <= 1 ms
RAW_CHANNEL = "bench_raw"
RAW_TABLE = (
    'CREATE TABLE entries (stream_id BIGINT NOT NULL, "offset" BIGINT NOT NULL, encoding INTEGER NOT NULL, '
    'value BYTEA, position INTEGER NOT NULL, attempt INTEGER NOT NULL, PRIMARY KEY (stream_id, "offset"))'
)
RAW_INSERT = "INSERT INTO entries VALUES (%s, %s, 0, %s, 0, 1)"
RAW_INSERT_NOTIFY = (
    "WITH row AS (INSERT INTO entries VALUES (1, %s, 0, %s, 0, 1) RETURNING 1) "
    f"SELECT pg_notify('{RAW_CHANNEL}', '') FROM row"
)
RAW_READ = 'SELECT value FROM entries WHERE stream_id = 1 AND "offset" >= %s ORDER BY "offset" LIMIT 1000'

SIZES = {
    "default": {"raw": 5_000, "w1": 20_000, "w1_each": 2_000, "w2": 1_000, "w3": 2_000, "w4": 1_000, "w5": 1_000},
    "quick": {"raw": 300, "w1": 1_000, "w1_each": 200, "w2": 100, "w3": 200, "w4": 100, "w5": 100},
}


# ---- small helpers (standard library only: the DBOS roles import this module too) ----------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of a sorted list, nearest rank (as benchmarks/run.py)."""
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def wait_for_line(prefix: str) -> str:
    """Read stdin lines (from the parent) until one starts with ``prefix``; the rest of it."""
    while True:
        line = sys.stdin.readline()
        if not line:
            raise RuntimeError(f"the parent closed stdin before saying {prefix!r}")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()


def say(*words: object) -> None:
    print(*words, flush=True)


def database_url(url: str, database: str) -> str:
    """``url`` naming another database of the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


# ---- the raw psycopg baseline -------------------------------------------------------------------


def role_raw_writer(url: str, schema: str, count: str, interval: str) -> None:
    """Child: once told "go", insert ``count`` rows stamped with ``time.monotonic_ns()`` at a steady
    rate, each one autocommitted statement that also notifies (the notification goes at its commit)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        say("ready")
        wait_for_line("go")
        start, step = time.monotonic(), float(interval)
        for offset in range(int(count)):
            delay = start + offset * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute(RAW_INSERT_NOTIFY, (offset, str(time.monotonic_ns()).encode()))


def raw_insert_rate(url: str, schema: str, count: int) -> float:
    """One-row autocommitted INSERTs/s (psycopg prepares the statement after its fifth use)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        value = VALUE.encode()
        started = time.perf_counter()
        for offset in range(count):
            conn.execute(RAW_INSERT, (2, offset, value))
        return count / (time.perf_counter() - started)


def raw_latencies(url: str, schema: str, count: int) -> tuple[list[int], float]:
    """The lean cross-process reader: one LISTEN connection polled on its socket, one query connection."""
    import psycopg

    options = f"-c search_path={schema}"
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url, autocommit=True, options=options) as conn,
        child(sys.executable, "raw-writer", url, schema, count, 1 / RATE) as writer,
    ):
        listener.execute(f"LISTEN {RAW_CHANNEL}")
        pgconn = listener.pgconn
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        expect_line(writer, "ready")
        latencies: list[int] = []
        offset, cpu_first, now = 0, 0.0, time.monotonic_ns
        send(writer, "go")
        while offset < count:
            if not poller.poll(1000):
                if writer.poll() is not None:
                    raise RuntimeError(f"the raw writer ended after {offset} of {count} values")
                continue
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                pass
            rows = conn.execute(RAW_READ, (offset,)).fetchall()
            if not rows:
                continue
            seen = now()
            if not latencies:
                cpu_first = cpu_seconds()
            latencies.extend(seen - int(value) for (value,) in rows)
            offset += len(rows)
        cpu = cpu_seconds() - cpu_first
        reap(writer)
    return latencies, cpu


# ---- DBOS (these run on the DBOS interpreter) -----------------------------------------------------


class _DbosApp:
    """DBOS configured on ``url`` with the benchmark's workflows and steps (names fixed, so a
    recovering process finds the victim's)."""

    def __init__(self, url: str, hang: bool = False) -> None:
        from dbos import DBOS

        self.DBOS = DBOS
        DBOS(config={"name": "litedur-bench", "system_database_url": url, "log_level": "WARNING"})

        @DBOS.step(name="bench.produce")
        def produce(n: int) -> None:
            write = DBOS.write_stream
            for _ in range(n):
                write("s", VALUE)

        @DBOS.workflow(name="bench.stream_write")
        def stream_write(n: int) -> None:
            produce(n)

        @DBOS.step(name="bench.trivial")
        def trivial(i: int) -> int:
            return i

        @DBOS.workflow(name="bench.many_steps")
        def many_steps(n: int) -> int:
            for i in range(n):
                trivial(i)
            return n

        @DBOS.workflow(name="bench.one_step")
        def one_step(i: int) -> int:
            return trivial(i)

        @DBOS.step(name="bench.paced")
        def paced(count: int, interval: float) -> int:
            say("ready")
            wait_for_line("go")
            start = time.monotonic()
            for i in range(count):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                DBOS.write_stream("t", time.monotonic_ns())
            return count

        @DBOS.workflow(name="bench.paced_workflow")
        def paced_workflow(count: int, interval: float) -> int:
            written = paced(count, interval)
            DBOS.close_stream("t")
            return written

        @DBOS.step(name="bench.crash_point")
        def crash_point() -> None:
            if hang:
                say("started")
                time.sleep(3600)

        @DBOS.workflow(name="bench.recovered")
        def recovered(n: int) -> int:
            for i in range(n):
                if i == n // 2:
                    crash_point()
                DBOS.write_stream("s", i)
            DBOS.close_stream("s")
            return n

        self.stream_write, self.many_steps, self.one_step = stream_write, many_steps, one_step
        self.paced_workflow, self.recovered = paced_workflow, recovered


def role_dbos_rate(url: str, workload: str, count: str) -> None:
    """Child (DBOS): W1, W3 or W4 once; says "rate <per second>"."""
    app = _DbosApp(url)
    DBOS, n = app.DBOS, int(count)
    DBOS.launch()
    try:
        started = time.perf_counter()
        if workload == "w1":
            app.stream_write(n)
        elif workload == "w3":
            app.many_steps(n)
        else:
            handles = [DBOS.start_workflow(app.one_step, i) for i in range(n)]
            if [handle.get_result() for handle in handles] != list(range(n)):
                raise RuntimeError("the one-step workflows did not return their inputs")
        say(f"rate {n / (time.perf_counter() - started)}")
    finally:
        DBOS.destroy()


def role_dbos_writer(url: str, workflow_id: str, count: str, interval: str) -> None:
    """Child (DBOS): run the paced workflow (its step says "ready" and waits for "go")."""
    from dbos import SetWorkflowID

    app = _DbosApp(url)
    app.DBOS.launch()
    try:
        with SetWorkflowID(workflow_id):
            app.paced_workflow(int(count), float(interval))
    finally:
        app.DBOS.destroy()


def role_dbos_reader(url: str, workflow_id: str, count: str) -> None:
    """Child (DBOS): read ``count`` stamps with a DBOSClient woken by LISTEN/NOTIFY; says "ready" once
    connected, then "done <JSON latencies and CPU>"."""
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=url, use_listen_notify=True)
    try:
        say("ready")
        wait_for_line("reading")
        n, latencies, cpu_first, now = int(count), [], 0.0, time.monotonic_ns
        for value in _dbos_stream(client, workflow_id, "t"):
            seen = now()
            if not latencies:
                cpu_first = cpu_seconds()
            latencies.append(seen - int(value))
        if len(latencies) != n:
            raise RuntimeError(f"the DBOS reader got {len(latencies)} values, expected {n}")
        say(f"done {json.dumps({'latencies': latencies, 'cpu': cpu_seconds() - cpu_first})}")
    finally:
        client.destroy()


def _dbos_stream(client: Any, workflow_id: str, key: str) -> Iterator[Any]:
    """A stream's values (the workflow exists already: the parent starts readers after its writer)."""
    return client.read_stream(workflow_id, key, timeout_seconds=60)


def role_dbos_victim(url: str, workflow_id: str, count: str) -> None:
    """Child (DBOS): start the recoverable workflow; its step at the half says "started" and hangs."""
    from dbos import SetWorkflowID

    app = _DbosApp(url, hang=True)
    app.DBOS.launch()
    with SetWorkflowID(workflow_id):
        app.DBOS.start_workflow(app.recovered, int(count))
    time.sleep(3600)


def role_dbos_recoverer(url: str, workflow_id: str) -> None:
    """Child (DBOS): launch() (which recovers the workflow), say when it was called, wait for the end."""
    app = _DbosApp(url)
    called = time.monotonic_ns()
    app.DBOS.launch()
    say(f"launched {called}")
    try:
        app.DBOS.retrieve_workflow(workflow_id).get_result()
    finally:
        app.DBOS.destroy()


def role_dbos_follower(url: str, workflow_id: str, count: str) -> None:
    """Child (DBOS): read the recoverable stream; say "half" after the first half, "next <ns>" when the
    value after it arrives, then "done <JSON values>" at its end."""
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=url, use_listen_notify=True)
    try:
        half, values = int(count) // 2, []
        for value in _dbos_stream(client, workflow_id, "s"):
            values.append(value)
            if len(values) == half:
                say("half")
            elif len(values) == half + 1:
                say(f"next {time.monotonic_ns()}")
        say(f"done {json.dumps(values)}")
    finally:
        client.destroy()


ROLES: dict[str, Callable[..., None]] = {
    "raw-writer": role_raw_writer,
    "dbos-rate": role_dbos_rate,
    "dbos-writer": role_dbos_writer,
    "dbos-reader": role_dbos_reader,
    "dbos-victim": role_dbos_victim,
    "dbos-recoverer": role_dbos_recoverer,
    "dbos-follower": role_dbos_follower,
}


# ---- child processes ----------------------------------------------------------------------------


@contextlib.contextmanager
def child(python: str, role: str, *args: object) -> Iterator[subprocess.Popen[str]]:
    """This script as ``role`` on interpreter ``python``, talking over line-buffered stdin/stdout;
    killed on the way out if still running."""
    process = subprocess.Popen(
        [python, str(HERE), "--role", role, *map(str, args)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def expect_line(process: subprocess.Popen[str], prefix: str) -> str:
    return bench_run().expect_line(process, prefix)


def send(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def reap(process: subprocess.Popen[str], timeout: float = 120.0) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"child {process.args[3]} did not end within {timeout} s") from None
    if code != 0:
        raise RuntimeError(f"child {process.args[3]} exited with code {code}")


# ---- the run: places on the server, and the three columns -----------------------------------------


def load_by_path(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench_run() -> Any:
    """benchmarks/run.py, loaded once: litedur's workloads and the helpers both suites share (only in
    the parent process: it imports litedur, which a DBOS interpreter lacks)."""
    return sys.modules.get("litedur_bench_run") or load_by_path("litedur_bench_run", HERE.parent / "run.py")


@dataclass
class Places:
    """Schemas and databases made on the server for this run, dropped at its end."""

    url: str
    tag: str = field(default_factory=lambda: f"b{os.getpid()}_{uuid.uuid4().hex[:6]}")
    schemas: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    def schema(self, name: str) -> str:
        schema = f"{self.tag}_{len(self.schemas):03d}_{name}"[:63]
        self.schemas.append(schema)
        return schema

    def litedur_url(self, name: str) -> str:
        return f"{self.url}{'&' if '?' in self.url else '?'}schema={self.schema(name)}"

    def raw_schema(self, name: str) -> str:
        import psycopg

        schema = self.schema(name)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"SET search_path = {schema}")
            conn.execute(RAW_TABLE)
        return schema

    def database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        database = f"{self.tag}_{len(self.databases):03d}_{name}"[:63]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        self.databases.append(database)
        return database_url(self.url, database)

    def database_refusal(self) -> str:
        """Why this role cannot make the databases DBOS runs in, or ``""``."""
        import psycopg

        try:
            self.drop_database(self.database("probe"))
        except psycopg.Error as exc:
            return f"cannot create a database on the server for DBOS: {exc}".strip()
        return ""

    def drop_database(self, url: str) -> None:
        import psycopg

        database = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        self.databases.remove(database)

    def drop(self) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            for database in self.databases:
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


class Litedur:
    """litedur's column: benchmarks/run.py's workloads, given URLs where they take paths."""

    def __init__(self, run: Any, places: Places, sizes: dict[str, int], durability: str) -> None:
        self.run, self.places, self.sizes, self.durability = run, places, sizes, durability
        places_ = places

        class PgContext(run.Context):  # run.py's context, its databases being schemas on the server
            def db(self, name: str) -> str:
                return places_.litedur_url(name.replace("-", "_"))

        self.ctx = PgContext(dict(sizes), durability, Path(tempfile.gettempdir()))

    def w1(self, grouped: bool) -> float:
        n = self.sizes["w1" if grouped else "w1_each"]
        url = self.places.litedur_url("w1" if grouped else "w1_each")
        return self.run.stream_write_rate(url, n, self.durability, grouped)

    def w2(self) -> tuple[list[int], float]:
        import litedur

        run, count = self.run, self.sizes["w2"]
        url = self.places.litedur_url("w2")
        litedur.Engine(url).shutdown()  # a Client never creates the schema
        with run.child("paced-writer", url, "w2", count, 1 / RATE, self.durability) as writer:
            run.expect_line(writer, "ready")
            with litedur.Client(url) as client:
                reader = client.read_stream("w2", "t")
                latencies, cpu = run.read_latencies(reader, count, lambda: run.send_go(writer))
            run.reap(writer)
        return latencies, cpu

    def w3(self) -> float:
        return self.run.w3(self.ctx)[0].value

    def w4(self) -> float:
        return self.run.one_step_rate(self.ctx.db("w4"), self.ctx.durability, self.ctx.size("w4"))

    def w5(self) -> float:
        return self.run.w5(self.ctx)[0].value


class Dbos:
    """DBOS's column: each workload in processes of the DBOS interpreter, on a database of its own."""

    def __init__(self, python: str, places: Places, sizes: dict[str, int]) -> None:
        self.python, self.places, self.sizes = python, places, sizes

    def rate(self, workload: str) -> float:
        n = self.sizes["w1_each" if workload == "w1" else workload]
        with child(self.python, "dbos-rate", self.places.database(f"dbos_{workload}"), workload, n) as process:
            rate = float(expect_line(process, "rate"))
            reap(process)
        return rate

    def w2(self) -> tuple[list[int], float]:
        url, count = self.places.database("dbos_w2"), self.sizes["w2"]
        with child(self.python, "dbos-writer", url, "w2", count, 1 / RATE) as writer:
            expect_line(writer, "ready")
            with child(self.python, "dbos-reader", url, "w2", count) as reader:
                expect_line(reader, "ready")
                send(reader, "reading")
                time.sleep(0.2)  # the reader is in its first wait
                send(writer, "go")
                done = json.loads(expect_line(reader, "done"))
                reap(reader)
            reap(writer)
        return done["latencies"], done["cpu"]

    def w5(self) -> float:
        url, count = self.places.database("dbos_w5"), self.sizes["w5"]
        with child(self.python, "dbos-victim", url, "w5", count) as victim:
            expect_line(victim, "started")
            with child(self.python, "dbos-follower", url, "w5", count) as follower:
                expect_line(follower, "half")
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                with child(self.python, "dbos-recoverer", url, "w5") as recoverer:
                    seen = int(expect_line(follower, "next"))
                    values = json.loads(expect_line(follower, "done"))
                    launched = int(expect_line(recoverer, "launched"))
                    reap(recoverer)
                reap(follower)
        if values != list(range(count)):
            raise RuntimeError(f"the DBOS reader did not get 0..{count - 1} exactly once: {len(values)} values")
        return (seen - launched) / 1e6


# ---- figures and the table ----------------------------------------------------------------------


@dataclass
class Row:
    """One figure: samples of litedur, the raw baseline and DBOS across rounds."""

    workload: str
    label: str
    unit: str
    higher_is_better: bool
    goal: str = ""  # "dbos": ahead of DBOS; "p50": <= LATENCY_GOAL_MS
    litedur: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    dbos: list[float] = field(default_factory=list)


def fmt(value: float | None) -> str:
    return bench_run().fmt(value)


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def verdict(row: Row) -> str:
    ours = median(row.litedur)
    parts = []
    if "dbos" in row.goal:
        theirs = median(row.dbos)
        if ours is None or theirs is None:
            parts.append("ahead of DBOS: n/a")
        else:
            ahead = ours > theirs if row.higher_is_better else ours < theirs
            parts.append(f"ahead of DBOS: {'ok' if ahead else 'MISSED'}")
    if "p50" in row.goal:
        met = "n/a" if ours is None else "ok" if ours <= LATENCY_GOAL_MS else "MISSED"
        parts.append(f"<= {fmt(LATENCY_GOAL_MS)} ms: {met}")
    return "; ".join(parts)


def table(rows: list[Row]) -> list[str]:
    head = ("id", "figure", "unit", "litedur", "raw psycopg", "DBOS", "litedur/raw", "litedur/DBOS", "goal")
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        ours, raw, theirs = median(row.litedur), median(row.raw), median(row.dbos)
        cells = (row.workload, row.label, row.unit, fmt(ours) if row.litedur else "",
                 fmt(raw) if row.raw else "", fmt(theirs) if row.dbos else "",
                 fmt_ratio(ratio(ours, raw)), fmt_ratio(ratio(ours, theirs)), verdict(row))  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def latency_samples(measured: tuple[list[int], float]) -> dict[str, float]:
    latencies, cpu = measured
    ordered = sorted(ns / 1e6 for ns in latencies)
    return {
        "p50": percentile(ordered, 0.5),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "cpu": cpu / max(1, len(latencies) - 1) * 1000,
    }


class Suite:
    """One run: the rows, filled round by round."""

    def __init__(self, sizes: dict[str, int], workloads: list[str]) -> None:
        self.sizes, self.workloads = sizes, workloads
        self.rows: dict[str, Row] = {}
        self.failures: dict[str, str] = {}

    def row(self, key: str, workload: str, label: str, unit: str, higher: bool, goal: str = "") -> Row:
        if key not in self.rows:
            self.rows[key] = Row(workload, label, unit, higher, goal)
        return self.rows[key]

    def attempt(self, what: str, measure: Callable[[], Any]) -> Any:
        """``measure()``, or None with the failure recorded (the table says ERROR for it)."""
        try:
            return measure()
        except Exception as exc:
            traceback.print_exc()
            self.failures.setdefault(what, f"{type(exc).__name__}: {exc}")
            return None

    def round(self, places: Places, ours: Litedur, theirs: Dbos | None) -> None:
        s = self.sizes
        raw_row = self.row("raw", "RAW", "one-row autocommitted INSERTs", "commits/s", True)
        measured = self.attempt("RAW", lambda: raw_insert_rate(places.url, places.raw_schema("raw"), s["raw"]))
        if measured is not None:
            raw_row.raw.append(measured)
        if "W1" in self.workloads:
            self.w1(ours, theirs)
        if "W2" in self.workloads:
            self.w2(places, ours, theirs)
        labels = {"W3": ("steps/s", f"one workflow, {s['w3']:,} trivial steps"),
                  "W4": ("workflows/s", f"{s['w4']:,} one-step workflows, started and awaited")}  # fmt: skip
        for workload, (unit, label) in labels.items():
            if workload in self.workloads:
                key = workload.lower()
                row = self.row(key, workload, label, unit, True, "dbos")
                self.record(row, raw_row, getattr(ours, key), theirs and (lambda key=key: theirs.rate(key)))
        if "W5" in self.workloads:
            half = s["w5"] // 2
            row = self.row("w5", "W5", f"launch() called -> first new value (killed at {half:,}/{s['w5']:,})", "ms",
                           False, "dbos")  # fmt: skip
            self.record(row, None, ours.w5, theirs and theirs.w5)

    def record(self, row: Row, raw_row: Row | None, ours: Callable[[], float],
               theirs: Callable[[], float] | None) -> None:  # fmt: skip
        for samples, measure, who in ((row.litedur, ours, "litedur"), (row.dbos, theirs, "DBOS")):
            if measure is None:
                continue
            value = self.attempt(f"{row.workload} {who}", measure)
            if value is not None:
                samples.append(value)
        if raw_row is not None and raw_row.raw:
            row.raw.append(raw_row.raw[-1])

    def w1(self, ours: Litedur, theirs: Dbos | None) -> None:
        s, raw_row = self.sizes, self.rows["raw"]
        dbos_rate = self.attempt("W1 DBOS", lambda: theirs.rate("w1")) if theirs else None
        for key, grouped, label in (
            ("w1.grouped", True, f"one step writes {s['w1']:,} values, grouped commits"),
            ("w1.each", False, f"one step writes {s['w1_each']:,} values, one commit each"),
        ):
            row = self.row(key, "W1", label, "values/s", True, "dbos")
            self.record(row, raw_row, lambda g=grouped: ours.w1(g), None)
            if dbos_rate is not None:
                row.dbos.append(dbos_rate)

    def w2(self, places: Places, ours: Litedur, theirs: Dbos | None) -> None:
        count = self.sizes["w2"]
        measured = {
            "litedur": self.attempt("W2 litedur", ours.w2),
            "raw": self.attempt("W2 raw", lambda: raw_latencies(places.url, places.raw_schema("raw_w2"), count)),
            "dbos": self.attempt("W2 DBOS", theirs.w2) if theirs else None,
        }
        figures = (("p50", "ms", "dbos+p50"), ("p99", "ms", "dbos"), ("max", "ms", ""),
                   ("cpu", "s", "dbos"))  # fmt: skip
        for name, unit, goal in figures:
            label = f"cross-process, {count:,} values at {RATE:.0f}/s: " + (
                "reader CPU/1,000 values" if name == "cpu" else name
            )
            row = self.row(f"w2.{name}", "W2", label, unit, False, goal)
            for who, value in measured.items():
                if value is not None:
                    getattr(row, who).append(latency_samples(value)[name])


# ---- DBOS's environment -----------------------------------------------------------------------------


def dbos_python(args: argparse.Namespace) -> tuple[str | None, str]:
    """The interpreter of the DBOS environment (installed there if needed and allowed) and ``""``, or
    ``(None, why there is no DBOS column)``."""
    if args.no_dbos:
        return None, "--no-dbos"
    venv = Path(args.dbos_venv)
    python = venv / "bin" / "python"
    if not _has_dbos(python):
        if args.quick:
            return None, f"no DBOS environment at {venv} (a run without --quick installs it there)"
        print(f"installing dbos from PyPI into {venv} ...", file=sys.stderr, flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode == 0:
            made = subprocess.run([str(python), "-m", "pip", "install", "-q", "dbos"], capture_output=True, text=True)
        if made.returncode != 0 or not _has_dbos(python):
            return None, f"cannot install dbos into {venv}: {(made.stderr or made.stdout).strip()[-300:]}"
    return str(python), ""


def _has_dbos(python: Path) -> bool:
    if not python.exists():
        return False
    found = subprocess.run([str(python), "-c", "import dbos, psycopg"], capture_output=True)
    return found.returncode == 0


def dbos_version(python: str) -> str:
    found = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('dbos'))"], capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


# ---- the driver ---------------------------------------------------------------------------------


def server_description(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit")
        }
    return (
        f"PostgreSQL {settings['server_version']} (fsync={settings['fsync']}, "
        f"synchronous_commit={settings['synchronous_commit']} by default)"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    run = bench_run()
    parser = run.suite_parser("litedur on PostgreSQL beside raw psycopg and DBOS (issue 14)", WORKLOADS)
    parser.add_argument("--url", default=None, help="an existing server's postgresql:// URL (else a throwaway one)")
    parser.add_argument("--no-dbos", action="store_true", help="leave the DBOS column out")
    parser.add_argument(
        "--dbos-venv",
        default=os.path.join(tempfile.gettempdir(), "litedur-bench-dbos-venv"),
        help="the virtual environment DBOS runs in (created with `pip install dbos` if missing)",
    )
    return run.parse_suite_args(parser, argv, WORKLOADS)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--role"]:
        ROLES[argv[1]](*argv[2:])
        return 0
    args = parse_args(argv)
    command = "python benchmarks/postgres.py " + " ".join(argv)
    os.environ.pop("LITEDUR_WAIT", None)
    run = bench_run()
    server = None
    url = args.url
    if url is None:
        pg_server = load_by_path("litedur_pg_server", ROOT / "tests" / "pg_server.py")
        server, why = pg_server.start_server()
        if server is None:
            print(f"no PostgreSQL server to run on: {why} (or pass --url)", file=sys.stderr)
            return 2
        url = server.url
    python, no_dbos = dbos_python(args)
    sizes = SIZES["quick" if args.quick else "default"]
    suite = Suite(sizes, args.workloads)
    places = Places(url)
    started = time.monotonic()
    load_before = run.load_average()
    try:
        described = server_description(url)
        ours = Litedur(run, places, sizes, args.durability)
        if python:
            no_dbos = places.database_refusal()
            python = None if no_dbos else python
        theirs = Dbos(python, places, sizes) if python else None
        for number in range(1, args.repeat + 1):
            print(f"[round {number}/{args.repeat}] {', '.join(args.workloads)} ...", file=sys.stderr, flush=True)
            suite.round(places, ours, theirs)
    finally:
        places.drop()
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - started

    import litedur

    print(f"litedur on PostgreSQL: {command.strip()}")
    print(f"machine: {platform.system()} {platform.machine()}, nproc {os.cpu_count()}, Python "
          f"{platform.python_version()}; litedur {litedur.__version__} at {run.revision()}")  # fmt: skip
    print(f"server: {described}, {'throwaway (tests/pg_server.py)' if server is not None else 'given by --url'}")
    about_dbos = f"dbos {dbos_version(python)} at its defaults, in {python}" if python else f"skipped: {no_dbos}"
    print(f"DBOS: {about_dbos}")
    print(f"load average (1, 5, 15 min): {load_before} before, {run.load_average()} after; {elapsed:.0f} s")
    print(f"{args.repeat} round(s); durability {args.durability}; figures are medians; ratios are litedur's "
          "median over the other's (for ms and CPU, lower is better)")  # fmt: skip
    print()
    print("\n".join(table(list(suite.rows.values()))))
    for what, why in suite.failures.items():
        print(f"ERROR {what}: {why}")
    return 1 if suite.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
