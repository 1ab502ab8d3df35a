"""``litedur top``: a live view of the whole file, redrawn when it changes.

The view waits on the same file event that wakes stream readers in other processes (a commit of
any process writes the database or its WAL), on the keyboard and on a resize, so it sleeps while
nothing changes. It redraws at most every `FLOOR` seconds (longer when a redraw is slow, so it
never takes more than a fifth of a core), and every few seconds anyway so that rates decay and a
lost event costs only a delay.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

import litedur
from litedur import StreamInfo, WorkflowStatus
from litedur.wakeup import watch_database

from . import render
from .commands import STATUSES, json_option, with_client

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text

FLOOR = 0.25  # seconds between two redraws at least: a few a second while the file changes
COST_FACTOR = 4  # ... and at least this many times what the last redraw took
SAFETY_NET_MOVING = 2.0  # redraw this often while a stream grows (its rate must fall when it stops)
SAFETY_NET_IDLE = 5.0  # ... and this often otherwise, in case a file event was lost
POLL_INTERVAL = 1.0  # where there are no file events
RATE_WINDOW = 2.0  # seconds over which a stream's values per second are measured
RECOVERIES = 10
SNAPSHOT_STREAMS = 20
ALWAYS_SHOWN = ("PENDING", "ENQUEUED", "SUCCESS", "ERROR")  # other statuses only when some are in it
QUIT_KEYS = b"qQ"
FIXED_LINES = 15  # the screen's lines other than table rows: counts, titles, headers, blanks, footer

StreamKey = tuple[str, str]  # (workflow id, stream key)


@click.command(short_help="A live view of the file: statuses, queues, streams, recoveries.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit (the default when stdout is not a terminal).")
@json_option
@with_client
def top(client: litedur.Client, once: bool, as_json: bool) -> None:
    """A live view of the database: workflows by status, queues with their depth and running count,
    the open streams growing fastest (values per second), recent recoveries and executors that died
    holding work. It redraws when any process commits to the file, at most four times a second, and
    sleeps while nothing changes. q or Ctrl-C leaves it.

    Piped, or with --once, it prints one snapshot (streams by length; rates need the live view);
    --json prints that snapshot as one JSON object.

    \b
    Examples:
      litedur top
      litedur --db app.db top --once
      litedur top --json | jq .workflows
    """
    overview = client.overview(recoveries=RECOVERIES)
    if as_json:
        render.print_json(overview_json(overview))
    elif once or not sys.stdout.isatty():
        print_snapshot(overview)
    else:
        LiveView(client, render.console()).run(overview)


def print_snapshot(overview: dict[str, Any]) -> None:
    """The file and when it last changed, then what the live view shows (no rates: they need two looks)."""
    out = render.console()
    changed = render.format_time(overview["changed_at"])
    render.emit(out, render.fields(out, [("file", overview["path"]), ("last change", changed)]))
    render.emit(out, render.text(""))
    render.emit(out, body(out, overview, None, limits=None))


# ---- JSON ----------------------------------------------------------------------------------------


def overview_json(overview: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as a JSON document; streams longest first."""
    streams = sorted(overview["streams"], key=lambda stream: (-stream.length, stream.workflow_id, stream.key))
    return {
        "path": overview["path"],
        "changed_at": overview["changed_at"],
        "workflows": overview["workflows"],
        "queues": [render.queue_json(queue) for queue in overview["queues"]],
        "streams": [{"workflow_id": s.workflow_id, "key": s.key, "length": s.length} for s in streams],
        "recoveries": [recovery_json(status) for status in overview["recoveries"]],
        "executors": overview["executors"],
    }


def recovery_json(status: WorkflowStatus) -> dict[str, Any]:
    return {
        "workflow_id": status.workflow_id,
        "name": status.name,
        "status": status.status,
        "recovery_attempts": status.recovery_attempts,
        "executor_id": status.executor_id,
        "updated_at": status.updated_at,
    }


# ---- rates ---------------------------------------------------------------------------------------


class RateMeter:
    """Values per second of each open stream, from the lengths seen at successive redraws.

    A rate is measured against the newest earlier sample at least `RATE_WINDOW` old (else the
    oldest there is); a stream absent from that sample counts from 0. The first call knows none.
    """

    def __init__(self) -> None:
        self._samples: deque[tuple[float, dict[StreamKey, int]]] = deque()

    def update(self, now: float, streams: list[StreamInfo]) -> dict[StreamKey, float | None]:
        lengths = {(stream.workflow_id, stream.key): stream.length for stream in streams}
        while len(self._samples) > 1 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        rates: dict[StreamKey, float | None] = dict.fromkeys(lengths)
        if self._samples and now > self._samples[0][0]:
            since, before = self._samples[0]
            for key, length in lengths.items():
                rates[key] = max(0, length - before.get(key, 0)) / (now - since)
        self._samples.append((now, lengths))
        return rates


# ---- what is drawn -------------------------------------------------------------------------------


def body(
    out: Console, overview: dict[str, Any], rates: dict[StreamKey, float | None] | None, limits: list[int] | None
) -> RenderableType:
    """Counts, then queues, streams and recoveries; ``limits`` caps each table's rows (None: a snapshot)."""
    from rich.console import Group

    streams = ranked_streams(overview["streams"], rates)
    queues, recoveries = overview["queues"], overview["recoveries"]
    if limits is None:
        limits = [len(queues), SNAPSHOT_STREAMS, len(recoveries)]
    parts: list[RenderableType] = [status_counts(overview["workflows"], out.width)]
    parts += section(out, "Queues", len(queues), limits[0], "no queues",
                     lambda n: render.queues_table(out, queues[:n]))  # fmt: skip
    parts += section(out, "Streams", len(streams), limits[1], "no open streams",
                     lambda n: streams_table(out, streams[:n], rates))  # fmt: skip
    parts += section(out, "Recoveries", len(recoveries), limits[2], "no recovered workflows",
                     lambda n: recoveries_table(out, recoveries[:n]))  # fmt: skip
    parts += executor_notes(overview["executors"])
    return Group(*parts)


def status_counts(counts: dict[str, int], width: int) -> Text:
    """``workflows 12   PENDING 2   ENQUEUED 0 ...`` wrapped between pairs, never inside one."""
    from rich.text import Text

    shown = [status for status in STATUSES if status in ALWAYS_SHOWN or counts.get(status)]
    shown += sorted(set(counts) - set(STATUSES))
    pairs = [render.text(f"workflows {sum(counts.values())}", "bold")]
    for status in shown:
        count = counts.get(status, 0)
        pair = render.text(status, render.STATUS_STYLES.get(status, "") if count else "dim")
        pairs.append(pair.append(f" {count}"))
    line, used = Text(), 0
    for pair in pairs:
        if used and used + 3 + pair.cell_len > width:
            line.append("\n")
            used = 0
        elif used:
            line.append("   ")
            used += 3
        line.append_text(pair)
        used += pair.cell_len
    return line


def section(out: Console, title: str, total: int, limit: int, empty: str, table: Any) -> list[RenderableType]:
    """A blank line, a title (``of N`` when cut to ``limit`` rows), and the table or a dim notice."""
    shown = min(total, limit)
    heading = title if shown == total else f"{title} ({shown} of {total})"
    parts: list[RenderableType] = [render.text(""), render.text(heading, "bold underline" if out.is_terminal else "")]
    parts.append(table(shown) if total else render.text(empty, "dim"))
    return parts


def ranked_streams(streams: list[StreamInfo], rates: dict[StreamKey, float | None] | None) -> list[StreamInfo]:
    """Fastest first (longest first without rates), then by workflow and key."""

    known = rates or {}

    def rank(stream: StreamInfo) -> tuple[float, int, str, str]:
        return (-(known.get((stream.workflow_id, stream.key)) or 0.0), -stream.length, stream.workflow_id, stream.key)

    return sorted(streams, key=rank)


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:,.0f}" if rate >= 10 or rate == 0 else f"{rate:.1f}"


def streams_table(out: Console, streams: list[StreamInfo], rates: dict[StreamKey, float | None] | None) -> Any:
    """Workflow, key and length of each stream, and its values per second unless ``rates`` is None."""
    rows = []
    for stream in streams:
        row = [render.text(stream.workflow_id), render.text(stream.key), render.text(stream.length)]
        if rates is not None:
            rate = rates.get((stream.workflow_id, stream.key))
            row.append(render.text(format_rate(rate), "green" if rate else ""))
        rows.append(row)
    columns = [
        ("WORKFLOW", {"flex": True}),
        ("KEY", {"fit": 30, "overflow": "ellipsis"}),
        ("LENGTH", {"fit": 12, "justify": "right"}),
    ]
    if rates is not None:
        columns.append(("VALUES/S", {"fit": 10, "justify": "right"}))
    return render.table(out, columns, rows)


def recoveries_table(out: Console, recoveries: list[WorkflowStatus]) -> Any:
    rows = [
        [render.text(status.workflow_id), render.text(status.name), render.status_text(status.status),
         render.text(status.recovery_attempts), render.text(status.executor_id or "-"),
         render.text(render.format_time(status.updated_at, short=True))]
        for status in recoveries
    ]  # fmt: skip
    columns = [
        ("WORKFLOW", {"fit": 30, "overflow": "ellipsis"}),
        ("NAME", {"flex": True}),
        ("STATUS", {"fit": 30, "overflow": "ellipsis"}),
        ("RECOVERIES", {"fit": 10, "justify": "right"}),
        ("EXECUTOR", {"fit": 32, "overflow": "ellipsis"}),
        ("UPDATED", {"fit": 14}),
    ]
    return render.table(out, columns, rows)


def executor_notes(executors: list[dict[str, Any]]) -> list[Text]:
    """A line for each owner of PENDING work that is gone, and one for work nobody owns."""
    notes = []
    for owner in executors:
        count = owner["pending"]
        work = f"{count} PENDING workflow{'s wait' if count != 1 else ' waits'}"
        if owner["executor_id"] is None:
            notes.append(render.text(f"{work} with no executor (resumed or forked), for a launched process "
                                     "that registered it", "yellow"))  # fmt: skip
        elif owner["alive"] is False:
            notes.append(render.text(f"executor {owner['executor_id']} (pid {owner['pid']}) is gone: {work} "
                                     "for recovery by a process that registered it", "yellow"))  # fmt: skip
    return notes


def footer(path: str, changed_at: float | None, watching: bool) -> Text:
    """How to quit, when the file last changed, how the view redraws, and the file, on one line."""
    how = "redrawn on file events" if watching else f"redrawn every {POLL_INTERVAL:g} s"
    line = render.text(f"q to quit   last change {render.format_time(changed_at, short=True)}   {how}   {path}",
                       "reverse")  # fmt: skip
    line.overflow, line.no_wrap = "ellipsis", True
    return line


def screen(out: Console, overview: dict[str, Any], rates: dict[StreamKey, float | None], watching: bool) -> Any:
    """The whole terminal: the body cut to its height, the footer on the last line."""
    from rich.layout import Layout

    overview_rows = [len(overview["queues"]), len(overview["streams"]), len(overview["recoveries"])]
    notes = executor_notes(overview["executors"])
    budget = out.height - FIXED_LINES - sum(-(-note.cell_len // out.width) for note in notes)
    layout = Layout()
    layout.split_column(
        Layout(body(out, overview, rates, share_rows(budget, overview_rows)), name="body"),
        Layout(footer(overview["path"], overview["changed_at"], watching), name="footer", size=1),
    )
    return layout


def share_rows(budget: int, wanted: list[int]) -> list[int]:
    """Split ``budget`` table rows (at least one each) among tables that want ``wanted`` rows, in turn."""
    given = [min(1, want) for want in wanted]
    budget -= sum(given)
    while budget > 0 and any(have < want for have, want in zip(given, wanted, strict=True)):
        for index, want in enumerate(wanted):
            if budget > 0 and given[index] < want:
                given[index] += 1
                budget -= 1
    return given


# ---- the live loop -------------------------------------------------------------------------------


class LiveView:
    """The full-screen view: redraws on a change of the file, quits on q."""

    def __init__(self, client: litedur.Client, out: Console) -> None:
        self.client = client
        self.out = out
        self.meter = RateMeter()
        self.watch: Any = None  # readable on a commit of any process (None: poll)
        self.keys: int | None = None  # the keyboard, in cbreak mode (None: not a terminal, or closed)
        self.resized: int | None = None  # readable after the terminal changed size
        self.changed = True  # something may have changed since the last redraw
        self.moving = False  # some stream grew at the last redraw
        self.drawn_at = 0.0  # time.monotonic() at the end of the last redraw
        self.gap = FLOOR

    def run(self, overview: dict[str, Any]) -> None:
        """Draw ``overview`` (read before the screen is taken, so an error shows), then follow the file."""
        from rich.live import Live

        with contextlib.ExitStack() as stack:
            self.watch = watch_database(self.client._feed)
            if self.watch is not None:
                stack.callback(self.watch.close)
            self.keys = stack.enter_context(keyboard())
            self.resized = stack.enter_context(resize_pipe())
            stack.enter_context(exit_on_signals())
            live = stack.enter_context(Live(console=self.out, screen=True, auto_refresh=False,
                                            redirect_stdout=False, redirect_stderr=False))  # fmt: skip
            self.draw(live, overview)
            self.changed = True  # that was read before the watch began: read once more
            while not self.wait():
                if time.monotonic() >= self.due():
                    self.draw(live)

    def due(self) -> float:
        """When the next redraw may (after a change) or must (the safety net) happen."""
        if self.changed:
            return self.drawn_at + self.gap
        if self.watch is None:
            return self.drawn_at + POLL_INTERVAL
        return self.drawn_at + (SAFETY_NET_MOVING if self.moving else SAFETY_NET_IDLE)

    def draw(self, live: Live, overview: dict[str, Any] | None = None) -> None:
        """Read the file (unless given ``overview``) and show it; the next redraw waits at least
        `FLOOR` seconds, and at least `COST_FACTOR` times what this one took."""
        started = time.monotonic()
        if overview is None:
            if self.watch is not None:
                self.watch.drain()  # what these events announced, the read below sees
            overview = self.client.overview(recoveries=RECOVERIES)
        rates = self.meter.update(started, overview["streams"])
        live.update(screen(self.out, overview, rates, self.watch is not None), refresh=True)
        self.drawn_at = time.monotonic()
        self.gap = max(FLOOR, COST_FACTOR * (self.drawn_at - started))
        self.changed = False
        self.moving = any(rates.values())

    def wait(self) -> bool:
        """Sleep until a key, a change of the file or the terminal, or the next redraw is due; True on q."""
        watching = self.watch is not None and not self.changed  # after a change, only the floor is awaited
        fds = [fd for fd in (self.keys, self.resized, self.watch.fileno() if watching else None) if fd is not None]
        timeout = max(0.0, self.due() - time.monotonic())
        if not fds:
            time.sleep(timeout)
            return False
        ready = select.select(fds, [], [], timeout)[0]
        if self.keys in ready:
            pressed = os.read(self.keys, 64)
            if any(key in QUIT_KEYS for key in pressed):
                return True
            if not pressed:  # end of input: Ctrl-C still leaves
                self.keys = None
        if self.resized in ready:
            drain(self.resized)
            self.changed = True
        if watching and self.watch.fileno() in ready and self.watch.drain():
            self.changed = True
        return False


@contextlib.contextmanager
def keyboard() -> Iterator[int | None]:
    """stdin in cbreak mode (keys arrive one at a time, not echoed; Ctrl-C still interrupts) while
    the view runs, restored however it ends; None when stdin is not a terminal."""
    fd = terminal_stdin()
    if fd is None:
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_stdin() -> int | None:
    """The descriptor of stdin if it is a terminal whose modes can be set (POSIX), else None."""
    try:
        import termios  # noqa: F401 - absent on Windows
    except ImportError:
        return None
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # closed, or replaced by an object without a descriptor
        return None
    return fd if os.isatty(fd) else None


@contextlib.contextmanager
def resize_pipe() -> Iterator[int | None]:
    """A descriptor that becomes readable when the terminal is resized (SIGWINCH), or None."""
    if not hasattr(signal, "SIGWINCH"):
        yield None
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)

    def ring(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(write, b"\0")

    previous = signal.signal(signal.SIGWINCH, ring)
    try:
        yield read
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(read)
        os.close(write)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the view through its clean-ups (terminal restored), exit 128 + signal."""
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {name: signal.signal(getattr(signal, name), _exit) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        os.read(fd, 4096)
