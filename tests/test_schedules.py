"""Scheduled workflows: the cron parser, ticks run once across processes, missed ticks, the CLI.

Time is the schedulers' test hook, `litedur.schedules.clock`: in this process a `ManualClock` that
the test moves (the scheduler re-reads it every few milliseconds, as it re-reads the wall clock every
`WALL_CHECK` seconds to notice a suspend); in the worker processes a clock running 120 times as fast
as real time, so that a cron minute passes in half a second (see tests/workers/sched_worker.py).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import apsw
import pytest
from click.testing import CliRunner, Result
from litedur.cli import main
from support import kill, spawn, wait_until

import litedur
from litedur import Cron, schedules
from litedur.storage import ScheduleRow, WorkflowRow

UTC = timezone.utc
NEW_YORK = "America/New_York"
T0 = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC).timestamp()  # half a minute before the first tick
RATE = 120  # the workers' clock: a cron minute in half a second
PLAIN_ENV = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None, "COLUMNS": None, "LITEDUR_DB": None}


def at(text: str) -> float:
    """Epoch seconds of ``2030-01-01T<text>`` UTC, e.g. ``at("00:05:00.5")``."""
    hours, minutes, seconds = text.split(":")
    return datetime(2030, 1, 1, int(hours), int(minutes), tzinfo=UTC).timestamp() + float(seconds)


def ticks(cron: Cron, start: datetime, count: int) -> list[str]:
    found, moment = [], start
    for _ in range(count):
        moment = cron.next_after(moment)
        found.append(moment.isoformat())
    return found


# ---- the cron parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        ("* * * * *", "2030-01-01T10:05:30", ["10:06", "10:07"]),
        ("*/15 * * * *", "2030-01-01T10:05:00", ["10:15", "10:30", "10:45", "11:00"]),
        ("5-20/5 * * * *", "2030-01-01T10:05:00", ["10:10", "10:15", "10:20", "11:05"]),
        ("0,30 9-10 * * *", "2030-01-01T09:00:00", ["09:30", "10:00", "10:30"]),
        ("0 12 * * *", "2030-01-01T12:00:00", ["12:00"]),  # strictly after: the next day's
    ],
)
def test_fields_take_values_ranges_steps_and_lists(expression, start, expected):
    found = ticks(Cron(expression), datetime.fromisoformat(start).replace(tzinfo=UTC), len(expected))
    assert [moment[11:16] for moment in found] == expected
    assert all(moment.endswith("+00:00") for moment in found)


def test_names_of_months_and_weekdays_in_any_case_and_sunday_as_0_or_7():
    start = datetime(2030, 1, 1, tzinfo=UTC)  # a Tuesday
    assert ticks(Cron("0 0 1 jan,Jul *"), start, 3) == ticks(Cron("0 0 1 1,7 *"), start, 3)
    assert ticks(Cron("0 0 1 1,7 *"), start, 2) == ["2030-07-01T00:00:00+00:00", "2031-01-01T00:00:00+00:00"]
    sundays = ticks(Cron("0 12 * * sun"), start, 2)
    assert sundays == ticks(Cron("0 12 * * 0"), start, 2) == ticks(Cron("0 12 * * 7"), start, 2)
    assert sundays == ["2030-01-06T12:00:00+00:00", "2030-01-13T12:00:00+00:00"]
    weekdays = ticks(Cron("0 9 * * MON-FRI"), datetime(2030, 1, 4, 10, tzinfo=UTC), 2)  # from Friday 10:00
    assert weekdays == ["2030-01-07T09:00:00+00:00", "2030-01-08T09:00:00+00:00"]
    assert ticks(Cron("0 0 * * 5-7"), start, 3)[-1] == "2030-01-06T00:00:00+00:00"  # Fri, Sat, Sun


def test_a_day_matches_either_day_field_only_when_both_are_restricted():
    start = datetime(2025, 6, 1, tzinfo=UTC)  # Fridays of June 2025: 6, 13, 20, 27
    days = [moment[:10] for moment in ticks(Cron("0 0 10 * FRI"), start, 4)]
    assert days == ["2025-06-06", "2025-06-10", "2025-06-13", "2025-06-20"]  # the 10th or a Friday
    assert [m[:10] for m in ticks(Cron("0 0 10 * *"), start, 2)] == ["2025-06-10", "2025-07-10"]
    assert [m[:10] for m in ticks(Cron("0 0 * * FRI"), start, 2)] == ["2025-06-06", "2025-06-13"]
    # a field that starts with * is not a restriction for this rule (Vixie cron): odd days AND Fridays
    assert [m[:10] for m in ticks(Cron("0 0 */2 * FRI"), start, 2)] == ["2025-06-13", "2025-06-27"]


def test_a_leap_day_and_the_macros():
    assert ticks(Cron("0 0 29 FEB *"), datetime(2030, 1, 1, tzinfo=UTC), 2) == [
        "2032-02-29T00:00:00+00:00", "2036-02-29T00:00:00+00:00"]  # fmt: skip
    assert ticks(Cron("@hourly"), datetime(2030, 1, 1, 10, 30, tzinfo=UTC), 1) == ["2030-01-01T11:00:00+00:00"]
    assert ticks(Cron("@weekly"), datetime(2030, 1, 1, tzinfo=UTC), 1) == ["2030-01-06T00:00:00+00:00"]


def test_a_time_zone_moves_the_ticks_with_its_offset():
    paris = Cron("0 9 * * *", tz="Europe/Paris")
    winter, summer = ticks(paris, datetime(2030, 1, 1, tzinfo=UTC), 1)[0], ticks(paris, datetime(2030, 7, 1), 1)[0]
    assert (winter, summer) == ("2030-01-01T09:00:00+01:00", "2030-07-01T09:00:00+02:00")
    assert paris.next_after(datetime(2030, 7, 1, tzinfo=UTC)).astimezone(UTC).hour == 7
    assert Cron("0 9 * * *", tz=ZoneInfo("Europe/Paris")).tz == "Europe/Paris"


def test_a_tick_the_clocks_skip_fires_when_they_have_jumped_and_a_run_of_them_fires_once():
    # New York, 2025-03-09: at 02:00 EST the clocks go to 03:00 EDT
    assert ticks(Cron("30 2 * * *", NEW_YORK), datetime(2025, 3, 8, 12), 3) == [
        "2025-03-09T03:00:00-04:00",
        "2025-03-10T02:30:00-04:00",
        "2025-03-11T02:30:00-04:00",
    ]
    assert ticks(Cron("*/30 * * * *", NEW_YORK), datetime(2025, 3, 9, 1), 3) == [
        "2025-03-09T01:30:00-05:00", "2025-03-09T03:00:00-04:00", "2025-03-09T03:30:00-04:00"]  # fmt: skip


def test_a_repeated_hour_fires_once_for_a_fixed_time_and_on_both_passes_for_a_wildcard():
    # New York, 2025-11-02: at 02:00 EDT the clocks go back to 01:00 EST
    assert ticks(Cron("30 1 * * *", NEW_YORK), datetime(2025, 11, 1, 12), 2) == [
        "2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"]  # fmt: skip
    assert ticks(Cron("0 * * * *", NEW_YORK), datetime(2025, 11, 2), 4) == [
        "2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00", "2025-11-02T02:00:00-05:00",
        "2025-11-02T03:00:00-05:00"]  # fmt: skip
    hourly = Cron("0 * * * *", NEW_YORK)  # from the middle of the first pass: the second pass is next
    assert hourly.next_after(datetime(2025, 11, 2, 5, 30, tzinfo=UTC)).isoformat() == "2025-11-02T01:00:00-05:00"


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("* * * * * *", "has 6 fields"),
        ("0 0 * *", "has 4 fields"),
        ("", "has 0 fields"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("* * * FOO *", "'FOO' is not a month number (or a name JAN-DEC)"),
        ("* * * * FUNDAY", "'FUNDAY' is not a day-of-week number (or a name SUN-SAT)"),
        ("MON * * * *", "'MON' is not a minute number"),
        ("*/0 * * * *", "step '0' must be a whole number >= 1"),
        ("*/x * * * *", "step 'x' must be a whole number >= 1"),
        ("30-10 * * * *", "range '30-10' goes backwards"),
        ("5/15 * * * *", "a step needs a range or *, as in 5-59/15 or */15"),
        ("1,,2 * * * *", "'1,,2' has an empty list item"),
        ("-5 * * * *", "'-5' is not a value or a range"),
        ("0 0 30 FEB *", "never fires: no day 30 in FEB"),
        ("@reboot", "unknown macro"),
    ],
)
def test_a_bad_cron_expression_is_refused_naming_what_is_wrong(expression, named):
    with pytest.raises(ValueError) as caught:
        Cron(expression)
    assert named in str(caught.value) and repr(expression) in str(caught.value)


def test_bad_time_zones_and_types_are_refused():
    for zone in ("Mars/Olympus_Mons", "", "../../etc/passwd", "America"):
        with pytest.raises(ValueError, match=f"unknown time zone {zone!r}"):
            Cron("* * * * *", tz=zone)
    with pytest.raises(TypeError, match="tz must be an IANA time zone name"):
        Cron("* * * * *", tz=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cron expression must be a str, not int"):
        Cron(5)  # type: ignore[arg-type]


# ---- an engine's schedules, on a clock the test moves -----------------------------------------------------


class ManualClock(schedules.Clock):
    """Stands still until the test moves it."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.time = start

    def now(self) -> float:
        return self.time


@pytest.fixture
def clock(monkeypatch) -> ManualClock:
    manual = ManualClock(T0)
    monkeypatch.setattr(schedules, "clock", manual)
    monkeypatch.setattr(schedules, "WALL_CHECK", 0.005)  # notice the test's moves at once
    return manual


def schedule_every(app: litedur.Engine, cron: str = "* * * * *", **options: object) -> None:
    @app.scheduled(cron, **options)
    @app.workflow(name="every")
    def every(scheduled_time: datetime, actual_time: datetime) -> list[str]:
        return [scheduled_time.isoformat(), actual_time.isoformat()]


def ran(app: litedur.Client) -> list[str]:
    """The ticks (HH:MM, UTC) whose workflow finished, in order."""
    done = app.list_workflows(name="every", status="SUCCESS")
    return sorted(status.workflow_id.removeprefix("sched-every-2030-01-01T")[:5] for status in done)


def wait_ran(app: litedur.Client, *expected: str) -> None:
    wait_until(lambda: ran(app) == list(expected), timeout=20)


def test_each_tick_starts_the_workflow_with_its_scheduled_and_actual_time(engines, tmp_path, clock):
    app = engines(tmp_path / "s.db")
    schedule_every(app)
    app.launch()
    clock.time = at("00:01:00.5")
    wait_ran(app, "00:01")
    status = app.get_status("sched-every-2030-01-01T00:01:00Z")
    assert status.output == ["2030-01-01T00:01:00+00:00", "2030-01-01T00:01:00.500000+00:00"]
    clock.time = at("00:02:00.25")
    wait_ran(app, "00:01", "00:02")
    [info] = app.list_schedules()
    assert (info.name, info.workflow_name, info.cron, info.tz, info.catch_up) == ("every", "every", "* * * * *",
                                                                                  None, False)  # fmt: skip
    assert info.last_tick == datetime(2030, 1, 1, 0, 2, tzinfo=UTC)
    assert info.next_tick == datetime(2030, 1, 1, 0, 3, tzinfo=UTC)


def test_times_are_in_the_schedules_time_zone(engines, tmp_path, clock):
    clock.time = datetime(2030, 7, 1, 6, 59, 30, tzinfo=UTC).timestamp()
    app = engines(tmp_path / "s.db")
    schedule_every(app, "0 9 * * *", tz="Europe/Paris")
    app.launch()
    clock.time += 30.25
    status = wait_until(lambda: app.list_workflows(name="every", status="SUCCESS"))[0]
    assert status.workflow_id == "sched-every-2030-07-01T07:00:00Z"  # the id names the tick in UTC
    assert status.output == ["2030-07-01T09:00:00+02:00", "2030-07-01T09:00:00.250000+02:00"]
    assert app.list_schedules()[0].next_tick.isoformat() == "2030-07-02T09:00:00+02:00"


@pytest.mark.parametrize(("catch_up", "expected"), [(False, ["00:01", "00:11"]), (True, ["00:01", "00:10", "00:11"])])
def test_ticks_missed_while_no_process_ran_are_skipped_unless_catch_up_runs_the_latest(
    engines, tmp_path, clock, catch_up, expected
):
    first = engines(tmp_path / "s.db")
    schedule_every(first, catch_up=catch_up)
    first.launch()
    clock.time = at("00:01:00.5")
    wait_ran(first, "00:01")
    first.shutdown()
    clock.time = at("00:10:30")  # nine ticks came while no process ran
    second = engines(tmp_path / "s.db")
    schedule_every(second, catch_up=catch_up)
    second.launch()
    if catch_up:
        wait_ran(second, "00:01", "00:10")
    clock.time = at("00:11:00.5")
    wait_ran(second, *expected)  # had the missed ticks run, they would be here before 00:11


@pytest.mark.parametrize(("catch_up", "expected"), [(False, ["00:05", "00:50"]), (True, ["00:05", "00:45", "00:50"])])
def test_a_process_woken_from_a_suspend_runs_at_most_one_of_the_ticks_it_slept_through(
    engines, tmp_path, clock, catch_up, expected
):
    app = engines(tmp_path / "s.db")
    schedule_every(app, "*/5 * * * *", catch_up=catch_up)
    app.launch()
    clock.time = at("00:05:00.5")
    wait_ran(app, "00:05")
    clock.time = at("00:48:00")  # slept through 00:10 ... 00:45; 00:45 is three minutes old
    if catch_up:
        wait_ran(app, "00:05", "00:45")
    clock.time = at("00:50:00.5")
    wait_ran(app, *expected)


def test_after_a_suspend_a_tick_still_within_its_grace_runs_once(engines, tmp_path, clock):
    app = engines(tmp_path / "s.db")
    schedule_every(app)  # catch_up off
    app.launch()
    clock.time = at("00:01:00.5")
    wait_ran(app, "00:01")
    clock.time = at("00:30:10")  # slept through 00:02 ... 00:30; 00:30 is ten seconds old
    wait_ran(app, "00:01", "00:30")
    clock.time = at("00:31:00.5")
    wait_ran(app, "00:01", "00:30", "00:31")


def test_a_tick_claimed_once_is_never_claimed_again_nor_an_older_one(tmp_path):
    with litedur.Client(litedur.Engine(tmp_path / "s.db").path) as client:  # (the engine only made the file)
        storage = client._storage
        storage.declare_schedule(ScheduleRow("every", "every", "* * * * *", None, 0, T0, T0, None))
        newer, older = at("00:07:00"), at("00:06:00")
        done = WorkflowRow("?", "every", "SUCCESS", 1, '{"args": [], "kwargs": {}}', None, None, None, None, None,
                           0, T0, T0)  # fmt: skip
        assert storage.claim_tick("every", newer, done._replace(workflow_id="a")) == (True, newer)
        assert storage.claim_tick("every", newer, done._replace(workflow_id="b")) == (False, newer)
        assert storage.claim_tick("every", older, done._replace(workflow_id="c")) == (False, newer)
        assert [status.workflow_id for status in client.list_workflows()] == ["a"]
        assert storage.declare_schedule(ScheduleRow("every", "every", "0 * * * *", None, 1, T0 + 5, T0 + 5, None)) == (
            T0, newer)  # a new declaration keeps the first one's time and the claims  # fmt: skip


def test_bad_schedules_are_refused_naming_what_is_wrong(engines, tmp_path):
    app = engines(tmp_path / "s.db")

    @app.workflow(name="ok")
    def ok(scheduled_time: datetime, actual_time: datetime) -> None:
        pass

    @app.workflow(name="one_argument")
    def one_argument(scheduled_time: datetime) -> None:
        pass

    def plain(scheduled_time: datetime, actual_time: datetime) -> None:
        pass

    with pytest.raises(ValueError, match=r"cron '\* \* \* \* \* \*' has 6 fields"):
        app.scheduled("* * * * * *")
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Atlantis'"):
        app.scheduled("* * * * *", tz="Europe/Atlantis")
    with pytest.raises(TypeError, match="catch_up must be a bool, not 'yes'"):
        app.scheduled("* * * * *", catch_up="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule name must be a non-empty str"):
        app.scheduled("* * * * *", name="")
    with pytest.raises(TypeError, match=r"scheduled workflow 'one_argument' must take two arguments"):
        app.scheduled("* * * * *")(one_argument)
    with pytest.raises(TypeError, match=r"@scheduled needs a workflow of this engine, not .*plain"):
        app.scheduled("* * * * *")(plain)
    app.scheduled("0 * * * *")(ok)
    app.scheduled("0 * * * *")(ok)  # the same again: one schedule
    with pytest.raises(litedur.LitedurError, match="a schedule named 'ok' is already registered"):
        app.scheduled("30 * * * *")(ok)
    app.scheduled("30 * * * *", name="ok-half-past")(ok)


# ---- processes ------------------------------------------------------------------------------------------------


def tick_lines(log, prefix: str = "tick ") -> list[list[str]]:
    return log.words_after(prefix)


def test_two_processes_run_each_tick_exactly_once(tmp_path, log, children):
    db = tmp_path / "s.db"
    origin = time.time()
    for _ in range(2):
        children.append(spawn("sched_worker.py", db, log.path, origin, RATE))
    wait_until(lambda: len(log.words_after("ready ")) == 2, timeout=30)
    both_ready = len(tick_lines(log))
    with litedur.Client(db) as client:  # >= 6 ticks raced for by both, their workflows ended
        wait_until(lambda: len(client.list_workflows(name="every", status="SUCCESS")) >= both_ready + 6, timeout=30)
    for child in children:
        kill(child)
    lines = tick_lines(log)
    scheduled = [datetime.fromisoformat(tick) for tick, _ in lines]
    assert len(scheduled) == len(set(scheduled)), f"a tick ran twice: {lines}"
    ordered = sorted(scheduled)
    gaps = {(b - a).total_seconds() for a, b in zip(ordered, ordered[1:], strict=False)}
    assert gaps == {60.0}, f"a tick was lost: {lines}"
    with litedur.Client(db) as client:
        done = client.list_workflows(name="every", status="SUCCESS")
        assert len(done) >= 6
        for status in done:  # the file's record: one workflow per tick, whose one step ran once
            [step] = client.list_steps(status.workflow_id)
            assert step.name == "effect" and step.attempts == 1
            assert status.output in [[tick, int(pid)] for tick, pid in lines]
            assert status.workflow_id == schedules.tick_workflow_id("every", datetime.fromisoformat(
                status.output[0]).timestamp())  # fmt: skip
        [info] = client.list_schedules()
        assert info.last_tick >= max(scheduled)


def test_a_ticks_workflow_is_recovered_when_its_process_dies(tmp_path, log, children):
    db = tmp_path / "s.db"
    origin = time.time()
    children.append(spawn("sched_worker.py", db, log.path, origin, RATE, "hang"))
    wait_until(lambda: log.words_after("started "), timeout=30)
    kill(children[0])  # in the middle of the step of one tick's workflow, or more
    started = {tick for tick, _ in log.words_after("started ")}
    ids = [schedules.tick_workflow_id("every", datetime.fromisoformat(tick).timestamp()) for tick in started]
    children.append(spawn("sched_worker.py", db, log.path, origin, RATE))
    with litedur.Client(db) as client:
        for workflow_id in ids:
            status = client.retrieve_workflow(workflow_id).get_result(timeout=30) and client.get_status(workflow_id)
            assert status.status == "SUCCESS" and status.recovery_attempts == 1
            assert status.output[1] == children[1].pid  # the second process finished it
    kill(children[1])
    ran = [tick for tick, _ in tick_lines(log)]
    assert started <= set(ran) and len(ran) == len(set(ran))


# ---- the command line -------------------------------------------------------------------------------------------


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env=PLAIN_ENV)


def test_the_schedules_command_lists_each_schedule_with_its_last_and_next_tick(engines, tmp_path, clock):
    app = engines(tmp_path / "s.db")
    schedule_every(app)

    @app.scheduled("0 9 * * MON-FRI", tz="Europe/Paris", catch_up=True, name="weekdays")
    @app.workflow(name="report")
    def report(scheduled_time: datetime, actual_time: datetime) -> None:
        pass

    app.launch()
    clock.time = at("00:01:00.5")
    wait_ran(app, "00:01")

    listed = run("--db", app.path, "schedules")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CRON", "TZ", "NEXT", "LAST", "CATCH-UP"]
    assert lines[1].split() == ["every", "*", "*", "*", "*", "*", "UTC", "01-01", "00:02", "01-01", "00:01", "off"]
    assert lines[2].split() == ["weekdays", "0", "9", "*", "*", "MON-FRI", "Europe/Paris", "01-01", "09:00", "-",
                                "on"]  # fmt: skip
    assert all(len(line) <= 80 for line in lines)

    as_json = run("--db", app.path, "schedules", "--json")
    assert as_json.exit_code == 0, as_json.output
    every, weekday = json.loads(as_json.stdout)
    assert {k: every[k] for k in ("name", "workflow", "cron", "tz", "catch_up", "last_tick", "next_tick")} == {
        "name": "every", "workflow": "every", "cron": "* * * * *", "tz": None, "catch_up": False,
        "last_tick": "2030-01-01T00:01:00+00:00", "next_tick": "2030-01-01T00:02:00+00:00"}  # fmt: skip
    assert (weekday["tz"], weekday["last_tick"], weekday["next_tick"]) == (
        "Europe/Paris", None, "2030-01-01T09:00:00+01:00")  # fmt: skip


def test_the_schedules_command_without_schedules_or_database(tmp_path):
    litedur.Engine(tmp_path / "empty.db").close()
    empty = run("--db", tmp_path / "empty.db", "schedules")
    assert (empty.exit_code, empty.stdout) == (0, "")
    assert "no schedules" in empty.stderr
    assert json.loads(run("--db", tmp_path / "empty.db", "schedules", "--json").stdout) == []
    missing = run("--db", tmp_path / "missing.db", "schedules")
    assert missing.exit_code == 2 and "no litedur database" in missing.stderr


# ---- stale schedules --------------------------------------------------------------------------------------------


def schedule_old(app: litedur.Engine) -> None:
    @app.scheduled("0 * * * *", name="old")
    @app.workflow(name="old_report")
    def old_report(scheduled_time: datetime, actual_time: datetime) -> None:
        pass


def states(client: litedur.Client) -> dict[str, tuple[bool, tuple[str, ...]]]:
    return {info.name: (info.active, info.executors) for info in client.list_schedules()}


def test_a_schedule_dropped_from_the_code_turns_stale_and_can_be_removed(engines, tmp_path, clock):
    first = engines(tmp_path / "s.db", executor_id="first")
    schedule_every(first)
    schedule_old(first)
    first.launch()
    assert states(first) == {"every": (True, ("first",)), "old": (True, ("first",))}
    first.shutdown()  # the application stops: its schedules stay, and nothing runs them
    with litedur.Client(tmp_path / "s.db") as client:
        assert states(client) == {"every": (False, ()), "old": (False, ())}
    listed = run("--db", tmp_path / "s.db", "schedules")
    assert [line.split()[:7] for line in listed.stdout.splitlines()[1:]] == [
        ["every", "*", "*", "*", "*", "*", "UTC"], ["old", "0", "*", "*", "*", "*", "UTC"]]  # fmt: skip
    assert [line.split()[7] for line in listed.stdout.splitlines()[1:]] == ["stale", "stale"]
    assert "stale: every, old (no running process declared them" in listed.stderr

    second = engines(tmp_path / "s.db", executor_id="second")  # the next version has no "old"
    schedule_every(second)
    second.launch()
    assert states(second) == {"every": (True, ("second",)), "old": (False, ())}
    storage = second._storage
    assert [row[:2] for row in storage.schedule_declarations()] == [("every", "second"), ("old", "first")]

    listed = run("--db", second.path, "schedules")
    lines = listed.stdout.splitlines()
    assert lines[1].split()[7:9] == ["01-01", "00:01"] and lines[2].split()[7] == "stale"
    assert "stale: old (no running process declared it:" in listed.stderr
    document = {item["name"]: item for item in json.loads(run("--db", second.path, "schedules", "--json").stdout)}
    assert (document["every"]["active"], document["every"]["executors"]) == (True, ["second"])
    assert (document["old"]["active"], document["old"]["executors"]) == (False, [])
    assert document["old"]["next_tick"] == "2030-01-01T01:00:00+00:00"  # by the cron; it runs only if active

    with pytest.raises(litedur.LitedurError, match="schedule 'every' is active: declared by running executor 'second'"):
        second.remove_schedule("every")
    with pytest.raises(LookupError, match=r"no schedule named 'nope' in .*s\.db"):
        second.remove_schedule("nope")
    refused = run("--db", second.path, "schedules", "remove", "old", "every")
    assert refused.exit_code == 1 and "'every' is active" in refused.stderr and "'second'" in refused.stderr
    unknown = run("--db", second.path, "schedules", "remove", "old", "nope")
    assert unknown.exit_code == 2 and "no schedule named 'nope'" in unknown.stderr
    assert set(states(second)) == {"every", "old"}  # nothing removed while one name was wrong

    removed = run("--db", second.path, "schedules", "remove", "old", "--json")
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout) == {"removed": ["old"]}
    assert states(second) == {"every": (True, ("second",))}
    assert [row[:2] for row in storage.schedule_declarations()] == [("every", "second")]
    again = run("--db", second.path, "schedules", "remove", "old")
    assert again.exit_code == 2 and "no schedule named 'old'" in again.stderr


def test_removing_a_schedule_declared_again_meanwhile_removes_nothing(engines, tmp_path, clock):
    app = engines(tmp_path / "s.db", executor_id="only")
    schedule_old(app)
    app.launch()
    storage = app._storage
    [row] = storage.list_schedules()
    clock.time += 1
    storage.declare_schedule(row._replace(declared_at=clock.time), "only")  # a launch after the read
    assert storage.remove_schedule("old", row.declared_at) is False
    assert storage.remove_schedule("old", clock.time) is True
    assert storage.list_schedules() == [] and storage.schedule_declarations() == []
    assert storage.remove_schedule("old", clock.time) is False


def test_a_process_that_runs_a_schedule_declares_it_again_if_its_record_is_deleted(engines, tmp_path, clock, caplog):
    app = engines(tmp_path / "s.db")
    schedule_every(app)
    app.launch()
    [row] = app._storage.list_schedules()
    assert app._storage.remove_schedule("every", row.declared_at)  # by hand, under a live process
    with caplog.at_level(logging.WARNING, logger="litedur"):
        clock.time = at("00:01:00.5")
        wait_ran(app, "00:01")
    assert any("schedule every: its record was removed" in record.getMessage() for record in caplog.records)
    [info] = app.list_schedules()
    assert info.active and info.last_tick == datetime(2030, 1, 1, 0, 1, tzinfo=UTC)


def test_a_killed_worker_leaves_its_schedule_stale_at_once_and_then_it_can_be_removed(tmp_path, log, children):
    db = tmp_path / "s.db"
    children.append(spawn("sched_worker.py", db, log.path, time.time(), 1))  # a real clock: no tick soon
    wait_until(lambda: log.words_after("ready "), timeout=30)
    with litedur.Client(db) as client:
        [info] = client.list_schedules()
        [executor] = info.executors
        assert info.active and f"-{children[0].pid}-" in executor
        with pytest.raises(litedur.LitedurError, match=f"'every' is active: declared by running executor '{executor}'"):
            client.remove_schedule("every")
        kill(children[0])
        [info] = client.list_schedules()  # no lease to wait for: the worker's lock went with it
        assert (info.active, info.executors) == (False, ())
    removed = run("--db", db, "schedules", "remove", "every")
    assert removed.exit_code == 0, removed.output
    assert "removed 1 schedule: every" in removed.stderr
    with litedur.Client(db) as client:
        assert client.list_schedules() == []


def test_a_schedule_of_a_version_6_file_reads_as_stale_until_its_process_launches(engines, tmp_path, clock):
    path = tmp_path / "v6.db"
    db = apsw.Connection(str(path))  # a file as litedur wrote it at schema version 6, with one schedule
    list(db.execute("PRAGMA journal_mode = WAL"))
    for migration in litedur.storage.sqlite.MIGRATIONS[:6]:
        list(db.execute(migration))
    db.execute(f"PRAGMA application_id = {litedur.storage.sqlite.APPLICATION_ID}")
    db.execute("PRAGMA user_version = 6")
    claimed = at("00:00:00")
    db.execute("INSERT INTO schedules VALUES ('every', 'every', '* * * * *', NULL, 0, ?, ?, ?)", (T0, T0, claimed))
    db.execute("INSERT INTO schedules VALUES ('gone', 'gone', '0 * * * *', NULL, 0, ?, ?, NULL)", (T0, T0))
    db.close()
    with litedur.Client(path) as client:
        assert client.info()["schema_version"] == litedur.storage.SCHEMA_VERSION >= 7
        assert states(client) == {"every": (False, ()), "gone": (False, ())}
    app = engines(path, executor_id="upgraded")
    schedule_every(app)
    app.launch()
    assert states(app) == {"every": (True, ("upgraded",)), "gone": (False, ())}
    [every, _] = app.list_schedules()
    assert every.last_tick == datetime(2030, 1, 1, tzinfo=UTC)  # the claims survive the upgrade
    app.remove_schedule("gone")
    assert list(states(app)) == ["every"]
