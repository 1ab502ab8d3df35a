"""Commands that keep a long-lived file in shape: gc, delete, backup, migrate."""

from __future__ import annotations

import os
import re
from typing import Any

import click

import litedur
from litedur.retention import Collected
from litedur.storage import is_url, mask_url

from . import render
from .commands import json_option, with_client, workflow_argument

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Age(click.ParamType):
    """An age like ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (a bare number is seconds); seconds."""

    name = "AGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value).lower())
        if match is None:
            self.fail(f"{value!r} is not an age: a number with an optional unit s, m, h, d or w (e.g. 7d)", param, ctx)
        return float(match[1]) * UNITS[match[2] or "s"]


def collected_json(collected: Collected, *, dry_run: bool = False) -> dict[str, Any]:
    key = "would_delete" if dry_run else "deleted"
    return {key: collected.workflows, "rows": collected.rows, "values": collected.values,
            "pages_freed": collected.pages_freed, "seconds": round(collected.seconds, 3)}  # fmt: skip


@click.command(short_help="Delete finished workflows older than an age, or all but the newest N.")
@click.option("--older-than", type=Age(), metavar="AGE",
              help="Delete those that ended more than AGE ago (90s, 15m, 12h, 7d, 2w).")  # fmt: skip
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N", help="Delete all but the newest N finished ones.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@json_option
@with_client
def gc(client: litedur.Client, older_than: float | None, keep_last: int | None, dry_run: bool, as_json: bool) -> None:
    """Delete finished workflows (SUCCESS, ERROR, CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED) with
    their steps, streams, events and messages, and give the space back. --older-than selects those
    that ended more than AGE ago; --keep-last selects all but the newest N finished ones (any that
    ended at the same instant as the N-th are kept too).

    With both, a workflow is deleted if either rule selects it: --keep-last does not protect the
    newest N from --older-than, and --older-than does not protect recent ones beyond the newest N.

    PENDING and ENQUEUED work is never touched, nor a finished child of a workflow still running;
    live writers and readers carry on meanwhile.

    \b
    Examples:
      litedur gc --older-than 7d
      litedur gc --keep-last 1000 --dry-run
      litedur gc --older-than 30d --keep-last 10000    (either rule deletes)
    """
    if older_than is None and keep_last is None:
        raise click.UsageError("give --older-than AGE, --keep-last N, or both")
    collected = client.garbage_collect(older_than, keep_last, dry_run=dry_run)
    if as_json:
        render.print_json(collected_json(collected, dry_run=dry_run))
    elif dry_run:
        for workflow_id in collected.workflows:
            click.echo(workflow_id)
        click.echo(f"would delete {len(collected.workflows)} workflows (dry run: nothing deleted)", err=True)
    else:
        click.echo(_summary(collected), err=True)


@click.command(short_help="Delete one finished workflow and what belongs to it.")
@workflow_argument
@click.option("--children", is_flag=True, help="Also its descendants (all must have finished).")
@json_option
@with_client
def delete(client: litedur.Client, workflow_id: str, children: bool, as_json: bool) -> None:
    """Delete WORKFLOW_ID (finished) with its steps, streams, events and messages. A PENDING or
    ENQUEUED workflow is refused (exit 1): cancel it first.

    \b
    Examples:
      litedur delete chat-1
      litedur delete batch-7 --children --json
    """
    collected = client.delete_workflow(workflow_id, children=children)
    if as_json:
        render.print_json(collected_json(collected))
    else:
        click.echo(_summary(collected), err=True)


@click.command(short_help="Write a consistent copy of the live database.")
@click.argument("destination", type=click.Path(dir_okay=False), metavar="DEST")
@json_option
@with_client
def backup(client: litedur.Client, destination: str, as_json: bool) -> None:
    """Copy the database to DEST (a new file) through SQLite's online backup, while workflows run
    and streams are written; the copy holds one committed state and opens as a litedur database.

    \b
    Examples:
      litedur backup app-2026-12-02.db
      litedur --db app.db backup /mnt/backups/app.db --json
    """
    path = client.backup(destination)
    with litedur.Client(path) as copy:
        counts = copy.info()
    if as_json:
        render.print_json({"backup": path, "bytes": _size(path), "workflows": counts.get("workflows")})
    else:
        click.echo(f"backed up {client.path} to {path} ({render.format_size(_size(path))})", err=True)


@click.command(short_help="Copy a database's whole history into another (SQLite and PostgreSQL).")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DEST")
@click.option("--replace", is_flag=True, help="Empty a DEST that holds data first (else it is refused).")
@json_option
def migrate(source: str, destination: str, replace: bool, as_json: bool) -> None:
    """Copy every workflow, step, stream, event, message, queue, schedule and HTTP stream of the
    litedur database SRC into DEST, each a file path or a postgresql:// URL (?schema=NAME picks
    the schema, default litedur). Ids, offsets and times are kept; new ids in DEST never reuse one.

    SRC must exist and is read in one snapshot, so it may be live; stop its workers first to move
    them over, or their later work stays behind. DEST is created if missing and written in one
    transaction: all of it or nothing. A DEST that holds any row is refused unless --replace,
    which empties it first (in the same transaction).

    \b
    Examples:
      litedur migrate app.db postgresql://me@db.example/app
      litedur migrate 'postgresql://me@/app?schema=staging' copy.db --json
      litedur migrate app.db postgresql://me@/app --replace
    """
    from litedur.storage.transfer import copy_database

    counts = copy_database(source, destination, replace=replace)
    shown = {"source": _shown(source), "destination": _shown(destination)}
    if as_json:
        render.print_json({**shown, "rows": counts})
        return
    out = render.console()
    rows = [[render.text(table), render.text(f"{count:,}")] for table, count in counts.items()]
    render.emit(out, render.table(out, [("TABLE", {}), ("ROWS", {"justify": "right"})], rows))
    total = sum(counts.values())
    click.echo(f"copied {total:,} rows from {shown['source']} to {shown['destination']}", err=True)


def _shown(location: str) -> str:
    """A location as messages name it: a file's absolute path, a URL without its password."""
    return mask_url(location) if is_url(location) else os.path.abspath(location)


def _size(path: str) -> int:
    return os.path.getsize(path)


def _summary(collected: Collected) -> str:
    return (f"deleted {len(collected.workflows)} workflows ({collected.rows:,} rows, {collected.values:,} stream "
            f"values); gave back {collected.pages_freed:,} pages in {collected.seconds:.2f} s")  # fmt: skip


COMMANDS = [gc, delete, backup, migrate]
