"""The Durable Streams protocol over a litedur file: what each request means and what to answer.

`StreamService.handle` turns one parsed `Request` into one `Response` and does no socket I/O (the
HTTP layer is `server.py`). Two kinds of stream live under ``/v1/stream/``:

- **standalone streams** (any other path): created, appended to, closed, forked and deleted over HTTP,
  stored in the database's ``http_streams`` tables through the storage backend's's HTTP-stream verbs, in
  byte mode or JSON mode (``application/json``: each append stores its messages, reads return one
  JSON array);
- **workflow streams** (``workflows/<workflow id>/<key>``): the durable streams of workflows, read-only,
  in JSON mode, read through `Client.read_stream`; closed when the stream is closed or the workflow
  has ended.

Offsets are ``<16 digits>_<16 digits>``: for a standalone stream the number of appends before the
offset and the bytes (JSON: messages) before it; for a workflow stream the litedur offset, twice.
Both sort as strings in stream order. A live read (long-poll, SSE) is a plan that never blocks: it
yields `Read` and `Pause` requests that its driver (`server.py`) carries out, sharing one follower
of each stream among all its readers (`StreamView.follow`: for a standalone stream an interest in its
change key, rung at once by an append of this process and through the change feed by another
process's; for a workflow stream an async stream reader). What the follower reads goes into the
stream's `Window`, where a reader at any recent offset finds all that follows as one chunk.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Union
from urllib.parse import parse_qs, unquote, urlsplit

from .client import Client
from .errors import DatabaseError, WorkflowNotFoundError
from .storage import HttpEntry, HttpProducer, HttpStreamRow, HttpStreamSpec, Storage, http_stream_key
from .values import Pickled
from .wakeup import ChangeFeed, WorkflowSignals

logger = logging.getLogger("litedur.server")

PREFIX = "/v1/stream/"
WORKFLOWS = "workflows/"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"
MAX_READ_BYTES = 1 << 20  # a catch-up response or SSE event holds at least one append, then up to this
MAX_READ_VALUES = 1000  # values of a workflow stream per response or SSE event
WINDOW_APPENDS = 4096  # appends (values) a followed stream's window keeps for its live readers
WINDOW_BYTES = 8 << 20  # and about this many bytes of them at most
MAX_SAFE_INTEGER = 2**53 - 1  # producer epochs and seqs stay exact in JavaScript
CURSOR_EPOCH = datetime.datetime(2024, 10, 9, tzinfo=datetime.timezone.utc).timestamp()
CURSOR_INTERVAL = 20.0  # seconds per cursor interval
CURSOR_JITTER = (1, 180)  # intervals added to a client's cursor that is not behind: 20 s to 1 h
OFFSET = re.compile(r"(\d{16})_(\d{16})")
DECIMAL = re.compile(r"0|[1-9][0-9]*")
RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+")
LINE_BREAK = re.compile(r"\r\n|\r|\n")
ALLOWED_HEADERS = (
    "Authorization, Content-Type, If-None-Match, Stream-Seq, Stream-TTL, Stream-Expires-At, Stream-Closed, "
    "Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset, Producer-Id, Producer-Epoch, Producer-Seq"
)
EXPOSED_HEADERS = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, Stream-Expires-At, "
    "Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, "
    "ETag, Location"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": EXPOSED_HEADERS,
}
READ_ONLY = "GET, HEAD, OPTIONS"
ALL_METHODS = "GET, HEAD, PUT, POST, DELETE, OPTIONS"


# ---- requests and responses -----------------------------------------------------------------------


@dataclass
class Request:
    """One HTTP request: ``target`` as sent (path and query), headers keyed in lower case."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""
    base_url: str = ""  # "http://host:port", for Location


@dataclass(slots=True)
class Read:
    """What a live read asks its driver for: the chunk that follows ``offset`` now (the reply)."""

    view: StreamView
    offset: str


@dataclass(slots=True)
class Pause:
    """What a live read asks its driver for: wait until the stream may have changed since the last
    `Read` (reply True) or ``deadline`` (time.monotonic) passes (reply False)."""

    view: StreamView
    deadline: float


Events = Generator[Union[bytes, Read, Pause], Any, None]  # noqa: UP007 - runtime aliases (Python 3.10)
LongPoll = Generator[Union[Read, Pause], Any, "Response"]  # noqa: UP007


@dataclass
class Response:
    """One HTTP response. A live read comes with a plan its driver runs, which never blocks: it
    yields `Read` and `Pause` requests for the driver to carry out, and for ``events`` (SSE) the
    bytes to write as they come; ``plan`` (a long-poll) ends with the response to send instead."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: Events | None = None
    plan: LongPoll | None = None


class HttpError(Exception):
    """A request refused with ``status``; the message says what was wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}, f"{message}\n".encode())


# ---- parsing -------------------------------------------------------------------------------------


def format_offset(first: int, second: int) -> str:
    return f"{first:016d}_{second:016d}"


def parse_offset(text: str) -> tuple[int, int] | None:
    """``(first, second)`` of an offset, ``(0, 0)`` for ``-1``, None for ``now``; HttpError(400) otherwise."""
    if text == "-1":
        return 0, 0
    if text == "now":
        return None
    match = OFFSET.fullmatch(text)
    if match is None:
        raise HttpError(400, f"malformed offset {text!r}: expected -1, now or an offset this server returned")
    return int(match.group(1)), int(match.group(2))


def parse_decimal(name: str, text: str | None, limit: int | None = None) -> int | None:
    """A header holding a non-negative decimal integer (no sign, leading zero, point or exponent)."""
    if text is None:
        return None
    if DECIMAL.fullmatch(text) is None or (limit is not None and int(text) > limit):
        bound = f" up to {limit}" if limit is not None else ""
        rule = f"a non-negative integer{bound} without sign or leading zeros"
        raise HttpError(400, f"{name} must be {rule}, not {text!r}")
    return int(text)


def parse_expires_at(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp (``Stream-Expires-At``)."""
    if text is None:
        return None
    match = RFC3339.fullmatch(text.strip())
    if match is None:
        raise HttpError(400, f"Stream-Expires-At must be an RFC 3339 timestamp, not {text!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hours, off_minutes = match.groups()
    try:
        minutes = 0 if zulu else (int(off_hours) * 60 + int(off_minutes)) * (1 if sign == "+" else -1)
        offset = datetime.timezone(datetime.timedelta(minutes=minutes))
        moment = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=offset)
    except ValueError:
        raise HttpError(400, f"Stream-Expires-At is not a valid date and time: {text!r}") from None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def format_expires_at(moment: float) -> str:
    """RFC 3339 in UTC, to the millisecond: ``2026-12-02T18:00:00.000Z``."""
    utc = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_flag(name: str, text: str | None) -> bool:
    if text is None:
        return False
    if text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    raise HttpError(400, f"{name} must be true or false, not {text!r}")


def parse_content_type(text: str) -> tuple[str, str]:
    """``(content type as stored, media type)``: lower case, parameters kept; HttpError(400) if malformed."""
    parts = [part.strip() for part in text.split(";")]
    media = parts[0].lower()
    if MEDIA_TYPE.fullmatch(media) is None:
        raise HttpError(400, f"malformed Content-Type {text!r}: expected type/subtype")
    return "; ".join([media, *(part.lower() for part in parts[1:] if part)]), media


def parse_producer(headers: Mapping[str, str]) -> HttpProducer | None:
    """The idempotent producer of an append (Producer-Id, -Epoch and -Seq: all three or none)."""
    names = ("producer-id", "producer-epoch", "producer-seq")
    given = [headers.get(name) for name in names]
    if all(value is None for value in given):
        return None
    if any(value is None for value in given):
        raise HttpError(400, "Producer-Id, Producer-Epoch and Producer-Seq must be given together")
    producer_id, epoch, seq = given
    if not producer_id:
        raise HttpError(400, "Producer-Id must not be empty")
    return HttpProducer(
        producer_id,
        parse_decimal("Producer-Epoch", epoch, MAX_SAFE_INTEGER) or 0,
        parse_decimal("Producer-Seq", seq, MAX_SAFE_INTEGER) or 0,
    )


def next_cursor(client_cursor: str | None, now: float) -> str:
    """The cursor of a live response: the current 20 s interval since 2024-10-09, or past the client's
    cursor by a random jitter when that one is not behind (so a cached response never repeats)."""
    current = int((now - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client_cursor and client_cursor.isascii() and client_cursor.isdigit() and int(client_cursor) >= current:
        current = int(client_cursor) + random.randint(*CURSOR_JITTER)
    return str(current)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_WHITESPACE = " \t\r\n"


def json_messages(body: bytes) -> list[bytes]:
    """The messages of a JSON-mode body, each on one line: a top-level array is flattened once (its
    elements are the messages), any other value is one message. HttpError(400) for invalid JSON."""
    try:
        text = body.decode("utf-8").strip(_WHITESPACE)
        if not text:
            return []
        if not text.startswith("["):
            start, end = _json_value(text, 0)
            messages, at = [_one_line(text, start, end)], end
        else:
            messages, at = _json_elements(text)
        if at != len(text):
            raise ValueError(f"unexpected text after the JSON value at character {at}")
        return messages
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"invalid JSON: {exc}") from None


def _json_elements(text: str) -> tuple[list[bytes], int]:
    """The elements of the JSON array that ``text`` starts with, and where the array ends."""
    messages: list[bytes] = []
    at = _skip_whitespace(text, 1)
    if text[at : at + 1] == "]":
        return messages, at + 1
    while True:
        start, end = _json_value(text, at)
        messages.append(_one_line(text, start, end))
        at = _skip_whitespace(text, end)
        separator = text[at : at + 1]
        if separator == "]":
            return messages, at + 1
        if separator != ",":
            raise ValueError(f"expected ',' or ']' at character {at}")
        at += 1


def _skip_whitespace(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at


def _json_value(text: str, at: int) -> tuple[int, int]:
    """Where the JSON value starting at ``at`` begins and ends (ValueError if there is none)."""
    at = _skip_whitespace(text, at)
    _, end = _json_decoder.raw_decode(text, at)
    return at, end


def _one_line(text: str, start: int, end: int) -> bytes:
    # A raw line break in valid JSON can only be whitespace between tokens: a space does as well.
    return text[start:end].replace("\r", " ").replace("\n", " ").encode()


def value_json(value: Any) -> bytes:
    """A workflow stream value as one line of JSON (a pickled value: ``{"$pickled": "module.Type"}``)."""
    try:
        return _value_encoder.encode(value).encode()
    except ValueError:
        return json.dumps(repr(value), ensure_ascii=False).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Pickled):
        return {"$pickled": value.type_name}
    if isinstance(value, (set, frozenset)):
        return list(value)
    return repr(value)


_value_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)


# ---- SSE framing ---------------------------------------------------------------------------------


def sse_event(kind: str, text: str) -> str:
    """One SSE event: each line of ``text`` its own ``data:`` line (a line break in a payload cannot
    end the event or start another); a line that starts with a space keeps it (parsers drop one)."""
    lines = ("data: " + line if line.startswith(" ") else "data:" + line for line in LINE_BREAK.split(text))
    return f"event: {kind}\n" + "\n".join(lines) + "\n\n"


# ---- stream views: what the readers share ---------------------------------------------------------


@dataclass
class Chunk:
    """What one read found from an offset: the payload (bytes, or JSON messages joined by commas)."""

    payload: bytes
    count: int  # appends (workflow streams: values) read
    next_offset: str
    up_to_date: bool  # the read reached the tail
    closed: bool  # ... and the stream is closed: nothing will follow
    frames: dict[Any, bytes] = field(default_factory=dict, repr=False)  # its SSE events, once encoded


@dataclass
class Appends:
    """Appends (a workflow stream's values) a stream's follower read, one payload each: the first is
    append number ``seq`` and starts at position ``positions[0]``; payload ``i`` ends at ``positions[i + 1]``.
    ``closed``: the stream ends after them."""

    seq: int
    positions: list[int]
    payloads: list[bytes]
    closed: bool

    @property
    def end(self) -> tuple[int, int]:
        """The offset after the last (as numbers)."""
        return self.seq + len(self.payloads), self.positions[-1]


class StreamView(Protocol):
    """A readable stream, as the catch-up, long-poll and SSE reads see it.

    A live read's driver keeps one shared tail per ``tail_key`` for all the stream's readers; its
    follower runs ``follow`` and keeps what it yields in a `Window`, from which readers at the
    stream's end take what was appended, without a query each.
    """

    content_type: str
    json: bool
    etag_id: str
    tail_key: tuple[str, ...]
    reads_block: bool  # a read may block its thread (so must not run in an event loop)

    def tail(self) -> tuple[str, bool]:
        """``(tail offset, closed)``."""

    def read(self, offset: str) -> Chunk:
        """What follows ``offset`` now (HttpError if the stream went or the offset is not one of it)."""

    def follow(self) -> AsyncIterator[Appends]:
        """In the event loop: where the stream ends now (no payloads), then what is appended from
        there as it comes, until the stream is closed (the last one yielded says so)."""


class Window:
    """The newest appends of one followed stream, shared by its live readers in this process.

    A reader at any offset in the window gets everything from there to the window's end as one
    chunk (at most MAX_READ_VALUES appends, about MAX_READ_BYTES), joined and SSE-encoded once per
    offset and change however many readers are there; a reader at another offset reads storage.
    """

    def __init__(self, json_mode: bool) -> None:
        self._separator = b"," if json_mode else b""
        self.reset()

    def reset(self) -> None:
        """Forget everything (until the follower extends it again, readers read storage)."""
        self.started = False
        self._closed = False
        self._seq = 0  # the stream's appends before the first one kept
        self._payloads: list[bytes] = []
        self._positions: list[int] = []  # where each kept append starts, then where the last ends
        self._offsets: list[str] = []  # the same boundaries as offsets
        self._index: dict[str, int] = {}  # offset -> its boundary
        self._size = 0
        self._chunks: dict[int, Chunk] = {}  # by boundary, until the window changes

    def extend(self, appends: Appends) -> None:
        """Add what the follower read (a window not ending where it starts begins again there)."""
        if not self.started or appends.seq != self._seq + len(self._payloads) or appends.positions[0] != self._end:
            self.reset()
            self.started, self._seq = True, appends.seq
            self._add_boundary(appends.positions[0])
        self._payloads.extend(appends.payloads)
        for position in appends.positions[1:]:
            self._add_boundary(position)
        self._size += sum(len(payload) for payload in appends.payloads)
        self._closed = appends.closed
        self._chunks.clear()
        if len(self._payloads) > WINDOW_APPENDS or self._size > WINDOW_BYTES:
            self._trim()

    @property
    def _end(self) -> int:
        return self._positions[-1] if self._positions else -1

    def _add_boundary(self, position: int) -> None:
        offset = format_offset(self._seq + len(self._positions), position)
        self._index[offset] = len(self._positions)
        self._positions.append(position)
        self._offsets.append(offset)

    def _trim(self) -> None:
        """Keep the newest half (by count and bytes): readers further behind read storage."""
        count, drop, size = len(self._payloads), 0, self._size
        while count - drop > 1 and (count - drop > WINDOW_APPENDS // 2 or size > WINDOW_BYTES // 2):
            size -= len(self._payloads[drop])
            drop += 1
        self._seq += drop
        del self._payloads[:drop], self._positions[:drop], self._offsets[:drop]
        self._index = {offset: at for at, offset in enumerate(self._offsets)}
        self._size = size

    def chunk(self, offset: str) -> Chunk | None:
        """All that follows ``offset`` in the window (shared: not to be changed); None when ``offset``
        is not one of its boundaries (``-1`` is, while the window starts at the stream's start)."""
        at = self._index.get(offset)
        if at is None:
            if offset != "-1" or not self.started or (self._seq, self._positions[0]) != (0, 0):
                return None
            at = 0
        chunk = self._chunks.get(at)
        if chunk is None:
            chunk = self._chunks[at] = self._joined(at)
        return chunk

    def _joined(self, at: int) -> Chunk:
        payloads, end, size = self._payloads, at, 0
        while end < len(payloads) and end - at < MAX_READ_VALUES:
            size += len(payloads[end])
            if size > MAX_READ_BYTES and end > at:  # (at least one, however big)
                break
            end += 1
        up_to_date = end == len(payloads)
        payload = self._separator.join(payloads[at:end])
        return Chunk(payload, end - at, self._offsets[end], up_to_date, up_to_date and self._closed)


class StandaloneView:
    """A standalone stream (tables ``http_streams``...), followed through its change key."""

    reads_block = False  # one indexed SQLite read: fine in the event loop

    def __init__(self, storage: Storage, signals: WorkflowSignals, path: str) -> None:
        self._storage = storage
        self._signals = signals
        self.path = path
        outcome, row = storage.http_stream_info(path, time.time())
        _refuse_missing(outcome, path)
        assert row is not None
        self._row = row
        self.content_type = row.content_type
        self.json = bool(row.json)
        self.etag_id = str(row.stream_id)
        self.tail_key = ("stream", path)
        self.change_key = http_stream_key(path)

    def tail(self) -> tuple[str, bool]:
        row = self._tail_row()
        return format_offset(row.next_seq, row.next_position), bool(row.closed)

    def _tail_row(self) -> HttpStreamRow:
        result = self._storage.read_http_stream(self.path, None, 0, time.time())
        return self._current(result.outcome, result.stream)

    def read(self, offset: str) -> Chunk:
        appends, up_to_date = self._appends(parse_offset(offset) or (self._row.next_seq, self._row.next_position))
        next_offset = format_offset(*appends.end)
        payload = (b"," if self.json else b"").join(appends.payloads)
        return Chunk(payload, len(appends.payloads), next_offset, up_to_date, appends.closed)

    def _appends(self, start: tuple[int, int]) -> tuple[Appends, bool]:
        """The appends from ``start`` (about MAX_READ_BYTES), and whether they reach the tail."""
        result = self._storage.read_http_stream(self.path, start, MAX_READ_BYTES, time.time())
        if result.outcome == "bad-offset":
            raise HttpError(400, f"offset {format_offset(*start)} is not an offset of stream {self.path!r}")
        row = self._current(result.outcome, result.stream)
        positions, payloads = [start[1]], []
        for _, position, size, data in result.entries:
            payloads.append(data.replace(b"\n", b",") if self.json else data)
            positions.append(position + size)
        up_to_date = (start[0] + len(payloads), positions[-1]) == (row.next_seq, row.next_position)
        return Appends(start[0], positions, payloads, up_to_date and bool(row.closed)), up_to_date

    def _current(self, outcome: str, row: HttpStreamRow | None) -> HttpStreamRow:
        """The stream's row after a read; HttpError if it went (or was replaced)."""
        _refuse_missing(outcome, self.path)
        assert row is not None
        if row.stream_id != self._row.stream_id:
            raise HttpError(404, f"stream {self.path!r} was deleted (and created again)")
        self._row = row
        return row

    def renew(self) -> None:
        """A read renews a sliding TTL (a write: once per request, in the request's thread)."""
        if self._row.ttl is not None:
            self._storage.touch_http_stream(self._row.stream_id, time.time())

    async def follow(self) -> AsyncIterator[Appends]:
        with self._signals.interest(self.change_key) as interest:
            interest.arm()  # before each read: an append from then on rings it
            row = self._tail_row()
            appends = Appends(row.next_seq, [row.next_position], [], bool(row.closed))
            yield appends
            while not appends.closed:
                await interest.wait_async(None)
                up_to_date = False
                while not up_to_date:  # (an append of more than MAX_READ_BYTES takes several reads)
                    interest.arm()
                    appends, up_to_date = self._appends(appends.end)
                    if appends.payloads or appends.closed:
                        yield appends


class WorkflowView:
    """A workflow's stream, read-only, in JSON mode, read through `Client.read_stream`."""

    content_type = JSON_TYPE
    json = True
    reads_block = True  # `Client.read_stream` refuses to run in an event loop

    def __init__(self, client: Client, workflow_id: str, key: str) -> None:
        self._client = client
        self.workflow_id = workflow_id
        self.key = key
        self.etag_id = "w" + hashlib.blake2s(f"{workflow_id}\0{key}".encode()).hexdigest()[:16]
        self.tail_key = ("workflow", workflow_id, key)
        self.tail()  # WorkflowNotFoundError (404) for an unknown workflow

    def tail(self) -> tuple[str, bool]:
        length, closed = self._length()
        return format_offset(length, length), closed

    def _length(self) -> tuple[int, bool]:
        """``(values, closed)`` of the stream now: closed if it is, or if its workflow has ended."""
        ended = self._client.get_status(self.workflow_id).status not in ("PENDING", "ENQUEUED")
        for stream in self._client.list_streams(self.workflow_id):
            if stream.key == self.key:
                return stream.length, stream.closed or ended
        return 0, ended

    def index(self, offset: str) -> int:
        start = parse_offset(offset)
        if start is None:
            return self._length()[0]
        if start[0] != start[1]:
            raise HttpError(400, f"offset {offset!r} is not an offset of a workflow stream")
        return start[0]

    def read(self, offset: str) -> Chunk:
        start = self.index(offset)
        with self._client.read_stream(self.workflow_id, self.key, start=start, timeout=0) as reader:
            values, ended, more = _take_values(reader, MAX_READ_VALUES)
        if not values and start > self._length()[0]:
            raise HttpError(400, f"offset {offset!r} is past the end of stream {self.key!r} of {self.workflow_id!r}")
        end = start + len(values)
        return Chunk(b",".join(values), len(values), format_offset(end, end), not more, ended)

    async def follow(self) -> AsyncIterator[Appends]:
        start, closed = self._length()  # (two indexed reads: fine in the loop, once per follower)
        yield Appends(start, [start], [], closed)
        if closed:
            return
        reader = self._client.read_stream_async(self.workflow_id, self.key, start=start)
        try:
            async for value in reader:
                payloads = [value_json(value)]
                while reader.buffered() and len(payloads) < MAX_READ_VALUES:  # those read with it
                    payloads.append(value_json(await reader.__anext__()))
                yield Appends(start, list(range(start, start + len(payloads) + 1)), payloads, False)
                start += len(payloads)
        finally:
            reader.close()
        yield Appends(start, [start], [], True)


def _take_values(reader: Any, limit: int) -> tuple[list[bytes], bool, bool]:
    """``(values as JSON, ended, more may follow)`` from a reader that does not wait (timeout 0): at
    most ``limit`` values and about MAX_READ_BYTES."""
    values: list[bytes] = []
    size = 0
    try:
        while len(values) < limit and size < MAX_READ_BYTES:
            values.append(value_json(next(reader)))
            size += len(values[-1])
    except StopIteration:
        return values, True, False
    except TimeoutError:
        return values, False, False
    return values, False, True


def _refuse_missing(outcome: str, path: str) -> None:
    if outcome == "missing":
        raise HttpError(404, f"no stream {path!r}")
    if outcome == "gone":
        raise HttpError(410, f"stream {path!r} was deleted (forks of it still exist)")


# ---- reads: catch-up, long-poll, SSE -------------------------------------------------------------


SSE_LIFETIME_SPREAD = 0.2  # an SSE response lives 80-100% of its sse_lifetime (see _sse_events)


@dataclass
class ReadOptions:
    long_poll_timeout: float = 20.0
    sse_lifetime: float = 60.0  # an SSE response ends by this; the client reconnects from its offset
    keepalive: float = 15.0  # an idle SSE response sends a comment this often (and so notices a gone client)
    private: bool = False  # Cache-Control "private" instead of "public" (a token guards the server)


def read_response(view: StreamView, params: dict[str, str], request: Request, options: ReadOptions) -> Response:
    """A GET of a stream: catch-up, or live (``live=long-poll`` or ``sse``) from ``offset``."""
    live = params.get("live")
    if live not in (None, "long-poll", "sse"):
        raise HttpError(400, f"live must be long-poll or sse, not {live!r}")
    if live is not None and "offset" not in params:
        raise HttpError(400, f"live={live} needs an offset (-1 for the start, now for the tail)")
    offset = params.get("offset", "-1")
    parse_offset(offset)
    if live == "sse":
        return _sse_response(view, offset, params.get("cursor"), options)
    if live == "long-poll":
        return _long_poll_response(view, offset, params.get("cursor"), options)
    return _catch_up_response(view, offset, request, options)


def _body(view: StreamView, payload: bytes) -> bytes:
    return b"[" + payload + b"]" if view.json else payload


def _chunk_headers(view: StreamView, chunk: Chunk) -> dict[str, str]:
    headers = {"Content-Type": view.content_type, "Stream-Next-Offset": chunk.next_offset}
    if chunk.up_to_date:
        headers["Stream-Up-To-Date"] = "true"
    if chunk.closed:
        headers["Stream-Closed"] = "true"
    return headers


def _catch_up_response(view: StreamView, offset: str, request: Request, options: ReadOptions) -> Response:
    if offset == "now":
        tail, closed = view.tail()
        chunk = Chunk(b"", 0, tail, True, closed)
        return Response(200, {**_chunk_headers(view, chunk), "Cache-Control": "no-store"}, _body(view, b""))
    chunk = view.read(offset)
    etag = f'"{view.etag_id}:{offset}:{chunk.next_offset}{":closed" if chunk.closed else ""}"'
    headers = {**_chunk_headers(view, chunk), "ETag": etag}
    # A read that stops before the tail returns bytes that never change; one at the tail may grow.
    scope = "private" if options.private else "public"
    headers["Cache-Control"] = "no-cache" if chunk.up_to_date else f"{scope}, max-age=60, stale-while-revalidate=300"
    if etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(304, headers)
    return Response(200, headers, _body(view, chunk.payload))


def _long_poll_response(view: StreamView, offset: str, cursor: str | None, options: ReadOptions) -> Response:
    if offset == "now":
        offset = view.tail()[0]
    return Response(200, plan=_long_poll(view, offset, cursor, time.monotonic() + options.long_poll_timeout))


def _long_poll(view: StreamView, offset: str, cursor: str | None, deadline: float) -> LongPoll:
    """Data from ``offset`` as soon as there is some (200), else a 204 once the stream is closed or
    ``deadline`` passes."""
    try:
        while True:
            chunk = yield Read(view, offset)
            if chunk.count or chunk.closed or not (yield Pause(view, deadline)):
                break
    except HttpError as exc:  # the stream went meanwhile
        return StreamService.secure(error_response(exc.status, str(exc), exc.headers))
    except WorkflowNotFoundError as exc:
        return StreamService.secure(error_response(404, str(exc)))
    headers = {**_chunk_headers(view, chunk), "Stream-Cursor": next_cursor(cursor, time.time())}
    if not chunk.count:
        headers["Stream-Up-To-Date"] = "true"
        return StreamService.secure(Response(204, headers))
    return StreamService.secure(Response(200, {**headers, "Cache-Control": "no-cache"}, _body(view, chunk.payload)))


def _sse_response(view: StreamView, offset: str, cursor: str | None, options: ReadOptions) -> Response:
    binary = not (view.content_type.startswith("text/") or view.json)
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if binary:
        headers["Stream-SSE-Data-Encoding"] = "base64"
    if offset == "now":
        offset = view.tail()[0]
    else:
        view.read(offset)  # refuses a bad offset before the response starts
    return Response(200, headers, events=_sse_events(view, offset, cursor, binary, options))


def _sse_events(view: StreamView, offset: str, cursor: str | None, binary: bool, options: ReadOptions) -> Events:
    """Data events each followed by a control event, then, once caught up, a control event with
    ``upToDate``; then it waits, and ends when the stream closes or after its lifetime: between 80%
    and all of ``sse_lifetime``, drawn at random, so that clients who connected together (after a
    restart, say) do not all come back at the same moment."""
    ends = time.monotonic() + options.sse_lifetime * (1 - SSE_LIFETIME_SPREAD * random.random())
    announced = False  # a control event said "up to date" at this offset
    try:
        while True:
            chunk = yield Read(view, offset)
            if chunk.count or chunk.closed or not announced:
                yield _sse_events_of(view, chunk, cursor, binary)
                offset, announced = chunk.next_offset, chunk.up_to_date
                if chunk.closed:
                    return
                if chunk.count and not chunk.up_to_date:
                    continue
            now = time.monotonic()
            if now >= ends:
                return
            if not (yield Pause(view, min(now + options.keepalive, ends))) and time.monotonic() < ends:
                yield b": keep-alive\n\n"  # (none as the response ends: it ends at once)
    except (HttpError, WorkflowNotFoundError, DatabaseError) as exc:
        # The stream went, or the server is closing: the client reconnects and learns which.
        logger.debug("an SSE response ends: %s", exc)


def _sse_events_of(view: StreamView, chunk: Chunk, cursor: str | None, binary: bool) -> bytes:
    """A chunk's data event (if it has data) and control event, encoded once per chunk and cursor."""
    frame = chunk.frames.get(cursor)
    if frame is None:
        data = _sse_data(view, chunk, binary) if chunk.count else b""
        frame = chunk.frames[cursor] = data + _sse_control(chunk, cursor)
    return frame


def _sse_data(view: StreamView, chunk: Chunk, binary: bool) -> bytes:
    if binary:
        text = base64.b64encode(chunk.payload).decode("ascii")
    elif view.json:
        text = _body(view, chunk.payload).decode("utf-8")
    else:
        text = chunk.payload.decode("utf-8", "replace")
    return sse_event("data", text).encode()


def _sse_control(chunk: Chunk, cursor: str | None) -> bytes:
    control: dict[str, Any] = {"streamNextOffset": chunk.next_offset}
    if chunk.closed:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = next_cursor(cursor, time.time())
    if chunk.up_to_date:
        control["upToDate"] = True
    return sse_event("control", json.dumps(control, separators=(",", ":"))).encode()


# ---- the service --------------------------------------------------------------------------------


class StreamService:
    """Answers Durable Streams requests for one database file."""

    def __init__(
        self, storage: Storage, client: Client, feed: ChangeFeed, signals: WorkflowSignals, options: ReadOptions
    ) -> None:
        self.storage = storage
        self.client = client
        self.feed = feed  # the file's change feed: appends made here are signalled through it
        self.signals = signals  # a standalone stream's live readers wait on an interest in its change key
        self.options = options

    def handle(self, request: Request) -> Response:
        """The response to ``request`` (errors become their status with a one-line message)."""
        try:
            response = self._route(request)
        except HttpError as exc:
            response = error_response(exc.status, str(exc), exc.headers)
        except WorkflowNotFoundError as exc:
            response = error_response(404, str(exc))
        return self.secure(response)

    @staticmethod
    def secure(response: Response) -> Response:
        """Add the headers every response carries: no MIME sniffing, cross-origin reads allowed."""
        response.headers.update(SECURITY_HEADERS)
        return response

    def _route(self, request: Request) -> Response:
        parts = urlsplit(request.target)
        if request.method == "OPTIONS":
            return _preflight(request)
        if not parts.path.startswith(PREFIX) or parts.path == PREFIX:
            raise HttpError(404, f"no stream at {parts.path!r}: streams are served under {PREFIX}<path>")
        name = parts.path[len(PREFIX) :]
        params = _query(parts.query)
        if name.startswith(WORKFLOWS):
            return self._workflow_stream(request, name[len(WORKFLOWS) :], params)
        path = unquote(name)
        handler = {"GET": self._get, "HEAD": self._head, "PUT": self._put, "POST": self._post, "DELETE": self._delete}
        if request.method not in handler:
            raise HttpError(405, f"method {request.method} is not allowed", {"Allow": ALL_METHODS})
        return handler[request.method](path, request, params)

    # ---- standalone streams

    def _get(self, path: str, request: Request, params: dict[str, str]) -> Response:
        view = StandaloneView(self.storage, self.signals, path)
        view.renew()
        return read_response(view, params, request, self.options)

    def _head(self, path: str, request: Request, params: dict[str, str]) -> Response:
        outcome, row = self.storage.http_stream_info(path, time.time())
        _refuse_missing(outcome, path)
        assert row is not None
        headers = _stream_headers(row)
        if row.ttl is not None:
            headers["Stream-TTL"] = str(row.ttl)
        if row.expires_at is not None:
            headers["Stream-Expires-At"] = format_expires_at(row.expires_at)
        return Response(200, {**headers, "Cache-Control": "no-store"})

    def _put(self, path: str, request: Request, params: dict[str, str]) -> Response:
        spec = self._create_spec(path, request.headers)
        body = _entry(request.body, spec.json)
        outcome, row = self.storage.create_http_stream(spec, body, time.time())
        if outcome in ("created", "exists"):
            assert row is not None
            headers = _stream_headers(row)
            if outcome == "created":
                headers["Location"] = request.base_url + urlsplit(request.target).path
            return Response(201 if outcome == "created" else 200, headers)
        refusals = {
            "conflict": (409, f"stream {path!r} exists with another configuration"),
            "gone": (409, f"stream {path!r} was deleted while forks of it exist: its path cannot be used again yet"),
            "source-missing": (404, f"no stream {spec.fork_source!r} to fork"),
            "source-gone": (409, f"stream {spec.fork_source!r} was deleted: it cannot be forked"),
            "source-mismatch": (409, f"a fork keeps its source's content type: {spec.fork_source!r} is not "
                                f"{spec.media_type}"),
            "bad-fork-offset": (400, f"Stream-Fork-Offset is not an offset of stream {spec.fork_source!r}"),
            "bad-sub-offset": (400, "Stream-Fork-Sub-Offset goes past the append at the fork offset"),
        }
        raise HttpError(*refusals[outcome])

    def _create_spec(self, path: str, headers: Mapping[str, str]) -> HttpStreamSpec:
        ttl = parse_decimal("Stream-TTL", headers.get("stream-ttl"))
        expires_at = parse_expires_at(headers.get("stream-expires-at"))
        if ttl is not None and expires_at is not None:
            raise HttpError(400, "give Stream-TTL or Stream-Expires-At, not both")
        source_url, fork_offset = headers.get("stream-forked-from"), headers.get("stream-fork-offset")
        sub_offset = parse_decimal("Stream-Fork-Sub-Offset", headers.get("stream-fork-sub-offset"))
        if source_url is None and (fork_offset is not None or sub_offset is not None):
            raise HttpError(400, "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From")
        source = None if source_url is None else _stream_path(source_url)
        content_type = headers.get("content-type")
        if content_type is None and source is not None:
            content_type = self._source_content_type(source)
        content_type, media_type = parse_content_type(content_type or DEFAULT_CONTENT_TYPE)
        fork_at = None if fork_offset is None else parse_offset(fork_offset)
        closed = parse_flag("Stream-Closed", headers.get("stream-closed"))
        return HttpStreamSpec(path, content_type, media_type, media_type == JSON_TYPE, ttl, expires_at, closed,
                              source, fork_at, sub_offset or 0)  # fmt: skip

    def _source_content_type(self, source: str) -> str:
        """The content type a fork takes when its request names none: its source's."""
        outcome, row = self.storage.http_stream_info(source, time.time())
        if outcome == "gone":
            raise HttpError(409, f"stream {source!r} was deleted: it cannot be forked")
        if row is None or outcome != "ok":
            raise HttpError(404, f"no stream {source!r} to fork")
        return row.content_type

    def _post(self, path: str, request: Request, params: dict[str, str]) -> Response:
        headers = request.headers
        close = parse_flag("Stream-Closed", headers.get("stream-closed"))
        producer = parse_producer(headers)
        if not request.body and not close:
            raise HttpError(400, "an append needs a body (or Stream-Closed: true to close the stream)")
        entry, media_type = None, None
        if request.body:
            if not headers.get("content-type"):
                raise HttpError(400, "an append needs a Content-Type (the stream's)")
            media_type = parse_content_type(headers["content-type"])[1]
            entry = _entry(request.body, media_type == JSON_TYPE)
            if entry is None:
                raise HttpError(400, "an empty JSON array appends nothing")
        stream_seq = headers.get("stream-seq")
        result = self.storage.append_http_stream(
            path, entry, media_type, close=close, stream_seq=stream_seq, producer=producer, now=time.time()
        )
        if result.outcome == "appended":
            self._wake(path)
        return _append_response(path, result, producer, entry)

    def _wake(self, path: str) -> None:
        """Wake the stream's waiters: this process's at once, other processes' through the change feed."""
        self.feed.signal([http_stream_key(path)])

    def _delete(self, path: str, request: Request, params: dict[str, str]) -> Response:
        outcome = self.storage.delete_http_stream(path, time.time())
        _refuse_missing(outcome, path)
        self._wake(path)
        return Response(204)

    # ---- workflow streams

    def _workflow_stream(self, request: Request, name: str, params: dict[str, str]) -> Response:
        workflow_id, slash, key = name.partition("/")
        if not slash or not workflow_id or not key:
            where = f"{PREFIX}{WORKFLOWS}<workflow id>/<key>"
            raise HttpError(404, f"a workflow stream is {where} (percent-encode a / in the id)")
        if request.method not in ("GET", "HEAD"):
            refusal = "workflow streams are read-only: only their workflow writes to them"
            raise HttpError(405, refusal, {"Allow": READ_ONLY})
        view = WorkflowView(self.client, unquote(workflow_id), unquote(key))
        if request.method == "HEAD":
            tail, closed = view.tail()
            headers = {"Content-Type": JSON_TYPE, "Stream-Next-Offset": tail, "Cache-Control": "no-store"}
            return Response(200, {**headers, **({"Stream-Closed": "true"} if closed else {})})
        return read_response(view, params, request, self.options)


def _query(query: str) -> dict[str, str]:
    """The query's parameters; HttpError(400) for an empty or repeated offset."""
    params = parse_qs(query, keep_blank_values=True)
    offsets = params.get("offset", [])
    if len(offsets) > 1:
        raise HttpError(400, "give one offset, not several")
    if offsets and not offsets[0]:
        raise HttpError(400, "offset must not be empty (-1 for the start, now for the tail)")
    return {name: values[-1] for name, values in params.items()}


def _stream_path(url: str) -> str:
    """The stream path a ``Stream-Forked-From`` value names (a path under /v1/stream/, or a full URL)."""
    path = urlsplit(url).path
    if not path.startswith(PREFIX) or path == PREFIX or path[len(PREFIX) :].startswith(WORKFLOWS):
        raise HttpError(400, f"Stream-Forked-From must name a stream under {PREFIX}, not {url!r}")
    return unquote(path[len(PREFIX) :])


def _entry(body: bytes, json_mode: bool) -> HttpEntry | None:
    """The append a body makes (None: nothing to append)."""
    if not json_mode:
        return HttpEntry(body, len(body)) if body else None
    messages = json_messages(body)
    return HttpEntry(b"\n".join(messages), len(messages)) if messages else None


def _stream_headers(row: HttpStreamRow) -> dict[str, str]:
    headers = {"Content-Type": row.content_type, "Stream-Next-Offset": format_offset(row.next_seq, row.next_position)}
    if row.closed:
        headers["Stream-Closed"] = "true"
    return headers


def _append_response(path: str, result: Any, producer: HttpProducer | None, entry: HttpEntry | None) -> Response:
    row = result.stream
    headers = _stream_headers(row) if row is not None else {}
    headers.pop("Content-Type", None)
    if result.outcome == "appended":
        if producer is not None:
            headers.update({"Producer-Epoch": str(result.epoch), "Producer-Seq": str(result.seq)})
        return Response(200 if producer is not None and entry is not None else 204, headers)
    if result.outcome == "duplicate":
        return Response(204, {**headers, "Producer-Epoch": str(result.epoch), "Producer-Seq": str(result.seq)})
    if result.outcome == "closed" and entry is None:
        return Response(204, headers)  # closing a closed stream: done already
    _refuse_missing(result.outcome, path)
    received = producer.seq if producer is not None else None
    refusals: dict[str, tuple[int, str, dict[str, str]]] = {
        "closed": (409, f"stream {path!r} is closed", headers),
        "content-type": (409, f"Content-Type does not match stream {path!r} ({row.content_type if row else ''})", {}),
        "stale-epoch": (403, f"producer epoch {producer and producer.epoch} is older than {result.epoch}",
                        {"Producer-Epoch": str(result.epoch)}),
        "bad-epoch-seq": (400, "a new producer epoch must start at Producer-Seq 0", {}),
        "seq-gap": (409, f"Producer-Seq {received} skips ahead: {result.seq} expected",
                    {"Producer-Expected-Seq": str(result.seq), "Producer-Received-Seq": str(received)}),
        "stream-seq": (409, "Stream-Seq must sort after the last one accepted", {}),
    }  # fmt: skip
    status, message, extra = refusals[result.outcome]
    raise HttpError(status, message, extra)


def _preflight(request: Request) -> Response:
    asked = request.headers.get("access-control-request-headers")
    return Response(204, {
        "Access-Control-Allow-Methods": ALL_METHODS,
        "Access-Control-Allow-Headers": asked or ALLOWED_HEADERS,
        "Access-Control-Max-Age": "86400",
    })  # fmt: skip
