"""Living with the file for months: collecting finished workflows, deleting one, backing up.

Collection runs in short transactions so that live work never waits long: first the workflow rows
of a batch go (one commit; the workflows vanish for readers, and nothing can resume them), then
their steps, stream entries, events and messages, a bounded number of rows per commit, then the
free pages go back to the file system (incremental vacuum), also a bounded number per commit. A
collection interrupted by a crash is finished by the next one: what was deleted stays deleted and
what remained to remove is still queued in the file.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import WorkflowNotFoundError, WorkflowStatusError

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("litedur")
T = TypeVar("T")

WORKFLOWS_PER_COMMIT = 25
ROWS_PER_COMMIT = 1_000
SLICE = 0.002  # seconds of deleting per commit at most: about the longest a writer waits for us
MAX_KEEP = 2**62
# Deleting writes many pages to the WAL. Copied back by this process every few commits (a passive
# checkpoint: it waits for nobody), the WAL never reaches SQLite's automatic checkpoint, which would
# otherwise run, with its fsync, inside the commit of whichever writer crossed the threshold.
CHECKPOINT_EVERY = 8
PAGES_PER_COMMIT = 256
MAX_BREATHER = 0.005  # the longest sleep of a waiting writer's busy handler (storage._BusyWait)
RETENTION_CHECK_EVERY = 60.0  # seconds between background collections (Engine(retention=...))


@dataclass(frozen=True)
class Collected:
    """What a collection or a deletion removed."""

    workflows: list[str]
    """The ids of the workflows deleted."""
    rows: int
    """Rows removed with them (steps, stream entries, events, messages, streams)."""
    values: int
    """Stream values among those rows."""
    pages_freed: int
    """Database pages given back to the file system."""
    seconds: float


def check_collect_arguments(older_than: float | None, keep_last: int | None) -> None:
    """Clear errors for arguments a user can get wrong (types, negatives, NaN, neither given)."""
    if older_than is None and keep_last is None:
        raise ValueError("garbage_collect needs older_than (seconds) or keep_last (a count), or both")
    if older_than is not None and not is_seconds(older_than):
        raise ValueError(f"older_than must be a finite number of seconds >= 0, not {older_than!r}")
    if keep_last is not None and (type(keep_last) is not int or not 0 <= keep_last <= MAX_KEEP):
        raise ValueError(f"keep_last must be an int from 0 to {MAX_KEEP}, not {keep_last!r}")


def is_seconds(value: object) -> bool:
    """A finite number of seconds >= 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value >= 0


def garbage_collect(
    client: Client,
    older_than: float | None = None,
    keep_last: int | None = None,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> Collected:
    """Delete finished workflows that ended more than ``older_than`` seconds ago or are not among the
    newest ``keep_last`` finished ones, with everything that belongs to them (see module doc).

    With both, a workflow goes if either rule selects it (one cutoff, the later of the two end
    times): ``keep_last`` does not protect the newest from ``older_than``. Workflows that ended at
    the same instant as the ``keep_last``-th newest are kept with it; a finished child of a workflow
    still PENDING or ENQUEUED is kept. ``stop``: a set event ends the collection between two commits
    (a shutdown)."""
    check_collect_arguments(older_than, keep_last)
    started = time.monotonic()
    storage = client._storage
    cutoff = storage.collection_cutoff(None if older_than is None else time.time() - older_than, keep_last)
    if cutoff is None:
        return Collected([], 0, 0, 0, 0.0)
    if dry_run:
        return Collected(storage.collectable_workflows(cutoff, -1), 0, 0, 0, 0.0)
    deleted: list[str] = []
    while stop is None or not stop.is_set():
        gone = _leaving_a_gap(storage.collect_batch, cutoff, WORKFLOWS_PER_COMMIT)
        if not gone:
            break
        client._feed.signal(gone)
        deleted += gone
        if len(deleted) % (CHECKPOINT_EVERY * WORKFLOWS_PER_COMMIT) < len(gone):
            storage.checkpoint()
    return _finish(client, deleted, started, stop)


def delete_workflow(client: Client, workflow_id: str, *, children: bool = False) -> Collected:
    """Delete one finished workflow (with ``children``: and all its descendants, which must all have
    finished too); a PENDING or ENQUEUED one is refused with `WorkflowStatusError`."""
    started = time.monotonic()
    family = client._storage.workflow_family(workflow_id)
    if not family:
        raise WorkflowNotFoundError(workflow_id)
    targets = family if children else family[:1]
    for row in targets:
        if row.status in ("PENDING", "ENQUEUED"):
            whose = "" if row.workflow_id == workflow_id else f" (a descendant of {workflow_id!r})"
            raise WorkflowStatusError(
                f"cannot delete workflow {row.workflow_id!r}{whose}: it is {row.status}; cancel it first",
                row.status,
            )
    deleted = client._storage.delete_workflows([row.workflow_id for row in targets])
    client._feed.signal(deleted)
    return _finish(client, deleted, started)


def _finish(client: Client, deleted: list[str], started: float, stop: threading.Event | None = None) -> Collected:
    """Remove what the deleted workflows left (bounded commits), then give the space back."""
    rows, values = purge(client, stop)
    pages = vacuum(client, stop)
    if deleted or rows:
        log.info("collected %d workflows (%d rows, %d stream values), freed %d pages",
                 len(deleted), rows, values, pages)  # fmt: skip
    return Collected(deleted, rows, values, pages, time.monotonic() - started)


def purge(client: Client, stop: threading.Event | None = None) -> tuple[int, int]:
    """Remove every row still queued for removal, in short commits: ``(rows, values)``."""
    rows = values = commits = 0
    while stop is None or not stop.is_set():
        removed, removed_values = _leaving_a_gap(client._storage.purge_some, ROWS_PER_COMMIT, SLICE)
        if not removed:
            return rows, values
        rows, values, commits = rows + removed, values + removed_values, commits + 1
        if commits % CHECKPOINT_EVERY == 0:
            client._storage.checkpoint()
    return rows, values


def vacuum(client: Client, stop: threading.Event | None = None) -> int:
    """Give free pages back, ``PAGES_PER_COMMIT`` at a time, then checkpoint so the file shrinks."""
    pages = 0
    while stop is None or not stop.is_set():
        freed = _leaving_a_gap(client._storage.vacuum_some, PAGES_PER_COMMIT)
        if not freed:
            break
        pages += freed
    if pages:
        client._storage.checkpoint()
    return pages


def _leaving_a_gap(write: Callable[..., T], *bounds: Any) -> T:
    """One bounded write, then a pause a little longer than it held the lock: a writer of another
    process, sleeping in its busy handler meanwhile (each sleep about half its wait so far), wakes
    to a free lock instead of our next batch."""
    started = time.monotonic()
    result = write(*bounds)
    time.sleep(min(MAX_BREATHER, time.monotonic() - started + 0.001))
    return result


def backup(client: Client, destination: str | os.PathLike[str]) -> str:
    """Write a consistent copy of the live database to ``destination`` (which must not exist);
    returns its absolute path. The copy opens as a litedur database."""
    path = os.path.abspath(os.fspath(destination))
    if os.path.lexists(path):
        raise FileExistsError(f"backup destination {path} exists: choose a new file")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"backup destination folder {directory} does not exist")
    client._storage.backup(path)
    return path


class RetentionKeeper:
    """`Engine(retention=seconds)`: collects workflows that ended longer ago than that, in the
    background, now and then every `RETENTION_CHECK_EVERY` seconds while the engine runs."""

    def __init__(self, client: Client, retention: float) -> None:
        self._client = client
        self._retention = retention
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="litedur-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                garbage_collect(self._client, older_than=self._retention, stop=self._stop)
            except Exception:  # a busy or read-only file, a full disk: try again next round
                log.warning("background collection failed; retrying in %.0f s", RETENTION_CHECK_EVERY, exc_info=True)
            self._stop.wait(RETENTION_CHECK_EVERY)
