"""litedur benchmark suite: every workload of issue 6, against a raw-apsw baseline measured in the same run.

    python benchmarks/run.py [--quick] [--only W1,W3] [--repeat N] [--durability normal|full] [--dir DIR]

Each round runs every selected workload once; the suite runs ``--repeat`` rounds (default 3; ``--quick``:
one round at tiny sizes, a smoke test for CI that asserts no speed) and prints, per figure, the min, median
and max over the rounds and, for throughputs, the ratio to the raw-apsw one-row commit rate at the same
durability: the median of each round's ratio, as for every figure with a baseline (the machine is noisy:
the ratios are the figures that count, and pairing them by round keeps a busy stretch off one side). Then it
prints the same table as Markdown, with the machine it ran on, to paste into the README.

Workloads (ids for ``--only``; RAW always runs, the ratios need it):

- RAW    raw apsw on a WAL file, the stream-entry table shape: one-row transactions/s at synchronous NORMAL
         and FULL, rows/s in transactions of 10 rows; and W2's lean limit: an apsw writer process
         committing one small JSON dict per value at ~500/s, read by a process that only sleeps on
         inotify on the directory, drains it, runs one query and ``json.loads`` each value (Linux only); and
         W7's: messages sent one at a time by an apsw process (a row inserted, then a byte of a signal
         file rewritten), each consumed by a process woken by inotify on the signal file's directory
         that runs one SELECT + one UPDATE in a transaction (Linux only).
- W1     one step writes five-byte strings to a stream; values/s with grouped commits (the default) and
         with ``group_writes=False`` (one commit per value), at the chosen durability and at "full".
- W2     cross-process write->read latency at ~500 values/s (p50/p99/max, reader CPU per 1,000 values),
         written by a step, the same with LITEDUR_WAIT=poll, and written by a workflow body (1,000 small
         dicts, each a checkpoint), each against the lean reader (issue 12: p50 <= 1.5x, CPU <= 1.2x);
         in-process (reader thread in the writer's process); the CPU of an idle reader blocked on a
         stream that gets no writes.
- W3     one workflow running trivial steps; steps/s.
- W4     one-step workflows started with start_workflow and awaited; workflows/s.
- W5     recovery: a writer SIGKILLed halfway through a step's stream; time from launch() returning in a
         new process to the first new value seen by a reader that kept reading across the crash.
- W6     a long stream: sustained write rate, time to the first value read near its end, bytes per value
         on disk; fan-out: the CPU of this process per 1,000 values while 1, then 50 readers of one
         Client follow one live stream of another process, as threads and as async readers on one
         event loop (issue 12: 50 readers <= 3x one).
- W7     communication: send -> recv latency across processes (a Client sends one message at a time to a
         workflow of another process looping on ``recv``; p50/p99/max, receiver CPU per 1,000 messages,
         and how its waits were woken); then a process whose 1,000 workflows each set an event and block
         in ``recv``: the CPU of the engine's first query of workflow changes after that (it reads the
         events back and wakes every workflow once), the CPU of the next seconds with nothing arriving,
         the time until all of them finish once each is sent a message, and the process's peak RSS.
- W8     queues and async (issue 11): enqueue -> start latency across processes (a Client enqueues one
         workflow at a time into a queue of a worker process; the body returns ``time.monotonic_ns()``;
         p50/p99/max); one-step workflows through a queue with ``concurrency=8`` (enqueued, then
         awaited) as a ratio to the same workflows started with ``start_workflow`` in the same round
         (W4 again, here with issue 11's target); W4 with ``async def`` workflows and steps; then a
         process whose 10,000 ``async def`` workflows each await ``recv_async``: the time to start them
         all, the time from the first message sent to all finished, its threads and peak RSS.
- IMPORT import time of litedur in a fresh interpreter, wall time of ``litedur --help``.

Child processes (writers, the recovering process) are this same script started with a hidden
``--role NAME`` argument. Each workload gets a fresh directory (readers watch the database's directory).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

import litedur

HERE = Path(__file__).resolve()
WORKLOADS = ("RAW", "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "IMPORT")
VALUE = "abcde"  # the five-byte string every stream workload writes
RATE = 500.0  # values/s written by the paced writer of W2 and W6
GAP = 0.002  # s between a message received and the next one sent (W7): the receiver is back in its wait
ISSUE_RAW_NORMAL = 113_537  # one-row commits/s issue 6 measured when it set its targets
SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

SIZES = {
    "default": {
        "raw_normal": 100_000, "raw_full": 5_000, "raw_batch": 200_000,
        "w1": 50_000, "w1_each_full": 5_000,
        "w2": 2_000, "w2_body": 1_000, "idle_s": 3.0,
        "w3": 5_000, "w4": 2_000, "w5": 1_000,
        "w6": 1_000_000, "w6_tail": 1_000, "w6_readers": 50, "w6_live": 1_000,
        "w7": 1_000, "w7_idle": 1_000, "w7_window": 3.0, "w7_settle": 0.5,
        "w8_latency": 1_000, "w8_queue": 2_000, "w8_async": 2_000, "w8_waiters": 10_000,
        "imports": 5,
    },
    "quick": {
        "raw_normal": 2_000, "raw_full": 50, "raw_batch": 5_000,
        "w1": 2_000, "w1_each_full": 50,
        "w2": 100, "w2_body": 100, "idle_s": 0.3,
        "w3": 200, "w4": 100, "w5": 100,
        "w6": 20_000, "w6_tail": 1_000, "w6_readers": 10, "w6_live": 100,
        "w7": 50, "w7_idle": 50, "w7_window": 0.3, "w7_settle": 0.1,
        "w8_latency": 50, "w8_queue": 100, "w8_async": 100, "w8_waiters": 200,
        "imports": 1,
    },
}  # fmt: skip

ENTRY_TABLE = (
    "CREATE TABLE stream_entries (stream_id INTEGER NOT NULL, offset INTEGER NOT NULL, "
    "encoding INTEGER NOT NULL, value, position INTEGER NOT NULL, attempt INTEGER NOT NULL, "
    "PRIMARY KEY (stream_id, offset)) WITHOUT ROWID"
)
ENTRY_INSERT = "INSERT INTO stream_entries VALUES (1, ?, 0, ?, 0, 1)"
RAW_READ = "SELECT value FROM stream_entries WHERE stream_id = 1 AND offset >= ? ORDER BY offset LIMIT 1000"
IN_MODIFY, IN_CREATE = 0x002, 0x100
MESSAGE_TABLE = "CREATE TABLE messages (id INTEGER PRIMARY KEY, value INTEGER NOT NULL, consumed INTEGER NOT NULL)"
MESSAGE_INDEX = "CREATE INDEX pending ON messages (id) WHERE consumed = 0"  # what the receiver looks up


# ---- figures and their summary ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What an issue asks of a figure: ``op`` is ">=" or "<="; ``ratio`` compares the ratio column, taken
    against the figure's ``vs`` (named ``of``: raw, unless the baseline is another litedur figure).

    ``scaled``: a throughput also judged as a ratio to raw, the absolute number divided by the raw
    one-row commit rate issue 6 measured when it set the number (machines and days differ).
    """

    op: str
    number: float
    ratio: bool = False
    scaled: bool = False
    of: str = "raw"

    def met(self, value: float) -> bool:
        return value >= self.number if self.op == ">=" else value <= self.number

    def __str__(self) -> str:
        return f"{self.op} {fmt_ratio(self.number)} {self.of}" if self.ratio else f"{self.op} {fmt(self.number)}"


@dataclass(frozen=True)
class Figure:
    """One measurement of one round. ``vs`` names the baseline figure the ratio is taken against."""

    key: str
    workload: str
    label: str
    unit: str
    value: float | None
    vs: str | None = None
    target: Target | None = None
    short: str | None = None  # its name where another figure is compared with it (default: label)


@dataclass
class Row:
    """A figure across rounds."""

    workload: str
    label: str
    unit: str
    vs: str | None
    target: Target | None
    short: str
    samples: list[float] = field(default_factory=list)  # none: the feature does not exist (n/a)


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def ratio_of(row: Row, rows: dict[str, Row]) -> float | None:
    """The figure against its baseline: the median of each round's ratio (a round measures both, so a
    slower or busier stretch of the run weighs on both sides alike), or, when they were not measured
    in the same rounds, the ratio of the medians."""
    base = rows.get(row.vs) if row.vs else None
    if base is None or not row.samples or not base.samples:
        return None
    if len(row.samples) == len(base.samples) and all(base.samples):
        return median([value / reference for value, reference in zip(row.samples, base.samples, strict=True)])
    reference = median(base.samples)
    return median(row.samples) / reference if reference else None


def judge(target: Target, measured: float | None) -> str:
    return "n/a" if measured is None else "ok" if target.met(measured) else "MISSED"


def verdict(row: Row, rows: dict[str, Row]) -> str:
    target = row.target
    if target is None:
        return ""
    text = f"{target}: {judge(target, ratio_of(row, rows) if target.ratio else median(row.samples))}"
    if target.scaled:
        as_ratio = Target(target.op, target.number / ISSUE_RAW_NORMAL, ratio=True)
        text += f"; {as_ratio}: {judge(as_ratio, ratio_of(row, rows))}"
    return text


def summary_lines(rows: dict[str, Row]) -> list[str]:
    lines = []
    for row in rows.values():
        if row.samples:
            low, mid, high = (fmt(x) for x in (min(row.samples), median(row.samples), max(row.samples)))
            spread = f"min {low:>9}  median {mid:>9}  max {high:>9}"
        else:
            spread = f"{'n/a':<46}"
        ratio = ratio_of(row, rows)
        against = f"{fmt_ratio(ratio):>7} {rows[row.vs].short}" if ratio is not None and row.vs else ""
        lines.append(
            f"{row.workload:<6} {row.label:<58} {row.unit:<11} {spread}   {against:<26} {verdict(row, rows)}".rstrip()
        )
    return lines


def markdown(rows: dict[str, Row]) -> list[str]:
    lines = [
        "| id | figure | unit | min | median | max | ratio to raw | target |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows.values():
        ratio = ratio_of(row, rows)
        base = rows[row.vs] if ratio is not None and row.vs else None
        against = "" if ratio is None else fmt_ratio(ratio)
        if base is not None and base.workload != "RAW":  # a ratio to another litedur figure: say which
            against += f" {base.short}"
        low, mid, high = (
            (fmt(min(row.samples)), fmt(median(row.samples)), fmt(max(row.samples))) if row.samples else ("n/a",) * 3
        )
        lines.append(
            f"| {row.workload} | {row.label} | {row.unit} | {low} | {mid} | {high} | {against} | {verdict(row, rows)} |"
        )
    return lines


# ---- small helpers ------------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an already sorted list, nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cpu_seconds() -> float:
    """User + system CPU of this whole process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return usage / 2**20 if sys.platform == "darwin" else usage / 2**10


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def spawn(role: str, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """This script in a child process playing ``role``; talks through line-buffered stdin/stdout."""
    return subprocess.Popen(
        [sys.executable, str(HERE), "--role", role, *map(str, args)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def expect_line(process: subprocess.Popen[str], prefix: str) -> str:
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith(prefix):
        raise RuntimeError(f"child {process.args[3]} said {line!r}, expected {prefix!r} (exit code {process.poll()})")
    return line[len(prefix) :].strip()


def reap(process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Wait for a child to end on its own; kill it (and complain) if it does not."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"child {process.args[3]} did not end within {timeout} s") from None
    if code != 0:
        raise RuntimeError(f"child {process.args[3]} exited with code {code}")


@contextlib.contextmanager
def child(role: str, *args: object, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    process = spawn(role, *args, env=env)
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


def send_go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def disk_bytes(path: str) -> int:
    """Bytes of the database and its WAL after a truncating checkpoint (no litedur connection open)."""
    conn = apsw.Connection(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))
    finally:
        conn.close()


def engine(path: str, durability: str, **options: object) -> litedur.Engine:
    return litedur.Engine(path, durability=durability, **options)


# ---- the paced writer (W2, W6 readers) ----------------------------------------------------------


def paced_app(path: str, durability: str, wait_for_go: Callable[[], None]) -> tuple[litedur.Engine, Callable]:
    """An engine with a workflow whose step writes ``time.monotonic_ns()`` at a steady rate.

    The writer sleeps between values (a busy-spinning writer would steal the reader's core).
    """
    app = engine(path, durability)

    @app.step(name="bench.paced")
    def paced(count: int, interval: float) -> int:
        wait_for_go()
        start = time.monotonic()
        for i in range(count):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            app.write_stream("t", time.monotonic_ns())
        return count

    @app.workflow(name="bench.paced_workflow")
    def paced_workflow(count: int, interval: float) -> int:
        written = paced(count, interval)
        app.close_stream("t")
        return written

    return app, paced_workflow


def role_paced_writer(path: str, workflow_id: str, count: str, interval: str, durability: str) -> None:
    """Child: start the paced workflow, say "ready", write once the parent says "go", then exit."""

    def wait_for_go() -> None:
        print("ready", flush=True)
        sys.stdin.readline()

    app, workflow = paced_app(path, durability, wait_for_go)
    with app, litedur.SetWorkflowID(workflow_id):
        workflow(int(count), float(interval))


def role_body_writer(path: str, workflow_id: str, count: str, interval: str, durability: str) -> None:
    """Child: a workflow whose body writes ``count`` small dicts ``{"i": i, "t": monotonic_ns}`` at a
    steady rate (each write a checkpoint), once the parent says "go"; then it closes the stream."""
    app = engine(path, durability)

    @app.workflow(name="bench.body_writer")
    def body_writer(n: int, every: float) -> int:
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.monotonic()
        for i in range(n):
            delay = start + i * every - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            app.write_stream("t", {"i": i, "t": time.monotonic_ns()})
        app.close_stream("t")
        return n

    with app, litedur.SetWorkflowID(workflow_id):
        body_writer(int(count), float(interval))


def stamp_in_dict(value: Any) -> int:
    return value["t"]


def read_latencies(
    reader: litedur.StreamReader, count: int, go: Callable[[], None], stamp_of: Callable[[Any], int] = int
) -> tuple[list[int], float]:
    """Consume a stream of monotonic_ns stamps (``stamp_of`` finds it in a value): (latencies in ns,
    reader CPU s from first to last value)."""
    latencies: list[int] = []
    cpu_first = cpu_last = 0.0
    go()
    for value in reader:
        seen = time.monotonic_ns()
        if not latencies:
            cpu_first = cpu_seconds()
        latencies.append(seen - stamp_of(value))
        if len(latencies) == count:
            cpu_last = cpu_seconds()
    if len(latencies) != count:
        raise RuntimeError(f"reader got {len(latencies)} values, expected {count}")
    return latencies, cpu_last - cpu_first


def latency_figures(
    workload: str,
    prefix: str,
    name: str,
    measured: tuple[list[int], float | None] | None,
    targets: dict[str, Target] | None = None,
    vs: str | None = None,
    reader: str = "reader CPU/1,000 values",
    short: str = "raw",
) -> list[Figure]:
    """p50, p99, max (ms) and ``reader`` CPU per 1,000 items; None values when nothing was ``measured``."""
    latencies, cpu = measured or ([], None)
    ordered = sorted(ns / 1e6 for ns in latencies)
    targets = targets or {}
    figures = [
        Figure(f"{prefix}.{name_}", workload, f"{name}: {name_}", "ms",
               percentile(ordered, q) if ordered else None, vs=vs and f"{vs}.{name_}", target=targets.get(name_),
               short=f"{short} {name_}")
        for name_, q in (("p50", 0.50), ("p99", 0.99), ("max", 1.0))
    ]  # fmt: skip
    if cpu is not None or measured is None:
        per_thousand = None if cpu is None else cpu / max(1, len(latencies) - 1) * 1000
        label, baseline = f"{name}: {reader}", vs and f"{vs}.cpu"
        figures.append(
            Figure(f"{prefix}.cpu", workload, label, "s", per_thousand, baseline, targets.get("cpu"), f"{short} CPU")
        )
    return figures


# ---- workloads ----------------------------------------------------------------------------------


@dataclass
class Context:
    sizes: dict[str, float]
    durability: str
    root: Path
    counter: int = 0

    def directory(self, name: str) -> Path:
        """A fresh directory for one workload's database (readers watch the whole directory)."""
        self.counter += 1
        path = self.root / f"{self.counter:03d}-{name}"
        path.mkdir()
        return path

    def db(self, name: str) -> str:
        return str(self.directory(name) / "bench.db")

    def size(self, name: str) -> int:
        return int(self.sizes[name])

    @property
    def normal(self) -> bool:
        return self.durability == "normal"


def raw_connection(path: str, synchronous: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(ENTRY_TABLE)
    return conn


def raw_one_row_rate(path: str, synchronous: str, count: int) -> float:
    conn = raw_connection(path, synchronous)
    try:
        started = time.perf_counter()
        for offset in range(count):
            conn.execute(ENTRY_INSERT, (offset, VALUE))
        return count / (time.perf_counter() - started)
    finally:
        conn.close()


def raw_batch_rate(path: str, count: int, batch: int = 10) -> float:
    conn = raw_connection(path, "NORMAL")
    try:
        started = time.perf_counter()
        for first in range(0, count, batch):
            conn.execute("BEGIN")
            conn.executemany(ENTRY_INSERT, [(offset, VALUE) for offset in range(first, first + batch)])
            conn.execute("COMMIT")
        return count / (time.perf_counter() - started)
    finally:
        conn.close()


def inotify(directory: str) -> int | None:
    """A non-blocking inotify descriptor watching ``directory`` (Linux only; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(directory), IN_MODIFY | IN_CREATE) >= 0:
        return fd
    if fd >= 0:
        os.close(fd)
    return None


def role_raw_writer(path: str, count: str, interval: str, synchronous: str) -> None:
    """Child: once told "go", insert ``count`` small JSON dicts ``{"i": offset, "t": monotonic_ns}`` at a
    steady rate, one commit each (the shape of W2's body case)."""
    conn = apsw.Connection(path)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    print("ready", flush=True)
    sys.stdin.readline()
    start, step = time.monotonic(), float(interval)
    for offset in range(int(count)):
        delay = start + offset * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        conn.execute(ENTRY_INSERT, (offset, json.dumps({"i": offset, "t": time.monotonic_ns()})))
    conn.close()


def raw_latencies(ctx: Context, count: int) -> tuple[list[int], float] | None:
    """The lean limit of W2: an apsw writer process; a reader that sleeps on inotify on the directory,
    drains the events, runs one query and ``json.loads`` each value, and nothing else (Linux only)."""
    directory = ctx.directory("raw-latency")
    fd = inotify(str(directory))
    if fd is None:
        return None
    path = str(directory / "raw.db")
    conn = raw_connection(path, SYNCHRONOUS[ctx.durability])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    latencies: list[int] = []
    cpu_first = offset = 0
    loads, now = json.loads, time.monotonic_ns
    try:
        with child("raw-writer", path, count, 1 / RATE, SYNCHRONOUS[ctx.durability]) as writer:
            expect_line(writer, "ready")
            send_go(writer)
            woke = False
            while offset < count:
                # The event of a WAL write can come just before SQLite publishes the commit: after a
                # wake that found nothing, look again 1 ms later even if no further event comes.
                woke = bool(poller.poll(1 if woke else 1000))
                with contextlib.suppress(BlockingIOError):  # drained before the query, which sees every commit
                    while os.read(fd, 65536):
                        pass
                rows = conn.execute(RAW_READ, (offset,)).fetchall()
                if not rows:
                    if not woke and writer.poll() is not None:
                        raise RuntimeError(f"the raw writer ended after {offset} of {count} values")
                    continue
                seen, woke = now(), False
                if not latencies:
                    cpu_first = cpu_seconds()
                latencies.extend(seen - loads(data)["t"] for (data,) in rows)
                offset += len(rows)
            cpu = cpu_seconds() - cpu_first
            reap(writer)
    finally:
        os.close(fd)
        conn.close()
    return latencies, cpu


def exchange(receiver: subprocess.Popen[str], count: int, send: Callable[[int], None]) -> list[int]:
    """Send ``count`` messages stamped with ``time.monotonic_ns()``, each one `GAP` after the receiver said
    "got <latency ns>" for the previous one (so it is back in its wait); the latencies it reported."""
    latencies = []
    for _ in range(count):
        time.sleep(GAP)
        send(time.monotonic_ns())
        latencies.append(int(expect_line(receiver, "got")))
    return latencies


def role_raw_receiver(path: str, signals: str, count: str, synchronous: str) -> None:
    """Child: consume ``count`` raw messages, oldest first, each in a transaction of one SELECT and one
    UPDATE, sleeping on inotify on the ``signals`` directory in between; say "got <latency ns>" for each,
    then "done <JSON>" with the CPU from the first message to the last."""
    fd = inotify(signals)
    if fd is None:
        raise RuntimeError(f"no inotify watch on {signals}")
    conn = apsw.Connection(path)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    print("ready", flush=True)
    received, cpu_first = 0, 0.0
    while received < int(count):
        with contextlib.suppress(BlockingIOError):  # drained before the query, which then sees every send
            while os.read(fd, 65536):
                pass
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute("SELECT id, value FROM messages WHERE consumed = 0 ORDER BY id LIMIT 1").fetchall()
        if rows:
            conn.execute("UPDATE messages SET consumed = 1 WHERE id = ?", (rows[0][0],))
        conn.execute("COMMIT")
        if not rows:
            poller.poll(1000)
            continue
        seen = time.monotonic_ns()
        if not received:
            cpu_first = cpu_seconds()
        received += 1
        print(f"got {seen - rows[0][1]}", flush=True)
    print(f"done {json.dumps({'cpu': cpu_seconds() - cpu_first})}", flush=True)
    os.close(fd)
    conn.close()


def raw_message_latencies(ctx: Context, count: int) -> tuple[list[int], float] | None:
    """The physical limit of W7's send -> recv: an apsw sender (this process) that inserts a row, then
    rewrites a byte of a signal file; a receiver process woken by inotify that consumes it."""
    if not sys.platform.startswith("linux"):
        return None
    directory = ctx.directory("raw-messages")
    signals = directory / "signals"  # a directory of its own: the database's writes wake nobody
    signals.mkdir()
    path, synchronous = str(directory / "raw.db"), SYNCHRONOUS[ctx.durability]
    conn = apsw.Connection(path)
    fd = -1
    try:
        for statement in ("PRAGMA journal_mode = WAL", f"PRAGMA synchronous = {synchronous}", MESSAGE_TABLE,
                          MESSAGE_INDEX):  # fmt: skip
            conn.execute(statement)
        fd = os.open(signals / "signal", os.O_RDWR | os.O_CREAT, 0o600)

        def send(stamp: int) -> None:
            conn.execute("INSERT INTO messages (value, consumed) VALUES (?, 0)", (stamp,))
            os.pwrite(fd, b"\0", 0)

        with child("raw-receiver", path, signals, count, synchronous) as receiver:
            expect_line(receiver, "ready")
            latencies = exchange(receiver, count, send)
            cpu = json.loads(expect_line(receiver, "done"))["cpu"]
            reap(receiver)
    finally:
        if fd >= 0:
            os.close(fd)
        conn.close()
    return latencies, cpu


def w_raw(ctx: Context) -> list[Figure]:
    return [
        Figure("raw.normal", "RAW", "one-row commits (normal)", "commits/s",
               raw_one_row_rate(ctx.db("raw-normal"), "NORMAL", ctx.size("raw_normal")), short="raw commits"),
        Figure("raw.full", "RAW", "one-row commits (full)", "commits/s",
               raw_one_row_rate(ctx.db("raw-full"), "FULL", ctx.size("raw_full")), short="raw commits (full)"),
        Figure("raw.batch", "RAW", "rows in commits of 10 (normal)", "rows/s",
               raw_batch_rate(ctx.db("raw-batch"), ctx.size("raw_batch")), vs="raw.normal"),
        *latency_figures("RAW", "raw.latency", "cross-process, lean: apsw + inotify + json.loads",
                         raw_latencies(ctx, ctx.size("w2")), short="lean"),
        *latency_figures("RAW", "raw.message", "send -> recv, apsw + inotify",
                         raw_message_latencies(ctx, ctx.size("w7")), reader="receiver CPU/1,000 msgs"),
    ]  # fmt: skip


def stream_write_rate(path: str, count: int, durability: str, grouped: bool) -> float | None:
    """Values/s of one step writing ``count`` five-byte strings; None if ``group_writes`` does not exist."""
    try:
        app = engine(path, durability) if grouped else engine(path, durability, group_writes=False)
    except TypeError:
        return None

    @app.step(name="bench.produce")
    def produce(n: int) -> None:
        write = app.write_stream
        for _ in range(n):
            write("s", VALUE)

    @app.workflow(name="bench.stream_write")
    def stream_write(n: int) -> None:
        produce(n)

    with app:
        started = time.perf_counter()
        stream_write(count)
        return count / (time.perf_counter() - started)


def w1(ctx: Context) -> list[Figure]:
    figures = []
    for durability in dict.fromkeys((ctx.durability, "full")):
        n, n_each = ctx.size("w1"), ctx.size("w1" if durability == "normal" else "w1_each_full")
        grouped = stream_write_rate(ctx.db("w1-grouped"), n, durability, grouped=True)
        each = stream_write_rate(ctx.db("w1-each"), n_each, durability, grouped=False)
        normal = durability == "normal"
        figures += [
            Figure(f"w1.grouped.{durability}", "W1", f"grouped commits, {n:,} values ({durability})", "values/s",
                   grouped, vs=f"raw.{durability}", target=Target(">=", 250_000, scaled=True) if normal else None),
            Figure(f"w1.each.{durability}", "W1", f"one commit per value, {n_each:,} values ({durability})",
                   "values/s", each, vs=f"raw.{durability}", target=Target(">=", 0.7, ratio=True) if normal else None),
        ]  # fmt: skip
        if durability == "full":
            gain = None if grouped is None or each is None else grouped / each
            figures.append(Figure("w1.gain.full", "W1", "grouped / one commit per value (full)", "x", gain,
                                  target=Target(">=", 10)))  # fmt: skip
    return figures


def w2(ctx: Context) -> list[Figure]:
    count, interval = ctx.size("w2"), 1 / RATE
    # Issue 12's targets, as ratios to the lean reader of this round (RAW); issue 6's for the p99.
    targets = {"p50": Target("<=", 1.5, ratio=True, of="lean"), "p99": Target("<=", 1.0),
               "cpu": Target("<=", 1.2, ratio=True, of="lean")} if ctx.normal else {}  # fmt: skip
    cases = (
        ("notify", "paced-writer", ctx.size("w2"), "cross-process, step writes", int),
        ("poll", "paced-writer", ctx.size("w2"), "cross-process, step writes, LITEDUR_WAIT=poll", int),
        ("body", "body-writer", ctx.size("w2_body"), "cross-process, body writes small dicts", stamp_in_dict),
    )
    figures = []
    for case, role, count, name, stamp_of in cases:
        path = ctx.db(f"w2-{case}")
        litedur.Engine(path).shutdown()  # a Client never creates the file
        with child(role, path, "w2", count, interval, ctx.durability) as writer:
            expect_line(writer, "ready")
            with environment(**({"LITEDUR_WAIT": "poll"} if case == "poll" else {})), litedur.Client(path) as client:
                reader = client.read_stream("w2", "t")
                latencies, cpu = read_latencies(reader, count, lambda w=writer: send_go(w), stamp_of)
            reap(writer)
        figures += latency_figures(
            "W2", f"w2.{case}", name, (latencies, cpu), None if case == "poll" else targets, vs="raw.latency"
        )

    go = threading.Event()
    app, workflow = paced_app(ctx.db("w2-inprocess"), ctx.durability, lambda: go.wait(60))
    with app:
        with litedur.SetWorkflowID("w2"):
            handle = app.start_workflow(workflow, count, interval)
        latencies, _ = read_latencies(app.read_stream("w2", "t"), count, go.set)
        handle.get_result(timeout=60)
    in_process_target = {"p50": Target("<=", 0.05)} if ctx.normal else None
    figures += latency_figures("W2", "w2.inprocess", "in-process", (latencies, None), in_process_target)

    path, idle = ctx.db("w2-idle"), ctx.sizes["idle_s"]
    litedur.Engine(path).shutdown()
    with child("paced-writer", path, "idle", 0, interval, ctx.durability) as writer:
        expect_line(writer, "ready")
        with litedur.Client(path) as client:
            reader = client.read_stream("idle", "t", timeout=idle)
            cpu, started = cpu_seconds(), time.monotonic()
            with contextlib.suppress(TimeoutError):
                next(reader)
            share = (cpu_seconds() - cpu) / (time.monotonic() - started) * 100
            reader.close()
        send_go(writer)
        reap(writer)
    figures.append(Figure("w2.idle", "W2", f"idle reader, {idle:g} s without writes: CPU", "% of a core", share,
                          target=Target("<=", 0.5)))  # fmt: skip
    return figures


def w3(ctx: Context) -> list[Figure]:
    count = ctx.size("w3")
    app = engine(ctx.db("w3"), ctx.durability)

    @app.step(name="bench.trivial")
    def trivial(i: int) -> int:
        return i

    @app.workflow(name="bench.many_steps")
    def many_steps(n: int) -> int:
        for i in range(n):
            trivial(i)
        return n

    with app:
        started = time.perf_counter()
        many_steps(count)
        rate = count / (time.perf_counter() - started)
    target = Target(">=", 60_000, scaled=True) if ctx.normal else None
    label = f"one workflow, {count:,} trivial steps ({ctx.durability})"
    return [Figure("w3", "W3", label, "steps/s", rate, vs=f"raw.{ctx.durability}", target=target)]


def one_step_rate(path: str, durability: str, count: int, how: str = "start") -> float:
    """Workflows/s of ``count`` one-step workflows, all started, then each awaited from this thread:
    started with ``start_workflow`` ("start"), enqueued in a queue with ``concurrency=8`` ("queue"), or
    ``async def`` workflows with an ``async def`` step, started with ``start_workflow`` ("async"); or
    each called directly in this thread, one after another ("direct")."""
    app = engine(path, durability)

    @app.step(name="bench.trivial")
    def trivial(i: int) -> int:
        return i

    @app.workflow(name="bench.one_step")
    def one_step(i: int) -> int:
        return trivial(i)

    @app.step(name="bench.trivial_async")
    async def trivial_async(i: int) -> int:
        return i

    @app.workflow(name="bench.one_step_async")
    async def one_step_async(i: int) -> int:
        return await trivial_async(i)

    queue = app.queue("bench", concurrency=8) if how == "queue" else None
    with app:
        started = time.perf_counter()
        if how == "direct":
            results = [one_step(i) for i in range(count)]
        else:
            if queue is not None:
                handles = [queue.enqueue(one_step, i) for i in range(count)]
            else:
                workflow = one_step_async if how == "async" else one_step
                handles = [app.start_workflow(workflow, i) for i in range(count)]
            results = [handle.get_result(timeout=120) for handle in handles]
        rate = count / (time.perf_counter() - started)
    if results != list(range(count)):
        raise RuntimeError(f"{how}: the one-step workflows did not return their inputs")
    return rate


# W4's three commits, as litedur makes them for a one-step workflow (see lean_one_step_rate).
LEAN_CREATE = (
    "INSERT INTO workflows (workflow_id, name, status, inputs_encoding, inputs, executor_id, created_at, updated_at) "
    "VALUES (?, 'bench.one_step', 'PENDING', 1, ?, 'lean', ?, ?) ON CONFLICT (workflow_id) DO NOTHING"
)
LEAN_STEP = "INSERT INTO steps VALUES (?, 0, 'bench.trivial', 1, ?, NULL, NULL, 1, ?, ?)"
LEAN_FINISH = (
    "UPDATE workflows SET status = 'SUCCESS', output_encoding = 1, output = ?, updated_at = ? "
    "WHERE workflow_id = ? AND status = 'PENDING' AND executor_id = 'lean'"
)


def lean_one_step_rate(path: str, durability: str, count: int) -> float:
    """Workflows/s of W4's storage work alone: raw apsw in one thread on litedur's own schema (its
    indexes and triggers), per workflow the three commits litedur makes (create the row, record the
    step, record the end) and nothing else: no threads, no wake-ups, no engine. The floor that
    litedur's schema sets under W4."""
    litedur.Engine(path).shutdown()  # the schema
    conn = apsw.Connection(path)
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    try:
        started = time.perf_counter()
        for i in range(count):
            workflow_id, now, output = str(uuid.uuid4()), time.time(), json.dumps(i)
            conn.execute(LEAN_CREATE, (workflow_id, json.dumps({"args": [i], "kwargs": {}}), now, now))
            conn.execute(LEAN_STEP, (workflow_id, output, now, now))
            conn.execute(LEAN_FINISH, (output, now, workflow_id))
        return count / (time.perf_counter() - started)
    finally:
        conn.close()


def w4(ctx: Context) -> list[Figure]:
    count = ctx.size("w4")
    rate = one_step_rate(ctx.db("w4"), ctx.durability, count)
    direct = one_step_rate(ctx.db("w4-direct"), ctx.durability, count, how="direct")
    lean = lean_one_step_rate(ctx.db("w4-lean"), ctx.durability, count)
    raw = f"raw.{ctx.durability}"
    return [
        Figure("w4", "W4", f"{count:,} one-step workflows, started and awaited ({ctx.durability})",
               "workflows/s", rate, vs=raw, target=Target(">=", 5_000, scaled=True) if ctx.normal else None),
        Figure("w4.direct", "W4", f"{count:,} one-step workflows, each called in this thread ({ctx.durability})",
               "workflows/s", direct, vs=raw),
        Figure("w4.lean", "W4", f"lean: their three commits alone, raw apsw on litedur's schema ({ctx.durability})",
               "workflows/s", lean, vs=raw),
    ]  # fmt: skip


def recovery_app(path: str, durability: str) -> tuple[litedur.Engine, Callable]:
    """A step that writes 0..n-1, resuming after what earlier attempts wrote (already_written).

    A first attempt writes the first half and then hangs, waiting to be killed.
    """
    app = engine(path, durability)

    @app.step(name="bench.resumable")
    def resumable(n: int) -> int:
        done = len(app.already_written("s"))
        if done == 0:
            for i in range(n // 2):
                app.write_stream("s", i)
            time.sleep(3600)
        for i in range(done, n):
            app.write_stream("s", i)
        return done

    @app.workflow(name="bench.recovered")
    def recovered(n: int) -> int:
        done = resumable(n)
        app.close_stream("s")
        return done

    return app, recovered


def role_victim(path: str, workflow_id: str, count: str, durability: str) -> None:
    """Child: start the resumable workflow, say "started", and wait to be killed."""
    app, recovered = recovery_app(path, durability)
    app.launch()
    with litedur.SetWorkflowID(workflow_id):
        app.start_workflow(recovered, int(count))
    print("started", flush=True)
    time.sleep(3600)


def role_recoverer(path: str, workflow_id: str, durability: str) -> None:
    """Child: launch() (which recovers the workflow), print when launch was called, wait for the end."""
    app, _ = recovery_app(path, durability)
    called = time.monotonic_ns()
    app.launch()
    print(f"launched {called}", flush=True)
    app.retrieve_workflow(workflow_id).get_result(timeout=60)
    app.shutdown()


def w5(ctx: Context) -> list[Figure]:
    count, half = ctx.size("w5"), ctx.size("w5") // 2
    path = ctx.db("w5")
    with child("victim", path, "w5", count, ctx.durability) as victim:
        expect_line(victim, "started")
        with litedur.Client(path) as client:
            reader = client.read_stream("w5", "s", timeout=30)
            values = [next(reader) for _ in range(half)]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            with child("recoverer", path, "w5", ctx.durability) as recoverer:
                values.append(next(reader))
                seen = time.monotonic_ns()
                values.extend(reader)
                launched = int(expect_line(recoverer, "launched"))
                reap(recoverer)
    if values != list(range(count)):
        raise RuntimeError(f"the reader did not get 0..{count - 1} exactly once: {len(values)} values")
    # From the call, not the return: the recovered workflow runs in a background thread that often
    # writes its first value before launch() returns, which would make the figure negative.
    return [Figure("w5", "W5", f"launch() called -> first new value (killed at {half:,}/{count:,})",
                   "ms", (seen - launched) / 1e6, target=Target("<=", 50))]  # fmt: skip


def live_readers_cpu(ctx: Context, readers: int, live: int, kind: str = "thread") -> float:
    """CPU of this whole process (s per 1,000 values) while ``readers`` readers of one Client (threads,
    or async readers on one event loop) follow a stream that a step of another process writes ``live``
    values to at `RATE`; checks that each got them all, in order."""
    import asyncio

    path = ctx.db(f"w6-live-{readers}-{kind}")
    litedur.Engine(path).shutdown()
    got: list[list[int]] = []

    async def follow_async(client: litedur.Client, started: Callable[[], None]) -> None:
        streams = [client.read_stream_async("live", "t", timeout=30) for _ in range(readers)]

        async def follow(reader: litedur.AsyncStreamReader) -> None:
            got.append([value async for value in reader])

        tasks = [asyncio.ensure_future(follow(reader)) for reader in streams]
        await asyncio.sleep(0)  # every reader has started (its first read is under way)
        started()
        await asyncio.gather(*tasks)

    with child("paced-writer", path, "live", live, 1 / RATE, ctx.durability) as writer, litedur.Client(path) as client:
        expect_line(writer, "ready")
        cpu = [0.0]

        def go() -> None:
            cpu[0] = cpu_seconds()
            send_go(writer)

        if kind == "async":
            asyncio.run(follow_async(client, go))
        else:
            ready = threading.Barrier(readers + 1)

            def follow() -> None:
                reader = client.read_stream("live", "t", timeout=30)
                ready.wait()
                got.append(list(reader))

            threads = [threading.Thread(target=follow) for _ in range(readers)]
            for thread in threads:
                thread.start()
            ready.wait()
            go()
            for thread in threads:
                thread.join()
        used = cpu_seconds() - cpu[0]
        reap(writer)
    if len(got) != readers or any(len(set(values)) != live or values != sorted(values) for values in got):
        counts = sorted({len(values) for values in got})
        raise RuntimeError(f"{readers} live readers got {counts} values (or out of order), expected {live} each")
    return used / live * 1000


def condition_fanout_cpu(readers: int, live: int) -> float:
    """The floor under thread readers: CPU of this process (s per 1,000 values) while ``readers``
    threads, woken through one `threading.Condition` by a writer thread that appends ``live`` values
    at `RATE`, each take every value from a list. No database: only the wake-ups a thread per reader
    costs."""
    values: list[int] = []
    condition = threading.Condition()

    def follow() -> None:
        seen = 0
        while seen < live:
            with condition:
                while len(values) <= seen:
                    condition.wait()
                seen = len(values)

    threads = [threading.Thread(target=follow) for _ in range(readers)]
    for thread in threads:
        thread.start()
    started = cpu_seconds()
    for value in range(live):
        with condition:
            values.append(value)
            condition.notify_all()
        time.sleep(1 / RATE)
    for thread in threads:
        thread.join()
    return (cpu_seconds() - started) / live * 1000


def w6(ctx: Context) -> list[Figure]:
    count, tail = ctx.size("w6"), ctx.size("w6_tail")
    path = ctx.db("w6")
    rate = stream_write_rate(path, count, ctx.durability, grouped=True)
    assert rate is not None
    with litedur.Client(path) as client:
        workflow_id = client.list_workflows(limit=1)[0].workflow_id
        started = time.perf_counter()
        reader = client.read_stream(workflow_id, "s", start=count - tail)
        first = next(reader)
        first_ms = (time.perf_counter() - started) * 1000
        reader.close()
    if first != VALUE:
        raise RuntimeError(f"read {first!r} at offset {count - tail}")
    per_value = disk_bytes(path) / count

    readers, live = ctx.size("w6_readers"), ctx.size("w6_live")
    fanout = {(n, kind): live_readers_cpu(ctx, n, live, kind) for kind in ("thread", "async") for n in (1, readers)}
    fanout.update({(n, "floor"): condition_fanout_cpu(n, live) for n in (1, readers)})
    normal = ctx.normal
    return [
        Figure("w6.rate", "W6", f"sustained write rate, {count:,} values ({ctx.durability})", "values/s", rate,
               vs=f"raw.{ctx.durability}"),
        Figure("w6.first", "W6", f"first value read at offset {count - tail:,}", "ms", first_ms,
               target=Target("<=", 5) if normal else None),
        Figure("w6.bytes", "W6", "bytes on disk per five-byte value", "bytes", per_value,
               target=Target("<=", 40) if normal else None),
        *(figure for kind in ("thread", "async") for figure in (
            Figure(f"w6.fanout.{kind}.one", "W6", f"1 {kind} reader of one live stream ({live:,} values): CPU/1,000",
                   "s", fanout[1, kind], short=f"1 {kind} reader"),
            Figure(f"w6.fanout.{kind}.many", "W6", f"{readers} {kind} readers of one live stream: CPU/1,000", "s",
                   fanout[readers, kind], vs=f"w6.fanout.{kind}.one",
                   target=Target("<=", 3, ratio=True, of=f"1 {kind} reader")),
        )),
        Figure("w6.fanout.floor.one", "W6", f"floor: 1 thread woken by a bare Condition ({live:,} values): CPU/1,000",
               "s", fanout[1, "floor"], short="1 thread, bare"),
        Figure("w6.fanout.floor.many", "W6", f"floor: {readers} threads woken by a bare Condition: CPU/1,000", "s",
               fanout[readers, "floor"], vs="w6.fanout.floor.one"),
    ]  # fmt: skip


def role_receiver(path: str, workflow_id: str, count: str, durability: str) -> None:
    """Child: a workflow that receives ``count`` messages (``time.monotonic_ns()`` stamps) with ``recv``
    and says "got <latency ns>" for each; then "done <JSON>": its CPU from the first message to the
    last, how the engine's waits were woken and how many change queries its watcher made."""
    app = engine(path, durability)

    @app.workflow(name="bench.receiver")
    def receiver(n: int) -> float:
        cpu_first = 0.0
        for i in range(n):
            stamp = app.recv(timeout=60)
            seen = time.monotonic_ns()
            if stamp is None:
                raise RuntimeError(f"no message {i} within 60 s")
            if i == 0:
                cpu_first = cpu_seconds()
            print(f"got {seen - stamp}", flush=True)
        return cpu_seconds() - cpu_first

    with app:
        with litedur.SetWorkflowID(workflow_id):
            handle = app.start_workflow(receiver, int(count))
        print("ready", flush=True)
        cpu = handle.get_result(timeout=600)
        signals = app._signals
        print(f"done {json.dumps({'cpu': cpu, 'rings': signals.rings, 'queries': signals.queries})}", flush=True)


def role_idle_receivers(path: str, count: str, window: str, settle: str, durability: str) -> None:
    """Child: ``count`` workflows that each set an event, then block in ``recv(timeout=600)``.

    Once every event is set, the CPU until the engine's watcher has made its next query of workflow
    changes and ``settle`` s more have passed (that query reads the events back and wakes the workflows
    once), then the CPU over ``window`` s of nothing happening: say "idle <JSON>". Then say "finished
    <JSON>" when all have received a message and ended (the time, monotonic ns) and the peak RSS.
    """
    n = int(count)
    app = engine(path, durability, max_workers=n + 100)

    @app.workflow(name="bench.idle_receiver")
    def idle_receiver() -> object:
        app.set_event("waiting", True)
        return app.recv(timeout=600)

    with app:
        handles = []
        for i in range(n):
            with litedur.SetWorkflowID(f"idle-{i}"):
                handles.append(app.start_workflow(idle_receiver))
        for handle in handles:
            if app.get_event(handle.workflow_id, "waiting", timeout=60) is not True:
                raise RuntimeError(f"{handle.workflow_id} did not reach its recv within 60 s")
        signals = app._signals
        cpu, rings, queries = cpu_seconds(), sum(signals.rings.values()), signals.queries
        give_up = time.monotonic() + 5
        while signals.queries == queries and time.monotonic() < give_up:
            time.sleep(0.01)
        time.sleep(float(settle))  # the workflows it woke are back in their waits
        recheck = {"cpu": cpu_seconds() - cpu, "wakeups": sum(signals.rings.values()) - rings}
        cpu, rings, queries = cpu_seconds(), sum(signals.rings.values()), signals.queries
        started = time.monotonic()
        time.sleep(float(window))
        share = (cpu_seconds() - cpu) / (time.monotonic() - started) * 100
        idle = {"cpu": share, "queries": signals.queries - queries, "wakeups": sum(signals.rings.values()) - rings}
        print(f"idle {json.dumps({'recheck': recheck, 'window': idle})}", flush=True)
        for i, handle in enumerate(handles):
            if handle.get_result(timeout=120) != i:
                raise RuntimeError(f"{handle.workflow_id} received another message than {i}")
        finished = time.monotonic_ns()
    print(f"finished {json.dumps({'at': finished, 'rss': peak_rss_mib()})}", flush=True)


def w7(ctx: Context) -> list[Figure]:
    count = ctx.size("w7")
    path = ctx.db("w7-recv")
    with child("receiver", path, "w7", count, ctx.durability) as receiver:
        expect_line(receiver, "ready")
        with litedur.Client(path) as client:
            latencies = exchange(receiver, count, lambda stamp: client.send("w7", stamp))
        done = json.loads(expect_line(receiver, "done"))
        reap(receiver)
    figures = latency_figures("W7", "w7.recv", "send -> recv, cross-process", (latencies, done["cpu"]),
                              {"p50": Target("<=", 1.0)} if ctx.normal else None, vs="raw.message",
                              reader="receiver CPU/1,000 msgs")  # fmt: skip
    figures += [
        Figure(f"w7.rings.{how}", "W7", f"send -> recv: wake-ups by {how} (any waiting thread)", "wake-ups",
               done["rings"].get(how, 0))
        for how in ("file", "safety-net", "poll", "hand-over")
    ]  # fmt: skip
    figures.append(Figure("w7.queries", "W7", f"send -> recv: change queries, {count:,} messages", "queries",
                          done["queries"]))  # fmt: skip

    idle, window, settle = ctx.size("w7_idle"), ctx.sizes["w7_window"], ctx.sizes["w7_settle"]
    path = ctx.db("w7-idle")
    with child("idle-receivers", path, idle, window, settle, ctx.durability) as receivers:
        measured = json.loads(expect_line(receivers, "idle"))
        recheck, quiet = measured["recheck"], measured["window"]
        with litedur.Client(path) as client:
            started = time.monotonic_ns()
            for i in range(idle):
                client.send(f"idle-{i}", i)
            sent = time.monotonic_ns()
        finished = json.loads(expect_line(receivers, "finished"))
        reap(receivers)
    blocked = f"{idle:,} waiting in recv"
    return [
        *figures,
        Figure("w7.recheck", "W7", f"{blocked}: watcher's first re-read: CPU", "ms",
               recheck["cpu"] * 1000),
        Figure("w7.recheck.wakeups", "W7", f"{blocked}: watcher's first re-read: wake-ups", "wake-ups",
               recheck["wakeups"]),
        Figure("w7.idle", "W7", f"{blocked}, then {window:g} s without messages: CPU", "% of a core",
               quiet["cpu"], target=Target("<=", 1.0)),
        Figure("w7.idle.queries", "W7", f"{blocked}, {window:g} s: change queries", "queries", quiet["queries"]),
        Figure("w7.idle.wakeups", "W7", f"{blocked}, {window:g} s: wake-ups (any thread)", "wake-ups",
               quiet["wakeups"]),
        Figure("w7.sends", "W7", f"{blocked}: sending one message each", "ms",
               (sent - started) / 1e6),
        Figure("w7.drain", "W7", f"{blocked}: first send -> all finished", "ms",
               (finished["at"] - started) / 1e6),
        Figure("w7.rss", "W7", f"{blocked}: peak RSS of their process", "MiB", finished["rss"]),
    ]  # fmt: skip


def role_queue_worker(path: str, durability: str) -> None:
    """Child: declare the queue "w8" (no limits) and a workflow whose body returns ``time.monotonic_ns()``
    at once; say "ready", run what is enqueued until told to stop."""
    app = engine(path, durability)
    app.queue("w8")

    @app.workflow(name="bench.stamp")
    def stamp() -> int:
        return time.monotonic_ns()

    with app:
        print("ready", flush=True)
        sys.stdin.readline()


def enqueue_latencies(path: str, count: int) -> list[int]:
    """Enqueue ``count`` workflows one at a time from a Client (this process) into the queue-worker's
    queue, each `GAP` after the previous one ended (so its dispatcher is back in its wait): ns from just
    before each enqueue to the start of its body in the worker."""
    latencies = []
    with litedur.Client(path) as client:
        for _ in range(count):
            time.sleep(GAP)
            stamp = time.monotonic_ns()
            handle = client.enqueue("w8", "bench.stamp")
            latencies.append(handle.get_result(timeout=60) - stamp)
    return latencies


def role_async_waiters(path: str, count: str, durability: str) -> None:
    """Child: ``count`` ``async def`` workflows ("waiter-<i>") that each await ``recv_async(timeout=600)``,
    started from this thread on an engine with the default pool. Once all wait, say "waiting <JSON>" (the
    time to start them all); then "finished <JSON>" once each received its message and ended: the time
    (monotonic ns), the most threads alive at once, the peak RSS, and the peak RSS before they started."""
    n = int(count)
    app = engine(path, durability)
    waiting = [0]
    all_waiting = threading.Event()

    @app.workflow(name="bench.async_waiter")
    async def waiter() -> object:
        waiting[0] += 1  # on the engine's loop: no race; the await below waits before the loop goes on
        if waiting[0] == n:
            all_waiting.set()
        return await app.recv_async(timeout=600)

    async def nothing() -> None:
        pass

    threads, stop = [0], threading.Event()

    def count_threads() -> None:  # the most threads alive at once, this one not counted
        while True:
            threads[0] = max(threads[0], threading.active_count() - 1)
            if stop.wait(0.005):
                return

    sampler = threading.Thread(target=count_threads, name="bench-threads", daemon=True)
    with app:
        rss_before = peak_rss_mib()
        sampler.start()
        started = time.perf_counter()
        handles = []
        for i in range(n):
            with litedur.SetWorkflowID(f"waiter-{i}"):
                handles.append(app.start_workflow(waiter))
        if not all_waiting.wait(120):
            raise RuntimeError(f"{waiting[0]} of {n} workflows reached recv_async within 120 s")
        app._runner.submit(nothing()).result(60)  # the loop had a turn: the last one waits too
        start_s = time.perf_counter() - started
        print(f"waiting {json.dumps({'start': start_s})}", flush=True)
        for i, handle in enumerate(handles):
            if handle.get_result(timeout=120) != i:
                raise RuntimeError(f"{handle.workflow_id} received another message than {i}")
        finished = time.monotonic_ns()
        stop.set()
        sampler.join()
    result = {"at": finished, "threads": threads[0], "rss": peak_rss_mib(), "rss_before": rss_before}
    print(f"finished {json.dumps(result)}", flush=True)


def w8(ctx: Context) -> list[Figure]:
    count = ctx.size("w8_latency")
    path = ctx.db("w8-enqueue")
    with child("queue-worker", path, ctx.durability) as worker:
        expect_line(worker, "ready")
        latencies = enqueue_latencies(path, count)
        send_go(worker)
        reap(worker)
    figures = latency_figures("W8", "w8.enqueue", "enqueue -> start, cross-process", (latencies, None),
                              {"p50": Target("<=", 2.0)} if ctx.normal else None)  # fmt: skip

    normal, durability = ctx.normal, ctx.durability
    n, n_async = ctx.size("w8_queue"), ctx.size("w8_async")
    started_rate = one_step_rate(ctx.db("w8-start"), durability, n)
    queued_rate = one_step_rate(ctx.db("w8-queue"), durability, n, how="queue")
    async_rate = one_step_rate(ctx.db("w8-async"), durability, n_async, how="async")
    commits = f"raw.{durability}"
    figures += [
        Figure("w8.start", "W8", f"W4 again: {n:,} one-step workflows ({durability})",
               "workflows/s", started_rate, vs=commits, short="W4 of this round",
               target=Target(">=", 0.15, ratio=True) if normal else None),
        Figure("w8.queue", "W8", f"{n:,} one-step workflows via a queue, concurrency=8",
               "workflows/s", queued_rate, vs="w8.start", target=Target(">=", 0.5, ratio=True, of="W4")),
        Figure("w8.async", "W8", f"W4 async: {n_async:,} async one-step workflows ({durability})",
               "workflows/s", async_rate, vs=commits, target=Target(">=", 0.15, ratio=True) if normal else None),
    ]  # fmt: skip

    waiters = ctx.size("w8_waiters")
    path = ctx.db("w8-waiters")
    with child("async-waiters", path, waiters, durability) as child_process:
        waiting = json.loads(expect_line(child_process, "waiting"))
        with litedur.Client(path) as client:
            started = time.monotonic_ns()
            for i in range(waiters):
                client.send(f"waiter-{i}", i)
            sent = time.monotonic_ns()
        finished = json.loads(expect_line(child_process, "finished"))
        reap(child_process, timeout=120)
    blocked = f"{waiters:,} async in recv_async"
    per_workflow = (finished["rss"] - finished["rss_before"]) * 2**10 / waiters
    return [
        *figures,
        Figure("w8.waiters.start", "W8", f"{blocked}: starting them all", "ms", waiting["start"] * 1000),
        Figure("w8.waiters.sends", "W8", f"{blocked}: sending one message each", "ms", (sent - started) / 1e6),
        Figure("w8.waiters.drain", "W8", f"{blocked}: first send -> all finished", "ms",
               (finished["at"] - started) / 1e6),
        Figure("w8.waiters.threads", "W8", f"{blocked}: threads of their process (most)", "threads",
               finished["threads"]),
        Figure("w8.waiters.rss", "W8", f"{blocked}: peak RSS of their process", "MiB", finished["rss"]),
        Figure("w8.waiters.per", "W8", f"{blocked}: peak RSS growth per workflow", "KiB", per_workflow),
    ]  # fmt: skip


def best_wall(command: list[str], times: int) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def importtime_ms(times: int) -> float:
    """Cumulative import time of the litedur package (python -X importtime), best of ``times``."""
    best = float("inf")
    for _ in range(times):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import litedur"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        for line in result.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() == "litedur":
                best = min(best, int(parts[1]) / 1000)
    return best


def w_import(ctx: Context) -> list[Figure]:
    times = ctx.size("imports")
    python = sys.executable
    subprocess.run([python, "-c", "import litedur"], check=True)  # writes the .pyc files if they are stale
    wall = best_wall([python, "-c", "import litedur"], times) - best_wall([python, "-c", "pass"], times)
    script = Path(python).with_name("litedur")
    cli = best_wall([str(script), "--help"], times) * 1000 if script.exists() else None
    target = Target("<=", 60)
    return [
        Figure("import.importtime", "IMPORT", f"import litedur, -X importtime cumulative (best of {times})", "ms",
               importtime_ms(times), target=target),
        Figure("import.wall", "IMPORT", f"python -c 'import litedur' minus -c pass (best of {times})", "ms",
               wall * 1000, target=target),
        Figure("import.cli", "IMPORT", f"litedur --help, wall (best of {times})", "ms", cli),
    ]  # fmt: skip


RUNNERS: dict[str, Callable[[Context], list[Figure]]] = {
    "RAW": w_raw, "W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7, "W8": w8,
    "IMPORT": w_import,
}  # fmt: skip
ROLES: dict[str, Callable[..., None]] = {
    "paced-writer": role_paced_writer, "body-writer": role_body_writer, "raw-writer": role_raw_writer,
    "victim": role_victim, "recoverer": role_recoverer,
    "receiver": role_receiver, "raw-receiver": role_raw_receiver, "idle-receivers": role_idle_receivers,
    "queue-worker": role_queue_worker, "async-waiters": role_async_waiters,
}  # fmt: skip


# ---- the driver ---------------------------------------------------------------------------------


def machine() -> str:
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.system()} {platform.machine()}, nproc {nproc}, Python {platform.python_version()}, "
        f"SQLite {apsw.sqlite_lib_version()} (apsw {apsw.apsw_version()})"
    )


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "../litedur"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}{' + local changes to litedur/' if dirty else ''}"


def suite_parser(description: str, workloads: Sequence[str]) -> argparse.ArgumentParser:
    """The options every benchmark suite takes (--quick, --only, --repeat, --durability)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="one round at tiny sizes: checks the suite runs")
    parser.add_argument("--only", default="", help=f"comma-separated workloads among {','.join(workloads)}")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3, --quick 1)")
    parser.add_argument("--durability", choices=("normal", "full"), default="normal")
    return parser


def parse_suite_args(parser: argparse.ArgumentParser, argv: list[str], workloads: Sequence[str]) -> argparse.Namespace:
    """Parse a suite's command line: ``args.workloads`` the chosen ones (RAW always), ``args.repeat`` set."""
    args = parser.parse_args(argv)
    chosen = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(workloads))
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose among {', '.join(workloads)}")
    args.workloads = [w for w in workloads if w == "RAW" or not chosen or w in chosen]
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = suite_parser("litedur benchmark suite (issue 6)", WORKLOADS)
    parser.add_argument("--dir", default=None, help="where to create the databases (default: a temporary dir)")
    return parse_suite_args(parser, argv, WORKLOADS)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--role"]:
        ROLES[argv[1]](*argv[2:])
        return 0
    args = parse_args(argv)
    os.environ.pop("LITEDUR_WAIT", None)  # W2 sets it where it compares polling; nothing else may poll
    command = "python benchmarks/run.py " + " ".join(argv)
    load_before = load_average()
    root = Path(tempfile.mkdtemp(prefix="litedur-bench-", dir=args.dir))
    ctx = Context(SIZES["quick" if args.quick else "default"], args.durability, root)
    rows: dict[str, Row] = {}
    failures: dict[str, str] = {}
    started = time.monotonic()
    try:
        for round_number in range(1, args.repeat + 1):
            for workload in args.workloads:
                print(f"[round {round_number}/{args.repeat}] {workload} ...", file=sys.stderr, flush=True)
                gc.collect()
                try:
                    figures = RUNNERS[workload](ctx)
                except Exception as exc:
                    traceback.print_exc()
                    failures.setdefault(workload, f"{type(exc).__name__}: {exc}")
                    continue
                for f in figures:
                    row = rows.setdefault(f.key, Row(f.workload, f.label, f.unit, f.vs, f.target, f.short or f.label))
                    if f.value is not None:
                        row.samples.append(f.value)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started

    print(f"litedur benchmarks: {command.strip()}")
    print(f"machine: {machine()}; litedur {litedur.__version__} at {revision()}")
    print(f"load average (1, 5, 15 min): {load_before} before, {load_average()} after; {elapsed:.0f} s")
    print(f"{args.repeat} round(s); durability {args.durability}; ratio: median / median of the figure named")
    print(
        "targets: issue 6's, issue 3's, issue 11's and issue 12's; a throughput target is also shown as a ratio to "
        "raw, using the "
        f"{ISSUE_RAW_NORMAL:,} raw one-row commits/s that issue 6 measured when it set it"
    )
    print()
    lines = summary_lines(rows)
    for workload in args.workloads:
        if workload in failures:
            lines.append(f"{workload:<6} ERROR: {failures[workload]}")
    print("\n".join(lines))
    print()
    print(f"Machine: {machine()}. Load average before {load_before}. Command: `{command.strip()}`")
    print()
    print("\n".join(markdown(rows)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
