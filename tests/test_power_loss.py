"""Power loss with durability="full": forget every write after the last fsync, at every fsync.

A child process (tests/workers/fault_power.py) runs several seeded random workflows at once (the
shapes of the crash-injection harness: step producers resuming with already_written, a step failing
once, body writes, closes, a final ERROR sometimes), with a reader thread on every stream, on
``Engine(durability="full")``. It registers a Python VFS shim (apsw.VFS / apsw.VFSFile subclasses)
as SQLite's default VFS, so litedur opens its file through it unchanged; the shim records every
write, truncate, fsync and delete, and the program's markers, in the order they happened.

The test replays that trace to build the files as a power loss would leave them. **Crash point k**
is the moment just before the k-th fsync (xSync) call of the run returns: each file then holds
exactly the writes that an fsync of that file had covered (writes made before that fsync began;
every later write is forgotten), deleted files stay deleted, and the ``-shm`` index is gone. Every
fsync of the run gives one crash point, plus the end of the run. "Before the crash" for a marker
means recorded before that moment.

At each crash point the files are opened as they are and must satisfy:

1. ``PRAGMA integrity_check`` is ok (or nothing was ever made durable and no marker says otherwise);
2. every stream holds a prefix of what it held at the end of the run (same offsets, values, step
   positions and attempts): nothing reordered, no gap, no value the run did not end up with; every
   step record and final status present equals the run's;
3. every workflow whose ``start_workflow`` had returned exists;
4. every value whose ``write_stream`` call had returned in a workflow body is there (a body write
   is a checkpoint, committed, and with durability="full" fsynced, before the call returns);
5. in a step with ``group_writes=False``, likewise every value whose ``write_stream`` had returned;
   with ``group_writes=True`` (the default) a step's ``write_stream`` returns before its commit,
   so the guarantee is the next two;
6. every value written by a step whose output the workflow body had received is there, and so is
   that step's record (its output is recorded only after its values are committed);
7. every value a reader had received is there, at the offset it was received at (a reader sees
   only committed values: nothing a reader saw is ever lost);
8. every workflow whose ``get_result`` had returned has its final status;
9. for a sample of crash points (all with ``LITEDUR_POWER_RECOVER_ALL=1``), a copy of the files,
   opened by a new Engine that registers the same workflows, recovers every unfinished workflow, and
   each ends with exactly the streams and status of an uninterrupted run of its seed.

The number of crash points tried is printed (``-s``) per run. ``LITEDUR_POWER_SEEDS=1,2,...`` picks
the workflows of the run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import pytest
from support import WORKERS, finish, spawn, stream_entries

import litedur

sys.path.insert(0, str(WORKERS))
import fault_shape  # noqa: E402  (lives with the workers, which import it too)

SEEDS = tuple(int(seed) for seed in os.environ.get("LITEDUR_POWER_SEEDS", "3,4,7,12,21,33").split(","))
RECOVERED_POINTS = int(os.environ.get("LITEDUR_POWER_RECOVERED_POINTS", "12"))
RECOVER_ALL = os.environ.get("LITEDUR_POWER_RECOVER_ALL") == "1"
END_OF_STREAM = -1


# ---- the files a power loss leaves -------------------------------------------------------------------------


class PowerLossImage:
    """The database files as a power loss at the current point of the trace would leave them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        self._pending: dict[str, list[tuple[int, tuple]]] = defaultdict(list)  # file -> (sequence, op)
        self._covers: dict[int, int] = {}  # fsync number -> last sequence it covers
        self._sequence = 0

    def path_of(self, name: str) -> Path:
        return self.directory / os.path.basename(name)

    def step(self, event: tuple) -> None:
        """Advance the trace by one file event."""
        kind = event[0]
        if kind in ("write", "truncate"):
            self._sequence += 1
            self._pending[event[1]].append((self._sequence, event))
        elif kind == "sync_begin":
            self._covers[event[2]] = self._sequence
        elif kind == "sync_done":
            covered = self._covers.pop(event[2])
            pending = self._pending[event[1]]
            durable = [op for sequence, op in pending if sequence <= covered]
            self._pending[event[1]] = [(s, op) for s, op in pending if s > covered]
            for op in durable:
                self._apply(op)
        elif kind == "delete":
            self._pending.pop(event[1], None)
            self.path_of(event[1]).unlink(missing_ok=True)

    def _apply(self, op: tuple) -> None:
        path = self.path_of(op[1])
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if op[0] == "write":
                os.pwrite(fd, op[3], op[2])
            else:
                os.ftruncate(fd, op[2])
        finally:
            os.close(fd)


# ---- what the files hold -----------------------------------------------------------------------------------


@dataclass
class Contents:
    integrity: list = field(default_factory=list)
    streams: dict[tuple[str, str], list[tuple]] = field(default_factory=dict)  # (workflow, key) -> rows
    steps: dict[tuple[str, int], tuple[str, Any]] = field(
        default_factory=dict
    )  # (workflow, position) -> (name, output)
    statuses: dict[str, str] = field(default_factory=dict)
    empty: bool = False


def read_contents(db: Path) -> Contents:
    """What a database file (with its -wal) holds, read through raw SQL; ``empty`` if no schema yet."""
    contents = Contents()
    if not db.exists() or db.stat().st_size == 0:
        contents.empty = True
        return contents
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        contents.integrity = conn.execute("PRAGMA integrity_check").fetchall()
        if conn.execute("PRAGMA user_version").fetchall()[0][0] == 0:
            contents.empty = True
            return contents
        for workflow_id, key, *row in conn.execute(
            "SELECT s.workflow_id, s.key, e.offset, e.encoding, e.value, e.position, e.attempt "
            "FROM stream_entries e JOIN streams s ON s.stream_id = e.stream_id ORDER BY s.stream_id, e.offset"
        ):
            contents.streams.setdefault((workflow_id, key), []).append(tuple(row))
        for workflow_id, position, name, output in conn.execute(
            "SELECT workflow_id, position, name, output FROM steps"
        ):
            contents.steps[(workflow_id, position)] = (name, output)
        contents.statuses = dict(conn.execute("SELECT workflow_id, status FROM workflows").fetchall())
    finally:
        conn.close()
    return contents


def open_image(image: PowerLossImage, scratch: Path, db_name: str) -> Contents:
    """Read the image's files; a hot rollback journal (left while the file was being created) is
    rolled back on a copy, since a read-only connection may not."""
    db = image.path_of(db_name)
    journal = Path(f"{db}-journal")
    try:
        if journal.exists() and journal.stat().st_size > 0:
            copy = copy_image(image, scratch, db_name)
            return read_contents(copy)
        return read_contents(db)
    finally:
        Path(f"{db}-shm").unlink(missing_ok=True)


def copy_image(image: PowerLossImage, scratch: Path, db_name: str) -> Path:
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    db = image.path_of(db_name)
    for suffix in ("", "-wal", "-journal"):
        source = Path(f"{db}{suffix}")
        if source.exists():
            shutil.copyfile(source, scratch / f"{db.name}{suffix}")
    return scratch / db.name


# ---- the checks --------------------------------------------------------------------------------------------


def check_point(point: str, contents: Contents, final: Contents, markers: list[tuple], group_writes: bool) -> list[str]:
    """Checks 1-8 of the module docstring at one crash point; returns what failed."""
    problems = []
    if contents.empty:
        if markers:
            problems.append(f"{point}: nothing durable, yet the program had been told {markers[0]}")
        return problems
    if contents.integrity != [("ok",)]:
        problems.append(f"{point}: integrity_check {contents.integrity}")
    for stream, rows in contents.streams.items():
        if rows != final.streams.get(stream, [])[: len(rows)]:
            problems.append(f"{point}: stream {stream} holds {rows}, not a prefix of {final.streams.get(stream)}")
    for step, record in contents.steps.items():
        if final.steps.get(step) != record:
            problems.append(f"{point}: step {step} recorded {record}, the run ended with {final.steps.get(step)}")
    for workflow_id, status in contents.statuses.items():
        if status not in ("PENDING", final.statuses.get(workflow_id)):
            problems.append(f"{point}: workflow {workflow_id} is {status}, the run ended {final.statuses[workflow_id]}")

    def values(workflow_id: str, key: str) -> list:
        return [row[2] for row in contents.streams.get((workflow_id, key), []) if row[1] != END_OF_STREAM]

    for marker in markers:
        kind, workflow_id = marker[0], marker[1]
        if kind == "created" and workflow_id not in contents.statuses:
            problems.append(f"{point}: workflow {workflow_id} was started but is missing")
        elif kind == "w":
            key, value = marker[2], marker[3]
            if (value.startswith("b") or not group_writes) and value not in values(workflow_id, key):
                problems.append(f"{point}: {value!r} of {workflow_id}/{key} returned from write_stream but is missing")
        elif kind == "observed":
            step, token = int(marker[2]), marker[3]
            op = fault_shape.shape_of(int(workflow_id.split("-")[1])).ops[step]
            if token not in [name_output[1] for (wf, _), name_output in contents.steps.items() if wf == workflow_id]:
                problems.append(f"{point}: step {step} of {workflow_id} returned {token} but its record is missing")
            if op.kind == "step" and op.key is not None:
                wanted = [fault_shape.value_of(op, j) for j in range(op.count)]
                missing = [v for v in wanted if v not in values(workflow_id, op.key)]
                if missing:
                    problems.append(f"{point}: step {step} of {workflow_id} returned, but {missing} are missing")
        elif kind == "seen":
            key, offset, value = marker[2], marker[3], marker[4]
            rows = contents.streams.get((workflow_id, key), [])
            if offset >= len(rows) or rows[offset][2] != value:
                problems.append(f"{point}: a reader got {value!r} at {workflow_id}/{key}@{offset}; it is missing")
        elif kind == "finished" and contents.statuses.get(workflow_id) != marker[2]:
            problems.append(
                f"{point}: {workflow_id} had finished {marker[2]}, but is {contents.statuses.get(workflow_id)}"
            )
    return problems


@dataclass
class Reference:
    status: str
    entries: dict[str, list[tuple]]


def run_references(directory: Path) -> dict[str, Reference]:
    """Each seed's workflow run uninterrupted (in this process): its status and streams."""
    found = {}
    for seed in SEEDS:
        db = directory / f"reference-{seed}.db"
        app = litedur.Engine(db)
        workflow_id = f"power-{seed}"
        flow = fault_shape.build(app, fault_shape.shape_of(seed), lambda *event: None, pace=0.0, name=f"fault-{seed}")
        with app:
            with litedur.SetWorkflowID(workflow_id):
                handle = app.start_workflow(flow, seed)
            with contextlib.suppress(fault_shape.FaultError):
                handle.get_result(timeout=60)
            status = app.get_status(workflow_id).status
        keys = fault_shape.shape_of(seed).keys
        found[workflow_id] = Reference(
            status, {key: [e[:3] for e in stream_entries(db, workflow_id, key)] for key in keys}
        )
    return found


def recover_and_compare(point: str, db: Path, references: dict[str, Reference]) -> list[str]:
    """Check 9: a new Engine on a copy of the files finishes every workflow exactly like the reference."""
    problems = []
    app = litedur.Engine(db, durability="full")
    for seed in SEEDS:
        fault_shape.build(app, fault_shape.shape_of(seed), lambda *event: None, pace=0.0, name=f"fault-{seed}")
    with app:
        present = [status.workflow_id for status in app.list_workflows()]
        for workflow_id in present:
            try:
                app.retrieve_workflow(workflow_id).get_result(timeout=60)
            except fault_shape.FaultError:
                pass
            except TimeoutError:
                problems.append(f"{point}: {workflow_id} did not finish after recovery")
                continue
            reference = references[workflow_id]
            status = app.get_status(workflow_id).status
            if status != reference.status:
                problems.append(f"{point}: {workflow_id} ended {status} after recovery, reference {reference.status}")
            for key, expected in reference.entries.items():
                got = [e[:3] for e in stream_entries(db, workflow_id, key)]
                if got != expected:
                    problems.append(f"{point}: after recovery {workflow_id}/{key} holds {got}, reference {expected}")
    return problems


# ---- the test ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_writes", [True, False], ids=["grouped step writes", "one commit per write"])
def test_power_loss_at_every_fsync_loses_nothing_that_was_acknowledged(tmp_path, group_writes):
    run = tmp_path / "run"
    run.mkdir()
    db, trace_path = run / "power.db", tmp_path / "trace.pkl"
    worker = spawn("fault_power.py", db, trace_path, int(group_writes), *SEEDS)
    assert finish(worker, timeout=120) == 0
    trace = pickle.loads(trace_path.read_bytes())
    final = read_contents(db)
    assert final.integrity == [("ok",)]
    assert set(final.statuses) == {f"power-{seed}" for seed in SEEDS}
    assert all(status in ("SUCCESS", "ERROR") for status in final.statuses.values())

    image = PowerLossImage(tmp_path / "image")
    syncs = [number for number, event in enumerate(trace) if event[0] == "sync_done"]
    sample = (
        set(syncs) if RECOVER_ALL else set(random.Random(len(trace)).sample(syncs, min(RECOVERED_POINTS, len(syncs))))
    )
    references = run_references(tmp_path)
    markers: list[tuple] = []
    problems: list[str] = []
    points = recovered = 0
    for number, event in enumerate([*trace, ("end",)]):
        if event[0] in ("sync_done", "end"):
            point = (
                f"crash point {points} (before fsync of {os.path.basename(event[1])})" if event[0] != "end" else "end"
            )
            problems += check_point(
                point, open_image(image, tmp_path / "scratch", str(db)), final, markers, group_writes
            )
            points += 1
            if number in sample:
                copy = copy_image(image, tmp_path / "recovered", str(db))
                problems += recover_and_compare(point, copy, references)
                recovered += 1
        if event[0] in ("write", "truncate", "sync_begin", "sync_done", "delete"):
            image.step(event)
        elif event[0] != "end":
            markers.append(event)
    print(f"\npower loss ({'grouped' if group_writes else 'one commit per write'}): "
          f"{points} crash points checked, {recovered} recovered and run to the end")  # fmt: skip
    assert not problems, "\n".join(problems[:20])
    assert points > 20
