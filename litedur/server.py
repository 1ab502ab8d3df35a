"""``litedur serve``: the Durable Streams HTTP protocol over a litedur database file.

HTTP/1.1 on the standard library's asyncio: one event loop thread holds every connection (keep-alive,
chunked request bodies, chunked SSE responses), so a live reader costs a coroutine, not a thread.
A request's work, which may block on the database (a write waits for other processes' writers),
runs in a small thread pool; a live read (long-poll, SSE) then waits in the loop on the stream's
wake-up and reads there (a read is one indexed SQLite query). What a request means is
`http_streams`. The server listens on loopback by default; on any other address it refuses to start
without a bearer token, and with a token every request must carry ``Authorization: Bearer <token>``.

    server = litedur.Server("app.db", port=0).start()   # in a background thread
    print(server.url)                                   # http://127.0.0.1:<port>
    server.close()

    litedur.serve("app.db")                             # in this thread, until Ctrl-C
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from .client import Client
from .errors import LitedurError
from .http_streams import Events, LongPoll, Pause, ReadOptions, Request, Response, StreamService, error_response
from .storage import SQLiteStorage
from .wakeup import WorkflowSignals, feed_for

logger = logging.getLogger("litedur.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4437  # the protocol's registered port
MAX_BODY = 64 << 20  # bytes of one request body; more is refused with 413
MAX_LINE = 64 << 10  # bytes of the request line or of one header line
MAX_HEADERS = 100
IDLE_TIMEOUT = 300.0  # seconds an idle keep-alive connection is kept
WORKERS = 32  # threads that answer requests (a live read's waits hold none)


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
    204. ``sse_lifetime``: seconds after which an SSE response ends (the client reconnects).
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
            self._storage = SQLiteStorage(path if path is not None else _default_path(), create=create)
            self._client = Client(self._storage.path, unpickle=False)
            self._feed = feed_for(self._storage.path)
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
        """Absolute path of the database file served."""
        return self._storage.path

    def start(self) -> Server:
        """Serve in a background (daemon) thread; returns self once it accepts connections."""
        threading.Thread(target=self.serve_forever, name="litedur-serve", daemon=True).start()
        self._started.wait()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until `close` (from another thread) or KeyboardInterrupt; then close."""
        with self._lock:
            if self._closed or self._loop is not None:
                self._started.set()
                raise ServeError(f"the server of {self.path} is {'closed' if self._closed else 'serving already'}")
            self._loop, self._stop = asyncio.new_event_loop(), asyncio.Event()
        main = self._loop.create_task(self._serve(self._stop))
        try:
            self._loop.run_until_complete(main)
        except KeyboardInterrupt:
            self._stop.set()  # end the connections cleanly, then let the interrupt through
            self._loop.run_until_complete(main)
            raise
        finally:
            self._stopped.set()
            self._started.set()
            self.close()

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
        step = self._offloaded if response.offload else _inline
        if response.plan is not None:
            response = await _run_long_poll(response.plan, step)
        if response.events is not None:
            await _write_events(reader, writer, response, response.events, step)
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

    async def _offloaded(self, plan: Generator[Any, Any, Any], reply: Any) -> tuple[bool, Any]:
        """A live read's next step in a worker thread (its reads may block)."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, _advance, plan, reply)

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


Step = Callable[[Generator[Any, Any, Any], Any], Awaitable[tuple[bool, Any]]]


def _advance(plan: Generator[Any, Any, Any], reply: Any) -> tuple[bool, Any]:
    """Send ``reply`` to a live read: ``(False, what it yields next)`` or ``(True, what it returns)``."""
    try:
        return False, plan.send(reply)
    except StopIteration as stop:
        return True, stop.value


async def _inline(plan: Generator[Any, Any, Any], reply: Any) -> tuple[bool, Any]:
    """A live read's next step in the loop itself (its reads are short and never wait)."""
    return _advance(plan, reply)


async def _run_long_poll(plan: LongPoll, step: Step) -> Response:
    """Drive a long-poll: each `Pause` awaited in the loop; the response it ends with."""
    reply: bool | None = None
    try:
        while True:
            done, value = await step(plan, reply)
            if done:
                return value
            reply = await value.watch.wait_async(value.offset, value.deadline)
    finally:
        plan.close()


async def _write_events(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: Response, events: Events, step: Step
) -> None:
    """Drive an SSE response: its pieces written in chunked encoding as they come, its pauses
    awaited; it ends when the events end or the client goes (the connection then closes)."""
    headers = {**response.headers, "Transfer-Encoding": "chunked", "Connection": "close"}
    writer.write(_head_bytes(response.status, headers))
    gone = asyncio.ensure_future(reader.read(1))  # EOF (or anything) from the client: it stopped reading
    reply: bool | None = None
    try:
        while True:
            done, item = await step(events, reply)
            if done:
                break
            if isinstance(item, Pause):
                reply = await _pause_unless_gone(item, gone)
                if reply is None:
                    return
            else:
                reply = None
                if item:
                    writer.write(b"%x\r\n%s\r\n" % (len(item), item))
                    await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        gone.cancel()
        events.close()


async def _pause_unless_gone(pause: Pause, gone: asyncio.Future[bytes]) -> bool | None:
    """The pause's outcome, or None when the client went first."""
    waiting = asyncio.ensure_future(pause.watch.wait_async(pause.offset, pause.deadline))
    await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        return None
    return waiting.result()
