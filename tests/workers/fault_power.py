"""A child process of the power-loss suite: runs seeded workflows on a VFS that records every write.

    fault_power.py DB TRACE GROUP_WRITES SEED [SEED...]

Registers `RecordingVFS` as SQLite's default VFS (so litedur's own connections use it, unchanged),
then runs the seeded random workflows of fault_shape at once on an ``Engine(DB, durability="full",
group_writes=GROUP_WRITES)``, with one reader thread per stream, and shuts down. The trace it pickles
to TRACE is one list, in the order things happened, of:

- ``("write", file, offset, bytes)`` and ``("truncate", file, size)``, each once the call returned;
- ``("sync_begin", file, n)`` before an xSync and ``("sync_done", file, n)`` once it returned;
- ``("delete", file)`` once an xDelete returned;
- markers of what the program had been told: ``("created", workflow_id)`` (start_workflow returned),
  ``("w", workflow_id, key, value)`` (write_stream returned), ``("observed", workflow_id, step, token)``
  (the body got a step's output), ``("seen", workflow_id, key, offset, value)`` (a reader got a value),
  ``("finished", workflow_id, status)`` (get_result returned).

Every connection checkpoints after 16 pages of WAL (an apsw connection hook), so that the run
checkpoints often. Files are named by their path; temporary files and the ``-shm`` index (memory, rebuilt after a power
loss) are not recorded.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import sys
import threading

import apsw
from fault_shape import FaultError, build, shape_of

import litedur

trace: list[tuple] = []
trace_lock = threading.Lock()
sync_numbers = itertools.count()


def record(*event: object) -> None:
    with trace_lock:
        trace.append(event)


class RecordingFile(apsw.VFSFile):
    def __init__(self, inherit: str, name: apsw.URIFilename | str | None, flags: list[int]) -> None:
        self.recorded = None if name is None else (name.filename() if hasattr(name, "filename") else str(name))
        super().__init__(inherit, name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        super().xWrite(data, offset)
        if self.recorded is not None:
            record("write", self.recorded, offset, bytes(data))

    def xTruncate(self, size: int) -> None:
        super().xTruncate(size)
        if self.recorded is not None:
            record("truncate", self.recorded, size)

    def xSync(self, flags: int) -> None:
        if self.recorded is None:
            super().xSync(flags)
            return
        number = next(sync_numbers)
        record("sync_begin", self.recorded, number)
        super().xSync(flags)
        record("sync_done", self.recorded, number)


class RecordingVFS(apsw.VFS):
    def __init__(self) -> None:
        self.base = apsw.vfs_names()[0]  # the default VFS until this one takes its place ("unix")
        super().__init__("litedur-recording", self.base, makedefault=True)

    def xOpen(self, name: apsw.URIFilename | str | None, flags: list[int]) -> RecordingFile:
        return RecordingFile(self.base, name, flags)

    def xDelete(self, name: str, syncdir: bool) -> None:
        super().xDelete(name, syncdir)
        record("delete", name)


def main() -> int:
    db, trace_path, group_writes = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    seeds = [int(seed) for seed in sys.argv[4:]]
    vfs = RecordingVFS()
    # Checkpoint every 16 pages (SQLite's default: 1000) so that crash points fall inside checkpoints,
    # which copy the WAL into the database file and then start the WAL again from its beginning.
    apsw.connection_hooks.append(lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 16"))
    app = litedur.Engine(db, durability="full", group_writes=group_writes)
    flows = {}
    for seed in seeds:
        workflow_id = f"power-{seed}"

        def event(kind: str, *fields: object, workflow_id: str = workflow_id) -> None:
            if kind in ("w", "observed"):
                record(kind, workflow_id, *fields)

        flows[workflow_id] = (seed, build(app, shape_of(seed), event, name=f"fault-{seed}"), shape_of(seed).keys)

    def follow(workflow_id: str, key: str) -> None:
        reader = app.read_stream(workflow_id, key, timeout=60)
        for value in reader:
            record("seen", workflow_id, key, reader.offset - 1, value)

    with app:
        handles, readers = [], []
        for workflow_id, (seed, flow, keys) in flows.items():
            with litedur.SetWorkflowID(workflow_id):
                handles.append(app.start_workflow(flow, seed))
            record("created", workflow_id)
            for key in keys:
                readers.append(threading.Thread(target=follow, args=(workflow_id, key)))
                readers[-1].start()
        for handle in handles:
            with contextlib.suppress(FaultError):
                handle.get_result(timeout=60)
            record("finished", handle.workflow_id, handle.get_status().status)
        for thread in readers:
            thread.join()
    with trace_lock, open(trace_path, "wb") as file:
        pickle.dump(trace, file)
    vfs.unregister()
    return 0


if __name__ == "__main__":
    sys.exit(main())
