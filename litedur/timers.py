"""Time and cancellation inside a run: durable sleep and waits, deadlines, and "may this run go on?".

A durable wait (``sleep``, ``recv``, ``get_event`` and ``get_result`` in a workflow body) takes one
position. Its deadline is recorded at that position before it first waits, so a run recovered after
a crash waits only for what remains of it; its outcome is the position's checkpoint. A wait sleeps on
the client's `WorkflowSignals`, so a message, an event, a status change or a cancel, from this
process or another, wakes it at once: nothing polls.

A cancel is a committed status (see `management.cancel`). The run learns of it before each step body,
at each wake-up of a wait, and from the fence on every write (storage refuses the writes of a run
that no longer owns its workflow). A workflow's own deadline is enforced the same way, and by a
`DeadlineKeeper` thread that cancels it on time even in the middle of a long step.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import LitedurError, StaleRunError, WorkflowCancelledError, WorkflowInterrupted
from .runner import Plan
from .storage import WorkflowRow, WorkflowState

if TYPE_CHECKING:
    from .engine import Engine, _Run

T = TypeVar("T")

SLEEP_STEP = "litedur.sleep"
MAX_SECONDS = 10 * 365 * 24 * 3600.0  # ten years: longer waits are a bug; None means "no limit"


def check_timeout(seconds: Any, what: str) -> float | None:
    """A timeout argument as a float (None: none); ValueError or TypeError naming ``what`` otherwise."""
    if seconds is None:
        return None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(seconds).__name__}")
    if not 0 <= seconds <= MAX_SECONDS:  # also refuses NaN and infinity
        raise ValueError(f"{what} must be between 0 and {MAX_SECONDS:g} seconds (None: no limit), not {seconds!r}")
    return float(seconds)


def start_run(engine: Engine, run: _Run) -> None:
    """At the start of a run: time it out at once if its deadline passed, else watch the deadline."""
    if run.deadline is None:
        return
    if time.time() >= run.deadline:
        time_out(engine, run)
    engine._deadlines.watch(run.workflow_id, run.deadline)


def check_running(engine: Engine, run: _Run) -> None:
    """Raise why the run must stop (cancelled, timed out, or its workflow now someone else's), if it must.

    The status is read only when the run's interest in its own workflow was rung since the last
    check (a change from this process at once, from another within about a tenth of a millisecond):
    a step costs no query. A step started inside that window runs, but the fence refuses its record.
    """
    if run.deadline is not None and time.time() >= run.deadline:
        time_out(engine, run)
    if not run.interest.rung():
        return
    run.interest.arm()
    state = engine._storage.workflow_state(run.workflow_id)
    if state is not None and state.status == "PENDING" and state.executor_id == run.executor_id:
        return
    raise _stopped(run, state)


def stopped_error(engine: Engine, run: _Run) -> LitedurError:
    """The error that says why a run whose write was refused has stopped."""
    return _stopped(run, engine._storage.workflow_state(run.workflow_id))


def _stopped(run: _Run, state: WorkflowState | None) -> LitedurError:
    if state is not None and state.status == "CANCELLED":
        reason = f": {state.cancel_reason}" if state.cancel_reason else ""
        return WorkflowCancelledError(f"workflow {run.workflow_id!r} was cancelled{reason}")
    described = "deleted" if state is None else f"{state.status}, owned by executor {state.executor_id!r}"
    return StaleRunError(f"workflow {run.workflow_id!r} is {described}; this run of it stops")


def timeout_reason(row: WorkflowRow | None) -> str:
    """The cancel reason recorded when a workflow's deadline passes."""
    if row is not None and row.timeout is not None:
        return f"timed out: its deadline passed (timeout {row.timeout:g} s)"
    return "timed out: the deadline it inherited from its parent passed"


def time_out(engine: Engine, run: _Run) -> None:
    """Cancel a run's workflow (and children) because its deadline passed, then raise that."""
    row = engine._storage.get_workflow(run.workflow_id)
    engine._cancel(run.workflow_id, timeout_reason(row), if_deadline=run.deadline)
    raise stopped_error(engine, run)


def wait_durably(
    engine: Engine,
    run: _Run,
    position: int,
    timeout: float | None,
    check: Callable[[], tuple[bool, T]],
    others: tuple[str, ...] = (),
) -> Plan[tuple[bool, T | None]]:
    """Wait at ``position`` until ``check`` says done, the wait's recorded deadline passes (False), or
    the run must stop (raised; WorkflowInterrupted when the engine shuts down, which leaves the
    workflow PENDING for the next launch). Wakes when this workflow or one of ``others`` changes.
    """
    end = None
    if timeout is not None:
        end = engine._storage.wait_deadline(run.workflow_id, position, time.time() + timeout, run.executor_id)
    if run.deadline is not None:
        end = run.deadline if end is None else min(end, run.deadline)

    def check_run_then(check: Callable[[], tuple[bool, T]] = check) -> tuple[bool, T]:
        if engine._stopping.is_set():
            raise WorkflowInterrupted(f"workflow {run.workflow_id!r} left waiting: its engine is shutting down")
        check_running(engine, run)
        return check()

    monotonic_end = None if end is None else time.monotonic() + (end - time.time())
    done, value = yield from engine._signals.wait_plan((run.workflow_id, *others), check_run_then, monotonic_end)
    if not done:
        if run.deadline is not None and end == run.deadline:
            time_out(engine, run)  # the workflow's own deadline is what passed (whatever the clocks say)
        check_running(engine, run)
    return done, value


def sleep(engine: Engine, run: _Run, seconds: float) -> Plan[None]:
    """Durable sleep at the next position of a workflow body. Replay rule: the deadline recorded at
    the first attempt is kept, so a recovered run wakes at it (at once if it passed)."""
    seconds = check_timeout(seconds, "sleep")
    if seconds is None:
        raise TypeError("sleep() needs a number of seconds, not None")
    position, recorded = run.checkpoint(SLEEP_STEP)
    if recorded is not None:
        return
    started = time.time()
    yield from wait_durably(engine, run, position, seconds, _never_done)
    engine._record_step(run, position, SLEEP_STEP, 1, started, output=engine._codec.encode(None))


def _never_done() -> tuple[bool, None]:
    return False, None


class DeadlineKeeper:
    """One thread per engine that calls ``cancel(workflow_id, deadline)`` when a watched deadline passes.

    It cancels a workflow on time even while its run is inside a long step; the callback re-checks
    that the workflow is still PENDING with that deadline (a resume clears it).
    """

    def __init__(self, cancel: Callable[[str, float], None]) -> None:
        self._cancel = cancel
        self._heap: list[tuple[float, str]] = []
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, workflow_id: str, deadline: float) -> None:
        with self._condition:
            heapq.heappush(self._heap, (deadline, workflow_id))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="litedur-deadlines", daemon=True)
                self._thread.start()
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (not self._heap or self._heap[0][0] > time.time()):
                    self._condition.wait(None if not self._heap else self._heap[0][0] - time.time())
                if self._closed:
                    return
                deadline, workflow_id = heapq.heappop(self._heap)
            with contextlib.suppress(LitedurError):  # a busy file now: the run itself checks its deadline too
                self._cancel(workflow_id, deadline)
