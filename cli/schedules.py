"""``litedur schedules``: the scheduled workflows recorded in the file, with their last and next tick."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

import litedur
from litedur.schedules import ScheduleNotFoundError

from . import render
from .commands import Failure, json_option, open_client, with_client

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@click.group(invoke_without_command=True, short_help="Scheduled workflows: cron, time zone, next and last tick.")
@json_option
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """List the schedules that processes launched on this file declared (@app.scheduled), by name:
    its CRON and time zone (TZ), the NEXT tick after now and the LAST tick run (both in that zone),
    and whether missed ticks are caught up (CATCH-UP: the latest of them runs). Each tick runs as
    the workflow sched-NAME-TICK (the tick in UTC); --json also names the workflow function.

    A schedule is stale (NEXT shows "stale"; --json: "active": false) when no running process
    declared it: the application is stopped, or it no longer has that schedule (dropped or
    renamed). Nothing runs its ticks until a process launches with it again. `litedur schedules
    remove NAME` deletes a stale one.

    \b
    Examples:
      litedur schedules
      litedur schedules --json | jq '.[] | select(.active | not) | .name'
      litedur schedules remove old-nightly-report
    """
    if ctx.invoked_subcommand is not None:
        if as_json:
            raise click.UsageError("put --json after the subcommand: litedur schedules remove NAME --json")
        return
    with open_client(ctx.obj) as client:
        found = client.list_schedules()
    if as_json:
        render.print_json([schedule_json(schedule) for schedule in found])
    elif found:
        out = render.console()
        render.emit(out, schedules_table(out, found))
        stale = [schedule.name for schedule in found if not schedule.active]
        if stale:
            them = "it" if len(stale) == 1 else "them"
            click.echo(f"stale: {', '.join(stale)} (no running process declared {them}: the application is stopped, "
                       f"or no longer has {them}); to delete: litedur schedules remove NAME", err=True)  # fmt: skip
    else:
        click.echo("no schedules (a process declares one when it launches with @app.scheduled)", err=True)


@schedules.command(short_help="Delete stale schedules from the file.")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@json_option
@with_client
def remove(client: litedur.Client, names: tuple[str, ...], as_json: bool) -> None:
    """Delete the stale schedules NAME... (dropped or renamed in the application) from the file. A
    schedule that a running process declared is refused (exit 1): that process would go on running
    it. The workflows its ticks ran stay (litedur gc takes them). An unknown NAME exits 2; nothing
    is removed unless every NAME can be.

    \b
    Examples:
      litedur schedules remove old-nightly-report
      litedur schedules remove a b --json
    """
    known = {schedule.name: schedule for schedule in client.list_schedules()}
    for name in names:
        if name not in known:
            raise Failure(f"no schedule named {name!r} in {client.path} (litedur schedules lists them)", 2)
        if known[name].active:
            raise Failure(f"schedule {name!r} is active: declared by running executor "
                          f"{', '.join(map(repr, known[name].executors))}; stop that process first")  # fmt: skip
    removed = []
    for name in dict.fromkeys(names):
        try:
            client.remove_schedule(name)
        except ScheduleNotFoundError:  # removed by someone else meanwhile
            continue
        removed.append(name)
    if as_json:
        render.print_json({"removed": removed})
    else:
        click.echo(f"removed {len(removed)} schedule{'s' if len(removed) != 1 else ''}: {', '.join(removed)}",
                   err=True)  # fmt: skip


def schedule_json(schedule: litedur.ScheduleInfo) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "workflow": schedule.workflow_name,
        "cron": schedule.cron,
        "tz": schedule.tz,
        "catch_up": schedule.catch_up,
        "last_tick": _iso(schedule.last_tick),
        "next_tick": _iso(schedule.next_tick),
        "declared_at": schedule.declared_at,
        "active": schedule.active,
        "executors": list(schedule.executors),
    }


def schedules_table(out: Console, found: list[litedur.ScheduleInfo]) -> Table:
    rows = []
    for schedule in found:
        rows.append([
            render.text(schedule.name),
            render.text(schedule.cron),
            render.text(schedule.tz or "UTC"),
            render.text(_when(schedule.next_tick), "cyan") if schedule.active else render.text("stale", "yellow"),
            render.text(_when(schedule.last_tick)),
            render.text("on" if schedule.catch_up else "off"),
        ])  # fmt: skip
    columns = [
        ("NAME", {"flex": True}),
        ("CRON", {"fit": 20, "overflow": "ellipsis"}),
        ("TZ", {"fit": 20, "overflow": "ellipsis"}),
        ("NEXT", {"fit": 14}),
        ("LAST", {"fit": 14}),
        ("CATCH-UP", {"fit": 8}),
    ]
    return render.table(out, columns, rows)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _when(moment: datetime | None) -> str:
    """``01-31 09:00`` in the schedule's zone (seconds only when there are some; --json has the year
    and the offset); ``-`` for none."""
    if moment is None:
        return "-"
    return moment.strftime("%m-%d %H:%M:%S" if moment.second or moment.microsecond else "%m-%d %H:%M")


SCHEDULE_COMMANDS = [schedules]
