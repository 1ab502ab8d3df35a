"""Issue 12 item 4, the server figure: C SSE clients of one workflow stream through ``litedur serve``.

    python benchmarks/serve.py [--clients 1000] [--values 1000] [--rate 200] [--stream workflow|standalone]
                               [--dir DIR] [--py-spy] [--server-script SCRIPT]

Each trial gets a fresh directory and database, and:

1. starts ``litedur --db DB serve --create --port 0`` as a child process (the port it printed is the one
   used) and waits until it answers HTTP;
2. starts a writer child process (this script with a hidden ``--role writer``): an Engine whose workflow,
   of a known id, signals it is running, then waits for a gate file; once the gate exists it writes
   ``--values`` values ``{"i": i, "t": time.time()}`` to one stream key from the workflow body at a steady
   ``--rate`` (each write a committed checkpoint when the call returns), then closes the stream. With
   ``--stream standalone`` the writer instead creates a standalone JSON stream through the server (PUT) and
   appends each value with a POST (answered after its commit), then closes it with ``Stream-Closed``;
3. meanwhile opens C SSE connections (``GET /v1/stream/workflows/<id>/<key>?offset=-1&live=sse``, or the
   standalone stream's) from this process, on raw sockets in one asyncio loop, and waits until every one has
   had its first control event (``upToDate``): all connected and waiting before the first write;
4. opens the gate and records, per client, the time every piece of its response arrived (``time.time()``
   in ``data_received``). The responses are decoded (chunked transfer encoding, SSE events, the JSON array
   of a ``data`` event) after the run, so the receive loop does little more than timestamp bytes; a
   response that ends before the stream's ``streamClosed`` (the server's SSE lifetime) is decoded at once
   and reopened from its last ``streamNextOffset``, as the protocol's clients do.

Reported per trial: how many clients got every value exactly once and in order (and what went wrong with
the others); write->client latency, p50/p99/max over every (client, value) pair, the writer's timestamp
taken just before the write (so it includes the commit) against the client's receive time, both
``time.time()`` on this machine; the time until the last client had each value; the server process's
CPU (utime+stime from /proc/<pid>/stat) over the delivery window per value and per value per client, its
peak thread count (sampled every 50 ms) and peak RSS (VmHWM); this process's own CPU over the same window;
and the machine's busy CPU (other processes share it). The client side is one Python process on one
thread: with many clients its CPU may bound the figures, so it is printed. ``--dir`` keeps each trial's
files: the logs, ``latency.json`` (per value: min/p50/max latency over the clients) and, for the first
clients that missed values, every byte the server sent them.

The trial runs once with one client (the baseline: server CPU per value for one reader), then with
``--clients``; the ratio of the two server CPU figures per value is printed, then the figures as Markdown.
Exit status: 0 when the trials ran (whatever the figures), 1 when one could not run (the server or the
writer failed to start or to finish, or the server ended during a trial).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
WORKFLOW_ID = "serve-bench"
KEY = "values"
STANDALONE = "/v1/stream/serve-bench"  # the standalone stream of ``--stream standalone``
CONNECT_PARALLEL = 100  # connections being opened at once
READY_TIMEOUT = 120.0  # s for every client to be connected and waiting
MAX_RECONNECTS = 50  # per client: a response ending early (SSE lifetime, reset) is reopened this often at most
CLK_TCK = os.sysconf("SC_CLK_TCK")


class RunFailed(Exception):
    """The trial could not run (server or writer failed): the benchmark exits 1."""


# ---- the writer process ---------------------------------------------------------------------------


def role_writer(path: str, count: str, rate: str, gate: str, ready: str, out: str) -> None:
    """Child: the workflow writes ``count`` values at ``rate``/s once ``gate`` exists, then closes the stream.
    ``out`` gets, per value, the seconds from the stamp taken before the write to the write's return."""
    import litedur

    app = litedur.Engine(path)
    took: list[float] = []
    stamps: list[float] = []

    @app.workflow(name="bench.serve_writer")
    def serve_writer(n: int, every: float) -> int:
        Path(ready).touch()  # the workflow's row is committed: readers can open its stream
        while not os.path.exists(gate):
            time.sleep(0.0005)
        start = time.monotonic()
        for i in range(n):
            delay = start + i * every - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = time.time()
            app.write_stream(KEY, {"i": i, "t": stamp})
            took.append(time.time() - stamp)
            stamps.append(stamp)
        app.close_stream(KEY)
        return n

    with app, litedur.SetWorkflowID(WORKFLOW_ID):
        serve_writer(int(count), 1.0 / float(rate))
    Path(out).write_text(json.dumps({"commit_s": took, "write_s": stamps[-1] - stamps[0] if stamps else 0.0}))


def role_http_writer(address: str, count: str, rate: str, gate: str, ready: str, out: str) -> None:
    """Child: creates the standalone JSON stream at ``address`` (host:port), appends ``count`` values at
    ``rate``/s with POSTs once ``gate`` exists, then closes the stream; ``out`` as for `role_writer`."""
    import http.client

    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def send(body: bytes, method: str = "POST", **headers: str) -> None:
        connection.request(method, STANDALONE, body=body, headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {STANDALONE}: HTTP {response.status}")

    send(b"", "PUT")
    Path(ready).touch()
    while not os.path.exists(gate):
        time.sleep(0.0005)
    took: list[float] = []
    stamps: list[float] = []
    every, start = 1.0 / float(rate), time.monotonic()
    for i in range(int(count)):
        delay = start + i * every - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stamp = time.time()
        send(json.dumps({"i": i, "t": stamp}).encode())
        took.append(time.time() - stamp)
        stamps.append(stamp)
    send(b"", **{"Stream-Closed": "true"})
    Path(out).write_text(json.dumps({"commit_s": took, "write_s": stamps[-1] - stamps[0] if stamps else 0.0}))


# ---- /proc ------------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """Threads, VmRSS and VmHWM (kB) of a process."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("Threads", "VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy (every core; /proc/stat, all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sampler(threading.Thread):
    """Samples a process's thread count and RSS every ``every`` seconds; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pid, self.every = pid, every
        self.max_threads = 0
        self.max_rss_kb = 0
        self.stop = threading.Event()

    def reset(self) -> None:
        self.max_threads = self.max_rss_kb = 0

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                status = proc_status(self.pid)
                self.max_threads = max(self.max_threads, status.get("Threads", 0))
                self.max_rss_kb = max(self.max_rss_kb, status.get("VmRSS", 0))
            self.stop.wait(self.every)


# ---- the SSE clients ----------------------------------------------------------------------------------


@dataclass
class Parsed:
    status: int | None = None  # None: no complete response head
    error_body: bytes = b""
    values: list[tuple[int, float, float]] = field(default_factory=list)  # (i, write stamp, receive time)
    data_events: int = 0
    offset: str | None = None  # the last control event's streamNextOffset
    closed: bool = False  # a control event said streamClosed
    finished: bool = False  # the terminating zero-size chunk came
    bad: str | None = None  # what could not be decoded


def parse_response(segments: list[tuple[float, bytes]], values: bool = True) -> Parsed:
    """Decode one SSE response from its received pieces ``(time, bytes)``. An event's time is that of the
    piece holding the last byte of the chunk that completed it. ``values=False`` skips the data events'
    values (counted, not decoded): enough to learn where to resume."""
    out = Parsed()
    raw = b"".join(data for _, data in segments)
    ends = list(accumulate(len(data) for _, data in segments))
    times = [t for t, _ in segments]
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return out
    lines = raw[:head_end].decode("latin-1").split("\r\n")
    try:
        out.status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        out.bad = f"malformed status line {lines[0][:80]!r}"
        return out
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if out.status != 200 or "chunked" not in headers.get("transfer-encoding", "").lower():
        out.error_body = raw[head_end + 4 : head_end + 300]
        if out.status == 200:
            out.bad = "a 200 response that is not chunked"
        return out
    pos, pending = head_end + 4, b""
    while True:
        line_end = raw.find(b"\r\n", pos)
        if line_end < 0:
            break
        try:
            size = int(raw[pos:line_end].split(b";")[0], 16)
        except ValueError:
            out.bad = f"malformed chunk size {raw[pos:line_end][:40]!r}"
            break
        if size == 0:
            out.finished = True
            break
        start, end = line_end + 2, line_end + 2 + size
        if end + 2 > len(raw):
            break  # cut off
        at = times[bisect.bisect_left(ends, end)]
        pending += raw[start:end]
        pos = end + 2
        while (cut := pending.find(b"\n\n")) >= 0:
            block, pending = pending[:cut], pending[cut + 2 :]
            try:
                _event(out, block, at, values)
            except (ValueError, KeyError, TypeError) as exc:
                out.bad = f"undecodable event {block[:80]!r}: {exc}"
                return out
    return out


def _event(out: Parsed, block: bytes, at: float, values: bool = True) -> None:
    kind, data = "message", []
    for line in block.split(b"\n"):
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"event":
            kind = value.decode()
        elif name == b"data":
            data.append(value)
    if not data:
        return
    text = b"\n".join(data)
    if kind == "data":
        out.data_events += 1
        for value in json.loads(text) if values else ():
            out.values.append((value["i"], value["t"], at))
    elif kind == "control":
        control = json.loads(text)
        out.offset = control["streamNextOffset"]
        out.closed = out.closed or bool(control.get("streamClosed"))


class Reader:
    """One SSE client: its connections (one, or more if a response ends early) and what they brought."""

    def __init__(self, bench: Clients, index: int) -> None:
        self.bench, self.index = bench, index
        self.values: list[tuple[int, float, float]] = []
        self.offset = "-1"
        self.closed = False
        self.ready = False  # had its first control event: connected and waiting
        self.reconnects = 0
        self.data_events = 0
        self.errors: list[str] = []
        self.responses: list[list[tuple[float, bytes]]] = []  # each response's pieces, as received
        self.done = asyncio.get_running_loop().create_future()

    def request(self) -> bytes:
        path = f"{self.bench.path}?offset={self.offset}&live=sse"
        host = f"{self.bench.host}:{self.bench.port}"
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Connection(self), self.bench.host, self.bench.port)
        except OSError as exc:
            self.finish(f"connect: {type(exc).__name__}: {exc.strerror or exc}")

    def connection_ended(self, connection: Connection, exc: Exception | None) -> None:
        """A response ended: done if it ended with the stream's close (it is decoded after the run), else
        its control events are decoded now for its last offset (its values after the run, so that 1,000
        responses ending together at the SSE lifetime do not hold up this loop), and the client
        reconnects from there."""
        self.responses.append(connection.segments)
        end = b"".join(data for _, data in connection.segments[-4:])[-2048:]
        if end.endswith(b"0\r\n\r\n") and b'"streamClosed":true' in end:
            return self.finish(None)
        started = time.thread_time()
        parsed = parse_response(connection.segments, values=False)
        self.bench.early_parse_cpu += time.thread_time() - started
        if parsed.offset is not None:
            self.offset = parsed.offset
        if parsed.bad:
            return self.finish(f"bad response: {parsed.bad}")
        if parsed.status is None:
            ended = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
            return self.retry(f"no response head ({ended})")
        if parsed.status != 200:
            return self.finish(f"HTTP {parsed.status}: {parsed.error_body[:120]!r}")
        if parsed.closed:
            return self.finish(None)
        self.retry(f"{type(exc).__name__}: {exc}" if exc else "response ended before streamClosed")

    def retry(self, why: str) -> None:
        if self.reconnects >= MAX_RECONNECTS or self.bench.stopping:
            return self.finish(f"{why} (gave up after {self.reconnects} reconnects)")
        self.reconnects += 1
        self.bench.endings[why] += 1
        asyncio.get_running_loop().create_task(self.connect())

    def decode(self) -> None:
        """Decode every response received, in order (after the run: it costs no receive time)."""
        for segments in self.responses:
            parsed = parse_response(segments)
            self.values.extend(parsed.values)
            self.data_events += parsed.data_events
            self.closed = self.closed or parsed.closed
            if parsed.bad and not self.errors:
                self.errors.append(f"bad response: {parsed.bad}")

    def finish(self, error: str | None) -> None:
        if error is not None:
            self.errors.append(error)
        if not self.done.done():
            self.done.set_result(None)
        self.mark_ready()  # a client that failed does not hold up the start

    def mark_ready(self) -> None:
        if not self.ready:
            self.ready = True
            self.bench.ready_count += 1
            if self.bench.ready_count == len(self.bench.readers):
                self.bench.all_ready.set()


class Connection(asyncio.Protocol):
    """One HTTP connection: sends the request, timestamps what comes, hands it over when it ends."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.segments: list[tuple[float, bytes]] = []
        self.ready_seen = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.reader.bench.open.add(self)
        transport.write(self.reader.request())

    def data_received(self, data: bytes) -> None:
        self.segments.append((time.time(), data))
        if not self.ready_seen and b"upToDate" in b"".join(piece for _, piece in self.segments):
            self.ready_seen = True
            self.reader.mark_ready()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reader.bench.open.discard(self)
        self.reader.connection_ended(self, exc)


class Clients:
    """Every SSE client of a trial, in this process's event loop."""

    def __init__(self, host: str, port: int, count: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.ready_count = 0
        self.all_ready = asyncio.Event()
        self.open: set[Connection] = set()
        self.stopping = False
        self.early_parse_cpu = 0.0  # thread CPU spent decoding responses that ended early, to reconnect
        self.endings: collections.Counter[str] = collections.Counter()  # why responses ended early
        self.readers = [Reader(self, index) for index in range(count)]

    async def connect_all(self) -> None:
        limit = asyncio.Semaphore(CONNECT_PARALLEL)

        async def one(reader: Reader) -> None:
            async with limit:
                await reader.connect()

        await asyncio.gather(*(one(reader) for reader in self.readers))

    def abort(self) -> None:
        self.stopping = True
        for connection in list(self.open):
            if connection.transport is not None:
                connection.transport.abort()


# ---- one trial ----------------------------------------------------------------------------------------


@dataclass
class Trial:
    clients: int
    values: int
    rate: float
    stream: str  # "workflow" or "standalone"
    complete: int = 0  # clients that got every value exactly once, in order, and the close
    problems: collections.Counter[str] = field(default_factory=collections.Counter)
    endings: collections.Counter[str] = field(default_factory=collections.Counter)
    missing: list[tuple[int, list[int]]] = field(default_factory=list)  # (client, first missing values)
    reconnects: int = 0
    data_events: int = 0  # SSE data events received, all clients
    delivered: int = 0  # (client, value) pairs received
    latencies: list[float] = field(default_factory=list)  # sorted, s
    spread: list[float] = field(default_factory=list)  # per value: until the last client had it, sorted, s
    connect_s: float = 0.0  # until every client was connected and waiting
    ready: int = 0
    idle_s: float = 0.0
    idle_cpu_s: float = 0.0  # server CPU while every client waited and nothing was written
    connect_cpu_s: float = 0.0  # server CPU while the clients connected
    window_s: float = 0.0  # gate opened -> every client done
    server_cpu_s: float = 0.0  # over the window
    client_cpu_s: float = 0.0  # this process, over the window
    machine_cpu_s: float = 0.0  # every process of the machine, over the window
    load: str = ""  # load averages at the end of the window
    early_parse_cpu_s: float = 0.0  # of which decoding responses that ended early (to reconnect)
    decode_s: float = 0.0  # decoding every response, after the window
    threads_idle: int = 0
    threads_max: int = 0
    rss_max_kb: int = 0
    hwm_kb: int = 0
    commit: list[float] = field(default_factory=list)  # writer: stamp -> write returned, sorted, s
    write_s: float = 0.0  # writer: first stamp -> last stamp
    server_log_errors: list[str] = field(default_factory=list)
    server_exit: int | None = None  # the server's exit status if it ended during the trial
    py_spy: str | None = None

    @property
    def cpu_per_value_ms(self) -> float:
        return self.server_cpu_s / self.values * 1000

    @property
    def cpu_per_value_client_us(self) -> float:
        return self.server_cpu_s / (self.values * self.clients) * 1e6


def start_server(folder: Path, db: Path, script: str | None) -> tuple[subprocess.Popen[str], str, int]:
    """``litedur serve`` on a free loopback port; returns once it answers HTTP."""
    log = open(folder / "server.log", "w")  # noqa: SIM115 - the child writes to it until it ends
    program = [script] if script else ["-m", "litedur"]
    command = [sys.executable, *program, "--db", str(db), "serve", "--create", "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    if not url.startswith("http://"):
        server.kill()
        raise RunFailed(f"`{' '.join(command)}` printed {url!r}, not its URL; log: {tail(folder / 'server.log')}")
    host, _, port = url[len("http://") :].rpartition(":")
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2) as probe:
                probe.sendall(f"HEAD /v1/stream/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                if probe.recv(64).startswith(b"HTTP/1.1 "):
                    return server, host, int(port)
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RunFailed(f"the server at {url} does not answer; log: {tail(folder / 'server.log')}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_trial(folder: Path, trial: Trial, py_spy: bool, script: str | None) -> Trial:
    folder.mkdir(parents=True)
    db, gate, ready, out = folder / "bench.db", folder / "gate", folder / "ready", folder / "writer.json"
    server, host, port = start_server(folder, db, script)
    writer = None
    try:
        role, target = ("http-writer", f"{host}:{port}") if trial.stream == "standalone" else ("writer", str(db))
        command = [sys.executable, str(HERE), "--role", role, target, str(trial.values), str(trial.rate),
                   str(gate), str(ready), str(out)]  # fmt: skip
        writer = subprocess.Popen(command, stderr=open(folder / "writer.log", "w"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while not ready.exists():
            if writer.poll() is not None or time.monotonic() > deadline:
                raise RunFailed(f"the writer did not start; log: {tail(folder / 'writer.log')}")
            time.sleep(0.01)
        sampler = Sampler(server.pid)
        sampler.start()
        try:
            asyncio.run(drive(trial, folder, server, writer, sampler, host, port, py_spy))
        finally:
            sampler.stop.set()
        trial.server_exit = server.poll()
        try:
            writer.wait(30)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"the writer did not finish; log: {tail(folder / 'writer.log')}") from None
        if writer.returncode != 0 or not out.exists():
            raise RunFailed(f"the writer failed (exit {writer.returncode}); log: {tail(folder / 'writer.log')}")
        written = json.loads(out.read_text())
        trial.commit, trial.write_s = sorted(written["commit_s"]), written["write_s"]
    finally:
        if writer is not None:
            stop(writer)
        stop(server)
    log = (folder / "server.log").read_text(errors="replace").splitlines()
    trial.server_log_errors = [line for line in log if "Traceback" in line or "ERROR" in line or "Error" in line]
    return trial


async def drive(trial: Trial, folder: Path, server: subprocess.Popen[str], writer: subprocess.Popen[bytes],
                sampler: Sampler, host: str, port: int, py_spy: bool) -> None:  # fmt: skip
    pid = server.pid
    path = STANDALONE if trial.stream == "standalone" else f"/v1/stream/workflows/{WORKFLOW_ID}/{KEY}"
    bench = Clients(host, port, trial.clients, path)
    cpu0, began = proc_cpu(pid), time.monotonic()
    connecting = asyncio.ensure_future(bench.connect_all())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(bench.all_ready.wait(), READY_TIMEOUT)
    await connecting
    trial.connect_s, trial.connect_cpu_s = time.monotonic() - began, proc_cpu(pid) - cpu0
    trial.ready = sum(1 for reader in bench.readers if reader.ready and not reader.errors)
    # Idle: everyone waits, nothing written yet.
    cpu0, began = proc_cpu(pid), time.monotonic()
    await asyncio.sleep(1.0)
    trial.idle_s, trial.idle_cpu_s = time.monotonic() - began, proc_cpu(pid) - cpu0
    trial.threads_idle = proc_status(pid).get("Threads", 0)
    # Delivery: open the gate, wait until every client is done.
    sampler.reset()
    mine0, cpu0, parse0, machine0 = self_cpu(), proc_cpu(pid), bench.early_parse_cpu, machine_busy()
    began = time.monotonic()
    gate = folder / "gate"
    gate.touch()
    budget = trial.values / trial.rate * 3 + 60
    spy = asyncio.ensure_future(spy_later(pid, trial, folder, trial.values / trial.rate / 2)) if py_spy else None
    done = asyncio.gather(*(reader.done for reader in bench.readers))
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(done), budget)
    trial.window_s = time.monotonic() - began
    trial.server_cpu_s, trial.client_cpu_s = proc_cpu(pid) - cpu0, self_cpu() - mine0
    trial.machine_cpu_s = machine_busy() - machine0
    trial.load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    trial.threads_max, trial.rss_max_kb = sampler.max_threads, sampler.max_rss_kb
    trial.hwm_kb = proc_status(pid).get("VmHWM", 0)
    if spy is not None:
        await spy
    if not done.done():
        bench.abort()  # the unfinished clients are counted as such
        await asyncio.sleep(0.5)
        for reader in bench.readers:
            if not reader.done.done():
                reader.finish("not done when the run's time ran out")
    trial.early_parse_cpu_s = bench.early_parse_cpu - parse0
    started = time.monotonic()
    for reader in bench.readers:
        reader.decode()
    trial.decode_s = time.monotonic() - started
    summarize(trial, bench, folder)


async def spy_later(pid: int, trial: Trial, folder: Path, delay: float) -> None:
    """``py-spy dump`` of the server half-way through the writes (it pauses the server for a moment)."""
    await asyncio.sleep(delay)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        trial.py_spy = "py-spy not found"
        return
    target = folder / "py-spy-dump.txt"
    with open(target, "wb") as output:
        process = await asyncio.create_subprocess_exec(spy, "dump", "--pid", str(pid), stdout=output,
                                                       stderr=asyncio.subprocess.STDOUT)  # fmt: skip
        await process.wait()
    trial.py_spy = str(target)


def summarize(trial: Trial, bench: Clients, folder: Path) -> None:
    """Delivery and latency figures; per value, its latency over the clients goes to ``latency.json``."""
    expected = list(range(trial.values))
    latencies: list[float] = []
    last: dict[int, float] = {}
    per_value: dict[int, list[float]] = collections.defaultdict(list)
    for reader in bench.readers:
        got = [i for i, _, _ in reader.values]
        trial.reconnects += reader.reconnects
        trial.data_events += reader.data_events
        trial.delivered += len(got)
        for i, stamp, at in reader.values:
            latencies.append(at - stamp)
            per_value[i].append(at - stamp)
            if at - stamp > last.get(i, float("-inf")):
                last[i] = at - stamp
        if got == expected and reader.closed and not reader.errors:
            trial.complete += 1
            continue
        if reader.errors:
            trial.problems[f"error: {reader.errors[-1]}"] += 1
        distinct = set(got)
        if len(distinct) < len(got):
            trial.problems["duplicate values"] += 1
        if got != sorted(got):
            trial.problems["values out of order"] += 1
        missing = sorted(set(expected) - distinct)
        if missing:
            trial.problems[f"missing values (got {len(distinct)} of {trial.values})"] += 1
            trial.missing.append((reader.index, missing[:10]))
            if len(trial.missing) <= 5:  # the evidence: what the server sent that client
                raw = [b"".join(data for _, data in segments) for segments in reader.responses]
                (folder / f"client-{reader.index}-responses.txt").write_bytes(b"\n\n=====\n\n".join(raw))
        if not reader.closed:
            trial.problems["never saw streamClosed"] += 1
    trial.endings = bench.endings
    latencies.sort()
    trial.latencies = latencies
    trial.spread = sorted(last.values())
    rows = {}
    for i, seen in sorted(per_value.items()):
        seen.sort()
        rows[i] = [round(seen[0] * 1000, 3), round(pct(seen, 0.5) * 1000, 3), round(seen[-1] * 1000, 3), len(seen)]
    (folder / "latency.json").write_text(json.dumps({"per_value_ms_min_p50_max_clients": rows}))


# ---- report ---------------------------------------------------------------------------------------------


def pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(trial: Trial) -> None:
    c, n = trial.clients, trial.values
    print(f"\n== {c} SSE client{'s' if c != 1 else ''} of a {trial.stream} stream, {n} values at {trial.rate:g}/s ==")
    print(f"  connect: {trial.ready}/{c} connected and waiting in {trial.connect_s:.2f} s "
          f"(server CPU {trial.connect_cpu_s:.2f} s); idle {trial.idle_s:.1f} s with all waiting: "
          f"server CPU {trial.idle_cpu_s * 1000:.0f} ms, {trial.threads_idle} threads")  # fmt: skip
    per_event = trial.delivered / max(1, trial.data_events)
    print(f"  delivery: {trial.complete}/{c} clients got every value exactly once, in order, and the close; "
          f"{trial.delivered}/{c * n} (client, value) pairs received in {trial.data_events} SSE data events "
          f"({per_event:.2f} values per event); {trial.reconnects} reconnects")  # fmt: skip
    for problem, count in trial.problems.most_common():
        print(f"    {count} client(s): {problem}")
    if trial.missing:
        shown = "; ".join(f"client {index}: {values}" for index, values in trial.missing[:10])
        print(f"    values missing (first clients, first values): {shown}")
    for why, count in trial.endings.most_common():
        print(f"    {count} response(s) ended early: {why}")
    lat = trial.latencies
    print(f"  write->client latency over {len(lat)} pairs: p50 {ms(pct(lat, 0.5))}, p99 {ms(pct(lat, 0.99))}, "
          f"max {ms(lat[-1] if lat else float('nan'))}")  # fmt: skip
    spread = trial.spread
    print(f"  write->last client, per value: p50 {ms(pct(spread, 0.5))}, p99 {ms(pct(spread, 0.99))}, "
          f"max {ms(spread[-1] if spread else float('nan'))}")  # fmt: skip
    print(f"  writer: wrote for {trial.write_s:.2f} s; stamp->write returned (commit) p50 "
          f"{ms(pct(trial.commit, 0.5))}, p99 {ms(pct(trial.commit, 0.99))}")  # fmt: skip
    print(f"  server: CPU {trial.server_cpu_s:.2f} s over {trial.window_s:.2f} s "
          f"({trial.server_cpu_s / trial.window_s * 100 if trial.window_s else 0:.0f}% of one core): "
          f"{trial.cpu_per_value_ms:.3f} ms per value, {trial.cpu_per_value_client_us:.1f} us per value per client; "
          f"threads max {trial.threads_max}; RSS max {trial.rss_max_kb / 1024:.0f} MB, "
          f"VmHWM {trial.hwm_kb / 1024:.0f} MB")  # fmt: skip
    print(f"  this (client) process: CPU {trial.client_cpu_s:.2f} s over the window "
          f"({trial.client_cpu_s / trial.window_s * 100 if trial.window_s else 0:.0f}% of one core, "
          f"{trial.early_parse_cpu_s:.2f} s of it decoding responses that ended early); responses decoded after "
          f"the window in {trial.decode_s:.2f} s")  # fmt: skip
    others = trial.machine_cpu_s - trial.server_cpu_s - trial.client_cpu_s
    print(f"  machine: {trial.machine_cpu_s / trial.window_s if trial.window_s else 0:.2f} cores busy over the window, "
          f"{others / trial.window_s if trial.window_s else 0:.2f} of them neither server nor client (the writer, "
          f"other processes); load average {trial.load}")  # fmt: skip
    if trial.server_exit is not None:
        print(f"  THE SERVER ENDED during the trial, exit status {trial.server_exit}")
    if trial.server_log_errors:
        print(f"  server log: {len(trial.server_log_errors)} error line(s), first: {trial.server_log_errors[0][:200]}")
    if trial.py_spy:
        print(f"  py-spy dump of the server half-way: {trial.py_spy}")


def markdown(trials: list[Trial]) -> None:
    print("\n| clients | values @ rate | complete | p50 | p99 | max | last client p99 | server CPU/value | "
          "per value per client | server threads | server VmHWM | client CPU |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in trials:
        lat = t.latencies
        print(f"| {t.clients} | {t.values} @ {t.rate:g}/s | {t.complete}/{t.clients} | {ms(pct(lat, 0.5))} | "
              f"{ms(pct(lat, 0.99))} | {ms(lat[-1] if lat else float('nan'))} | {ms(pct(t.spread, 0.99))} | "
              f"{t.cpu_per_value_ms:.3f} ms | {t.cpu_per_value_client_us:.1f} us | {t.threads_max} | "
              f"{t.hwm_kb / 1024:.0f} MB | {t.client_cpu_s:.2f} s / {t.window_s:.2f} s |")  # fmt: skip


def code_version() -> str:
    """The litedur measured: its git revision, and a digest of its sources (the tree may hold changes)."""
    import hashlib

    import litedur

    package = Path(litedur.__file__).parent
    digest = hashlib.sha256()
    for source in sorted(package.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    revision = "unknown revision"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        revision = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, check=True).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--", "."], capture_output=True,
                                 text=True, check=True).stdout.strip()  # fmt: skip
        revision += " with uncommitted changes" if changed else ""
    return f"{package} at {revision}, sources sha256 {digest.hexdigest()[:12]}"


def raise_fd_limit(clients: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = clients + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            print(f"warning: the fd limit is {new} (hard), fewer than {want} for {clients} clients", file=sys.stderr)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        (role_http_writer if sys.argv[2] == "http-writer" else role_writer)(*sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="SSE clients of the main trial (default 1000)")
    parser.add_argument("--values", type=int, default=1000, help="values written (default 1000)")
    parser.add_argument("--rate", type=float, default=200.0, help="values written per second (default 200)")
    parser.add_argument("--stream", choices=("workflow", "standalone"), default="workflow",
                        help="a workflow's stream (default), or a standalone stream appended to over HTTP")  # fmt: skip
    parser.add_argument("--dir", help="where the trials' directories go (default: a temporary one, removed)")
    parser.add_argument("--py-spy", action="store_true", help="py-spy dump the server half-way through each trial")
    parser.add_argument("--server-script", help="a Python script to run instead of `python -m litedur` (same "
                        "arguments), e.g. one that instruments the server, then calls litedur.cli.main()")  # fmt: skip
    args = parser.parse_args()
    if args.clients < 1 or args.values < 1 or args.rate <= 0:
        parser.error("--clients and --values must be >= 1, --rate > 0")
    raise_fd_limit(args.clients)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="litedur-serve-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    run = base / time.strftime("run-%Y%m%d-%H%M%S")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"litedur serve SSE fan-out: {platform.system()} {platform.machine()}, nproc {nproc}, "
          f"Python {platform.python_version()}; files in {run}")  # fmt: skip
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"litedur: {code_version()}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    trials: list[Trial] = []
    try:
        for clients in dict.fromkeys([1, args.clients]):
            folder = run / f"clients-{clients}"
            trial = run_trial(folder, Trial(clients, args.values, args.rate, args.stream), args.py_spy,
                              args.server_script)  # fmt: skip
            report(trial)
            trials.append(trial)
    except RunFailed as exc:
        print(f"\nthe run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    if len(trials) == 2:
        one, many = trials
        ratio = many.cpu_per_value_ms / one.cpu_per_value_ms if one.server_cpu_s else float("nan")
        print(f"\nserver CPU per value: {many.cpu_per_value_ms:.3f} ms with {many.clients} clients vs "
              f"{one.cpu_per_value_ms:.3f} ms with 1 = {ratio:.1f}x "
              f"({many.cpu_per_value_client_us / one.cpu_per_value_client_us if one.server_cpu_s else 0:.3f}x "
              f"per value per client)")  # fmt: skip
    markdown(trials)
    if any(trial.server_exit is not None for trial in trials):
        print("\nthe run failed: the server ended during a trial (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
