"""The commands: each parses its options, asks the library, and hands the result to `render`."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

import litedur

from . import render

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = ["PENDING", "ENQUEUED", "SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"]
DEFAULT_LIMIT = 50


class Failure(click.ClickException):
    """A one-line error on stderr with a chosen exit code (2: usage, missing database or workflow)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code


def json_option(fn: F) -> F:
    """The shared ``--json`` flag: machine output instead of text and tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead of text.")(fn)


def unpickle_option(fn: F) -> F:
    """``--unpickle``: show pickled values as objects instead of placeholders naming their type."""
    help_text = "Unpickle pickled values (this runs code from the file: trusted files only)."
    return click.option("--unpickle", is_flag=True, help=help_text)(fn)


class StatusChoice(click.Choice):
    """A workflow status, in any case."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(value.upper() if isinstance(value, str) else value, param, ctx)


def open_client(db: str, *, unpickle: bool = False) -> litedur.Client:
    """A read-only view of an existing database; never creates the file."""
    if not os.path.lexists(db):
        raise Failure(f"no litedur database at {os.path.abspath(db)} (give --db PATH or set LITEDUR_DB)", 2)
    return litedur.Client(db, unpickle=unpickle)


def complete_workflow_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion: ids of the newest workflows in the database."""
    db = ctx.find_root().params.get("db") or litedur.client.default_path()
    try:
        with litedur.Client(db, unpickle=False) as client:
            ids = [status.workflow_id for status in client.list_workflows(limit=200)]
    except Exception:
        return []
    return [workflow_id for workflow_id in ids if workflow_id.startswith(incomplete)]


def workflow_argument(fn: F) -> F:
    return click.argument("workflow_id", shell_complete=complete_workflow_id)(fn)


def with_client(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Pass an open `litedur.Client` on the group's ``--db`` as the first argument, and close it."""

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(db: str, *args: Any, unpickle: bool = False, **kwargs: Any) -> Any:
        with open_client(db, unpickle=unpickle) as client:
            return fn(client, *args, **kwargs)

    return wrapper


# ---- tail ----------------------------------------------------------------------------------------


@click.command(short_help="Print a stream live until it closes.")
@workflow_argument
@click.argument("key")
@click.option("--from", "start", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Offset of the first value to print.")  # fmt: skip
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Wait for new values until the stream ends, or print what exists and exit.")  # fmt: skip
@json_option
@unpickle_option
@with_client
def tail(client: litedur.Client, workflow_id: str, key: str, start: int, follow: bool, as_json: bool) -> None:
    """Print the stream KEY of WORKFLOW_ID live, until it closes.

    Strings are written as they are, so tokens join into text; other values are printed as one JSON
    line each. With --json every value is a line {"offset": N, "value": V}. Notices go to stderr.

    Exit status: 0 when the stream ends, 1 if the workflow failed (its error on stderr), 130 on Ctrl-C.

    \b
    Examples:
      litedur tail chat-1 tokens
      litedur tail chat-1 tokens --from 100 --no-follow
      litedur tail chat-1 events --json | jq .value
    """
    reader = client.read_stream(workflow_id, key, start=start, timeout=None if follow else 0)
    printer = render.StreamPrinter(sys.stdout, as_json=as_json)
    try:
        for value in reader:
            printer.write(reader.offset - 1, value, flush=not reader.buffered())
    except TimeoutError:  # --no-follow: everything that exists was printed
        printer.finish()
        click.echo(f"[stream {key!r} still open at offset {reader.offset}]", err=True)
        return
    printer.finish()
    _finish_tail(client, workflow_id, key, reader.offset)


def _finish_tail(client: litedur.Client, workflow_id: str, key: str, offset: int) -> None:
    status = client.get_status(workflow_id)
    if status.status in ("SUCCESS", "PENDING", "ENQUEUED"):
        click.echo(f"[stream {key!r} closed after {offset} values]", err=True)
        return
    if status.error is not None:
        reason = f"failed: {render.describe_error(status.error)}"
    elif status.status == "CANCELLED":
        reason = "was cancelled"
    else:
        reason = f"ended in {status.status}"
    raise Failure(f"workflow {workflow_id} {reason}", 1)


# ---- workflows, show, streams, info ----------------------------------------------------------------


@click.command(short_help="List workflows, newest first.")
@click.option("--status", type=StatusChoice(STATUSES), metavar="STATUS",
              help=f"Only workflows in this status: {', '.join(STATUSES)}.")  # fmt: skip
@click.option("--name", help="Only workflows of this name.")
@click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_LIMIT, show_default=True, metavar="N",
              help="At most this many, newest first (0: all).")  # fmt: skip
@json_option
@with_client
def workflows(client: litedur.Client, status: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """List workflows, newest first.

    \b
    Examples:
      litedur workflows --status PENDING
      litedur workflows --name chat --limit 5 --json
    """
    found = client.list_workflows(status=status.upper() if status else None, name=name,
                                  limit=limit + 1 if limit else None)  # fmt: skip
    more = bool(limit) and len(found) > limit
    found = found[:limit] if limit else found
    if as_json:
        render.print_json([render.status_json(item) for item in found])
    elif found:
        out = render.console()
        render.emit(out, render.workflows_table(out, found))
    else:
        click.echo("no workflows", err=True)
    if more:
        click.echo(f"[showing the newest {limit}; use --limit N, or --limit 0 for all]", err=True)


@click.command(short_help="One workflow: status, inputs, result, steps, streams.")
@workflow_argument
@json_option
@unpickle_option
@with_client
def show(client: litedur.Client, workflow_id: str, as_json: bool) -> None:
    """Show one workflow: status, times, inputs, output or error, steps and streams.

    \b
    Example:
      litedur show chat-1
    """
    status = client.get_status(workflow_id)
    steps = client.list_steps(workflow_id)
    streams = client.list_streams(workflow_id)
    if as_json:
        document = render.status_json(status)
        document["steps"] = [render.step_json(step) for step in steps]
        document["streams"] = [render.stream_json(stream) for stream in streams]
        render.print_json(document)
        return
    out = render.console()
    render.emit(out, render.workflow_fields(out, status))
    render.heading(out, f"Steps ({len(steps)})")
    if steps:
        render.emit(out, render.steps_table(out, steps))
    render.heading(out, f"Streams ({len(streams)})")
    if streams:
        render.emit(out, render.streams_table(out, streams))


@click.command(short_help="The streams of a workflow.")
@workflow_argument
@json_option
@with_client
def streams(client: litedur.Client, workflow_id: str, as_json: bool) -> None:
    """List the streams of WORKFLOW_ID with their length and state."""
    found = client.list_streams(workflow_id)
    if as_json:
        render.print_json([render.stream_json(stream) for stream in found])
    elif found:
        out = render.console()
        render.emit(out, render.streams_table(out, found))
    else:
        click.echo(f"workflow {workflow_id} has no streams", err=True)


@click.command(short_help="The database file, schema version, size, counts.")
@json_option
@with_client
def info(client: litedur.Client, as_json: bool) -> None:
    """Show the database file, its schema version, size and workflow counts by status."""
    details = client.info()
    if as_json:
        render.print_json(details)
        return
    out = render.console()
    render.emit(out, render.info_fields(out, details))


ALL = [tail, workflows, show, streams, info]
