"""`litedur serve` read by the PyPI `durable-streams` client (0.1.0), every party a real process.

The server is `litedur serve` in a child process, the writer a workflow in another child
(tests/workers/stream_writer.py, "body" mode: the ints 0..N-1 to the stream "values", one
checkpoint each, then the stream is closed), and the reader the `durable_streams` client in a
thread of this process, through its public reading API (`DurableStream.stream(...)`,
`StreamResponse.iter_events(mode="json")`, `StreamEvent.next_offset`).

What that client (0.1.0) cannot do, and how these tests live with it:

- It ignores `Stream-Closed` (header and the SSE control field `streamClosed`). In SSE mode its
  iteration simply ends when the server ends the response, which `litedur serve` does when the
  stream closes (or after 60 s, far beyond these tests); a long-poll iteration never ends on a
  closed stream (it re-polls the 204s at once, for ever), so the long-poll reader stops when it
  has the count it expects. Either way the closure is then checked through the client itself: a
  catch-up read (``live=False``) from the reader's last offset returns nothing and carries
  ``Stream-Closed: true`` in `StreamResponse.headers`.
- In SSE mode it does not reconnect when a response ends: one SSE response carries the whole
  first test, across the writer's death and recovery.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from typing import Any

import pytest
from durable_streams import DurableStream, stream
from support import exists, finish, kill, start_writer, stream_entries, wait_until

import litedur

KEY = "values"
TIMEOUT = 30.0  # seconds: the HTTP client's timeout, and how long a reader thread may take to end


@pytest.fixture
def db(tmp_path) -> str:
    path = str(tmp_path / "served.db")
    litedur.Engine(path).close()  # the file exists before the server, the writer or a client opens it
    return path


@pytest.fixture
def server_url(db, children) -> str:
    """`litedur serve` on ``db`` in a child process (any free port); its URL. Stopped with SIGTERM at the end."""
    env = {key: value for key, value in os.environ.items() if key != "LITEDUR_TOKEN"}
    process = subprocess.Popen([sys.executable, "-m", "litedur", "--db", db, "serve", "--port", "0"],
                               stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    children.append(process)
    ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
    assert ready, f"litedur serve printed no URL within {TIMEOUT} s"
    url = process.stdout.readline().strip()  # type: ignore[union-attr]
    assert url.startswith("http://127.0.0.1:"), f"litedur serve printed {url!r} (exit code {process.poll()})"
    yield url
    process.terminate()
    assert process.wait(timeout=TIMEOUT) == 0


def stream_url(server_url: str, workflow_id: str) -> str:
    return f"{server_url}/v1/stream/workflows/{workflow_id}/{KEY}"


def wait_for_workflow(db: str, workflow_id: str) -> None:
    """Until the writer has recorded the workflow (before that its stream's URL is a 404)."""
    with litedur.Client(db) as client:
        wait_until(lambda: exists(client, workflow_id))


class ClientReader(threading.Thread):
    """Reads a stream through a fresh `DurableStream` handle (its own HTTP client) in a thread.

    ``live`` is the client's live mode ("sse", or "auto": a catch-up request, then long-polls);
    the read starts at ``offset``. With ``stop_after`` the reader stops (closing its connection)
    once it holds that many values; otherwise it reads until the client's iteration ends.
    `values` holds what it got, `offset` the `next_offset` of the last event it consumed.
    """

    def __init__(self, url: str, live: Any, offset: str = "-1", stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.live, self.offset, self.stop_after = url, live, offset, stop_after
        self.connected = threading.Event()  # the server answered the first request
        self.values: list = []
        self.ended = False  # the client's iteration ended on its own
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with (
                DurableStream(self.url, timeout=TIMEOUT) as handle,
                handle.stream(offset=self.offset, live=self.live) as response,
            ):
                self.connected.set()
                for event in response.iter_events(mode="json"):
                    self.values.extend(event.data)
                    self.offset = event.next_offset
                    if self.stop_after is not None and len(self.values) >= self.stop_after:
                        return
                self.ended = True
        except BaseException as exc:  # re-raised in the test's thread by result()
            self.error = exc
        finally:
            self.connected.set()

    def has(self, count: int) -> bool:
        """Whether it holds ``count`` values yet (its error, if it died, is raised here)."""
        if self.error is not None:
            raise self.error
        return len(self.values) >= count

    def result(self) -> list:
        self.join(TIMEOUT)
        assert not self.is_alive(), f"the client is still reading after {TIMEOUT} s with {len(self.values)} values"
        if self.error is not None:
            raise self.error
        return self.values


def assert_closed_at(url: str, offset: str) -> None:
    """A catch-up read through the client from ``offset``: nothing more, and the stream is closed."""
    with stream(url, offset=offset, live=False, timeout=TIMEOUT) as response:
        assert response.read_json() == []
        assert response.headers.get("stream-closed") == "true"
        assert response.offset == offset
    with DurableStream(url, timeout=TIMEOUT) as handle:
        assert handle.head().offset == offset  # the tail


def test_the_client_follows_a_workflow_stream_across_a_sigkill_and_recovery_of_its_writer(
    db, server_url, children, tmp_path
):
    n = 200
    go, never = tmp_path / "go", tmp_path / "never"
    writer = start_writer(children, db, "killed", "body", n, gates={0: go, 3 * n // 4: never}, STREAM_PACE=0.001)
    wait_for_workflow(db, "killed")
    url = stream_url(server_url, "killed")
    reader = ClientReader(url, "sse")
    assert reader.connected.wait(TIMEOUT) and reader.error is None
    go.touch()  # the client's SSE response is open: the writer starts

    wait_until(lambda: reader.has(n // 4))
    kill(writer)  # SIGKILL mid-stream: it cannot have passed its gate at 3n/4
    stored = len(stream_entries(db, "killed", KEY))
    assert n // 4 <= stored <= 3 * n // 4
    wait_until(lambda: reader.has(stored))  # the client has all the dead writer stored ...
    assert reader.values == list(range(stored))
    assert reader.is_alive() and not reader.ended  # ... and still waits: a dead writer does not end the stream
    with litedur.Client(db) as client:
        assert client.get_status("killed").status == "PENDING"

    # The same command in a new process recovers the workflow and writes the rest, live.
    assert finish(start_writer(children, db, "killed", "body", n, STREAM_PACE=0.001)) == 0
    assert reader.result() == list(range(n))  # every value exactly once, in order, on one SSE response
    assert reader.ended  # the server ended the response: the stream closed when the workflow finished
    assert_closed_at(url, reader.offset)
    with litedur.Client(db) as client:
        status = client.get_status("killed")
        assert (status.status, status.recovery_attempts) == ("SUCCESS", 1)
        assert client.list_streams("killed")[0].closed_by == "workflow"
    assert [value for _, value, _, _ in stream_entries(db, "killed", KEY)] == list(range(n))


@pytest.mark.parametrize("live", ["sse", "auto"], ids=["sse", "long-poll"])
def test_a_fresh_client_resumes_from_a_saved_offset_and_gets_exactly_the_rest(db, server_url, children, tmp_path, live):
    n = 60
    go, half = tmp_path / "go", tmp_path / "half"
    writer = start_writer(children, db, "resumed", "body", n, gates={0: go, n // 2: half}, STREAM_PACE=0.002)
    wait_for_workflow(db, "resumed")
    url = stream_url(server_url, "resumed")

    first = ClientReader(url, live, stop_after=n // 6)
    assert first.connected.wait(TIMEOUT) and first.error is None
    go.touch()
    before = first.result()  # it dropped its connection while the writer went on writing
    assert before == list(range(len(before))) and n // 6 <= len(before) <= n // 2
    saved = first.offset

    # A new handle and a new HTTP client, given only the saved offset.
    second = ClientReader(url, live, offset=saved, stop_after=None if live == "sse" else n - len(before))
    wait_until(lambda: second.has(n // 2 - len(before)))  # caught up with what was written meanwhile
    half.touch()  # the second half arrives live
    after = second.result()
    assert after == list(range(len(before), n))  # exactly the rest: no gap, no value of the first read again
    assert finish(writer) == 0
    if live == "sse":
        assert second.ended  # closed by the server when the workflow finished
    assert_closed_at(url, second.offset)
