"""`litedur serve`: the Durable Streams protocol over HTTP, against a real server, real HTTP and a real
SQLite file: standalone streams (create, append, read, long-poll, SSE, restart), the workflows'
streams read live while a workflow writes them, the bearer token and the errors a user can meet.
(The protocol's own conformance suite is tests/test_conformance.py.)"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

import litedur
from litedur.http_streams import MAX_READ_VALUES, WINDOW_APPENDS, Appends, Window, format_offset
from litedur.server import ServeError

TIMEOUT = 10.0  # seconds any single HTTP exchange of these tests may take


# ---- helpers --------------------------------------------------------------------------------------


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {name.lower(): value for name, value in response.getheaders()}
        self.body = response.read()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def offset(self) -> str:
        return self.headers["stream-next-offset"]


def call(server: litedur.Server, method: str, path: str, body: bytes | str | None = None, **headers: str) -> Reply:
    """One request on a new connection; header names given with underscores (Content_Type)."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=TIMEOUT)
    try:
        data = body.encode() if isinstance(body, str) else body
        connection.request(method, path, body=data, headers={k.replace("_", "-"): v for k, v in headers.items()})
        return Reply(connection.getresponse())
    finally:
        connection.close()


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run ``fn`` in a thread; the dict gets ``result`` (or ``error``) and a ``done`` event."""
    outcome: dict[str, Any] = {"done": threading.Event()}

    def run() -> None:
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc
        outcome["done"].set()

    threading.Thread(target=run, daemon=True).start()
    return outcome


def finished(outcome: dict[str, Any]) -> Any:
    assert outcome["done"].wait(TIMEOUT), "the request did not finish in time"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class SSE:
    """An SSE response read event by event: ``next_event()`` -> (type, data)."""

    def __init__(self, server: litedur.Server, path: str) -> None:
        self._connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=TIMEOUT)
        self._connection.request("GET", path)
        self.response = self._connection.getresponse()
        self._buffer = b""

    def next_event(self) -> tuple[str, str]:
        while True:
            while b"\n\n" in self._buffer:
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                lines = block.decode().split("\n")
                kind = next((line[6:].strip() for line in lines if line.startswith("event:")), "")
                data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
                if kind:
                    return kind, data
            piece = self.response.read1(65536)
            if not piece:
                raise EOFError("the SSE response ended")
            self._buffer += piece

    def data_until_closed(self) -> list[Any]:
        """JSON values of every data event up to the control event that says the stream closed."""
        values: list[Any] = []
        while True:
            kind, data = self.next_event()
            if kind == "data":
                values.extend(json.loads(data))
            elif json.loads(data).get("streamClosed"):
                return values

    def ended(self) -> bool:
        return self.response.read1(65536) == b""

    def close(self) -> None:
        self._connection.close()


@pytest.fixture
def served(location, monkeypatch):
    """Start servers on a file of this test (``served(**options)``); all are closed at the end."""
    monkeypatch.delenv("LITEDUR_TOKEN", raising=False)  # a token of the environment would guard them
    started: list[litedur.Server] = []

    def start(path: Path | None = None, **options: Any) -> litedur.Server:
        options.setdefault("port", 0)
        options.setdefault("create", True)
        server = litedur.Server(path or location("streams.db"), **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def server(served) -> litedur.Server:
    return served(long_poll_timeout=30)


# ---- standalone streams ---------------------------------------------------------------------------


def test_a_stream_is_created_appended_to_and_read_back(server):
    created = call(server, "PUT", "/v1/stream/notes", "hello", Content_Type="text/plain")
    assert created.status == 201 and created.headers["location"].endswith("/v1/stream/notes")
    appended = call(server, "POST", "/v1/stream/notes", " world", Content_Type="text/plain")
    assert appended.status == 204 and appended.offset > created.offset
    read = call(server, "GET", "/v1/stream/notes")
    assert (read.status, read.body) == (200, b"hello world")
    assert read.headers["content-type"] == "text/plain" and read.headers["stream-up-to-date"] == "true"
    assert read.offset == appended.offset
    assert call(server, "PUT", "/v1/stream/notes", Content_Type="text/plain").status == 200  # idempotent
    assert call(server, "PUT", "/v1/stream/notes", Content_Type="application/json").status == 409


def test_json_mode_keeps_each_message_and_flattens_one_level(server):
    call(server, "PUT", "/v1/stream/events", '{"n": 1}', Content_Type="application/json")
    call(server, "POST", "/v1/stream/events", '[{"n": 2}, [3, 4]]', Content_Type="application/json")
    assert call(server, "GET", "/v1/stream/events").json() == [{"n": 1}, {"n": 2}, [3, 4]]
    refused = call(server, "POST", "/v1/stream/events", "{not json", Content_Type="application/json")
    assert refused.status == 400 and b"invalid JSON" in refused.body


def test_a_read_resumes_exactly_at_an_offset_it_was_given(server):
    call(server, "PUT", "/v1/stream/log", Content_Type="application/octet-stream")
    offsets = [call(server, "POST", "/v1/stream/log", f"<{n}>", Content_Type="application/octet-stream").offset
               for n in range(5)]  # fmt: skip
    assert offsets == sorted(offsets) and len(set(offsets)) == 5  # opaque, but sorted as strings
    for n, offset in enumerate(offsets):
        rest = call(server, "GET", f"/v1/stream/log?offset={offset}")
        assert rest.body == "".join(f"<{m}>" for m in range(n + 1, 5)).encode()
    assert call(server, "GET", "/v1/stream/log?offset=not-an-offset").status == 400


def test_a_long_poll_is_woken_by_an_append(server):
    tail = call(server, "PUT", "/v1/stream/chat", Content_Type="text/plain").offset
    started = time.monotonic()
    poll = in_thread(call, server, "GET", f"/v1/stream/chat?offset={tail}&live=long-poll")
    wait_until(lambda: server.live_readers() == 1, timeout=TIMEOUT)
    call(server, "POST", "/v1/stream/chat", "ping", Content_Type="text/plain")
    reply = finished(poll)
    assert (reply.status, reply.body) == (200, b"ping")
    assert time.monotonic() - started < 30  # woken, not timed out
    assert reply.headers["stream-cursor"].isdigit()


def test_a_long_poll_of_a_stream_deleted_meanwhile_answers_404_and_an_sse_response_ends(server):
    tail = call(server, "PUT", "/v1/stream/gone", Content_Type="text/plain").offset
    poll = in_thread(call, server, "GET", f"/v1/stream/gone?offset={tail}&live=long-poll")
    reader = SSE(server, f"/v1/stream/gone?offset={tail}&live=sse")
    try:
        assert reader.next_event()[0] == "control"
        wait_until(lambda: server.live_readers() == 2, timeout=TIMEOUT)
        assert call(server, "DELETE", "/v1/stream/gone").status == 204
        assert finished(poll).status == 404
        assert reader.ended()
    finally:
        reader.close()


def test_a_long_poll_answers_204_when_nothing_comes(served):
    server = served(long_poll_timeout=0.2)
    tail = call(server, "PUT", "/v1/stream/quiet", Content_Type="text/plain").offset
    reply = call(server, "GET", f"/v1/stream/quiet?offset={tail}&live=long-poll")
    assert reply.status == 204 and reply.offset == tail and reply.headers["stream-up-to-date"] == "true"


def test_sse_sends_what_exists_then_live_values_then_ends_when_the_stream_closes(server):
    call(server, "PUT", "/v1/stream/feed", '[{"n": 0}]', Content_Type="application/json")
    reader = SSE(server, "/v1/stream/feed?offset=-1&live=sse")
    try:
        assert reader.response.getheader("content-type") == "text/event-stream"
        kind, data = reader.next_event()
        assert (kind, json.loads(data)) == ("data", [{"n": 0}])  # the message as it was sent
        kind, control = reader.next_event()
        assert kind == "control" and json.loads(control)["upToDate"] is True
        wait_until(lambda: server.live_readers() == 1, timeout=TIMEOUT)
        for n in (1, 2):
            call(server, "POST", "/v1/stream/feed", json.dumps({"n": n}), Content_Type="application/json")
        call(server, "POST", "/v1/stream/feed", '{"n": 3}', Content_Type="application/json", Stream_Closed="true")
        assert reader.data_until_closed() == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert reader.ended()
    finally:
        reader.close()


def test_an_sse_response_ends_within_its_lifetime_at_a_random_moment_with_its_offset(served):
    server = served(sse_lifetime=1.0)
    tail = call(server, "PUT", "/v1/stream/idle", Content_Type="text/plain").offset
    lived = []
    for _ in range(5):
        opened = time.monotonic()
        reader = SSE(server, f"/v1/stream/idle?offset={tail}&live=sse")
        try:
            kind, control = reader.next_event()
            assert kind == "control" and json.loads(control)["streamNextOffset"] == tail
            assert reader.ended()  # no value comes: the response ends at its lifetime, not the stream's
            lived.append(time.monotonic() - opened)
        finally:
            reader.close()
    assert all(0.75 <= seconds < 1.0 + TIMEOUT for seconds in lived), lived  # 80-100% of 1 s, plus slack
    assert len({round(seconds, 3) for seconds in lived}) > 1, lived  # drawn at random: not all alike


def test_a_restarted_server_has_lost_nothing(served, tmp_path):
    path = tmp_path / "durable.db"
    first = served(path)
    call(first, "PUT", "/v1/stream/jobs", Content_Type="application/json")
    for n in range(3):
        reply = call(first, "POST", "/v1/stream/jobs", json.dumps({"job": n}), Content_Type="application/json",
                     Producer_Id="worker", Producer_Epoch="0", Producer_Seq=str(n))  # fmt: skip
        assert reply.status == 200
    call(first, "POST", "/v1/stream/jobs", Stream_Closed="true")
    tail = call(first, "HEAD", "/v1/stream/jobs").offset
    first.close()
    second = served(path, create=False)
    read = call(second, "GET", "/v1/stream/jobs")
    assert read.json() == [{"job": 0}, {"job": 1}, {"job": 2}]
    assert read.offset == tail and read.headers["stream-closed"] == "true"
    retried = call(second, "POST", "/v1/stream/jobs", json.dumps({"job": 2}), Content_Type="application/json",
                   Producer_Id="worker", Producer_Epoch="0", Producer_Seq="2")  # fmt: skip
    assert (retried.status, retried.headers["producer-seq"]) == (204, "2")  # the producer's state survived too


def test_an_append_in_another_process_wakes_a_long_poll_here(server, tmp_path):
    tail = call(server, "PUT", "/v1/stream/shared", Content_Type="text/plain").offset
    poll = in_thread(call, server, "GET", f"/v1/stream/shared?offset={tail}&live=long-poll")
    wait_until(lambda: server.live_readers() == 1, timeout=TIMEOUT)
    code = (
        "import sys, litedur, urllib.request\n"
        "with litedur.Server(sys.argv[1], port=0) as other:\n"
        "    other.start()\n"
        "    request = urllib.request.Request(other.url + '/v1/stream/shared', data=b'from afar', method='POST',\n"
        "                                     headers={'Content-Type': 'text/plain'})\n"
        "    urllib.request.urlopen(request).read()\n"
    )
    subprocess.run([sys.executable, "-c", code, server.path], check=True, timeout=60)
    reply = finished(poll)
    assert (reply.status, reply.body) == (200, b"from afar")


def sse_events_of(raw: bytes) -> list[tuple[str, str]]:
    """The events of a whole chunked SSE response (head included), in order: (type, data)."""
    body, at = b"", raw.index(b"\r\n\r\n") + 4
    while True:
        line_end = raw.index(b"\r\n", at)
        size = int(raw[at:line_end], 16)
        if size == 0:
            break
        body += raw[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2
    events = []
    for block in body.split(b"\n\n")[:-1]:
        lines = block.decode().split("\n")
        kind = next((line[6:].strip() for line in lines if line.startswith("event:")), "")
        if kind:
            events.append((kind, "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))))
    return events


def test_a_reader_that_does_not_keep_up_holds_up_no_one_then_gets_everything_in_fewer_events(server):
    tail = call(server, "PUT", "/v1/stream/big", Content_Type="text/plain").offset
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so what the server sends backs up in it
    slow.settimeout(TIMEOUT)
    slow.connect((server.host, server.port))
    slow.sendall(f"GET /v1/stream/big?offset={tail}&live=sse HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    fast = SSE(server, f"/v1/stream/big?offset={tail}&live=sse")
    try:
        assert fast.next_event()[0] == "control"
        wait_until(lambda: server.live_readers() == 2, timeout=TIMEOUT)
        appends = [f"<{n:03d}>".encode() * 32768 for n in range(48)]  # 160 KiB each: more than socket buffers hold
        for n, data in enumerate(appends):
            closing = {"Stream_Closed": "true"} if n == len(appends) - 1 else {}
            assert call(server, "POST", "/v1/stream/big", data, Content_Type="text/plain", **closing).status == 204
        got = ""
        while True:  # the fast reader gets everything while the slow one has read nothing yet
            kind, data = fast.next_event()
            if kind == "data":
                got += data
            elif json.loads(data).get("streamClosed"):
                break
        assert got.encode() == b"".join(appends)
        raw = b""
        while piece := slow.recv(1 << 20):
            raw += piece
        events = sse_events_of(raw)
        assert "".join(data for kind, data in events if kind == "data").encode() == b"".join(appends)
        assert json.loads(events[-1][1]).get("streamClosed") is True
        assert sum(kind == "data" for kind, _ in events) < len(appends)  # what came meanwhile came together
    finally:
        fast.close()
        slow.close()


# ---- workflow streams -------------------------------------------------------------------------------


@dataclass
class Writer:
    """An engine whose workflow ``tell`` writes one word to the stream "words" per ``gate.release()``."""

    app: litedur.Engine
    tell: Any
    gate: threading.Semaphore

    def start(self, workflow_id: str, words: list[str]) -> litedur.WorkflowHandle:
        with litedur.SetWorkflowID(workflow_id):
            return self.app.start_workflow(self.tell, words)


@pytest.fixture
def writer(engines, location) -> Writer:
    app = engines(location("streams.db"))
    gate = threading.Semaphore(0)

    @app.workflow()
    def tell(words: list[str]) -> int:
        for word in words:
            assert gate.acquire(timeout=TIMEOUT)
            app.write_stream("words", word)
        return len(words)

    app.launch()
    return Writer(app, tell, gate)


def test_a_workflow_stream_is_read_live_over_sse_while_the_workflow_writes(writer, served):
    server = served()
    handle = writer.start("story", ["once", "upon", "a", "time"])
    writer.gate.release()
    assert next(writer.app.read_stream("story", "words", timeout=TIMEOUT)) == "once"  # written
    reader = SSE(server, "/v1/stream/workflows/story/words?offset=-1&live=sse")
    try:
        assert reader.next_event() == ("data", '["once"]')
        wait_until(lambda: server.live_readers() == 1, timeout=TIMEOUT)
        for _ in range(3):
            writer.gate.release()
        assert reader.data_until_closed() == ["upon", "a", "time"]  # closed: the workflow ended
        assert handle.get_result(timeout=TIMEOUT) == 4
    finally:
        reader.close()


def test_a_workflow_stream_long_poll_is_woken_by_a_write_and_offsets_resume_exactly(writer, served):
    server = served(long_poll_timeout=30)
    handle = writer.start("chat", ["a", "b", "c"])
    writer.gate.release()
    first = call(server, "GET", "/v1/stream/workflows/chat/words?offset=-1&live=long-poll")
    assert first.json() == ["a"] and first.headers["content-type"] == "application/json"
    poll = in_thread(call, server, "GET", f"/v1/stream/workflows/chat/words?offset={first.offset}&live=long-poll")
    wait_until(lambda: server.live_readers() == 1, timeout=TIMEOUT)
    writer.gate.release()
    second = finished(poll)
    assert second.json() == ["b"]
    writer.gate.release()
    assert handle.get_result(timeout=TIMEOUT) == 3
    rest = call(server, "GET", f"/v1/stream/workflows/chat/words?offset={second.offset}")
    assert rest.json() == ["c"] and rest.headers["stream-closed"] == "true"
    assert call(server, "GET", f"/v1/stream/workflows/chat/words?offset={first.offset}").json() == ["b", "c"]
    head = call(server, "HEAD", "/v1/stream/workflows/chat/words")
    assert head.offset == rest.offset and head.headers["stream-closed"] == "true"


def test_many_sse_readers_of_a_workflow_stream_each_get_every_value_once_in_order(writer, served):
    server = served()
    words = [f"w{n}" for n in range(60)]
    handle = writer.start("crowd", words)
    readers = [SSE(server, "/v1/stream/workflows/crowd/words?offset=-1&live=sse") for _ in range(20)]
    try:
        for reader in readers:
            kind, control = reader.next_event()
            assert kind == "control" and json.loads(control)["upToDate"] is True  # nothing written yet
        wait_until(lambda: server.live_readers() == 20, timeout=TIMEOUT)
        for _ in range(30):  # a burst: values come faster than one by one
            writer.gate.release()
        late = SSE(server, "/v1/stream/workflows/crowd/words?offset=-1&live=sse")
        readers.append(late)
        for _ in range(30):
            writer.gate.release()
        assert handle.get_result(timeout=TIMEOUT) == 60
        for reader in readers:
            assert reader.data_until_closed() == words
    finally:
        for reader in readers:
            reader.close()


def test_a_workflow_stream_refuses_writes_and_an_unknown_workflow_is_404(writer, served):
    server = served()
    writer.start("quiet", ["x"])
    for method in ("PUT", "POST", "DELETE"):
        refused = call(server, method, "/v1/stream/workflows/quiet/words", "[1]", Content_Type="application/json")
        assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD, OPTIONS"
    missing = call(server, "GET", "/v1/stream/workflows/nobody/words")
    assert missing.status == 404 and b"nobody" in missing.body
    writer.gate.release()


# ---- the window the live readers of a stream share -------------------------------------------------


def test_a_window_gives_a_reader_at_any_offset_in_it_everything_that_follows_as_one_chunk():
    window = Window(json_mode=True)
    assert window.chunk("-1") is None  # not started: read storage
    window.extend(Appends(0, [0], [], False))
    start = window.chunk("-1")
    assert start is not None and (start.payload, start.count, start.up_to_date) == (b"", 0, True)
    window.extend(Appends(0, [0, 1, 3], [b"1", b"[2,3]"], False))
    window.extend(Appends(2, [3, 4], [b'"x"'], True))
    everything = window.chunk(format_offset(0, 0))
    assert everything is window.chunk("-1") and everything is not None  # built once for every reader there
    assert (everything.payload, everything.count, everything.next_offset) == (b'1,[2,3],"x"', 3, format_offset(3, 4))
    assert everything.up_to_date and everything.closed
    rest = window.chunk(format_offset(1, 1))
    assert rest is not None and (rest.payload, rest.count) == (b'[2,3],"x"', 2)
    end = window.chunk(format_offset(3, 4))
    assert end is not None and (end.count, end.up_to_date, end.closed) == (0, True, True)
    assert window.chunk(format_offset(1, 2)) is None  # not a boundary: storage says what it is


def test_a_window_keeps_the_newest_appends_and_begins_again_where_a_follower_restarts():
    window = Window(json_mode=False)
    window.extend(Appends(5, [50], [], False))
    count = WINDOW_APPENDS + 1
    window.extend(Appends(5, [50 + n for n in range(count + 1)], [b"x"] * count, False))
    assert window.chunk(format_offset(5, 50)) is None  # dropped: a reader there reads storage
    newest = window.chunk(format_offset(5 + count - 1, 50 + count - 1))
    assert newest is not None and (newest.payload, newest.next_offset) == (b"x", format_offset(5 + count, 50 + count))
    oldest = count - WINDOW_APPENDS // 2  # the newest half is kept
    kept = window.chunk(format_offset(5 + oldest, 50 + oldest))
    assert kept is not None and kept.count == MAX_READ_VALUES and not kept.up_to_date  # at most that per event
    assert window.chunk(format_offset(5 + oldest - 1, 50 + oldest - 1)) is None
    window.extend(Appends(100, [900, 901], [b"y"], False))  # not where it ended: it starts there
    assert window.chunk(format_offset(5 + count, 50 + count)) is None
    restarted = window.chunk(format_offset(100, 900))
    assert restarted is not None and restarted.payload == b"y"


# ---- the token, and errors -------------------------------------------------------------------------


def test_a_non_loopback_address_needs_a_token_and_every_request_is_checked(served):
    with pytest.raises(ServeError, match="'0.0.0.0'.*needs a bearer token"):
        served(host="0.0.0.0")
    server = served(host="0.0.0.0", token="s3cret")
    assert server.url.startswith("http://0.0.0.0:")
    assert call(server, "PUT", "/v1/stream/private", Content_Type="text/plain").status == 401
    assert call(server, "GET", "/v1/stream/private", Authorization="Bearer wrong").status == 401
    created = call(server, "PUT", "/v1/stream/private", Content_Type="text/plain", Authorization="Bearer s3cret")
    assert created.status == 201


def test_a_token_from_the_environment_guards_a_loopback_server_too(served, monkeypatch):
    monkeypatch.setenv("LITEDUR_TOKEN", "from-env")
    server = served()
    refused = call(server, "GET", "/v1/stream/anything")
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert call(server, "GET", "/v1/stream/anything", Authorization="Bearer from-env").status == 404


def test_clear_errors_for_a_port_in_use_a_bad_host_and_a_missing_database(served, tmp_path):
    server = served()
    with pytest.raises(ServeError, match=f"port {server.port} on 127.0.0.1 is already in use"):
        litedur.Server(tmp_path / "other.db", port=server.port, create=True)
    assert not (tmp_path / "other.db").exists()  # refused before the file was made
    with pytest.raises(ServeError, match="host 'no-such-host.invalid'"):
        litedur.Server(tmp_path / "other.db", host="no-such-host.invalid", port=0, create=True)
    with pytest.raises(litedur.DatabaseError, match="no litedur database at .*missing.db"):
        litedur.Server(tmp_path / "missing.db", port=0)
    with socket.socket() as probe:  # the refused servers left nothing listening
        assert probe.connect_ex(("127.0.0.1", server.port)) == 0


def test_the_serve_command_prints_its_url_serves_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "LITEDUR_DB": str(tmp_path / "cli.db")}
    env.pop("LITEDUR_TOKEN", None)
    missing = subprocess.run([sys.executable, "-m", "litedur", "serve"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "no litedur database at" in missing.stderr and "--create" in missing.stderr
    process = subprocess.Popen([sys.executable, "-m", "litedur", "serve", "--create", "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:")
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=TIMEOUT)
        connection.request("PUT", "/v1/stream/cli", body=b"up", headers={"Content-Type": "text/plain"})
        assert connection.getresponse().status == 201
        connection.close()
        process.terminate()
        assert process.wait(timeout=TIMEOUT) == 0
        assert "Ctrl-C stops" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
