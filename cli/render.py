"""How the CLI shows things: rich tables on a terminal, plain text elsewhere, and JSON documents.

Nothing here reads the database; commands pass in what the library returned. ``rich`` is imported
only when a table is drawn, so ``litedur --help`` and ``litedur tail`` start fast.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from litedur import MessageInfo, Pickled, RecordedError, StepInfo, StreamInfo, WorkflowStatus
from litedur.client import FINAL_STATUSES, QueueInfo
from litedur.values import is_exact_json

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

STATUS_STYLES = {
    "SUCCESS": "green",
    "ERROR": "bold red",
    "PENDING": "yellow",
    "ENQUEUED": "cyan",
    "CANCELLED": "magenta",
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED": "bold red",
}
PREVIEW_CHARS = 200

# ---- JSON ----------------------------------------------------------------------------------------


def json_default(value: Any) -> Any:
    """Make a value the JSON encoder does not know printable: placeholders, exceptions, reprs."""
    if isinstance(value, Pickled):
        return {"$pickled": value.type_name}
    if isinstance(value, BaseException):
        return error_json(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def to_json(value: Any, *, indent: int | None = None) -> str:
    """One JSON document; pickled values become ``{"$pickled": "module.Type"}``."""
    separators = None if indent else (", ", ": ")
    return json.dumps(value, ensure_ascii=False, default=json_default, indent=indent, separators=separators)


def error_type(error: BaseException) -> str:
    """The recorded exception's type, ``module.Qualname`` (``builtins.`` kept, as recorded)."""
    if isinstance(error, RecordedError):
        return error.type_name
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


def error_message(error: BaseException) -> str:
    return error.message if isinstance(error, RecordedError) else str(error)


def error_json(error: BaseException | None) -> dict[str, str] | None:
    return None if error is None else {"type": error_type(error), "message": error_message(error)}


def describe_error(error: BaseException) -> str:
    """``ValueError: boom`` — one line for people."""
    name = error_type(error).removeprefix("builtins.")
    message = " ".join(error_message(error).split())
    return f"{name}: {message}" if message else name


def status_json(status: WorkflowStatus) -> dict[str, Any]:
    return {
        "workflow_id": status.workflow_id,
        "name": status.name,
        "status": status.status,
        "created_at": status.created_at,
        "updated_at": status.updated_at,
        "executor_id": status.executor_id,
        "recovery_attempts": status.recovery_attempts,
        "inputs": status.inputs,
        "output": status.output,
        "error": error_json(status.error),
        "parent_id": status.parent_id,
        "timeout": status.timeout,
        "deadline": status.deadline,
        "cancel_reason": status.cancel_reason,
        "queue_name": status.queue_name,
        "priority": status.priority,
        "deduplication_id": status.deduplication_id,
    }


def queue_json(queue: QueueInfo) -> dict[str, Any]:
    return {
        "name": queue.name,
        "enqueued": queue.enqueued,
        "running": queue.running,
        "concurrency": queue.concurrency,
        "worker_concurrency": queue.worker_concurrency,
        "limiter": queue.limiter,
        "priority_enabled": queue.priority_enabled,
    }


def step_json(step: StepInfo) -> dict[str, Any]:
    return {
        "position": step.position,
        "name": step.name,
        "attempts": step.attempts,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "duration": step.duration,
        "output": step.output,
        "error": error_json(step.error),
    }


def stream_json(stream: StreamInfo) -> dict[str, Any]:
    return {"key": stream.key, "length": stream.length, "closed": stream.closed, "closed_by": stream.closed_by}


def message_json(message: MessageInfo) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "topic": message.topic,
        "message": message.message,
        "sent_at": message.sent_at,
    }


def print_json(document: Any) -> None:
    sys.stdout.write(to_json(document, indent=2) + "\n")


# ---- tail ----------------------------------------------------------------------------------------


class StreamPrinter:
    """Writes stream values for ``tail``: strings as they are (tokens join up), others a line each."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.at_line_start = True

    def write(self, offset: int, value: Any, *, flush: bool) -> None:
        """Print one value; ``flush`` when no more are waiting, so a live reader sees it now."""
        if self.as_json:
            self._line(to_json({"offset": offset, "value": value}))
        elif type(value) is str:
            self.out.write(value)
            if value:
                self.at_line_start = value.endswith("\n")
        else:
            self._line(one_line(value))
        if flush:
            self.out.flush()

    def _line(self, line: str) -> None:
        self.out.write(line + "\n" if self.at_line_start else "\n" + line + "\n")
        self.at_line_start = True

    def finish(self) -> None:
        """Flush; on a terminal, end an open line on stderr so notices and the prompt start afresh."""
        self.out.flush()
        if not self.at_line_start and self.out.isatty():
            sys.stderr.write("\n")


# ---- text pieces ---------------------------------------------------------------------------------


def one_line(value: Any) -> str:
    """JSON for a plain JSON value, the repr of anything else (``<pickled T>`` for a placeholder)."""
    return to_json(value) if is_exact_json(value) else " ".join(repr(value).split())


def cut(line: str, limit: int = PREVIEW_CHARS) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def preview(value: Any) -> str:
    """A value on one line, cut at `PREVIEW_CHARS`."""
    return cut(one_line(value))


def call_preview(inputs: Any) -> str:
    """Workflow inputs as the arguments of a call: ``("a", 2, flag=true)``."""
    if not isinstance(inputs, dict):
        return preview(inputs)
    parts = [one_line(arg) for arg in inputs.get("args", ())]
    parts += [f"{name}={one_line(arg)}" for name, arg in inputs.get("kwargs", {}).items()]
    return cut(f"({', '.join(parts)})")


def format_time(timestamp: float | None, *, short: bool = False) -> str:
    """Local time: ``2024-05-01 12:00:03`` (``05-01 12:00:03`` when short)."""
    if not timestamp:
        return "-"
    return time.strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def format_duration(seconds: float) -> str:
    if seconds < 0.0005:
        return "<1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_size(size: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def format_rate(limiter: dict[str, Any] | None) -> str:
    """A queue's rate limiter as ``5/1s`` (5 starts in any 1 s window), ``-`` without one."""
    if limiter is None:
        return "-"
    return f"{limiter['limit']}/{limiter['period']:g}s"


def stream_state(stream: StreamInfo) -> str:
    if not stream.closed:
        return "open"
    return "closed" if stream.closed_by in (None, "workflow") else f"closed by {stream.closed_by}"


# ---- rich ----------------------------------------------------------------------------------------


def console() -> Console:
    """A console on stdout: colours and boxes on a terminal, plain text (80 columns) elsewhere."""
    from rich.console import Console

    out = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if not out.is_terminal:
        out = Console(file=sys.stdout, highlight=False, color_system=None, width=80, emoji=False)
    return out


def text(value: Any, style: str = "") -> Text:
    """User data as rich Text, so brackets in it are never read as markup."""
    from rich.text import Text

    return Text(str(value), style=style)


def status_text(status: str) -> Text:
    return text(status, STATUS_STYLES.get(status, ""))


def table(out: Console, columns: list[tuple[str, dict[str, Any]]], rows: list[list[Text]]) -> Table:
    """A table with a box on a terminal, bare aligned columns when the output is plain.

    A column with a ``fit`` option keeps the width of its widest cell (up to ``fit``); the one column
    marked ``flex`` gets what is left of the console width and cuts its cells with an ellipsis.
    """
    from rich import box
    from rich.table import Table

    boxed = out.is_terminal
    result = Table(
        box=box.SIMPLE_HEAD if boxed else None,
        header_style="bold" if boxed else "",
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0) if boxed else (0, 2, 0, 0),
    )
    widths = []
    for index, (name, options) in enumerate(columns):
        widest = max([len(name)] + [row[index].cell_len for row in rows])
        widths.append(min(widest, options.get("fit", widest)))
    between = 2  # padding and a separator, or padding alone, between two columns
    used = sum(width for (_, options), width in zip(columns, widths, strict=True) if not options.get("flex"))
    room = max(out.width - used - between * (len(columns) - 1), 4)
    for (name, options), width in zip(columns, widths, strict=True):
        options = dict(options)
        options.pop("fit", None)
        if options.pop("flex", False):
            options.update(min_width=min(width, room), max_width=room, overflow="ellipsis")
        else:
            options.update(min_width=width, max_width=width)
        result.add_column(name, no_wrap=True, **options)
    for row in rows:
        result.add_row(*row)
    return result


def workflows_table(out: Console, statuses: list[WorkflowStatus]) -> Table:
    rows = []
    for status in statuses:
        took = "-" if status.status not in FINAL_STATUSES else format_duration(status.updated_at - status.created_at)
        rows.append([
            text(status.workflow_id),
            text(status.name),
            status_text(status.status),
            text(format_time(status.created_at, short=True)),
            text(took),
        ])  # fmt: skip
    columns = [
        ("ID", {"fit": 40, "overflow": "fold"}),
        ("NAME", {"flex": True}),
        ("STATUS", {"fit": 30, "overflow": "ellipsis"}),
        ("CREATED", {"fit": 14}),
        ("TOOK", {"fit": 9, "justify": "right"}),
    ]
    return table(out, columns, rows)


def steps_table(out: Console, steps: list[StepInfo]) -> Table:
    rows = []
    for step in steps:
        if step.error is not None:
            output = text(f"raised {describe_error(step.error)}", "red")
        else:
            output = text(preview(step.output))
        rows.append([
            text(step.position), text(step.name), text(step.attempts), text(format_duration(step.duration)), output
        ])  # fmt: skip
    columns = [
        ("POS", {"fit": 6, "justify": "right"}),
        ("NAME", {"fit": 24, "overflow": "ellipsis"}),
        ("ATTEMPTS", {"fit": 8, "justify": "right"}),
        ("DURATION", {"fit": 9, "justify": "right"}),
        ("OUTPUT", {"flex": True}),
    ]
    return table(out, columns, rows)


def streams_table(out: Console, streams: list[StreamInfo]) -> Table:
    rows = []
    for stream in streams:
        state = stream_state(stream)
        rows.append([text(stream.key), text(stream.length), text(state, "" if state == "closed" else "yellow")])
    columns = [
        ("KEY", {"flex": True}),
        ("LENGTH", {"fit": 12, "justify": "right"}),
        ("STATE", {"fit": 22}),
    ]
    return table(out, columns, rows)


def events_table(out: Console, events: dict[str, Any]) -> Table:
    rows = [[text(key), text(preview(value))] for key, value in events.items()]
    return table(out, [("KEY", {"fit": 30, "overflow": "ellipsis"}), ("VALUE", {"flex": True})], rows)


def messages_table(out: Console, messages: list[MessageInfo]) -> Table:
    rows = [
        [text(message.message_id), text("-" if message.topic is None else message.topic),
         text(format_time(message.sent_at, short=True)), text(preview(message.message))]
        for message in messages
    ]  # fmt: skip
    columns = [
        ("ID", {"fit": 8, "justify": "right"}),
        ("TOPIC", {"fit": 20, "overflow": "ellipsis"}),
        ("SENT", {"fit": 14}),
        ("MESSAGE", {"flex": True}),
    ]
    return table(out, columns, rows)


def queues_table(out: Console, queues: list[QueueInfo]) -> Table:
    rows = []
    for queue in queues:
        rows.append([
            text(queue.name),
            text(queue.enqueued, "cyan" if queue.enqueued else ""),
            text(queue.running, "yellow" if queue.running else ""),
            text("-" if queue.concurrency is None else queue.concurrency),
            text("-" if queue.worker_concurrency is None else queue.worker_concurrency),
            text(format_rate(queue.limiter)),
            text("on" if queue.priority_enabled else "off"),
        ])  # fmt: skip
    columns = [
        ("NAME", {"flex": True}),
        ("ENQUEUED", {"fit": 9, "justify": "right"}),
        ("RUNNING", {"fit": 9, "justify": "right"}),
        ("CONCURRENCY", {"fit": 11, "justify": "right"}),
        ("PER-WORKER", {"fit": 10, "justify": "right"}),
        ("RATE", {"fit": 12, "overflow": "ellipsis"}),
        ("PRIORITY", {"fit": 8}),
    ]
    return table(out, columns, rows)


def emit(out: Console, renderable: Any) -> None:
    """Print to stdout; plain output loses the trailing blanks rich pads its cells with."""
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def fields(out: Console, rows: list[tuple[str, Any]]) -> Table:
    """``label  value`` lines, values wrapping under themselves."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold" if out.is_terminal else "", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, value if not isinstance(value, str) else text(value))
    return grid


def heading(out: Console, title: str) -> None:
    out.print()
    out.print(text(title, "bold underline" if out.is_terminal else ""))


def workflow_fields(out: Console, status: WorkflowStatus) -> Table:
    rows: list[tuple[str, Any]] = [("workflow", status.workflow_id), ("name", status.name)]
    if status.parent_id is not None:
        rows.append(("parent", status.parent_id))
    if status.queue_name is not None:
        rows.append(("queue", status.queue_name))
    if status.priority:  # 0, the default, is taken in enqueue order like no priority at all
        rows.append(("priority", str(status.priority)))
    if status.deduplication_id is not None:
        rows.append(("deduplication id", status.deduplication_id))
    rows.append(("status", status_text(status.status)))
    if status.cancel_reason is not None:
        rows.append(("cancel reason", status.cancel_reason))
    rows.append(("created", format_time(status.created_at)))
    updated = format_time(status.updated_at)
    if status.status in FINAL_STATUSES:
        updated += f"  (took {format_duration(status.updated_at - status.created_at)})"
    rows.append(("finished" if status.status in FINAL_STATUSES else "updated", updated))
    if status.timeout is not None:
        rows.append(("timeout", format_duration(status.timeout)))
    if status.deadline is not None:
        rows.append(("deadline", format_time(status.deadline)))
    rows.append(("executor", status.executor_id or "-"))
    rows.append(("recoveries", str(status.recovery_attempts)))
    rows.append(("inputs", call_preview(status.inputs)))
    if status.error is not None:
        rows.append(("error", text(describe_error(status.error), "red")))
    elif status.status == "SUCCESS":
        rows.append(("output", preview(status.output)))
    return fields(out, rows)


def info_fields(out: Console, info: dict[str, Any]) -> Table:
    sizes = info.get("sizes", {})
    size = format_size(sum(sizes.values()))
    if sizes:
        size += " (" + ", ".join(f"{name} {format_size(value)}" for name, value in sizes.items()) + ")"
    counts = info.get("workflows", {})
    total = sum(counts.values())
    by_status = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    return fields(
        out,
        [
            ("file", info["path"]),
            ("schema version", str(info["schema_version"])),
            ("size", size),
            ("workflows", f"{total}" + (f" ({by_status})" if by_status else "")),
        ],
    )
