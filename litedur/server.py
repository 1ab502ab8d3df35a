"""``litedur serve``: the Durable Streams HTTP protocol over a litedur database file.

HTTP/1.1 on the standard library's asyncio: one event loop thread holds every connection (keep-alive,
chunked request bodies, chunked SSE responses), so a live reader costs a coroutine, not a thread.
What a request means is `http_streams`: its answer, which may block on the database (a write waits
for other processes' writers), is worked out in a small thread pool. A live read (long-poll, SSE)
then runs in the loop as a plan of `Read` and `Pause` requests, served by its stream's `SharedTail`:
one follower per stream in this process, whatever the number of its readers, keeping what it reads in
a window, so the readers at the stream's end share one read and one encoded event per change, and a
reader gets all that came since its offset in one write. The server listens on loopback by
default; on any other address it refuses to start without a bearer token, and with a token every
request must carry ``Authorization: Bearer <token>``.

    server = litedur.Server("app.db", port=0).start()   # in a background thread
    print(server.url)                                   # http://127.0.0.1:<port>
    server.close()

    litedur.serve("app.db")                             # in this thread, until Ctrl-C
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hmac
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from .client import Client
from .errors import LitedurError
from .http_streams import (
    Chunk,
    HttpError,
    Pause,
    Read,
    ReadOptions,
    Request,
    Response,
    StreamService,
    StreamView,
    Window,
    error_response,
)
from .storage import open_storage
from .wakeup import WorkflowSignals, feed_for

logger = logging.getLogger("litedur.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4437  # the protocol's registered port
MAX_BODY = 64 << 20  # bytes of one request body; more is refused with 413
MAX_LINE = 64 << 10  # bytes of the request line or of one header line
MAX_HEADERS = 100
IDLE_TIMEOUT = 300.0  # seconds an idle keep-alive connection is kept
WORKERS = 32  # threads that answer requests (a live read's waits hold none)
CLOSE_GRACE = 5.0  # seconds closing waits for the connections' tasks to end
DRAIN_ABOVE = 64 << 10  # bytes buffered for a live reader's socket beyond which it waits for them to go
RESUME_SLICE = 100  # paused live readers a change resumes per turn of the event loop (about a millisecond)


class ServeError(LitedurError):
    """The server cannot start as asked (host, port, token); the message says why. ``usage``: the
    request itself is wrong (a bad host, a missing token), not the machine's state (a port in use)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class Server:
    """A Durable Streams server over one database file.

    ``start()`` serves in a background thread, ``serve_forever()`` in this one; ``close()`` stops it
    (``with Server(...) as server:`` closes at the end). The socket is bound when the object is made,
    so ``url`` is known (``port=0`` takes a free port) and a port in use fails at once.

    ``token``: None takes ``$LITEDUR_TOKEN`` if set. ``create``: create the database file if missing
    (else a missing file is an error). ``long_poll_timeout``: seconds a long-poll waits before its
    204. ``sse_lifetime``: seconds by which an SSE response ends (the client reconnects); each lives
    80-100% of it, drawn at random, so clients who connected together come back spread out.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        create: bool = False,
        long_poll_timeout: float = 20.0,
        sse_lifetime: float = 60.0,
    ) -> None:
        token = (os.environ.get("LITEDUR_TOKEN") or None) if token is None else token
        family, address = _resolve(host, port)
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ServeError("the bearer token must be a non-empty string", usage=True)
        if token is None and not _is_loopback(address[0]):
            raise ServeError(
                f"serving on {host!r} (not a loopback address) needs a bearer token: give --token TOKEN or set "
                "LITEDUR_TOKEN, and send 'Authorization: Bearer TOKEN' with every request",
                usage=True,
            )
        for name, value in (("long_poll_timeout", long_poll_timeout), ("sse_lifetime", sse_lifetime)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
        self._socket = _listen(family, address)  # first: a port in use creates no database file
        try:
            location = os.fspath(path) if path is not None else _default_path()
            self._storage = open_storage(location, create=create)
            self._client = Client(location, unpickle=False)
            self._feed = feed_for(self._storage)
            self._signals = WorkflowSignals(self._feed, self._storage.changes_since)
            options = ReadOptions(long_poll_timeout, sse_lifetime, private=token is not None)
            service = StreamService(self._storage, self._client, self._feed, self._signals, options)
            self._storage.purge_expired_http_streams(time.time())
        except BaseException:
            self._socket.close()
            self._close_database()
            raise
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self._http = _HTTP(service, token, self.url)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = threading.Event()
        self._started = threading.Event()
        self._closed = False

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:4437`` (streams are under ``/v1/stream/``)."""
        host = self._socket.getsockname()[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def path(self) -> str:
        """The database served: the file's absolute path (a PostgreSQL URL, password masked)."""
        return self._storage.location

    def live_readers(self) -> int:
        """How many live reads (long-poll, SSE) are following a stream now."""
        return self._http.tails.readers()

    def start(self) -> Server:
        """Serve in a background (daemon) thread; returns self once it accepts connections."""
        threading.Thread(target=self.serve_forever, name="litedur-serve", daemon=True).start()
        self._started.wait()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until `close` (from another thread), Ctrl-C (KeyboardInterrupt, once
        closed) or, in the main thread, SIGTERM (a normal return); then close."""
        with self._lock:
            if self._closed or self._loop is not None:
                self._started.set()
                raise ServeError(f"the server of {self.path} is {'closed' if self._closed else 'serving already'}")
            self._loop, self._stop = asyncio.new_event_loop(), asyncio.Event()
        signals = _stop_on_signals(self._loop, self._stop)
        try:
            self._loop.run_until_complete(self._serve(self._stop))
        finally:
            try:
                _cancel_the_rest(self._loop)
            finally:
                self._stopped.set()
                self._started.set()
                self.close()
        if signals.get("received") == signal.SIGINT:
            raise KeyboardInterrupt

    async def _serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._http.connection, sock=self._socket, limit=MAX_LINE)
        self._started.set()
        try:
            await stop.wait()
        finally:
            server.close()
            await self._http.end_connections()
            self._http.workers.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop serving: no new connection is taken, live reads end, connections and the database close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):  # the loop is closing already
                loop.call_soon_threadsafe(stop.set)
            if not _in_loop(loop):
                self._stopped.wait()
        if loop is not None and not _in_loop(loop) and self._stopped.is_set():
            loop.close()
        self._socket.close()
        self._close_database()

    def _close_database(self) -> None:
        for name in ("_signals", "_client", "_storage"):
            closing = getattr(self, name, None)
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Server({self.path!r}, url={self.url!r})"


def serve(
    path: str | os.PathLike[str] | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    **options: Any,
) -> None:
    """Serve the Durable Streams protocol over the database at ``path`` until interrupted (Ctrl-C).

    Standalone streams live under ``/v1/stream/<path>``; the workflows' streams are readable (JSON
    mode, read-only) under ``/v1/stream/workflows/<workflow id>/<key>``. Loopback only unless a
    ``token`` (or ``$LITEDUR_TOKEN``) is given. ``options``: those of `Server`.
    """
    Server(path, host, port, token=token, **options).serve_forever()


def _default_path() -> str:
    return os.environ.get("LITEDUR_DB") or "./litedur.db"


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> dict[str, int]:
    """In the main thread, let SIGINT and SIGTERM stop the loop cleanly (through ``stop``) instead of
    raising wherever the loop happens to be; the dict gets the signal ``received``."""
    received: dict[str, int] = {}

    def stopping(signum: int) -> None:
        received["received"] = signum
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows: not supported
                loop.add_signal_handler(signum, stopping, signum)
    return received


def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    """End what is left in the loop (a connection accepted as the server closed, a tail's follower)."""

    async def cancelled() -> None:
        tasks = asyncio.all_tasks(loop) - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        done, pending = await asyncio.wait(tasks, timeout=CLOSE_GRACE) if tasks else (set(), set())
        if pending:
            logger.warning("%d task(s) did not end as the server closed: %s", len(pending), pending)

    loop.run_until_complete(cancelled())


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    with contextlib.suppress(RuntimeError):
        return asyncio.get_running_loop() is loop
    return False


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The socket family and address to bind for ``host``; ServeError naming the host if it has none."""
    if not isinstance(host, str) or not host:
        raise ServeError(f"host must be a host name or an IP address, not {host!r}", usage=True)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ServeError(f"port must be an integer from 0 to 65535, not {port!r}", usage=True)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ServeError(f"cannot serve on host {host!r}: the name does not resolve ({exc})", usage=True) from None
    family, _, _, _, address = found[0]
    return family, address


def _is_loopback(address: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    return False


def _listen(family: socket.AddressFamily, address: tuple[Any, ...]) -> socket.socket:
    """A listening socket on ``address``, with a deep backlog (many readers may connect at once)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise _bind_error(address, exc) from None
    return sock


def _bind_error(address: tuple[Any, ...], exc: OSError) -> ServeError:
    host, port = address[0], address[1]
    if exc.errno == errno.EADDRINUSE:
        return ServeError(f"port {port} on {host} is already in use (another server?): choose another with --port")
    if exc.errno == errno.EACCES:
        return ServeError(f"no permission to listen on port {port} of {host} (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ServeError(f"cannot serve on {host}: it is not an address of this machine", usage=True)
    return ServeError(f"cannot listen on {host} port {port}: {exc.strerror or exc}")


class _BadRequest(Exception):
    """A request that cannot be read: answered with ``status``, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Head:
    """A request line and its headers (keyed in lower case; a repeated header keeps its last value)."""

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str]) -> None:
        self.method, self.target, self.version, self.headers = method, target, version, headers

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        return "close" not in connection if self.version == "HTTP/1.1" else "keep-alive" in connection


class _HTTP:
    """HTTP/1.1 over asyncio streams: reads requests, has the service answer, writes responses."""

    def __init__(self, service: StreamService, token: str | None, url: str) -> None:
        self.service = service
        self.token = token
        self.url = url  # for a request without a Host header
        self.workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="litedur-serve")
        self.tails = _Tails(self.workers)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: requests one after another until either side ends it."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing
        except Exception:
            logger.exception("a connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def end_connections(self) -> None:
        """Cancel every connection's task (a live read ends where it waits) and let them finish."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when the connection is to close."""
        try:
            head = await asyncio.wait_for(_read_head(reader), IDLE_TIMEOUT)
            if head is None:
                return False
            if head.method != "OPTIONS" and not self._authorized(head.headers.get("authorization")):
                await _write(writer, head, _unauthorized(self.service), keep_alive=False)
                return False
            body = await _read_body(reader, writer, head)
        except _BadRequest as exc:
            response = self.service.secure(error_response(exc.status, str(exc)))
            await _write(writer, _Head("GET", "", "HTTP/1.1", {}), response, keep_alive=False)
            return False
        host = head.headers.get("host")
        request = Request(head.method, head.target, head.headers, body, f"http://{host}" if host else self.url)
        response = await self._answer(request)
        if response.plan is not None:
            response = await _LiveRead(self.tails).run(response.plan)
        if response.events is not None:
            await _write_events(reader, writer, response, self.tails)
            return False
        await _write(writer, head, response, keep_alive=head.keep_alive)
        return head.keep_alive

    async def _answer(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.workers, self.service.handle, request)
        except Exception:
            logger.exception("failed to answer %s %s", request.method, request.target)
            return self.service.secure(error_response(500, "internal error (see the server's log)"))

    def _authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, credentials = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())


def _unauthorized(service: StreamService) -> Response:
    response = error_response(401, "this server needs 'Authorization: Bearer <token>'")
    response.headers["WWW-Authenticate"] = 'Bearer realm="litedur"'
    return service.secure(response)


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """The next request's line and headers; None when the client closed the connection first."""
    line = await _read_line(reader)
    while line == b"\r\n":  # a stray line break between requests
        line = await _read_line(reader)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, f"malformed request line {line[:100]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader)
        if line in (b"\r\n", b"\n", b""):
            return _Head(parts[0], parts[1], parts[2], headers)
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name.strip():
            raise _BadRequest(400, f"malformed header line {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    raise _BadRequest(431, f"more than {MAX_HEADERS} headers")


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, f"a request or header line is longer than {MAX_LINE} bytes") from None


async def _read_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: _Head) -> bytes:
    if head.headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in head.headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = head.headers.get("content-length")
    if length is None:
        return b""
    if not length.isdigit():
        raise _BadRequest(400, f"bad Content-Length {length!r}")
    if int(length) > MAX_BODY:
        raise _BadRequest(413, f"a request body holds at most {MAX_BODY} bytes")
    return await reader.readexactly(int(length))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts, total = [], 0
    while True:
        line = await _read_line(reader)
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _BadRequest(400, "malformed chunked request body") from None
        if size == 0:
            break
        total += size
        if total > MAX_BODY:
            raise _BadRequest(413, f"a request body holds at most {MAX_BODY} bytes")
        parts.append(await reader.readexactly(size))
        await _read_line(reader)  # the line break after the chunk
    while await _read_line(reader) not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return b"".join(parts)


def _status_line(status: int) -> bytes:
    with contextlib.suppress(ValueError):
        return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
    return f"HTTP/1.1 {status} Status\r\n".encode()


def _head_bytes(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    date = f"Date: {formatdate(usegmt=True)}\r\nServer: litedur\r\n"
    return _status_line(status) + (date + "".join(lines) + "\r\n").encode("latin-1")


async def _write(writer: asyncio.StreamWriter, head: _Head, response: Response, *, keep_alive: bool) -> None:
    headers = dict(response.headers)
    bodiless = head.method == "HEAD" or response.status in (204, 304)
    if not bodiless:
        headers["Content-Length"] = str(len(response.body))
    if not keep_alive:
        headers["Connection"] = "close"
    writer.write(_head_bytes(response.status, headers) + (b"" if bodiless else response.body))
    await writer.drain()


async def _write_events(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: Response, tails: _Tails
) -> None:
    """An SSE response: its pieces written in chunked encoding as the plan yields them; it ends when
    the plan ends or the client goes (the connection then closes)."""
    assert response.events is not None
    headers = {**response.headers, "Transfer-Encoding": "chunked", "Connection": "close"}
    writer.write(_head_bytes(response.status, headers))
    if await _LiveRead(tails, reader, writer).run(response.events) is not _GONE:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


_GONE = object()  # what a live read returns when its client went away first


class _LiveRead:
    """Drives one live read's plan in the event loop, as far as it goes without waiting, each time
    something it waits for comes: a change of its stream (its stream's `SharedTail` resumes it
    directly), its deadline, a read from storage, a socket's buffer draining.

    A `Read` is answered from the tail's window when it holds the offset, else by a read of storage:
    in the loop (a standalone stream's is one indexed query) or in a worker thread (a workflow
    stream's), shared by the readers at one offset. A `Pause` ends at once if the stream changed since
    the last read. Bytes (SSE) are written in chunked encoding at once (and waited for only when the
    client does not keep up). So a reader following a stream costs a window look-up and a socket write
    per change: no task, future or timer.
    """

    def __init__(
        self, tails: _Tails, client: asyncio.StreamReader | None = None, writer: asyncio.StreamWriter | None = None
    ) -> None:
        self._tails = tails
        self._writer = writer
        self._transport = writer.transport if writer is not None else None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[Any] = self._loop.create_future()
        self._plan: Generator[Any, Any, Any] | None = None
        self._tail: SharedTail | None = None
        self._seen = -1  # the tail's generation at the last read
        self.deadline = 0.0  # of the pause, on the loop's clock (time.monotonic)
        self._timer: asyncio.TimerHandle | None = None  # at or before the deadline (moved on lazily)
        self._draining: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[bytes] | None = None  # the client's EOF: it left
        if client is not None:
            self._gone = asyncio.ensure_future(client.read(1))
            self._gone.add_done_callback(self._client_went)

    async def run(self, plan: Generator[Any, Any, Any]) -> Any:
        """Carry out ``plan``: its result, or _GONE if the client left first. A read's error (the
        stream went) goes back into the plan, which decides what to answer."""
        self._plan = plan
        try:
            self._advance(None)
            return await self._done
        finally:
            self._stop()

    def wake(self, changed: bool) -> None:
        """The pause ends: the stream changed (its tail stopped waiting for this reader) or not."""
        self._advance(changed)

    def _advance(self, reply: Any, error: Exception | None = None) -> None:
        """Hand the plan ``reply`` (or ``error``) and carry out its requests until one must wait."""
        plan = self._plan
        assert plan is not None
        try:
            while not self._done.done():
                try:
                    request = plan.send(reply) if error is None else plan.throw(error)
                except StopIteration as stop:
                    self._done.set_result(stop.value)
                    return
                reply, error = None, None
                if type(request) is Read:
                    try:
                        reply = self._read(request)
                    except (HttpError, LitedurError) as exc:
                        error = exc
                        continue
                    if reply is None:
                        return  # read in a worker thread: it resumes the plan
                elif type(request) is Pause:
                    tail = self._tail_of(request.view)
                    if tail.generation == self._seen:
                        if not tail.retired:
                            self._pause(tail, request.deadline)
                            return
                        self._leave()  # nothing follows it any more: read again from a fresh one
                    reply = True
                elif not self._write(request):
                    return  # draining: resumes the plan once drained
        except Exception as exc:
            if not self._done.done():
                self._done.set_exception(exc)

    def _read(self, request: Read) -> Chunk | None:
        """The chunk at ``request.offset`` (None: it comes to `_read_done` later)."""
        tail = self._tail_of(request.view)
        self._seen = tail.generation
        chunk = tail.chunk(request.offset)
        if chunk is not None:
            return chunk
        if not request.view.reads_block:
            return tail.read_here(request.view, request.offset)
        reading, self._seen = tail.read(request.view, request.offset)
        reading.add_done_callback(self._read_done)
        return None

    def _read_done(self, reading: asyncio.Future[Chunk]) -> None:
        if self._done.done() or reading.cancelled():
            return
        error = reading.exception()
        if error is None:
            self._advance(reading.result())
        elif isinstance(error, (HttpError, LitedurError)):
            self._advance(None, error)
        else:
            self._done.set_exception(error)

    def _pause(self, tail: SharedTail, deadline: float) -> None:
        self.deadline = deadline
        tail.waiting[self] = None
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """The timer: end the pause if its deadline passed, else come back at the deadline."""
        self._timer = None
        tail = self._tail
        if tail is None or self not in tail.waiting or self._done.done():
            return  # not pausing: the next pause sets a timer
        if self._loop.time() < self.deadline:
            self._timer = self._loop.call_at(self.deadline, self._expire)
            return
        del tail.waiting[self]
        self._advance(False)

    def _write(self, piece: bytes) -> bool:
        """Write an SSE piece as one chunk; False if the plan must wait (client slow or gone)."""
        transport, writer = self._transport, self._writer
        assert transport is not None and writer is not None, "only an SSE plan yields bytes"
        if transport.is_closing():
            self._done.set_result(_GONE)
            return False
        if piece:
            transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if transport.get_write_buffer_size() <= DRAIN_ABOVE:
            return True
        self._draining = asyncio.ensure_future(writer.drain())
        self._draining.add_done_callback(self._drained)
        return False

    def _drained(self, draining: asyncio.Future[None]) -> None:
        self._draining = None
        if self._done.done():
            return
        if draining.cancelled() or draining.exception() is not None:
            self._done.set_result(_GONE)
        else:
            self._advance(None)

    def _client_went(self, gone: asyncio.Future[bytes]) -> None:
        if not gone.cancelled():
            gone.exception()  # (retrieved: a reset connection is no error here)
            if not self._done.done():
                self._done.set_result(_GONE)

    def _tail_of(self, view: StreamView) -> SharedTail:
        """The stream's tail, joined for the plan's life (or until a pause finds it retired)."""
        if self._tail is None:
            self._tail = self._tails.join(view)
            self._seen = -1
        return self._tail

    def _stop(self) -> None:
        if self._plan is not None:
            self._plan.close()
        self._leave()
        if self._timer is not None:
            self._timer.cancel()
        if self._draining is not None:
            self._draining.cancel()
        if self._gone is not None:
            self._gone.remove_done_callback(self._client_went)
            self._gone.cancel()

    def _leave(self) -> None:
        if self._tail is not None:
            self._tail.waiting.pop(self, None)
            self._tails.leave(self._tail)
            self._tail = None


# ---- shared tails: one follower per stream, whatever its number of live readers -----------------


class SharedTail:
    """The live readers of one stream in this process's event loop, and its follower.

    The follower (a task) runs the stream view's `follow` and puts what it reads in the `window`;
    each change bumps the generation and resumes every reader paused here, a slice at a time: a
    reader at the stream's end takes what came from the window (joined and encoded once for all the
    readers at its offset) and writes it, so several values that came meanwhile go in one write.
    Readers whose offset is not in the window read storage, once per offset for all of them.
    When the follower ends (the stream closed or went), the tail is retired: its readers still read
    what it holds, but one that would wait there joins a fresh tail, as a new reader does.
    """

    def __init__(self, key: tuple[str, ...], view: StreamView, workers: ThreadPoolExecutor) -> None:
        self.key = key
        self.generation = 0
        self.readers = 0
        self.retired = False
        self.window = Window(view.json)
        self.waiting: dict[_LiveRead, None] = {}  # paused readers, resumed at the next change
        self._workers = workers
        self._loop = asyncio.get_running_loop()
        self._reads: dict[str, tuple[asyncio.Future[Chunk], int]] = {}  # by offset, while running
        self._read: dict[str, Chunk] = {}  # what readers read from storage in this generation, by offset
        self._follower = self._loop.create_task(self._follow(view))

    async def _follow(self, view: StreamView) -> None:
        try:
            async with contextlib.aclosing(view.follow()) as appended:
                async for appends in appended:
                    self.window.extend(appends)
                    self.bump()
        except (HttpError, LitedurError) as exc:  # e.g. it was deleted: its readers read and learn it
            logger.debug("following %s ends: %s", self.key, exc)
            self.window.reset()
        except Exception:
            logger.exception("following %s failed", self.key)
            self.window.reset()
        self.retired = True
        self.bump()

    def bump(self) -> None:
        """A change: a new generation; resume every paused reader (`RESUME_SLICE` at a time, so that
        requests and other streams are served between slices)."""
        self.generation += 1
        self._read.clear()
        if self.waiting:
            waiting, self.waiting = list(self.waiting), {}
            self._resume(waiting, 0)

    def _resume(self, readers: list[_LiveRead], start: int) -> None:
        end = start + RESUME_SLICE
        for live in readers[start:end]:
            live.wake(True)
        if end < len(readers):
            self._loop.call_soon(self._resume, readers, end)

    def chunk(self, offset: str) -> Chunk | None:
        """What a reader at ``offset`` gets without reading storage: from the window, or what a reader
        read from there since the last change."""
        chunk = self.window.chunk(offset)
        return chunk if chunk is not None else self._read.get(offset)

    def read_here(self, view: StreamView, offset: str) -> Chunk:
        """A read of storage from ``offset`` in the loop (where changes happen: none comes meanwhile)."""
        chunk = self._read[offset] = view.read(offset)
        return chunk

    def read(self, view: StreamView, offset: str) -> tuple[asyncio.Future[Chunk], int]:
        """A read of storage from ``offset`` in a worker thread, shared by the readers at that offset,
        and the generation when it started."""
        reading = self._reads.get(offset)
        if reading is None:
            future = self._loop.run_in_executor(self._workers, view.read, offset)
            reading = self._reads[offset] = (future, self.generation)
            future.add_done_callback(functools.partial(self._was_read, offset, self.generation))
        return reading

    def _was_read(self, offset: str, generation: int, reading: asyncio.Future[Chunk]) -> None:
        del self._reads[offset]
        if generation == self.generation and not reading.cancelled() and reading.exception() is None:
            self._read[offset] = reading.result()

    def close(self) -> None:
        """The last reader left: stop following."""
        self._follower.cancel()


class _Tails:
    """The shared tails of the streams being read live, by `StreamView.tail_key` (event loop only)."""

    def __init__(self, workers: ThreadPoolExecutor) -> None:
        self.workers = workers  # reads that may block run here
        self._tails: dict[tuple[str, ...], SharedTail] = {}

    def join(self, view: StreamView) -> SharedTail:
        tail = self._tails.get(view.tail_key)
        if tail is None or tail.retired:
            tail = self._tails[view.tail_key] = SharedTail(view.tail_key, view, self.workers)
        tail.readers += 1
        return tail

    def readers(self) -> int:
        return sum(tail.readers for tail in list(self._tails.values()))

    def leave(self, tail: SharedTail) -> None:
        tail.readers -= 1
        if tail.readers == 0:
            if self._tails.get(tail.key) is tail:
                del self._tails[tail.key]
            tail.close()
