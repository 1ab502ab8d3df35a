"""``litedur schedules``: the scheduled workflows recorded in the file, with their last and next tick."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

import litedur

from . import render
from .commands import json_option, with_client

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@click.command(short_help="Scheduled workflows: cron, time zone, last and next tick.")
@json_option
@with_client
def schedules(client: litedur.Client, as_json: bool) -> None:
    """List the schedules that processes launched on this file declared (@app.scheduled), by name:
    its CRON and time zone (TZ), the NEXT tick after now and the LAST tick run (both in that zone),
    and whether missed ticks are caught up (CATCH-UP: the latest of them runs). Each tick runs as
    the workflow sched-NAME-TICK (the tick in UTC); --json also names the workflow function.

    \b
    Examples:
      litedur schedules
      litedur schedules --json | jq '.[] | {name, next_tick}'
      litedur workflows --name nightly_report
    """
    found = client.list_schedules()
    if as_json:
        render.print_json([schedule_json(schedule) for schedule in found])
    elif found:
        out = render.console()
        render.emit(out, schedules_table(out, found))
    else:
        click.echo("no schedules (a process declares one when it launches with @app.scheduled)", err=True)


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
    }


def schedules_table(out: Console, found: list[litedur.ScheduleInfo]) -> Table:
    rows = []
    for schedule in found:
        rows.append([
            render.text(schedule.name),
            render.text(schedule.cron),
            render.text(schedule.tz or "UTC"),
            render.text(_when(schedule.next_tick), "cyan"),
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
