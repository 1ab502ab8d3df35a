"""A uvicorn + starlette server of workflow streams over SSE, to compare with ``litedur serve`` in
`benchmarks/serve.py`. A benchmark comparison only: uvicorn and starlette are not dependencies of
litedur, and this server is not part of it.

    python3 -m venv /tmp/asgi-venv && /tmp/asgi-venv/bin/pip install -e . uvicorn starlette
    /tmp/asgi-venv/bin/python benchmarks/serve.py --clients 1000 --values 1000 --rate 200 \\
        --server-script benchmarks/asgi_server.py
    (``pip install 'uvicorn[standard]'`` instead for uvloop and httptools)

It takes the command line of ``python -m litedur --db DB serve [--create] [--port PORT]``, binds
127.0.0.1 (``--port 0``: a free port), prints ``http://127.0.0.1:<port>`` as its first line on stdout and
runs uvicorn with one worker, the event loop and HTTP implementation uvicorn picks by default (uvloop and
httptools when installed, else asyncio and h11; the log on stderr says which), no access log.

It serves only what the benchmark uses, the way a straightforward ASGI app would:

- ``GET /v1/stream/workflows/<workflow id>/<key>?offset=<-1|now|offset>&live=sse``: the SSE read of a
  workflow stream, in the event shapes of litedur's server (`litedur.http_streams`): a chunked
  ``text/event-stream`` response with ``Connection: close``; ``event: data`` with a JSON array of
  values, each followed by ``event: control`` with ``streamNextOffset`` (``<16 digits>_<16 digits>``,
  the value count twice), ``streamCursor`` or ``streamClosed``, and ``upToDate``; a comment every 15 s
  when idle; the response ends when the stream closes, or after its 60 s lifetime (the client
  reconnects from its last offset). First a catch-up from the offset (a non-waiting
  ``Client.read_stream`` in starlette's thread pool, at most 1000 values per event, as litedur's server
  reads); then one ``AsyncStreamReader`` per client (``Client.read_stream_async``), each event taking
  the value awaited and those already buffered with it (``buffered()``), as litedur's server batches;
- anything else: Starlette's 404 (the benchmark's ``HEAD /v1/stream/`` probe: litedur answers it 404
  too), or 400/405 for another kind of read of a workflow stream.

What it does not share with litedur's server, by design: litedur's server follows a stream with one
reader for all its SSE clients and encodes each event once; here every client has its own reader
(litedur's `StreamTail` still shares one read per commit among them), decodes and encodes each value
itself and runs in its own connection task (plus starlette's disconnect listener).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import litedur
from litedur.http_streams import value_json as encode  # the same JSON of a value as litedur's server
from litedur.storage import open_storage  # only to create the file for --create, as `litedur serve` does

WORKFLOWS = "/v1/stream/workflows/"
MAX_READ_VALUES = 1000  # values per SSE data event, as litedur's server
SSE_LIFETIME = 60.0  # s, as litedur's server: then the response ends and the client reconnects
KEEPALIVE = 15.0  # s without a value before a comment is sent
OFFSET = re.compile(r"(\d{16})_(\d{16})")
CURSOR_EPOCH = 1728432000.0  # 2024-10-09 UTC: the protocol's cursor intervals, as litedur's server
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, "
    "Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, "
    "Producer-Received-Seq, ETag, Location",
    "Connection": "close",  # one SSE response per connection, as litedur's server
}
ENDS = (litedur.DatabaseError, litedur.WorkflowNotFoundError)  # a response ends quietly on these

logger = logging.getLogger("asgi_server")
client: litedur.Client  # set in main()


def offset_text(n: int) -> str:
    return f"{n:016d}_{n:016d}"


def cursor_after(cursor: str | None) -> str:
    current = int((time.time() - CURSOR_EPOCH) // 20)
    if cursor and cursor.isascii() and cursor.isdigit() and int(cursor) >= current:
        current = int(cursor) + random.randint(1, 180)
    return str(current)


def frame(values: list[bytes], end: int, up_to_date: bool, closed: bool, cursor: str | None) -> bytes:
    """A data event (if any values) and its control event, as one piece (one HTTP chunk)."""
    data = b"event: data\ndata:[" + b",".join(values) + b"]\n\n" if values else b""
    control: dict[str, Any] = {"streamNextOffset": offset_text(end)}
    if closed:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = cursor_after(cursor)
    if up_to_date:
        control["upToDate"] = True
    return data + b"event: control\ndata:" + json.dumps(control, separators=(",", ":")).encode() + b"\n\n"


def length(workflow_id: str, key: str) -> int:
    for stream in client.list_streams(workflow_id):
        if stream.key == key:
            return stream.length
    return 0


def catch_up(workflow_id: str, key: str, start: int) -> tuple[list[bytes], bool, bool]:
    """In a worker thread: ``(values as JSON, ended, more follow)`` from ``start`` without waiting."""
    values: list[bytes] = []
    with client.read_stream(workflow_id, key, start=start, timeout=0) as reader:
        try:
            while len(values) < MAX_READ_VALUES:
                values.append(encode(next(reader)))
        except StopIteration:
            return values, True, False
        except TimeoutError:
            if not values and start > length(workflow_id, key):
                raise ValueError(f"offset {offset_text(start)} is past the end of the stream") from None
            return values, False, False
    return values, False, True


async def events(
    workflow_id: str, key: str, start: int, first: tuple[list[bytes], bool, bool], cursor: str | None
) -> AsyncIterator[bytes]:
    ends = time.monotonic() + SSE_LIFETIME
    offset = start
    try:
        values, ended, more = first
        while True:  # catch-up
            offset += len(values)
            yield frame(values, offset, not more, ended, cursor)
            if ended:
                return
            if not more:
                break
            values, ended, more = await run_in_threadpool(catch_up, workflow_id, key, offset)
        reader = client.read_stream_async(workflow_id, key, start=offset, timeout=KEEPALIVE)
        try:
            while time.monotonic() < ends:
                try:
                    value = await reader.__anext__()
                except StopAsyncIteration:
                    yield frame([], offset, True, True, cursor)
                    return
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                batch = [encode(value)]
                while reader.buffered() and len(batch) < MAX_READ_VALUES:
                    batch.append(encode(await reader.__anext__()))
                offset += len(batch)
                yield frame(batch, offset, not reader.buffered(), False, cursor)
        finally:
            reader.close()
    except ENDS as exc:  # the stream went, or the server is closing: the client reconnects
        logger.debug("an SSE response ends: %s", exc)


async def workflow_stream(request: Request) -> Response:
    name = request.scope["raw_path"].decode("latin-1")[len(WORKFLOWS) :]
    workflow_id, slash, key = name.partition("/")
    workflow_id, key = unquote(workflow_id), unquote(key)
    if not slash or not workflow_id or not key:
        return PlainTextResponse("a workflow stream is /v1/stream/workflows/<workflow id>/<key>\n", 404)
    params = request.query_params
    if request.method != "GET" or params.get("live") != "sse":
        return PlainTextResponse("this benchmark server serves only GET ...?offset=...&live=sse\n", 405)
    text = params.get("offset")
    try:
        if text == "-1":
            start = 0
        elif text == "now":
            start = await run_in_threadpool(length, workflow_id, key)
        elif (match := OFFSET.fullmatch(text or "")) and match.group(1) == match.group(2):
            start = int(match.group(1))
        else:
            return PlainTextResponse(f"malformed offset {text!r}\n", 400)
        first = await run_in_threadpool(catch_up, workflow_id, key, start)
    except litedur.WorkflowNotFoundError as exc:
        return PlainTextResponse(f"{exc}\n", 404)
    except ValueError as exc:
        return PlainTextResponse(f"{exc}\n", 400)
    return StreamingResponse(events(workflow_id, key, start, first, params.get("cursor")), headers=HEADERS)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    print(f"uvicorn {uvicorn.__version__}: event loop {type(loop).__module__}.{type(loop).__name__}, HTTP "
          f"{config.http_protocol_class.__name__}; serving {client.path}", file=sys.stderr, flush=True)  # fmt: skip
    yield


app = Starlette(routes=[Route(WORKFLOWS + "{name:path}", workflow_stream, methods=["GET"])], lifespan=lifespan)
config: uvicorn.Config


def main() -> None:
    global client, config
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--create", action="store_true")
    serve.add_argument("--port", type=int, default=4437)
    args = parser.parse_args()
    if not os.path.lexists(args.db):
        if not args.create:
            parser.error(f"no litedur database at {os.path.abspath(args.db)} (give --create to make one)")
        open_storage(args.db, create=True).close()
    client = litedur.Client(args.db, unpickle=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, workers=1, access_log=False, log_level="warning", ws="none",
                            timeout_graceful_shutdown=3)  # fmt: skip
    config.load()  # now, to name the HTTP implementation in the log (uvicorn.Server.run does not load it again)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        client.close()


if __name__ == "__main__":
    main()
