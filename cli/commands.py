"""The commands: each parses its options, asks the library, and hands the result to `render`."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

import litedur
from litedur.storage import is_url

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
    if not is_url(db) and not os.path.lexists(db):
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
        reason = f"was cancelled ({status.cancel_reason})" if status.cancel_reason else "was cancelled"
    else:
        reason = f"ended in {status.status}"
    raise Failure(f"workflow {workflow_id} {reason}", 1)


# ---- workflows, show, streams --------------------------------------------------------------------


@click.command(short_help="List workflows, newest first.")
@click.option("--status", type=StatusChoice(STATUSES), metavar="STATUS",
              help=f"Only workflows in this status: {', '.join(STATUSES)}.")  # fmt: skip
@click.option("--name", help="Only workflows of this name.")
@click.option("--queue", metavar="QUEUE", help="Only workflows enqueued in this queue (see: litedur queues).")
@click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_LIMIT, show_default=True, metavar="N",
              help="At most this many, newest first (0: all).")  # fmt: skip
@json_option
@with_client
def workflows(
    client: litedur.Client, status: str | None, name: str | None, queue: str | None, limit: int, as_json: bool
) -> None:
    """List workflows, newest first.

    \b
    Examples:
      litedur workflows --status PENDING
      litedur workflows --name chat --limit 5 --json
      litedur workflows --queue jobs --status ENQUEUED
    """
    found = client.list_workflows(status=status.upper() if status else None, name=name, queue=queue,
                                  limit=limit + 1 if limit else None)  # fmt: skip
    more = bool(limit) and len(found) > limit
    found = found[:limit] if limit else found
    if as_json:
        render.print_json([render.status_json(item) for item in found])
    elif found:
        out = render.console()
        render.emit(out, render.workflows_table(out, found))
    if not found and queue is not None and not _queue_known(client, queue):
        click.echo(f"no queue named {queue!r} (litedur queues lists them)", err=True)
    elif not found and not as_json:
        click.echo("no workflows", err=True)
    if more:
        click.echo(f"[showing the newest {limit}; use --limit N, or --limit 0 for all]", err=True)


def _queue_known(client: litedur.Client, queue: str) -> bool:
    """Whether the queue is declared, holds work, or ever held a workflow (one now ended)."""
    return any(info.name == queue for info in client.list_queues()) or bool(client.list_workflows(queue=queue, limit=1))


@click.command(short_help="Queues: enqueued and running counts, limits.")
@json_option
@with_client
def queues(client: litedur.Client, as_json: bool) -> None:
    """List the queues, by name: how many workflows wait in each (ENQUEUED), how many run (taken
    from it, not ended), and the limits its worker declared: CONCURRENCY at once across every
    process, PER-WORKER at once in one process, RATE starts per window (5/1s: 5 in any second),
    and whether PRIORITY orders it. A dash is no limit.

    \b
    Examples:
      litedur queues
      litedur queues --json | jq '.[] | select(.enqueued > 0) | .name'
      litedur workflows --queue jobs
    """
    found = client.list_queues()
    if as_json:
        render.print_json([render.queue_json(queue) for queue in found])
    elif found:
        out = render.console()
        render.emit(out, render.queues_table(out, found))
    else:
        click.echo("no queues (a worker declares one with app.queue)", err=True)


@click.command(short_help="One workflow: status, result, steps, streams, events, messages.")
@workflow_argument
@json_option
@unpickle_option
@with_client
def show(client: litedur.Client, workflow_id: str, as_json: bool) -> None:
    """Show one workflow: status, times, inputs, output or error, its steps, streams, events, and
    the messages sent to it that it has not received yet.

    \b
    Example:
      litedur show chat-1
    """
    status = client.get_status(workflow_id)
    steps = client.list_steps(workflow_id)
    streams = client.list_streams(workflow_id)
    events = client.list_events(workflow_id)
    messages = client.list_messages(workflow_id)
    if as_json:
        document = render.status_json(status)
        document["steps"] = [render.step_json(step) for step in steps]
        document["streams"] = [render.stream_json(stream) for stream in streams]
        document["events"] = events
        document["messages"] = [render.message_json(message) for message in messages]
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
    render.heading(out, f"Events ({len(events)})")
    if events:
        render.emit(out, render.events_table(out, events))
    render.heading(out, f"Pending messages ({len(messages)})")
    if messages:
        render.emit(out, render.messages_table(out, messages))


@click.command(short_help="The streams of a workflow.")
@workflow_argument
@json_option
@with_client
def streams(client: litedur.Client, workflow_id: str, as_json: bool) -> None:
    """List the streams of WORKFLOW_ID with their length and state.

    \b
    Example:
      litedur streams chat-1 --json
    """
    found = client.list_streams(workflow_id)
    if as_json:
        render.print_json([render.stream_json(stream) for stream in found])
    elif found:
        out = render.console()
        render.emit(out, render.streams_table(out, found))
    else:
        click.echo(f"workflow {workflow_id} has no streams", err=True)


# ---- events and send ----------------------------------------------------------------------------


@click.command(short_help="The events a workflow has set.")
@workflow_argument
@json_option
@unpickle_option
@with_client
def events(client: litedur.Client, workflow_id: str, as_json: bool) -> None:
    """List the events WORKFLOW_ID has set (set_event), each with its latest value.

    \b
    Examples:
      litedur events approve-7
      litedur events approve-7 --json | jq .progress
    """
    found = client.list_events(workflow_id)
    if as_json:
        render.print_json(found)
    elif found:
        out = render.console()
        render.emit(out, render.events_table(out, found))
    else:
        click.echo(f"workflow {workflow_id} has set no events", err=True)


class JSONValue(click.ParamType):
    """One JSON value given on the command line, parsed (strict: no NaN or Infinity)."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value, parse_constant=_reject_constant)
        except ValueError as exc:
            quoted = json.dumps(value) if len(value) <= 30 and value.isprintable() and "'" not in value else '"yes"'
            self.fail(f"{value!r} is not valid JSON ({exc}); a string needs JSON quotes, e.g. '{quoted}'", param, ctx)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@click.command(short_help="Send a message to a workflow (for its recv).")
@workflow_argument
@click.argument("message", metavar="JSON", type=JSONValue())
@click.option("--topic", metavar="T", help="Topic the workflow receives it on, recv(T) (default: none).")
@click.option("--idempotency-key", metavar="K",
              help="Deliver once: another send with the same key to this workflow is ignored.")  # fmt: skip
@json_option
@with_client
def send(
    client: litedur.Client, workflow_id: str, message: Any, topic: str | None, idempotency_key: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Send the JSON value as a message to WORKFLOW_ID, for its recv() on --topic.

    JSON is one JSON value, so a string keeps its quotes inside the shell's: '"yes"' (and a
    negative number comes after --: send ID -- -1). A send retried with the same
    --idempotency-key lands once. A workflow that has ended takes no messages: exit 1 naming its
    status, and nothing is written.

    \b
    Examples:
      litedur send approve-7 true
      litedur send chat-1 '"yes"' --topic answer
      litedur send order-9 '{"qty": 2}' --idempotency-key order-9-qty --json
    """
    sent = client.send(workflow_id, message, topic, idempotency_key=idempotency_key)
    if as_json:
        render.print_json({"workflow_id": workflow_id, "topic": topic, "message": message, "sent": sent,
                           "idempotency_key": idempotency_key})  # fmt: skip
        return
    where = f" on topic {topic!r}" if topic is not None else ""
    if not sent:
        click.echo(f"already sent to workflow {workflow_id}: idempotency key {idempotency_key!r} landed before; "
                   "nothing sent", err=True)  # fmt: skip
        return
    once = f" (once for idempotency key {idempotency_key!r})" if idempotency_key is not None else ""
    click.echo(f"sent {render.preview(message)} to workflow {workflow_id}{where}{once}", err=True)


# ---- cancel, resume, fork ------------------------------------------------------------------------


@click.command(short_help="Cancel a workflow (and its children).")
@workflow_argument
@json_option
@with_client
def cancel(client: litedur.Client, workflow_id: str, as_json: bool) -> None:
    """Cancel WORKFLOW_ID and its unfinished children.

    It stops at its next step, stream write or wait; its open streams close. A workflow that
    has already ended is left as it is (exit 0, saying so).

    \b
    Examples:
      litedur cancel chat-1
      litedur cancel chat-1 --json
    """
    cancelled = client.cancel_workflow(workflow_id)
    status = client.get_status(workflow_id).status
    if as_json:
        render.print_json({"workflow_id": workflow_id, "cancelled": cancelled, "status": status})
    elif cancelled:
        click.echo(f"cancelled workflow {workflow_id}: it stops at its next step, stream write or wait", err=True)
    else:
        click.echo(f"workflow {workflow_id} already ended ({status}); nothing to cancel", err=True)


@click.command(short_help="Resume a cancelled workflow.")
@workflow_argument
@json_option
@with_client
def resume(client: litedur.Client, workflow_id: str, as_json: bool) -> None:
    """Resume WORKFLOW_ID, CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED, from its last checkpoint.

    It becomes PENDING, and a launched process that registered its workflow runs the rest. Any
    other status is refused: exit 1, nothing written.

    \b
    Examples:
      litedur resume chat-1
      litedur resume chat-1 --json
    """
    status = client.resume_workflow(workflow_id).get_status()
    if as_json:
        render.print_json({"workflow_id": workflow_id, "status": status.status})
    else:
        click.echo(f"resumed workflow {workflow_id} ({status.status}): a launched process that registered "
                   f"{status.name!r} continues it from its last checkpoint", err=True)  # fmt: skip


def _non_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value == "":
        raise click.BadParameter("must not be empty", ctx, param)
    return value


@click.command(short_help="Rerun a workflow from a step, as a new workflow.")
@workflow_argument
@click.option("--from-step", "start_step", type=click.IntRange(min=0), required=True, metavar="N",
              help="Position of the first step to run again (see show); earlier ones are reused.")  # fmt: skip
@click.option("--id", "new_id", metavar="NEW_ID", callback=_non_empty,
              help="Id of the new workflow (default: a random one).")  # fmt: skip
@json_option
@with_client
def fork(client: litedur.Client, workflow_id: str, start_step: int, new_id: str | None, as_json: bool) -> None:
    """Start a new workflow with the inputs of WORKFLOW_ID that reuses its steps before position
    --from-step (with the stream values and events they wrote) and runs the rest.

    The new workflow is PENDING until a launched process that registered its workflow function
    runs it.

    \b
    Examples:
      litedur fork chat-1 --from-step 2
      litedur fork chat-1 --from-step 0 --id chat-1-again --json
    """
    with litedur.SetWorkflowID(new_id) if new_id is not None else contextlib.nullcontext():
        forked = client.fork_workflow(workflow_id, start_step)
    if as_json:
        render.print_json({"workflow_id": forked.workflow_id, "forked_from": workflow_id, "from_step": start_step})
    else:
        name = forked.get_status().name
        click.echo(f"forked workflow {workflow_id} from step {start_step} as {forked.workflow_id}: a launched "
                   f"process that registered {name!r} runs it", err=True)  # fmt: skip


# ---- info ----------------------------------------------------------------------------------------


@click.command(short_help="The database file, schema version, size, counts.")
@json_option
@with_client
def info(client: litedur.Client, as_json: bool) -> None:
    """Show the database file, its schema version, size and workflow counts by status.

    \b
    Example:
      litedur --db app.db info
    """
    details = client.info()
    if as_json:
        render.print_json(details)
        return
    out = render.console()
    render.emit(out, render.info_fields(out, details))


# ---- serve ---------------------------------------------------------------------------------------


@click.command(short_help="Serve the streams over HTTP (the Durable Streams protocol).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but a loopback address needs --token.")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=4437, show_default=True,
              help="Port to listen on (0: any free port).")  # fmt: skip
@click.option("--token", envvar="LITEDUR_TOKEN", metavar="TOKEN",
              help="Bearer token every request must carry (else env LITEDUR_TOKEN).")  # fmt: skip
@click.option("--create", is_flag=True, help="Create the database file if it does not exist.")
@click.option("--long-poll-timeout", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              metavar="SECONDS", help="How long a long-poll read waits for new data before its 204.")  # fmt: skip
@click.pass_obj
def serve(db: str, host: str, port: int, token: str | None, create: bool, long_poll_timeout: float) -> None:
    """Serve the Durable Streams HTTP protocol over the database until Ctrl-C.

    Standalone streams (create, append, read, close, fork, delete) live under /v1/stream/<path>,
    in the same file; every workflow stream is readable, in JSON mode and read-only, under
    /v1/stream/workflows/<workflow id>/<key>. Reads catch up, long-poll or follow by SSE. The URL
    served is printed on stdout.

    Listens on loopback unless --host says otherwise; then a bearer token is required (--token or
    LITEDUR_TOKEN) and checked on every request ('Authorization: Bearer TOKEN').

    \b
    Examples:
      litedur --db app.db serve
      litedur --db app.db serve --create --port 8080
      LITEDUR_TOKEN=s3cret litedur --db app.db serve --host 0.0.0.0
      curl -N 'http://127.0.0.1:4437/v1/stream/workflows/chat-1/tokens?offset=-1&live=sse'
    """
    from litedur.server import ServeError, Server

    if not create and not is_url(db) and not os.path.lexists(db):
        raise Failure(f"no litedur database at {os.path.abspath(db)} (give --db PATH, or --create to make one)", 2)
    try:
        server = Server(db, host, port, token=token or None, create=create, long_poll_timeout=long_poll_timeout)
    except ServeError as exc:
        raise Failure(str(exc), 2 if exc.usage else 1) from None
    click.echo(server.url)
    click.echo(f"serving {server.path}: streams under {server.url}/v1/stream/<path>, workflow streams (read-only) "
               f"under {server.url}/v1/stream/workflows/<workflow id>/<key>; Ctrl-C stops", err=True)  # fmt: skip
    server.serve_forever()  # until Ctrl-C (exit 130) or SIGTERM (exit 0)


ALL = [tail, workflows, show, streams, events, send, cancel, resume, fork, info, queues, serve]
