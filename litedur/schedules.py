"""Scheduled workflows: a cron expression whose every tick starts its workflow once, across every
process launched on the file.

``@app.scheduled("*/5 * * * *", tz=None, catch_up=False)`` goes on a workflow that takes
``(scheduled_time, actual_time)``. `Cron` reads standard five-field cron and finds the next tick
in a time zone (stdlib ``zoneinfo``), through clock changes.

Each launched engine with schedules records them in the file (for ``litedur schedules``), with its
executor id, and runs one `Scheduler` thread. It sleeps until the earliest next tick (an Event with
a timeout, set early by a new schedule or by shutdown) and then claims the tick with
`Storage.claim_tick`: one transaction that advances the schedule's last tick only if it is
older and creates the tick's workflow (id ``sched-<name>-<tick in UTC>``), owned by this process. So
two processes that wake at the same tick cannot both claim it, an older tick never runs after a
newer one, and a claimed tick is an ordinary durable workflow, recovered by another process if its
own dies.

Missed ticks, never a burst. A tick is *on time* when it came after this process launched and the
scheduler looks at it within `GRACE` seconds, before a later tick comes. At each look the scheduler
takes only the latest tick that has come: it runs it if it is on time (or if the schedule has
``catch_up=True``) and skips the older ones. So ticks missed while no process ran, or while this one
slept (a suspended laptop), are skipped, or with catch-up only the latest of them runs. A timed wait
does not count time spent suspended, so the scheduler also wakes every `WALL_CHECK` seconds to read
the wall clock (no query: it only looks at the time).

Stale schedules. A schedule stays in the file when the application drops or renames it, so the
file also records which executors declared each schedule: `list_schedules` calls a schedule *active*
while one of them is alive (holds its lock, see `litedur.liveness`) and *stale* otherwise (the
application is stopped, or no longer has that schedule). Rows are never dropped on their own: a
schedule whose processes are down for a week keeps its last tick, so ``catch_up`` still runs the
latest missed tick when they come back. `remove_schedule` (``litedur schedules remove NAME``)
deletes a stale one and refuses an active one.

Test hook: `clock` is the time every scheduler of this process reads (``now()``, epoch seconds,
running ``rate`` times as fast as real time). A test replaces it with ``Clock(rate=120)`` to see
cron minutes pass in half a second each (or with one it moves by hand, to play a suspend); it is not
for applications.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .errors import LitedurError
from .storage import ScheduleRow, WorkflowRow

if TYPE_CHECKING:
    from .engine import Engine, _WorkflowSpec
    from .storage import Storage

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("litedur")

GRACE = 60.0  # seconds: a tick this late (and no later tick come) still runs without catch_up
WALL_CHECK = 10.0  # real seconds: the longest the scheduler sleeps without reading the wall clock
RETRY = 1.0  # real seconds: after a failed look (a busy file), look again this soon
LOOKBACK = timedelta(hours=3)  # more than any clock change: wall times this much earlier may come later
SEARCH_YEARS = 30  # a possible cron (checked when parsed) matches well within this
WINDOWS = (60.0, 3600.0, 86400.0, 32 * 86400.0, 367 * 86400.0)  # where to look for the latest tick first

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
MONTHS = {"JAN": 1, "FEB": 2, "MAR": 3, "APR": 4, "MAY": 5, "JUN": 6, "JUL": 7, "AUG": 8, "SEP": 9, "OCT": 10,
          "NOV": 11, "DEC": 12}  # fmt: skip
WEEKDAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
NAMES = {"month": MONTHS, "day-of-week": WEEKDAYS}
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
LAYOUT = "minute hour day-of-month month day-of-week"


# ---- the cron expression --------------------------------------------------------------------------


class Cron:
    """A standard five-field cron expression in a time zone; `next_after` gives its next tick.

    Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC), day of week
    (0-7 or SUN-SAT, 0 and 7 both Sunday). Each is ``*``, a value, a range ``a-b``, a step ``*/n``
    or ``a-b/n``, or a comma-separated list of those; names are case-insensitive. As in Vixie cron,
    when both day fields are restricted (neither starts with ``*``) a day matching either runs;
    otherwise a day must match both. ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` and
    ``@yearly`` stand for their usual five fields. Bad input raises ValueError naming the field and
    the value.

    Ticks are wall-clock times in ``tz`` (an IANA name such as ``"Europe/Paris"`` or a ZoneInfo;
    UTC by default). When the clocks go forward, a tick in the skipped hour fires at the end of the
    gap (several collapse into one); when they go back, a repeated wall time fires once, on its first
    pass, unless the minute or hour field starts with ``*`` (``*/15 * * * *`` goes on firing every
    15 minutes through both passes).
    """

    def __init__(self, expression: str, tz: str | tzinfo | None = None) -> None:
        if not isinstance(expression, str):
            raise TypeError(f"cron expression must be a str, not {type(expression).__name__}")
        self.expression = expression
        self.zone, self.tz = _zone(tz)
        fields = _fields(expression)
        self.minutes, self.hours, self.days, self.months, weekdays = (
            _parse_field(expression, text, *field) for text, field in zip(fields, FIELDS, strict=True)
        )
        self.weekdays = tuple(sorted({day % 7 for day in weekdays}))
        self._day_set, self._weekday_set = frozenset(self.days), frozenset(self.weekdays)
        self._either_day = not fields[2].startswith("*") and not fields[4].startswith("*")
        self._both_passes = fields[0].startswith("*") or fields[1].startswith("*")
        self._check_possible()

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})" if self.tz is None else f"Cron({self.expression!r}, tz={self.tz!r})"

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``, an aware datetime in the schedule's zone.

        A naive ``moment`` is a wall-clock time in the schedule's zone.
        """
        if not isinstance(moment, datetime):
            raise TypeError(f"next_after() needs a datetime, not {type(moment).__name__}")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        moment = moment.astimezone(timezone.utc)
        wall = moment.astimezone(self.zone).replace(tzinfo=None, second=0, microsecond=0, fold=0)
        lookback = self._lookback(moment)
        best: datetime | None = None
        best_wall = wall
        for candidate in self._walls_from(wall - lookback):
            if best is not None and candidate > best_wall + lookback:
                break
            for instant in self._instants(candidate):
                if instant > moment and (best is None or instant < best):
                    best, best_wall = instant, candidate
        if best is None:
            raise LitedurError(f"cron {self.expression!r} has no tick in the {SEARCH_YEARS} years after {moment}")
        return best.astimezone(self.zone)

    def next_tick(self, after: float) -> float:
        """`next_after` in epoch seconds."""
        return self.next_after(datetime.fromtimestamp(after, timezone.utc)).timestamp()

    def _day_matches(self, day: date) -> bool:
        in_days = day.day in self._day_set
        in_weekdays = (day.weekday() + 1) % 7 in self._weekday_set
        return (in_days or in_weekdays) if self._either_day else (in_days and in_weekdays)

    def _walls_from(self, start: datetime) -> Iterator[datetime]:
        """The matching wall-clock minutes (naive) at or after ``start`` (a whole minute), in order."""
        for year in range(start.year, min(start.year + SEARCH_YEARS, 9999) + 1):
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                first = start.day if (year, month) == (start.year, start.month) else 1
                for day in range(first, _days_in(year, month) + 1):
                    if not self._day_matches(date(year, month, day)):
                        continue
                    today = (year, month, day) == (start.year, start.month, start.day)
                    for hour in self.hours:
                        if today and hour < start.hour:
                            continue
                        for minute in self.minutes:
                            if not today or (hour, minute) >= (start.hour, start.minute):
                                yield datetime(year, month, day, hour, minute)

    def _lookback(self, moment: datetime) -> timedelta:
        """How far before ``moment``'s wall time a tick after it may lie: only near a clock change."""
        if self.zone is timezone.utc:
            return timedelta(0)
        now_offset = moment.astimezone(self.zone).utcoffset()
        return LOOKBACK if (moment + LOOKBACK).astimezone(self.zone).utcoffset() != now_offset else timedelta(0)

    def _instants(self, wall: datetime) -> list[datetime]:
        """The instants (UTC) at which this wall time fires: usually one; in a repeated hour the first
        pass (and the second, for schedules that fire on both); in a skipped hour, the gap's end."""
        if self.zone is timezone.utc:
            return [wall.replace(tzinfo=timezone.utc)]
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(timezone.utc)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(timezone.utc)
        if first == second:
            return [first]
        if first.astimezone(self.zone).replace(tzinfo=None) != wall:  # the clocks skip this wall time
            return [self._gap_end(min(first, second), max(first, second))]
        return [first, second] if self._both_passes else [first]

    def _gap_end(self, low: datetime, high: datetime) -> datetime:
        """The instant the clocks jump forward: the first second in (low, high] with high's offset."""
        after = high.astimezone(self.zone).utcoffset()
        lo, hi = int(low.timestamp()), int(high.timestamp())
        while hi - lo > 1:
            middle = (lo + hi) // 2
            if datetime.fromtimestamp(middle, self.zone).utcoffset() == after:
                hi = middle
            else:
                lo = middle
        return datetime.fromtimestamp(hi, timezone.utc)

    def _check_possible(self) -> None:
        """A day-of-month that no chosen month has (``0 0 30 2 *``) would never fire: refuse it."""
        if self._either_day:
            return  # any weekday of the list fires
        if any(day <= _days_in(2000, month) for month in self.months for day in self.days):
            return
        months = ", ".join(name for name, number in MONTHS.items() if number in self.months)
        days = ", ".join(map(str, self.days))
        raise ValueError(f"cron {self.expression!r} never fires: no day {days} in {months}")


def _zone(tz: Any) -> tuple[tzinfo, str | None]:
    """``(tzinfo, its name)`` for a tz argument; UTC (and no name) for None."""
    if tz is None:
        return timezone.utc, None
    import zoneinfo  # only for schedules with a zone

    if isinstance(tz, zoneinfo.ZoneInfo):
        return tz, tz.key
    if tz is timezone.utc:
        return timezone.utc, "UTC"
    if not isinstance(tz, str):
        raise TypeError(f"tz must be an IANA time zone name (str) or a zoneinfo.ZoneInfo, not {tz!r}")
    try:
        return zoneinfo.ZoneInfo(tz), tz
    except (ValueError, OSError, KeyError):  # KeyError: ZoneInfoNotFoundError
        raise ValueError(f"unknown time zone {tz!r}: give an IANA name such as 'Europe/Paris' or 'UTC'") from None


def _fields(expression: str) -> list[str]:
    """The five fields of an expression (a macro replaced); ValueError naming what is wrong."""
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ValueError(f"cron {expression!r}: unknown macro; known: {', '.join(MACROS)}")
        text = MACROS[text.lower()]
    fields = text.split()
    if len(fields) != 5:
        extra = " (a first field of seconds is not supported)" if len(fields) == 6 else ""
        raise ValueError(f"cron {expression!r} has {len(fields)} fields, not five: {LAYOUT}{extra}")
    return fields


def _parse_field(expression: str, text: str, label: str, low: int, high: int) -> tuple[int, ...]:
    """The sorted values a field matches; ValueError naming the field and the bad part."""
    values: set[int] = set()
    for item in text.split(","):
        where = f"cron {expression!r}: {label} field {text!r}"
        if not item:
            raise ValueError(f"{where} has an empty list item")
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{where}: step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            if not first or not last:
                raise ValueError(f"{where}: {body!r} is not a value or a range a-b")
            start, end = _value(where, first, label, low, high), _value(where, last, label, low, high)
            if start > end:
                raise ValueError(f"{where}: range {body!r} goes backwards")
        elif slash:
            raise ValueError(f"{where}: a step needs a range or *, as in {body}-{high}/{step} or */{step}")
        else:
            start = end = _value(where, body, label, low, high)
        values.update(range(start, end + 1, step))
    return tuple(sorted(values))


def _value(where: str, token: str, label: str, low: int, high: int) -> int:
    names = NAMES.get(label, {})
    if token.upper() in names:
        return names[token.upper()]
    if not token.isdigit():
        known = f" (or a name {min(names, key=names.get)}-{max(names, key=names.get)})" if names else ""
        raise ValueError(f"{where}: {token!r} is not a {label} number{known}")
    if not low <= int(token) <= high:
        raise ValueError(f"{where}: {label} {int(token)} is out of range {low}-{high}")
    return int(token)


def _days_in(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


# ---- the clock (a test hook) ----------------------------------------------------------------------


class Clock:
    """The time schedulers read: epoch seconds, running ``rate`` times as fast as real time from
    ``origin``. The default is the wall clock (``time.time()``).

    TEST HOOK, not for applications: a test sets ``litedur.schedules.clock = Clock(rate=120,
    origin=t0)`` in every process on the file (the same ``origin``, so they agree on the time) and a
    cron minute passes in half a second; or it replaces ``now`` to move time by hand (a suspend).
    """

    def __init__(self, rate: float = 1.0, origin: float = 0.0) -> None:
        if not rate > 0:
            raise ValueError(f"clock rate must be > 0, not {rate!r}")
        self.rate, self.origin = float(rate), float(origin)

    def now(self) -> float:
        return self.origin + (time.time() - self.origin) * self.rate


clock = Clock()


# ---- schedules of an engine -----------------------------------------------------------------------


class Schedule(NamedTuple):
    """A cron schedule of a workflow, registered in one engine."""

    name: str
    cron: Cron
    workflow: _WorkflowSpec
    catch_up: bool

    def same_as(self, other: Schedule) -> bool:
        return (self.cron.expression, self.cron.tz, self.workflow, self.catch_up) == (
            other.cron.expression, other.cron.tz, other.workflow, other.catch_up)  # fmt: skip

    def declaration(self, now: float) -> ScheduleRow:
        return ScheduleRow(self.name, self.workflow.name, self.cron.expression, self.cron.tz, int(self.catch_up),
                           now, now, None)  # fmt: skip


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule recorded in the file: its cron, the latest tick claimed and the next one, and
    whether a live process runs it."""

    name: str
    workflow_name: str
    cron: str
    tz: str | None
    catch_up: bool
    last_tick: datetime | None  # in the schedule's zone (UTC without one)
    next_tick: datetime | None  # by the cron, after now and last_tick (it runs only if active); None if
    # this litedur cannot read the cron
    declared_at: float  # epoch seconds: when a process last launched with it
    executors: tuple[str, ...] = ()  # the live executors (launched processes) that declared it
    active: bool = False  # some live process runs it; False: stale (stopped, or dropped from the code)


class ScheduleNotFoundError(LitedurError, LookupError):
    """No schedule of that name is recorded in the file."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(f"no schedule named {name!r} in {path} (litedur schedules lists them)")
        self.name = name


def scheduled(
    engine: Engine, cron: str, tz: str | tzinfo | None, catch_up: bool, name: str | None
) -> Callable[[F], F]:
    """The decorator behind `Engine.scheduled` (arguments checked now, the workflow when it is applied)."""
    parsed = Cron(cron, tz)
    if not isinstance(catch_up, bool):
        raise TypeError(f"catch_up must be a bool, not {catch_up!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"schedule name must be a non-empty str, not {name!r}")

    def decorate(fn: F) -> F:
        spec = getattr(fn, "__litedur_workflow__", None)
        if spec is None or engine._workflows.get(spec.name) is not spec:
            raise TypeError(
                f"@scheduled needs a workflow of this engine, not {getattr(fn, '__qualname__', fn)!r}: put "
                "@app.workflow() under @app.scheduled(...)"
            )
        _check_signature(spec)
        engine._scheduler.add(Schedule(name or spec.name, parsed, spec, catch_up))
        return fn

    return decorate


def _check_signature(spec: _WorkflowSpec) -> None:
    try:
        inspect.signature(spec.fn).bind(None, None)
    except TypeError as exc:
        raise TypeError(
            f"scheduled workflow {spec.name!r} must take two arguments (scheduled_time, actual_time): {exc}"
        ) from None
    except ValueError:  # no signature to look at (a builtin): calls will tell
        pass


def tick_workflow_id(name: str, tick: float) -> str:
    """The id of a tick's workflow: the same in every process, so a tick has one workflow."""
    moment = datetime.fromtimestamp(tick, timezone.utc)
    return f"sched-{name}-{moment:%Y-%m-%dT%H:%M:%S}Z"


def list_schedules(storage: Storage) -> list[ScheduleInfo]:
    """Every schedule recorded in the file, with its next tick (after now and its last tick) and the
    live executors that declared it, by name."""
    found = []
    now = clock.now()
    live = _live_declarers(storage)
    for row in storage.list_schedules():
        try:
            cron: Cron | None = Cron(row.cron, row.tz)
        except (ValueError, TypeError):  # written by another version, or a zone this machine lacks
            cron = None
        zone = timezone.utc if cron is None else cron.zone
        last = None if row.last_tick is None else datetime.fromtimestamp(row.last_tick, zone)
        after = datetime.fromtimestamp(max(now, row.last_tick or now), timezone.utc)
        next_tick = None if cron is None else cron.next_after(after)
        executors = tuple(live.get(row.name, ()))
        found.append(ScheduleInfo(row.name, row.workflow_name, row.cron, row.tz, bool(row.catch_up), last,
                                  next_tick, row.declared_at, executors, bool(executors)))  # fmt: skip
    return found


def _live_declarers(storage: Storage, name: str | None = None) -> dict[str, list[str]]:
    """The live executors that declared each schedule (of ``name`` only, if given)."""
    alive: dict[str, bool] = {}
    live: dict[str, list[str]] = {}
    for schedule, executor_id, _ in storage.schedule_declarations(name):
        if executor_id not in alive:
            alive[executor_id] = storage.executor_alive(executor_id)
        if alive[executor_id]:
            live.setdefault(schedule, []).append(executor_id)
    return live


def remove_schedule(storage: Storage, name: str) -> None:
    """Delete the stale schedule ``name`` from the file (its ticks' workflows stay). Refused with
    `LitedurError` while a live process declared it (it would go on running it); unknown name:
    `ScheduleNotFoundError`."""
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str, not {type(name).__name__}")
    while True:
        row = next((row for row in storage.list_schedules() if row.name == name), None)
        if row is None:
            raise ScheduleNotFoundError(name, storage.location)
        live = _live_declarers(storage, name).get(name)
        if live:
            raise LitedurError(
                f"schedule {name!r} is active: declared by running executor {', '.join(map(repr, live))}, which "
                "would go on running it; stop that process (or drop the @app.scheduled from the application and "
                "restart it) first"
            )
        if storage.remove_schedule(name, row.declared_at):
            log.info("schedule %s removed (no live process declared it)", name)
            return
        # declared again (a process launched meanwhile) or removed by someone else: look again


class _Watch:
    """What a scheduler knows of one of its schedules."""

    __slots__ = ("cursor", "since")

    def __init__(self, cursor: float, since: float) -> None:
        self.cursor = cursor  # the latest tick run (here or elsewhere) or skipped: later ones are to come
        self.since = since  # when this process began to watch it: ticks before came while it did not run


class Scheduler:
    """Runs the ticks of an engine's schedules (one thread per launched engine that has schedules)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._schedules: dict[str, Schedule] = {}
        self._watches: dict[str, _Watch] = {}  # the schedules declared in the file since launch
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._launched = False

    def add(self, schedule: Schedule) -> None:
        """Register a schedule; after launch it is declared and watched at once."""
        with self._lock:
            known = self._schedules.get(schedule.name)
            if known is not None and not known.same_as(schedule):
                raise LitedurError(
                    f"a schedule named {schedule.name!r} is already registered here; pass name=... to tell them apart"
                )
            self._schedules[schedule.name] = schedule
            launched = self._launched
        if launched:
            self.start()

    def start(self) -> None:
        """At launch: record the schedules in the file and start the thread (no-op without schedules)."""
        with self._lock:
            self._launched = True
            new = [schedule for name, schedule in self._schedules.items() if name not in self._watches]
        for schedule in new:
            now = clock.now()
            created_at, last_tick = self._declare(schedule, now)
            with self._lock:
                self._watches[schedule.name] = _Watch(created_at if last_tick is None else last_tick, now)
        with self._lock:
            if self._thread is None and self._watches:
                self._thread = threading.Thread(target=self._run, name="litedur-schedules", daemon=True)
                self._thread.start()
        self._wake.set()

    def _declare(self, schedule: Schedule, now: float) -> tuple[float, float | None]:
        """Record the schedule as declared by this executor (forgetting dead executors' declarations of
        it): ``(created_at, last_tick)``."""
        storage = self._engine._storage
        executor_id = self._engine._ensure_executor().executor_id
        dead = [(executor, declared_at) for _, executor, declared_at in storage.schedule_declarations(schedule.name)
                if executor != executor_id and not storage.executor_alive(executor)]  # fmt: skip
        return storage.declare_schedule(schedule.declaration(now), executor_id, dead)

    def close(self) -> None:
        """Stop the thread (at shutdown); a later launch declares the schedules again."""
        with self._lock:
            self._launched = False
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None:
            thread.join()
        with self._lock:
            self._watches.clear()

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                if not self._launched:
                    return
                watched = [(self._schedules[name], watch) for name, watch in self._watches.items()]
            now = clock.now()  # once: the lateness of a tick is the scheduler's, not that of other claims
            wake_at = math.inf
            for schedule, watch in watched:
                try:
                    wake_at = min(wake_at, self._visit(schedule, watch, now))
                except Exception:  # a busy or read-only file now: look again soon
                    log.exception("schedule %s: could not start its tick; trying again", schedule.name)
                    wake_at = min(wake_at, now + RETRY * clock.rate)
            self._wake.wait(min(WALL_CHECK, max(0.0, (wake_at - clock.now()) / clock.rate)))

    def _visit(self, schedule: Schedule, watch: _Watch, now: float) -> float:
        """Run the latest tick that came since the last visit, if it is on time or catch_up is on,
        and skip the others; the next tick to wait for."""
        cron = schedule.cron
        due = cron.next_tick(watch.cursor)
        if due > now:
            return due
        latest = _latest_tick(cron, due, now)
        if latest > due:
            log.info("schedule %s: skipped the missed ticks from %s to before %s", schedule.name, _iso(due),
                     _iso(latest))  # fmt: skip
        on_time = watch.since < latest and now - latest <= GRACE
        if on_time or schedule.catch_up:
            claimed = self._claim(schedule, latest, now)
            watch.cursor = latest if claimed is None else max(latest, claimed)
        else:
            log.info("schedule %s: skipped the missed tick of %s (catch_up is off)", schedule.name, _iso(latest))
            watch.cursor = latest
        return cron.next_tick(watch.cursor)

    def _claim(self, schedule: Schedule, tick: float, now: float) -> float | None:
        """Claim ``tick`` and start its workflow here unless a process claimed it (or a later one)
        first; the schedule's latest claimed tick."""
        engine = self._engine
        executor = engine._ensure_executor()
        zone = schedule.cron.zone
        args = (datetime.fromtimestamp(tick, zone), datetime.fromtimestamp(now, zone))
        inputs = engine._encode_inputs(args, {})
        timeout, deadline = engine._limits(schedule.workflow, None)
        started = time.time()
        row = WorkflowRow(tick_workflow_id(schedule.name, tick), schedule.workflow.name, "PENDING", inputs[0],
                          inputs[1], None, None, None, None, executor.executor_id, 0, started, started,
                          timeout=timeout, deadline=deadline)  # fmt: skip
        created, last_tick = engine._storage.claim_tick(schedule.name, tick, row)
        if not created and last_tick is None:  # its record is gone (deleted by hand) while this process runs it
            log.warning("schedule %s: its record was removed from the file while this process runs it; "
                        "declaring it again", schedule.name)  # fmt: skip
            self._declare(schedule, now)
            created, last_tick = engine._storage.claim_tick(schedule.name, tick, row)
        if created:
            log.debug("schedule %s: tick %s runs as workflow %s", schedule.name, _iso(tick), row.workflow_id)
            engine._feed.notify()
            engine._start_dequeued(row)  # like a workflow taken from a queue: claimed here, run here
        return last_tick


def _latest_tick(cron: Cron, due: float, now: float) -> float:
    """The latest tick at or before ``now``, given that ``due`` is one (a few steps, not one per tick)."""
    tick = due
    for window in WINDOWS:
        if now - window <= due:
            break
        candidate = cron.next_tick(now - window)
        if candidate <= now:
            tick = candidate
            break
    while (following := cron.next_tick(tick)) <= now:
        tick = following
    return tick


def _iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, timezone.utc).isoformat()
