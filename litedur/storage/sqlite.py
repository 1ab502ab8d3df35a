"""Every SQL statement litedur runs, behind the verbs the engine needs.

`SQLiteStorage` is the one backend: a WAL-mode SQLite file opened through apsw. Each public method is
one transaction (writes use ``BEGIN IMMEDIATE``, so they wait in the busy handler instead of failing
on a lock upgrade) and its docstring says what it guarantees. Rows come back as plain tuples of stored
(still encoded) values; decoding is the caller's business. Nothing here imports the engine.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apsw

from .. import liveness, wakeup
from ..errors import (
    DatabaseError,
    StaleRunError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowNotFoundError,
)
from .common import (
    BODY_WRITES,
    ENTRY_CHECKPOINTS,
    HttpForkPoint,
    appended_http_row,
    appended_result,
    check_can_receive,
    check_durability,
    check_resumable,
    check_same_name,
    checkpoints_with_body_writes,
    claimed_status,
    collection_cutoff,
    deduplication_taken_error,
    dequeued_deadline,
    duplicate_in_queue_error,
    ends_before_offset,
    existing_http_outcome,
    final_values,
    fork_exists_error,
    forked_spec,
    http_absent,
    http_append_refused,
    http_fork_point,
    http_read_result,
    http_stream_missing,
    id_being_removed_error,
    new_http_stream_params,
    newer_schema_error,
    queue_overview,
    refuse_older_executors,
    run_refusal,
    steps_with_body_writes,
    stream_closed_error,
    stream_end,
    without_end_mark,
)
from .records import (
    ACTIVE_STATUSES,
    ANY_UNOWNED,
    BEING_REMOVED,
    CASCADE_REASON,
    CLOSED_BY_TERMINATION,
    CLOSED_BY_WORKFLOW,
    END_OF_STREAM,
    OPEN,
    SET_EVENT_STEP,
    STREAM_DELETED,
    EntryRow,
    EventRow,
    HttpAppendResult,
    HttpEntry,
    HttpProducer,
    HttpReadResult,
    HttpStreamRow,
    HttpStreamSpec,
    MessageRow,
    QueueCounts,
    QueueRow,
    ScheduleRow,
    StepRow,
    StreamGroup,
    StreamRow,
    WorkflowRow,
    WorkflowState,
    cascade_reason,
    forked_workflow_row,
    http_stream_key,
    new_workflow_row,
)

APPLICATION_ID = 0x4C544452  # "LTDR"
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000
MAX_REMEMBERED_OFFSETS = 4096  # streams whose next offset (and id) the append verbs keep in memory

AUTO_VACUUM_INCREMENTAL = 2

log = logging.getLogger("litedur")

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE workflows (
        workflow_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        inputs_encoding INTEGER NOT NULL,
        inputs,
        output_encoding INTEGER,
        output,
        error TEXT,
        error_pickle BLOB,
        executor_id TEXT,
        recovery_attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX workflows_by_created ON workflows (created_at);
    CREATE INDEX workflows_by_status ON workflows (status, executor_id);
    CREATE TABLE steps (
        workflow_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        output_encoding INTEGER,
        output,
        error TEXT,
        error_pickle BLOB,
        attempts INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        PRIMARY KEY (workflow_id, position)
    ) WITHOUT ROWID;
    CREATE TABLE streams (
        stream_id INTEGER PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        key TEXT NOT NULL,
        closed INTEGER NOT NULL DEFAULT 0,
        UNIQUE (workflow_id, key)
    );
    CREATE TABLE stream_entries (
        stream_id INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        encoding INTEGER NOT NULL,
        value,
        position INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        PRIMARY KEY (stream_id, offset)
    ) WITHOUT ROWID;
    CREATE TABLE executors (
        executor_id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    """,
    # version 2: communication (events, messages), durable waits, children, timeouts, cancellation
    """
    ALTER TABLE workflows ADD COLUMN parent_id TEXT;
    ALTER TABLE workflows ADD COLUMN timeout REAL;
    ALTER TABLE workflows ADD COLUMN deadline REAL;
    ALTER TABLE workflows ADD COLUMN cancel_reason TEXT;
    CREATE INDEX workflows_by_parent ON workflows (parent_id) WHERE parent_id IS NOT NULL;
    CREATE TABLE events (
        workflow_id TEXT NOT NULL,
        key TEXT NOT NULL,
        encoding INTEGER NOT NULL,
        value,
        position INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (workflow_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        message_id INTEGER PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        topic TEXT,
        encoding INTEGER NOT NULL,
        value,
        idempotency_key TEXT,
        sent_at REAL NOT NULL,
        consumed_at REAL
    );
    CREATE INDEX messages_pending ON messages (workflow_id, topic, message_id) WHERE consumed_at IS NULL;
    CREATE UNIQUE INDEX messages_once ON messages (workflow_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE timers (
        workflow_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        deadline REAL NOT NULL,
        PRIMARY KEY (workflow_id, position)
    ) WITHOUT ROWID;
    CREATE TABLE workflow_changes (
        seq INTEGER PRIMARY KEY,
        workflow_id TEXT NOT NULL
    );
    CREATE TRIGGER workflow_changes_pruned AFTER INSERT ON workflow_changes WHEN NEW.seq % 4096 = 0 BEGIN
        DELETE FROM workflow_changes WHERE seq <= NEW.seq - 65536;
    END;
    CREATE TRIGGER workflow_status_changed AFTER UPDATE OF status ON workflows BEGIN
        INSERT INTO workflow_changes (workflow_id) VALUES (NEW.workflow_id);
    END;
    CREATE TRIGGER workflow_event_set AFTER INSERT ON events BEGIN
        INSERT INTO workflow_changes (workflow_id) VALUES (NEW.workflow_id);
    END;
    CREATE TRIGGER workflow_event_updated AFTER UPDATE ON events BEGIN
        INSERT INTO workflow_changes (workflow_id) VALUES (NEW.workflow_id);
    END;
    CREATE TRIGGER workflow_message_sent AFTER INSERT ON messages BEGIN
        INSERT INTO workflow_changes (workflow_id) VALUES (NEW.workflow_id);
    END;
    """,
    # version 3: durable queues
    """
    ALTER TABLE workflows ADD COLUMN queue_name TEXT;
    ALTER TABLE workflows ADD COLUMN priority INTEGER;
    ALTER TABLE workflows ADD COLUMN deduplication_id TEXT;
    ALTER TABLE workflows ADD COLUMN available_at REAL;
    CREATE INDEX workflows_enqueued ON workflows (queue_name, priority, created_at) WHERE status = 'ENQUEUED';
    CREATE INDEX workflows_queue_running ON workflows (queue_name, executor_id)
        WHERE status = 'PENDING' AND queue_name IS NOT NULL;
    CREATE UNIQUE INDEX workflows_deduplicated ON workflows (queue_name, deduplication_id)
        WHERE deduplication_id IS NOT NULL AND status IN ('ENQUEUED', 'PENDING');
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        concurrency INTEGER,
        worker_concurrency INTEGER,
        rate_limit INTEGER,
        rate_period REAL,
        priority_enabled INTEGER NOT NULL,
        declared_at REAL NOT NULL
    );
    CREATE TABLE queue_starts (
        queue_name TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    CREATE INDEX queue_starts_by_time ON queue_starts (queue_name, started_at);
    CREATE TRIGGER workflow_queue_moved AFTER UPDATE OF status ON workflows WHEN NEW.queue_name IS NOT NULL BEGIN
        INSERT INTO workflow_changes (workflow_id) VALUES ('queue:' || NEW.queue_name);
    END;
    CREATE TRIGGER workflow_enqueued AFTER INSERT ON workflows WHEN NEW.status = 'ENQUEUED' BEGIN
        INSERT INTO workflow_changes (workflow_id) VALUES ('queue:' || NEW.queue_name);
    END;
    """,
    # version 4: retention. Workflows deleted whose rows (steps, stream entries, ...) are still being
    # removed in bounded batches; the file is converted to incremental auto-vacuum (see _prepare_schema).
    """
    CREATE TABLE purging (workflow_id TEXT PRIMARY KEY, deleted_at REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX messages_by_workflow ON messages (workflow_id);
    CREATE INDEX workflows_finished ON workflows (updated_at)
        WHERE status IN ('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED');
    CREATE TRIGGER workflow_id_being_deleted BEFORE INSERT ON workflows
        WHEN EXISTS (SELECT 1 FROM purging WHERE workflow_id = NEW.workflow_id) BEGIN
        SELECT RAISE(ABORT, 'litedur: id of a deleted workflow whose rows are still being removed');
    END;
    CREATE TABLE streams_numbered_once (  -- a deleted stream's id is never given to another stream
        stream_id INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id TEXT NOT NULL,
        key TEXT NOT NULL,
        closed INTEGER NOT NULL DEFAULT 0,
        UNIQUE (workflow_id, key)
    );
    INSERT INTO streams_numbered_once (stream_id, workflow_id, key, closed)
        SELECT stream_id, workflow_id, key, closed FROM streams;
    DROP TABLE streams;
    ALTER TABLE streams_numbered_once RENAME TO streams;
    """,
    # version 5: standalone HTTP streams of `litedur serve` (see the "HTTP streams" section). Stream ids
    # are never reused (AUTOINCREMENT): ETags and forks name streams by id.
    """
    CREATE TABLE http_streams (
        stream_id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        content_type TEXT NOT NULL,
        media_type TEXT NOT NULL,
        json INTEGER NOT NULL,
        ttl INTEGER,
        expires_at REAL,
        expiry REAL,
        closed INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        next_seq INTEGER NOT NULL DEFAULT 0,
        next_position INTEGER NOT NULL DEFAULT 0,
        stream_seq TEXT,
        forked_from INTEGER,
        fork_source TEXT,
        fork_seq INTEGER,
        fork_sub_offset INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX http_streams_by_expiry ON http_streams (expiry) WHERE expiry IS NOT NULL;
    CREATE INDEX http_streams_by_source ON http_streams (forked_from) WHERE forked_from IS NOT NULL;
    CREATE TABLE http_stream_entries (
        stream_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        position INTEGER NOT NULL,
        size INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (stream_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE http_stream_producers (
        stream_id INTEGER NOT NULL,
        producer_id TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (stream_id, producer_id)
    ) WITHOUT ROWID;
    """,
    # version 6: scheduled workflows (see the "schedules" section): each schedule as its processes
    # declared it, and the latest tick claimed (epoch seconds), which only ever grows.
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        cron TEXT NOT NULL,
        tz TEXT,
        catch_up INTEGER NOT NULL,
        created_at REAL NOT NULL,
        declared_at REAL NOT NULL,
        last_tick REAL
    );
    """,
    # version 7: which launched processes (executors) declared each schedule, and when. A schedule that
    # no live executor declared is stale (`litedur schedules` says so); a stale one can be removed. A
    # file migrated from version 6 has none: its schedules read as stale until their process launches.
    """
    CREATE TABLE schedule_declarations (
        name TEXT NOT NULL,
        executor_id TEXT NOT NULL,
        declared_at REAL NOT NULL,
        PRIMARY KEY (name, executor_id)
    ) WITHOUT ROWID;
    """,
    # version 8: a workflow body's write_stream is its own checkpoint: the entry records when it was
    # written, and no step row is added (one row, one page, per body write). Entries written by steps,
    # and body writes recorded before this version (as step rows), have none.
    """
    ALTER TABLE stream_entries ADD COLUMN written_at REAL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)  # a migration appended to the list is the next version
BODY_WRITES_IN_ENTRIES = 8  # older processes must not run on a file upgraded to this (see _prepare_schema)


_WORKFLOW_COLUMNS = ", ".join(WorkflowRow._fields)
_STEP_COLUMNS = ", ".join(StepRow._fields)
_INSERT_WORKFLOW = (
    f"INSERT INTO workflows ({_WORKFLOW_COLUMNS}) VALUES ({', '.join('?' * len(WorkflowRow._fields))}) "
    "ON CONFLICT (workflow_id) DO NOTHING"
)
_FINISH_WORKFLOW = (
    "UPDATE workflows SET status = ?, output_encoding = ?, output = ?, error = ?, error_pickle = ?, updated_at = ? "
    "WHERE workflow_id = ?"
)
_INSERT_STEP = f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# "... if the run still owns its workflow": a fenced write of a run is refused (changes() == 0) after a
# cancel, or after its workflow was resumed or adopted by another executor.
_WHILE_OWNED = (
    "WHERE EXISTS (SELECT 1 FROM workflows WHERE workflow_id = ? AND status = 'PENDING' AND executor_id = ?)"
)
_INSERT_STEP_WHILE_OWNED = f"INSERT INTO steps ({_STEP_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? {_WHILE_OWNED}"
_FINISH_WHILE_OWNED = f"{_FINISH_WORKFLOW} AND status = 'PENDING' AND executor_id IS ?"
_STATE_COLUMNS = ", ".join(WorkflowState._fields)


class SQLiteStorage:
    """A litedur database in one WAL-mode SQLite file; one apsw connection per thread."""

    def __init__(self, path: str, *, create: bool = True, durability: str = "normal") -> None:
        check_durability(durability)
        self.path = os.path.abspath(os.fspath(path))
        self.durability = durability
        self._local = threading.local()
        self._connections: list[apsw.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._grouped: list[_GroupedWrite] = []  # one-statement writes waiting for a commit (see _commit_one)
        self._grouped_lock = threading.Lock()
        self._writer_conn: apsw.Connection | None = None
        self._next_offsets: dict[int, int] = {}  # stream_id -> next offset, for append_one
        self._stream_ids: dict[tuple[str, str], int] = {}  # (workflow_id, key) -> stream_id, for append_stream
        self._closed = False
        is_new = _check_path(self.path, create)
        if is_new:
            _create_private_file(self.path)
        self._immutable = not is_new and _on_read_only_file_system(self.path)
        try:
            with self._translate_errors("open"):
                conn = self._connection()
                self._prepare_schema(conn, create)
        except BaseException:
            self.close()  # a refused file keeps no open connection (nor a -wal/-shm of ours)
            raise

    # ---- connections and transactions -------------------------------------------------------

    def _connection(self) -> apsw.Connection:
        """This thread's connection, for reads."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open_connection()
        return conn

    def _writer(self) -> apsw.Connection:
        """The connection every write of this process goes through, under ``_write_lock``.

        One connection for all writers keeps its page cache warm: a connection whose cache another
        connection's commit made stale re-reads the pages it touches.
        """
        conn = self._writer_conn
        if conn is None:
            conn = self._writer_conn = self._open_connection()
        return conn

    def _open_connection(self) -> apsw.Connection:
        if self._closed:
            raise DatabaseError(f"database {self.path} is closed")
        if self._immutable:  # read-only media: nobody can change it, and no -shm can be made
            from urllib.parse import quote

            uri = f"file:{quote(self.path)}?immutable=1"
            conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        else:
            conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
        conn.set_busy_handler(_BusyWait())
        # apsw's SQLite has STAT4, which re-prepares a statement whenever a value bound to a range
        # condition (``offset >= ?``) changes; plan stability keeps the prepared plan: ~2.5x cheaper.
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, 1)
        synchronous = "FULL" if self.durability == "full" else "NORMAL"
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[apsw.Connection]:
        # Writers of this process queue on a lock (a fast hand-over) rather than in SQLite's busy
        # handler; only other processes' writers make SQLite wait.
        with self._write_lock, self._translate_errors(what):
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
                raise

    def _commit_one(self, statement: str, params: Sequence[Any], what: str) -> int:
        """Run one write statement in a commit of its own or shared; the rows it changed.

        Group commit without a thread: every caller queues its statement, and whoever holds the
        write lock commits all that are queued, in one transaction when there are several (a
        statement that fails is undone alone, its error handed to its caller). So concurrent
        workflows share commits, and a caller alone pays one autocommitted statement. Every caller
        returns only once its statement is committed.
        """
        if not self._grouped and self._write_lock.acquire(blocking=False):
            try:  # nobody else writing or waiting: the statement alone, autocommitted
                if not self._grouped:
                    conn = self._writer()
                    conn.execute(statement, params)
                    return conn.changes()
            except apsw.Error as exc:
                raise self._database_error(what, exc) from exc
            finally:
                self._write_lock.release()
        mine = _GroupedWrite(statement, params)
        with self._grouped_lock:
            self._grouped.append(mine)
        with self._write_lock:
            if not mine.done:
                with self._grouped_lock:
                    batch, self._grouped = self._grouped, []
                self._commit_group(batch)
        if mine.error is not None:
            error = mine.error
            if isinstance(error, apsw.Error):
                raise self._database_error(what, error) from error
            raise error
        return mine.changes

    def _commit_group(self, batch: list[_GroupedWrite]) -> None:
        conn = self._writer()
        if len(batch) == 1:
            write = batch[0]
            try:
                conn.execute(write.statement, write.params)
                write.changes = conn.changes()
            except BaseException as exc:
                write.error = exc
            write.done = True
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                try:
                    conn.execute(write.statement, write.params)
                    write.changes = conn.changes()
                except Exception as exc:  # this statement alone is undone: its caller gets the error
                    write.error = exc
                    if conn.get_autocommit():  # unless SQLite ended the transaction: then it fails for all
                        raise
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
            finally:
                for write in batch:
                    write.changes = 0
                    write.error = write.error or exc
                    write.done = True
            return
        for write in batch:
            write.done = True

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[apsw.Connection]:
        with self._translate_errors(what):
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if not conn.get_autocommit():
                    conn.execute("COMMIT")

    @contextlib.contextmanager
    def _translate_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except apsw.Error as exc:
            raise self._database_error(what, exc) from exc

    def _database_error(self, what: str, exc: apsw.Error) -> BaseException:
        """The DatabaseError a user sees for an apsw error (others pass through unchanged)."""
        if isinstance(exc, apsw.ReadOnlyError):
            return DatabaseError(f"cannot {what}: database {self.path} is read-only ({exc})")
        if isinstance(exc, apsw.FullError):
            return DatabaseError(f"cannot {what}: disk full writing {self.path} ({exc})")
        if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
            return DatabaseError(
                f"cannot {what}: database {self.path} stayed locked by another connection "
                f"for {BUSY_TIMEOUT_MS // 1000} s ({exc})"
            )
        if isinstance(exc, (apsw.NotADBError, apsw.CorruptError)):
            return DatabaseError(f"cannot {what}: {self.path} is corrupt or not a database ({exc})")
        if isinstance(exc, (apsw.CantOpenError, apsw.IOError, apsw.PermissionsError)):
            return DatabaseError(f"cannot {what}: I/O error on {self.path} ({exc})")
        if isinstance(exc, apsw.ConstraintError) and BEING_REMOVED in str(exc):
            return id_being_removed_error(what)
        return exc

    def close(self) -> None:
        """Close every connection this object opened (idle ones; call when no thread uses it)."""
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(apsw.Error):
                conn.close()
        self._local = threading.local()
        self._writer_conn = None

    # ---- liveness and wake-up: the file's locks and file events --------------------------------

    @property
    def location(self) -> str:
        """What names this database to a user: the file's absolute path."""
        return self.path

    def executor_lock(self, executor_id: str) -> liveness.ExecutorLock:
        """Hold "executor ``executor_id`` is alive" until ``.release()`` (an OS file lock: it drops
        when the process dies, however it dies)."""
        return liveness.ExecutorLock(self.path, executor_id)

    def executor_alive(self, executor_id: str | None) -> bool:
        """True while some process holds ``executor_id``'s lock (`executor_lock`)."""
        return liveness.is_alive(self.path, executor_id)

    def wake_source(self) -> wakeup.FileWakeSource:
        """How other processes' commits wake this one's waiters: file events (see `litedur.wakeup`)."""
        return wakeup.FileWakeSource(self.path)

    # ---- schema -----------------------------------------------------------------------------

    def _prepare_schema(self, conn: apsw.Connection, create: bool = True) -> None:
        version, app_id, tables = self._inspect(conn)
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise DatabaseError(f"{self.path} is a SQLite database of another application, not litedur")
        if version > SCHEMA_VERSION:
            raise newer_schema_error(self.path, version, SCHEMA_VERSION)
        if version == SCHEMA_VERSION:
            if create and not _gives_space_back(conn) and not _is_readonly(conn):
                self._use_incremental_vacuum(conn)  # an upgrade cut short between its commit and its VACUUM
            return
        if version == 0 and not create:  # an empty file: a reader must not turn it into a database
            raise DatabaseError(f"no litedur database at {self.path} (the file is empty)")
        if _is_readonly(conn):
            raise DatabaseError(f"{self.path} needs a schema upgrade but is read-only")
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                list(conn.execute("PRAGMA journal_mode = WAL"))
                break
            except apsw.BusyError:
                # Two processes opening a new file at once: SQLite refuses one switch to WAL at once,
                # without the busy handler (to avoid a deadlock). The other one is switching too.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version, _, _ = self._inspect(conn)
            if 0 < version < BODY_WRITES_IN_ENTRIES:
                running = conn.execute("SELECT executor_id, pid, hostname FROM executors").fetchall()
                live = [row for row in running if liveness.is_alive(self.path, row[0])]
                refuse_older_executors(self.path, version, SCHEMA_VERSION, live)
            for number in range(version + 1, SCHEMA_VERSION + 1):
                list(conn.execute(MIGRATIONS[number - 1]))
            list(conn.execute(f"PRAGMA application_id = {APPLICATION_ID}"))
            list(conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}"))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if create:
            self._use_incremental_vacuum(conn)

    def _use_incremental_vacuum(self, conn: apsw.Connection) -> None:
        """Let the file give deleted pages back (``PRAGMA incremental_vacuum``): set the mode and rebuild
        the file once with VACUUM (outside a transaction, atomic; instant for a new file). Only an
        Engine does it, best effort: a file that cannot be rebuilt now (no room for the copy, a long
        lock) works as before and is tried again at the next launch."""
        if _gives_space_back(conn):
            return
        try:
            conn.execute(f"PRAGMA auto_vacuum = {AUTO_VACUUM_INCREMENTAL}")
            conn.execute("VACUUM")
        except apsw.Error as exc:
            log.warning("could not set up %s to give deleted space back (VACUUM failed: %s); collection "
                        "still deletes, and the file is set up at a later launch", self.path, exc)  # fmt: skip

    @staticmethod
    def _inspect(conn: apsw.Connection) -> tuple[int, int, int]:
        # One statement, so one snapshot: read separately, a schema committed by another process
        # between the reads looks like tables without litedur's application id (a "foreign" file).
        row = conn.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), "
            "(SELECT application_id FROM pragma_application_id), (SELECT count(*) FROM sqlite_schema)"
        ).fetchall()[0]
        return row[0], row[1], row[2]

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self._read("read the schema version") as conn:
            return conn.execute("PRAGMA user_version").fetchall()[0][0]

    def is_readonly(self) -> bool:
        """True when this process can only read the file."""
        return _is_readonly(self._connection())

    # ---- executors ----------------------------------------------------------------------------

    def register_executor(self, executor_id: str, pid: int, hostname: str) -> None:
        """Record (or refresh) an executor's identity; liveness itself is the executor's file lock."""
        with self._write(f"register executor {executor_id!r}") as conn:
            conn.execute(
                "INSERT INTO executors (executor_id, pid, hostname, started_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (executor_id) DO UPDATE SET pid = excluded.pid, "
                "hostname = excluded.hostname, started_at = excluded.started_at",
                (executor_id, pid, hostname, time.time()),
            )

    def forget_executor(self, executor_id: str) -> None:
        """Remove an executor's identity row if it owns no active workflow."""
        with self._write(f"forget executor {executor_id!r}") as conn:
            conn.execute(
                "DELETE FROM executors WHERE executor_id = ? AND NOT EXISTS (SELECT 1 FROM workflows "
                "WHERE executor_id = ? AND status IN ('PENDING', 'ENQUEUED'))",
                (executor_id, executor_id),
            )

    def active_executors(self) -> list[str | None]:
        """Distinct owners of PENDING workflows; None stands for "no executor" (resumed, forked)."""
        with self._read("list executors") as conn:
            rows = conn.execute("SELECT DISTINCT executor_id FROM workflows WHERE status = 'PENDING'").fetchall()
        return [row[0] for row in rows]

    def pending_workflows_of(self, executor_id: str | None) -> list[tuple[str, str]]:
        """``(workflow_id, name)`` of the PENDING workflows owned by ``executor_id``, oldest first."""
        with self._read("list pending workflows") as conn:
            rows = conn.execute(
                "SELECT workflow_id, name FROM workflows WHERE status = 'PENDING' "
                "AND executor_id IS ? ORDER BY created_at",
                (executor_id,),
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    # ---- workflows ------------------------------------------------------------------------------

    def create_workflow(
        self,
        workflow_id: str,
        name: str,
        inputs: tuple[int, Any],
        executor_id: str,
        *,
        parent_id: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        checkpoint: StepRow | None = None,
    ) -> tuple[bool, WorkflowRow]:
        """Insert a PENDING workflow unless the id exists; atomically. Returns (created, row).

        A child (``parent_id``) is created fenced on its parent's run, and with ``checkpoint`` (a
        child started by a workflow body) the parent's checkpoint is recorded in the same
        transaction: a replay finds the checkpoint and never starts a second child.
        """
        row = new_workflow_row(workflow_id, name, inputs, executor_id, parent_id, timeout, deadline, time.time())
        if checkpoint is not None or parent_id is not None:
            with self._write(f"start child workflow {workflow_id!r}") as conn:
                _fence(conn, parent_id or checkpoint.workflow_id, executor_id)  # type: ignore[union-attr]
                conn.execute(_INSERT_WORKFLOW, row)
                created = conn.changes() == 1
                existing = row if created else _fetch_workflow(conn, workflow_id)
                check_same_name(workflow_id, existing, name)
                if checkpoint is not None:
                    conn.execute(_INSERT_STEP, checkpoint)
            assert existing is not None
            return created, existing
        while True:
            try:
                created = self._commit_one(_INSERT_WORKFLOW, row, f"create workflow {workflow_id!r}") == 1
            except WorkflowConflictError:
                self._finish_purges()  # a collection deleted this id and had not finished (or crashed)
                created = self._commit_one(_INSERT_WORKFLOW, row, f"create workflow {workflow_id!r}") == 1
            if created:
                return True, row
            existing = self.get_workflow(workflow_id)
            if existing is not None:
                return False, existing
            # Collected between the insert and the read (it had finished): the id is free again.

    def claim_workflow(
        self, workflow_id: str, previous_executor: str | None, executor_id: str, max_recoveries: int
    ) -> str:
        """Take over a PENDING workflow from ``previous_executor`` (None: unowned), atomically.

        Returns "claimed" (this executor now owns it), "exceeded" (it was moved to
        MAX_RECOVERY_ATTEMPTS_EXCEEDED instead) or "lost" (someone else changed it first).
        """
        with self._write(f"claim workflow {workflow_id!r}") as conn:
            row = conn.execute(
                "SELECT recovery_attempts FROM workflows WHERE workflow_id = ? "
                "AND status = 'PENDING' AND executor_id IS ?",
                (workflow_id, previous_executor),
            ).fetchall()
            if not row:
                return "lost"
            attempts, status = claimed_status(row[0][0], previous_executor, max_recoveries)
            conn.execute(
                "UPDATE workflows SET executor_id = ?, recovery_attempts = ?, status = ?, "
                "updated_at = ? WHERE workflow_id = ?",
                (executor_id, attempts, status, time.time(), workflow_id),
            )
            if status != "PENDING":
                _close_open_streams(conn, workflow_id)
        return "claimed" if status == "PENDING" else "exceeded"

    def finish_workflow(
        self,
        workflow_id: str,
        status: str,
        executor_id: str | None,
        output: tuple[int, Any] | None = None,
        error: tuple[str, bytes | None] | None = None,
        has_streams: bool = True,
    ) -> bool:
        """Record a final status and close every open stream of the workflow, in one transaction.

        Fenced: only while the workflow is PENDING and owned by ``executor_id`` (False otherwise: a
        cancel or another executor came first, and nothing is written). ``has_streams=False`` (the
        caller knows the workflow never opened one) saves the search for open streams.
        """
        values = (status, *final_values(output, error), time.time(), workflow_id, executor_id)
        if not has_streams:
            return self._commit_one(_FINISH_WHILE_OWNED, values, f"finish workflow {workflow_id!r}") == 1
        with self._write(f"finish workflow {workflow_id!r}") as conn:
            conn.execute(_FINISH_WHILE_OWNED, values)
            if conn.changes() == 0:
                return False
            _close_open_streams(conn, workflow_id)
        return True

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """One workflow's row, or None (one statement: its own snapshot, no transaction to open)."""
        with self._translate_errors(f"read workflow {workflow_id!r}"):
            return _fetch_workflow(self._connection(), workflow_id)

    def workflow_state(self, workflow_id: str) -> WorkflowState | None:
        """Status, owner, deadline and cancel reason of a workflow in one cheap read; None if absent.

        On this thread's reader connection: a run asks at its start and after a change of its
        workflow, and must not queue behind this process's writers for it.
        """
        with self._translate_errors(f"read workflow {workflow_id!r}"):
            rows = self._connection().execute(_READ_STATE, (workflow_id,)).fetchall()
        return WorkflowState(*rows[0]) if rows else None

    def list_workflows(
        self, status: str | None = None, name: str | None = None, limit: int | None = None, queue: str | None = None
    ) -> list[WorkflowRow]:
        """Workflows newest first, optionally filtered by status, name and queue."""
        clauses: list[str] = []
        params: list[Any] = []
        if queue is not None:
            clauses.append("queue_name = ?")
            params.append(queue)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(-1 if limit is None else limit)
        with self._read("list workflows") as conn:
            rows = conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows {where} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                params,
            ).fetchall()
        return [WorkflowRow(*row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """Number of workflows per status."""
        with self._read("count workflows") as conn:
            rows = conn.execute("SELECT status, count(*) FROM workflows GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    # ---- steps ----------------------------------------------------------------------------------

    def load_checkpoints(self, workflow_id: str) -> tuple[dict[int, StepRow], dict[int, int]]:
        """A workflow's recorded steps by position, and the highest stream-writing attempt per position.

        Loaded once when a workflow (re)starts, so replaying a step costs no query.
        """
        with self._read(f"load checkpoints of {workflow_id!r}") as conn:
            steps = conn.execute(
                f"SELECT {_STEP_COLUMNS} FROM steps WHERE workflow_id = ?", (workflow_id,)
            ).fetchall()
            entries = conn.execute(_ENTRY_CHECKPOINTS, (workflow_id,)).fetchall()
        return checkpoints_with_body_writes(workflow_id, {row[1]: StepRow(*row) for row in steps}, entries)

    def record_step(self, row: StepRow, executor_id: str) -> None:
        """Record a step's output or final error, fenced on the run; fails if the position is recorded.

        Raises WorkflowCancelledError or StaleRunError (recording nothing) when the workflow was
        cancelled or is no longer this executor's.
        """
        what = f"record step {row.position} of {row.workflow_id!r}"
        if self._commit_one(_INSERT_STEP_WHILE_OWNED, (*row, row.workflow_id, executor_id), what) == 1:
            return
        with self._read(f"read workflow {row.workflow_id!r}") as conn:
            _fence(conn, row.workflow_id, executor_id)
        raise AssertionError("a refused step record must be explained by the fence")

    def list_steps(self, workflow_id: str) -> list[StepRow]:
        """A workflow's recorded steps in position order."""
        with self._read(f"list steps of {workflow_id!r}") as conn:
            rows = conn.execute(f"SELECT {_STEP_COLUMNS} FROM steps WHERE workflow_id = ?", (workflow_id,)).fetchall()
            writes = conn.execute(_BODY_WRITES, (workflow_id,)).fetchall()
        return steps_with_body_writes(workflow_id, [StepRow(*row) for row in rows], writes)

    # ---- streams --------------------------------------------------------------------------------

    def append_stream(
        self,
        workflow_id: str,
        key: str,
        values: Sequence[tuple[int, Any]],
        position: int,
        attempt: int,
        executor_id: str,
        written_at: float | None = None,
    ) -> int:
        """Append encoded values at the stream's end (creating it); returns the first new offset.

        Offsets stay dense: the next offset is read inside the same write transaction. Raises
        StreamClosedError (writing nothing) if the stream is closed. With ``written_at`` the entry is
        a workflow body's checkpoint (see `Storage.append_stream`). Fenced on the run.

        One value (a body write) usually goes in at the offset this process remembers for the stream
        (see `append_one`): one fenced insert.
        """
        if len(values) == 1:
            offset = self._append_remembered(workflow_id, key, values[0], position, attempt, executor_id, written_at)
            if offset is not None:
                return offset
        with self._write(f"append to stream {key!r} of {workflow_id!r}") as conn:
            _fence(conn, workflow_id, executor_id)
            stream_id, offset, closed = _open_stream(conn, workflow_id, key)
            if closed != OPEN:
                raise stream_closed_error(workflow_id, key)
            group = StreamGroup(workflow_id, key, position, attempt, list(values))
            _insert_entries(conn, group, stream_id, offset, written_at)
        self._remember_end(stream_id, offset + len(values), (workflow_id, key))  # (once committed)
        return offset

    def _append_remembered(
        self,
        workflow_id: str,
        key: str,
        value: tuple[int, Any],
        position: int,
        attempt: int,
        executor_id: str,
        written_at: float | None,
    ) -> int | None:
        """Insert one value at the remembered end of a stream this process
        appended to; its offset, or None (nothing written) when the slow path must decide: nothing
        remembered, a stale offset (refused by the key: another process appended, or the stream was
        closed), or a refusal of the fence (which also checks that the stream is still the
        workflow's: a deleted workflow's id may be used again)."""
        stream_id = self._stream_ids.get((workflow_id, key))
        offset = -1 if stream_id is None else self._next_offsets.get(stream_id, -1)
        if offset < 0:
            return None
        params = (offset, *value, position, attempt, written_at, stream_id, workflow_id, executor_id)
        with self._write_lock:
            conn = self._writer()
            try:
                conn.execute(_APPEND_REMEMBERED, params)
                appended = conn.changes() == 1
            except BaseException as exc:
                if not isinstance(exc, apsw.ConstraintError):
                    if isinstance(exc, apsw.Error):
                        raise self._database_error(f"append to stream {key!r} of {workflow_id!r}", exc) from exc
                    raise
                appended = False
            if appended:
                self._next_offsets[stream_id] = offset + 1
                return offset
        return None

    def _remember_end(self, stream_id: int, end: int, stream: tuple[str, str] | None = None) -> None:
        """Remember a stream's next offset (and, for ``stream``, its id) after a commit: a guess that
        can only be stale by being too low, which the key of stream_entries catches."""
        if len(self._next_offsets) >= MAX_REMEMBERED_OFFSETS or len(self._stream_ids) >= MAX_REMEMBERED_OFFSETS:
            self._next_offsets.clear()
            self._stream_ids.clear()
        self._next_offsets[stream_id] = end
        if stream is not None:
            self._stream_ids[stream] = stream_id

    def open_stream(self, workflow_id: str, key: str, executor_id: str) -> tuple[int, bool]:
        """``(stream_id, closed)`` of a stream, creating it (open and empty) if needed; fenced on the run."""
        with self._write(f"open stream {key!r} of {workflow_id!r}") as conn:
            _fence(conn, workflow_id, executor_id)
            stream_id, _, closed = _open_stream(conn, workflow_id, key)
        return stream_id, closed != OPEN

    def append_one(
        self,
        stream_id: int,
        encoded: tuple[int, Any],
        position: int,
        attempt: int,
        workflow_id: str,
        executor_id: str,
    ) -> int | None:
        """Append one value to an existing stream in its own transaction; its offset, None if closed.

        The hot path of unbatched writes. This process remembers the next offset of each stream it
        appended to, so a value usually costs one autocommitted insert, like a raw one-row
        transaction. Value entries are never deleted (only end-of-stream entries, by a resume), so a
        remembered offset can only be stale by being too low (another process appended, or the
        stream was closed by an end-of-stream entry): the primary key then refuses the insert, and
        the slow path reads the real end. Fenced on the run like every write of a workflow.
        """
        row = (stream_id, self._next_offsets.get(stream_id, -1), encoded[0], encoded[1], position, attempt,
               workflow_id, executor_id)  # fmt: skip
        with self._write_lock:
            conn = self._writer()
            if row[1] >= 0:
                try:
                    conn.execute(_INSERT_ENTRY_WHILE_OWNED, row)
                    if conn.changes() == 1:
                        self._next_offsets[stream_id] = row[1] + 1
                        return row[1]
                except apsw.ConstraintError:
                    pass
                except apsw.Error as exc:
                    raise self._database_error("append to a stream", exc) from exc
            return self._append_at_end(conn, row)

    def _append_at_end(self, conn: apsw.Connection, row: tuple[Any, ...]) -> int | None:
        stream_id = row[0]
        try:
            conn.execute("BEGIN IMMEDIATE")
            _fence(conn, row[6], row[7])
            last = conn.execute(_LAST_ENTRY, (stream_id,)).fetchall()
            appended = not last or last[0][1] != END_OF_STREAM
            if appended:
                offset = last[0][0] + 1 if last else 0
                conn.execute(_INSERT_ENTRY, (stream_id, offset, *row[2:6], None))
            conn.execute("COMMIT")
        except BaseException as exc:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            if isinstance(exc, apsw.Error):
                raise self._database_error("append to a stream", exc) from exc
            raise
        if not appended:
            self._next_offsets.pop(stream_id, None)
            return None
        self._remember_end(stream_id, offset + 1)
        return offset

    def append_groups(
        self, groups: Sequence[StreamGroup], executor_id: str
    ) -> tuple[dict[str, BaseException], list[tuple[int, int, list[tuple[int, Any]]]]]:
        """Append several groups of values (each: one stream, one step attempt) in one transaction.

        Returns ``(failures, placed)``: a group whose stream is closed, or whose workflow this
        executor no longer runs (fenced), is skipped and ``failures`` maps its workflow id to the
        error; ``placed`` says where the others went, as ``(stream_id, first offset, values)``.
        Offsets stay dense: each stream's next offset is read inside the transaction.
        """
        failures: dict[str, BaseException] = {}
        placed: list[tuple[int, int, list[tuple[int, Any]]]] = []
        owned: set[str] = set()
        with self._write(f"append to {len(groups)} stream group(s)") as conn:
            for group in groups:
                if group.workflow_id in failures:
                    continue
                if group.workflow_id not in owned:
                    try:
                        _fence(conn, group.workflow_id, executor_id)
                    except (WorkflowCancelledError, StaleRunError) as exc:
                        failures[group.workflow_id] = exc
                        continue
                    owned.add(group.workflow_id)
                stream_id, offset, closed = _open_stream(conn, group.workflow_id, group.key)
                if closed != OPEN:
                    failures[group.workflow_id] = stream_closed_error(group.workflow_id, group.key)
                    continue
                _insert_entries(conn, group, stream_id, offset)
                placed.append((stream_id, offset, group.values))
        return failures, placed

    def close_stream(self, workflow_id: str, key: str, executor_id: str) -> None:
        """Mark a stream closed by its workflow (creating it empty if needed); idempotent; fenced."""
        with self._write(f"close stream {key!r} of {workflow_id!r}") as conn:
            _fence(conn, workflow_id, executor_id)
            stream_id, offset, closed = _open_stream(conn, workflow_id, key)
            if closed == OPEN:
                conn.execute(
                    "UPDATE streams SET closed = ? WHERE stream_id = ?", (CLOSED_BY_WORKFLOW, stream_id)
                )
                conn.execute(
                    "INSERT INTO stream_entries (stream_id, offset, encoding, value, position, attempt) "
                    "VALUES (?, ?, ?, NULL, -1, 0)",
                    (stream_id, offset, END_OF_STREAM),
                )

    def find_stream(self, workflow_id: str, key: str) -> tuple[int | None, bool] | None:
        """``(stream_id or None, workflow_is_final)`` in one snapshot; None if no such workflow."""
        with self._translate_errors(f"read stream {key!r} of {workflow_id!r}"):
            rows = self._connection().execute(
                "SELECT s.stream_id, w.status FROM workflows w "
                "LEFT JOIN streams s ON s.workflow_id = w.workflow_id AND s.key = ? WHERE w.workflow_id = ?",
                (key, workflow_id),
            ).fetchall()
        if not rows:
            return None
        return rows[0][0], rows[0][1] not in ACTIVE_STATUSES

    def read_values(
        self, stream_id: int, offset: int, limit: int, first_read: bool = False, workflow_id: str = "?"
    ) -> tuple[list[tuple[int, Any]], bool]:
        """``(values, ended)``: up to ``limit`` encoded values from ``offset``, and whether the stream
        ends after them.

        Closing a stream (by the workflow or by its termination) appends an end-of-stream entry in
        the same transaction, so one range scan of one table tells a reader both what is new and
        whether that is all: the cheapest possible check after a wake-up. A reader's ``first_read``
        also learns whether it starts past the end of a closed stream (one more index seek).

        The workflow deleted (see `delete_workflows`): the values before the "deleted" mark, then
        `WorkflowNotFoundError` (``workflow_id`` names it), never a gap.
        """
        try:
            conn = self._connection()
            rows = conn.execute(_READ_VALUES, (stream_id, offset, limit)).fetchall()
            if not rows:
                if not conn.execute("SELECT 1 FROM streams WHERE stream_id = ?", (stream_id,)).fetchall():
                    raise WorkflowNotFoundError(workflow_id)  # deleted, and its rows removed already
                if first_read and offset > 0:
                    last = conn.execute(_LAST_ENTRY, (stream_id,)).fetchall()
                    return [], ends_before_offset(last[0] if last else None, offset, workflow_id)
        except apsw.Error as exc:
            raise self._database_error("read a stream", exc) from exc
        return without_end_mark(rows, workflow_id)

    def stream_end(self, stream_id: int) -> tuple[int, bool]:
        """``(length, ended)``: the offset after a stream's last value, and whether the stream ends
        there (one index seek: where a reader that found nothing at its offset is waiting from)."""
        try:
            last = self._connection().execute(_LAST_ENTRY, (stream_id,)).fetchall()
        except apsw.Error as exc:
            raise self._database_error("read a stream", exc) from exc
        return stream_end(last[0] if last else None)

    def earlier_attempt_values(
        self, workflow_id: str, key: str, position: int, attempt: int
    ) -> list[EntryRow]:
        """Entries that earlier attempts (< ``attempt``) of the step at ``position`` wrote to ``key``.

        A workflow's steps run one after another, so a step's entries sit at the end of the stream;
        the scan walks back from the end and stops at the first entry of an earlier position.
        """
        with self._read(f"read stream {key!r} of {workflow_id!r}") as conn:
            stream = conn.execute(
                "SELECT stream_id FROM streams WHERE workflow_id = ? AND key = ?", (workflow_id, key)
            ).fetchall()
            if not stream:
                return []
            found = []
            for row in conn.execute(
                "SELECT offset, encoding, value, position, attempt FROM stream_entries "
                "WHERE stream_id = ? ORDER BY offset DESC",
                (stream[0][0],),
            ):
                if row[1] == END_OF_STREAM:
                    continue
                if row[3] < position:
                    break
                if row[3] == position and row[4] < attempt:
                    found.append(EntryRow(*row))
        found.reverse()
        return found

    def list_streams(self, workflow_id: str) -> list[StreamRow]:
        """A workflow's streams by key."""
        with self._read(f"list streams of {workflow_id!r}") as conn:
            rows = conn.execute(
                "SELECT workflow_id, key, "
                f"({_NEXT_OFFSET}) - (closed != {OPEN}), closed FROM streams s WHERE workflow_id = ? ORDER BY key",
                (workflow_id,),
            ).fetchall()
        return [StreamRow(*row) for row in rows]

    # ---- events and messages ----------------------------------------------------------------------

    def set_event(
        self,
        workflow_id: str,
        key: str,
        encoded: tuple[int, Any],
        position: int,
        executor_id: str,
        checkpoint: StepRow | None = None,
    ) -> None:
        """Set the latest value of an event of a running workflow (with its checkpoint), fenced on the run."""
        with self._write(f"set event {key!r} of {workflow_id!r}") as conn:
            _fence(conn, workflow_id, executor_id)
            conn.execute(
                "INSERT INTO events (workflow_id, key, encoding, value, position, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workflow_id, key) DO UPDATE SET "
                "encoding = excluded.encoding, value = excluded.value, position = excluded.position, "
                "updated_at = excluded.updated_at",
                (workflow_id, key, encoded[0], encoded[1], position, time.time()),
            )
            if checkpoint is not None:
                conn.execute(_INSERT_STEP, checkpoint)

    def get_event(self, workflow_id: str, key: str) -> tuple[str, tuple[int, Any] | None] | None:
        """``(workflow status, (encoding, value) or None if unset)`` in one snapshot; None if no workflow."""
        with self._translate_errors(f"read event {key!r} of {workflow_id!r}"):
            rows = self._connection().execute(
                "SELECT w.status, e.encoding, e.value, e.key IS NOT NULL FROM workflows w "
                "LEFT JOIN events e ON e.workflow_id = w.workflow_id AND e.key = ? WHERE w.workflow_id = ?",
                (key, workflow_id),
            ).fetchall()
        if not rows:
            return None
        status, encoding, value, found = rows[0]
        return status, ((encoding, value) if found else None)

    def list_events(self, workflow_id: str) -> list[EventRow]:
        """A workflow's events (latest values) by key."""
        with self._read(f"list events of {workflow_id!r}") as conn:
            rows = conn.execute(
                f"SELECT {', '.join(EventRow._fields)} FROM events WHERE workflow_id = ? ORDER BY key",
                (workflow_id,),
            ).fetchall()
        return [EventRow(*row) for row in rows]

    def send_message(
        self,
        workflow_id: str,
        topic: str | None,
        encoded: tuple[int, Any],
        idempotency_key: str | None = None,
        checkpoint: tuple[StepRow, str] | None = None,
    ) -> bool:
        """Queue a message for a workflow that has not ended; False if ``idempotency_key`` already landed.

        Raises WorkflowNotFoundError for an unknown workflow and WorkflowStatusError for one with a
        final status, writing nothing. With ``checkpoint`` = ``(step row, executor id)`` (a send from
        a workflow body), the sender's checkpoint commits with the message, fenced on the sender's run.
        """
        with self._write(f"send a message to {workflow_id!r}") as conn:
            if checkpoint is not None:
                _fence(conn, checkpoint[0].workflow_id, checkpoint[1])
            if idempotency_key is not None and conn.execute(
                "SELECT 1 FROM messages WHERE workflow_id = ? AND idempotency_key = ?", (workflow_id, idempotency_key)
            ).fetchall():
                return False
            status = conn.execute("SELECT status FROM workflows WHERE workflow_id = ?", (workflow_id,)).fetchall()
            if not status:
                raise WorkflowNotFoundError(workflow_id)
            check_can_receive(workflow_id, status[0][0])
            conn.execute(
                "INSERT INTO messages (workflow_id, topic, encoding, value, idempotency_key, sent_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (workflow_id, topic, encoded[0], encoded[1], idempotency_key, time.time()),
            )
            if checkpoint is not None:
                conn.execute(_INSERT_STEP, checkpoint[0])
        return True

    def consume_message(self, checkpoint: StepRow, topic: str | None, executor_id: str) -> tuple[int, Any] | None:
        """Take the oldest unconsumed message of ``topic`` and record it as the checkpoint, atomically.

        Returns the message's ``(encoding, value)``, or None (nothing written) when there is none.
        The consumption and the checkpoint commit together, so a message is received exactly once.
        Fenced on the run.
        """
        workflow_id = checkpoint.workflow_id
        with self._translate_errors(f"receive a message in {workflow_id!r}"):
            waiting = self._connection().execute(  # a read first: a wake-up for nothing takes no write lock
                "SELECT 1 FROM messages WHERE workflow_id = ? AND topic IS ? AND consumed_at IS NULL LIMIT 1",
                (workflow_id, topic),
            ).fetchall()
        if not waiting:
            return None
        with self._write(f"receive a message in {workflow_id!r}") as conn:
            _fence(conn, workflow_id, executor_id)
            rows = conn.execute(
                "SELECT message_id, encoding, value FROM messages WHERE workflow_id = ? AND topic IS ? "
                "AND consumed_at IS NULL ORDER BY message_id LIMIT 1",
                (workflow_id, topic),
            ).fetchall()
            if not rows:
                return None
            message_id, encoding, value = rows[0]
            conn.execute("UPDATE messages SET consumed_at = ? WHERE message_id = ?", (time.time(), message_id))
            conn.execute(_INSERT_STEP, checkpoint._replace(output_encoding=encoding, output=value))
        return encoding, value

    def pending_messages(self, workflow_id: str) -> list[MessageRow]:
        """Messages sent to a workflow and not yet received, oldest first."""
        with self._read(f"list messages of {workflow_id!r}") as conn:
            rows = conn.execute(
                f"SELECT {', '.join(MessageRow._fields)} FROM messages "
                "WHERE workflow_id = ? AND consumed_at IS NULL ORDER BY message_id",
                (workflow_id,),
            ).fetchall()
        return [MessageRow(*row) for row in rows]

    # ---- durable waits and changes ----------------------------------------------------------------

    def wait_deadline(self, workflow_id: str, position: int, deadline: float, executor_id: str) -> float:
        """The deadline of the wait at ``position``: the one first recorded there, else ``deadline`` (recorded).

        A durable wait (sleep, recv, get_event) keeps its first deadline across crashes. Fenced.
        """
        with self._write(f"record a wait of {workflow_id!r}") as conn:
            _fence(conn, workflow_id, executor_id)
            conn.execute(
                "INSERT INTO timers (workflow_id, position, deadline) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (workflow_id, position, deadline),
            )
            return conn.execute(
                "SELECT deadline FROM timers WHERE workflow_id = ? AND position = ?", (workflow_id, position)
            ).fetchall()[0][0]

    def changes_since(self, seq: int | None) -> tuple[int, list[str] | None]:
        """``(latest change number, workflows changed after seq)``; with seq None only the number.

        Changes are numbered as they commit (by triggers on status, events and messages) and only
        the latest 65,536 or so are kept: for a ``seq`` older than that the list is None (anything
        may have changed).
        """
        with self._translate_errors("read workflow changes"):
            conn = self._connection()
            if seq is None:
                return conn.execute("SELECT coalesce(max(seq), 0) FROM workflow_changes").fetchall()[0][0], []
            rows = conn.execute("SELECT seq, workflow_id FROM workflow_changes WHERE seq > ?", (seq,)).fetchall()
            if not rows:
                return seq, []
            if rows[0][0] != seq + 1 and conn.execute(
                "SELECT 1 FROM workflow_changes WHERE seq <= ? LIMIT 1", (seq,)
            ).fetchall() == []:
                return rows[-1][0], None  # pruned past ``seq``
        return rows[-1][0], [row[1] for row in rows]

    # ---- queues -----------------------------------------------------------------------------------

    def declare_queue(self, queue: QueueRow) -> None:
        """Record (or update) a queue's limits, for clients and the command line."""
        with self._write(f"declare queue {queue.name!r}") as conn:
            conn.execute(
                f"INSERT INTO queues ({', '.join(QueueRow._fields)}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, "
                "worker_concurrency = excluded.worker_concurrency, rate_limit = excluded.rate_limit, "
                "rate_period = excluded.rate_period, priority_enabled = excluded.priority_enabled, "
                "declared_at = excluded.declared_at",
                queue,
            )

    def get_queue(self, name: str) -> QueueRow | None:
        """A declared queue, or None."""
        with self._read(f"read queue {name!r}") as conn:
            rows = conn.execute(
                f"SELECT {', '.join(QueueRow._fields)} FROM queues WHERE name = ?", (name,)
            ).fetchall()
        return QueueRow(*rows[0]) if rows else None

    def list_queues(self) -> list[tuple[QueueRow | None, QueueCounts]]:
        """Every queue declared or holding workflows, with its enqueued and running counts, by name."""
        with self._read("list queues") as conn:
            counts = {
                name: QueueCounts(name, enqueued, running)
                for name, enqueued, running in conn.execute(
                    "SELECT queue_name, sum(status = 'ENQUEUED'), sum(status = 'PENDING') FROM workflows "
                    "WHERE queue_name IS NOT NULL AND status IN ('ENQUEUED', 'PENDING') GROUP BY queue_name"
                ).fetchall()
            }
            declared = {
                row[0]: QueueRow(*row)
                for row in conn.execute(f"SELECT {', '.join(QueueRow._fields)} FROM queues").fetchall()
            }
        return queue_overview(declared, counts)

    def enqueue_workflow(
        self, row: WorkflowRow, checkpoint: StepRow | None = None, executor_id: str | None = None
    ) -> tuple[bool, WorkflowRow]:
        """Insert an ENQUEUED workflow unless its id exists: ``(created, the row)``, atomically.

        Raises DuplicateWorkflowError (writing nothing) when its deduplication id is held by an
        ENQUEUED or PENDING workflow of the same queue. With ``checkpoint`` (an enqueue from a
        workflow body), the parent's checkpoint commits with it, fenced on the parent's run.
        """
        with self._write(f"enqueue workflow {row.workflow_id!r}") as conn:
            if checkpoint is not None:
                _fence(conn, checkpoint.workflow_id, executor_id)
                conn.execute(_INSERT_STEP, checkpoint)
            try:
                conn.execute(_ENQUEUE_WORKFLOW, row)
            except apsw.ConstraintError:
                holder = conn.execute(
                    "SELECT workflow_id FROM workflows WHERE queue_name = ? AND deduplication_id = ? "
                    "AND status IN ('ENQUEUED', 'PENDING')",
                    (row.queue_name, row.deduplication_id),
                ).fetchall()
                if not holder:
                    raise
                raise duplicate_in_queue_error(row, holder[0][0]) from None
            if conn.changes() == 1:
                return True, row
            existing = _fetch_workflow(conn, row.workflow_id)
        assert existing is not None
        return False, existing

    def dequeue(
        self,
        queue: QueueRow,
        executor_id: str,
        names: Sequence[str],
        want: int,
    ) -> tuple[list[WorkflowRow], float | None]:
        """Take up to ``want`` ENQUEUED workflows of ``queue`` (of these names) for this executor, in one
        transaction that checks the queue's limits: running anywhere < concurrency, running here <
        worker_concurrency, starts in the last rate_period < rate_limit. Lower priority first (if
        enabled), then first enqueued. Taken rows become PENDING here, their deadline starting now.

        The limits are those recorded in the file (the latest declaration by any process), so every
        process enforces the same ones; ``queue`` serves only where none is recorded.

        Returns ``(rows taken, when to try again)``: the epoch time at which a delayed workflow
        becomes available or the rate window frees a start, if that is what limits the queue now.
        """
        retry_at: float | None = None
        with self._write(f"take work from queue {queue.name!r}") as conn:
            now = time.time()  # once the write lock is held: a start is counted when it commits
            recorded = conn.execute(
                f"SELECT {', '.join(QueueRow._fields)} FROM queues WHERE name = ?", (queue.name,)
            ).fetchall()
            if recorded:
                queue = QueueRow(*recorded[0])
            free = want
            if queue.concurrency is not None:
                free = min(free, queue.concurrency - _count(conn, _RUNNING_IN_QUEUE, queue.name))
            if queue.worker_concurrency is not None:
                free = min(free, queue.worker_concurrency - _count(conn, _RUNNING_HERE, queue.name, executor_id))
            if queue.rate_limit is not None and queue.rate_period is not None:
                window_start = now - queue.rate_period
                conn.execute(
                    "DELETE FROM queue_starts WHERE queue_name = ? AND started_at <= ?", (queue.name, window_start)
                )
                started = conn.execute(
                    "SELECT count(*), min(started_at) FROM queue_starts WHERE queue_name = ?", (queue.name,)
                ).fetchall()[0]
                if started[0] >= queue.rate_limit:
                    retry_at = started[1] + queue.rate_period
                free = min(free, queue.rate_limit - started[0])
            if free <= 0 or not names:
                return [], retry_at
            order = "priority, created_at, rowid" if queue.priority_enabled else "created_at, rowid"
            marks = ", ".join("?" * len(names))
            rows = [
                WorkflowRow(*row)
                for row in conn.execute(
                    f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE status = 'ENQUEUED' AND queue_name = ? "
                    f"AND (available_at IS NULL OR available_at <= ?) AND name IN ({marks}) ORDER BY {order} LIMIT ?",
                    (queue.name, now, *names, free),
                ).fetchall()
            ]
            taken = []
            for row in rows:
                deadline = dequeued_deadline(row, now)
                conn.execute(
                    "UPDATE workflows SET status = 'PENDING', executor_id = ?, deadline = ?, updated_at = ? "
                    "WHERE workflow_id = ?",
                    (executor_id, deadline, now, row.workflow_id),
                )
                taken.append(row._replace(status="PENDING", executor_id=executor_id, deadline=deadline))
            if queue.rate_limit is not None:
                conn.executemany(
                    "INSERT INTO queue_starts (queue_name, started_at) VALUES (?, ?)", [(queue.name, now)] * len(taken)
                )
            if len(taken) < free:
                delayed = conn.execute(
                    "SELECT min(available_at) FROM workflows WHERE status = 'ENQUEUED' AND queue_name = ? "
                    "AND available_at > ?",
                    (queue.name, now),
                ).fetchall()[0][0]
                if delayed is not None:
                    retry_at = delayed if retry_at is None else min(retry_at, delayed)
        return taken, retry_at

    def requeue_workflows_of(self, executor_id: str) -> list[str]:
        """Put the queued workflows a dead executor was running back in their queues (ENQUEUED, no
        executor, their place kept), counting a recovery each; the ids, in one transaction."""
        with self._write(f"requeue the work of executor {executor_id!r}") as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT workflow_id FROM workflows WHERE status = 'PENDING' AND executor_id = ? "
                    "AND queue_name IS NOT NULL",
                    (executor_id,),
                ).fetchall()
            ]
            for workflow_id in ids:
                conn.execute(
                    "UPDATE workflows SET status = 'ENQUEUED', executor_id = NULL, "
                    "recovery_attempts = recovery_attempts + 1, updated_at = ? WHERE workflow_id = ?",
                    (time.time(), workflow_id),
                )
        return ids

    def running_executors(self, queue_name: str) -> list[str]:
        """Executors running workflows of a queue now (to find dead ones holding its slots)."""
        with self._read(f"read queue {queue_name!r}") as conn:
            rows = conn.execute(
                "SELECT DISTINCT executor_id FROM workflows WHERE status = 'PENDING' AND queue_name = ?",
                (queue_name,),
            ).fetchall()
        return [row[0] for row in rows if row[0] is not None]

    def give_up(self, workflow_id: str, executor_id: str) -> bool:
        """Mark a workflow this executor holds MAX_RECOVERY_ATTEMPTS_EXCEEDED and close its streams."""
        with self._write(f"give up workflow {workflow_id!r}") as conn:
            conn.execute(
                "UPDATE workflows SET status = 'MAX_RECOVERY_ATTEMPTS_EXCEEDED', updated_at = ? "
                "WHERE workflow_id = ? AND status = 'PENDING' AND executor_id = ?",
                (time.time(), workflow_id, executor_id),
            )
            if conn.changes() == 0:
                return False
            _close_open_streams(conn, workflow_id)
        return True

    # ---- schedules ----------------------------------------------------------------------------------

    def declare_schedule(
        self, schedule: ScheduleRow, executor_id: str | None = None, forget: Sequence[tuple[str, float]] = ()
    ) -> tuple[float, float | None]:
        """Record (or update) a schedule's declaration, keeping when it was first declared and its
        latest claimed tick; returns those two ``(created_at, last_tick)``.

        ``executor_id``: the launched process that declares it, recorded with ``declared_at``.
        ``forget``: declarations ``(executor_id, declared_at)`` of this schedule by executors found
        dead, deleted unless that executor declared it again meanwhile.
        """
        with self._write(f"declare schedule {schedule.name!r}") as conn:
            conn.execute(
                f"INSERT INTO schedules ({', '.join(ScheduleRow._fields)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET workflow_name = excluded.workflow_name, cron = excluded.cron, "
                "tz = excluded.tz, catch_up = excluded.catch_up, declared_at = excluded.declared_at",
                schedule,
            )
            for dead, declared_at in forget:
                conn.execute(
                    "DELETE FROM schedule_declarations WHERE name = ? AND executor_id = ? AND declared_at = ?",
                    (schedule.name, dead, declared_at),
                )
            if executor_id is not None:
                conn.execute(
                    "INSERT INTO schedule_declarations (name, executor_id, declared_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name, executor_id) DO UPDATE SET declared_at = excluded.declared_at",
                    (schedule.name, executor_id, schedule.declared_at),
                )
            row = conn.execute(
                "SELECT created_at, last_tick FROM schedules WHERE name = ?", (schedule.name,)
            ).fetchall()[0]
        return row[0], row[1]

    def claim_tick(self, name: str, tick: float, workflow: WorkflowRow) -> tuple[bool, float | None]:
        """Claim the tick ``tick`` of schedule ``name`` and create its workflow, in one transaction.

        The claim holds only if no tick at or after ``tick`` was claimed before (the schedule's last
        tick only grows), so across every process each tick is claimed at most once and never after
        a later one; then ``workflow`` (PENDING, owned by the claimer) is inserted unless its id
        exists. Returns ``(created, the schedule's latest claimed tick)``.
        """
        with self._write(f"claim a tick of schedule {name!r}") as conn:
            conn.execute(
                "UPDATE schedules SET last_tick = ? WHERE name = ? AND (last_tick IS NULL OR last_tick < ?)",
                (tick, name, tick),
            )
            if conn.changes() == 0:
                rows = conn.execute("SELECT last_tick FROM schedules WHERE name = ?", (name,)).fetchall()
                return False, rows[0][0] if rows else None
            conn.execute(_INSERT_WORKFLOW, workflow)
            return conn.changes() == 1, tick

    def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule recorded in the file, by name."""
        with self._read("list schedules") as conn:
            rows = conn.execute(f"SELECT {', '.join(ScheduleRow._fields)} FROM schedules ORDER BY name").fetchall()
        return [ScheduleRow(*row) for row in rows]

    def schedule_declarations(self, name: str | None = None) -> list[tuple[str, str, float]]:
        """``(name, executor_id, declared_at)`` of the recorded declarations of schedule ``name`` (of
        every schedule if None), by name and executor."""
        with self._read("list schedule declarations") as conn:
            rows = conn.execute(
                "SELECT name, executor_id, declared_at FROM schedule_declarations WHERE ?1 IS NULL OR name = ?1 "
                "ORDER BY name, executor_id",
                (name,),
            ).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def remove_schedule(self, name: str, declared_at: float) -> bool:
        """Delete schedule ``name`` and its declarations, in one transaction, unless it is gone or was
        declared again since ``declared_at`` (the time its caller read): whether it was removed. Its
        ticks' workflows stay (ordinary workflows: `garbage_collect` takes them when they are old)."""
        with self._write(f"remove schedule {name!r}") as conn:
            conn.execute("DELETE FROM schedules WHERE name = ? AND declared_at = ?", (name, declared_at))
            if conn.changes() == 0:
                return False
            conn.execute("DELETE FROM schedule_declarations WHERE name = ?", (name,))
        return True

    # ---- end of schedules ---------------------------------------------------------------------------

    # ---- management: cancel, resume, fork ---------------------------------------------------------

    def cancel_workflow(
        self, workflow_id: str, reason: str, if_deadline: float | None = None
    ) -> tuple[str, list[str]]:
        """Cancel a workflow that has not ended and its unfinished descendants, in one transaction.

        Returns ``(status before, ids cancelled)``; nothing is written for a workflow that has ended,
        nor, given ``if_deadline``, for one whose deadline is no longer that (a resume cleared it).
        Each cancelled workflow gets status CANCELLED and its reason (descendants: CASCADE_REASON and
        the parent's id), and its open streams are closed by termination.
        """
        with self._write(f"cancel workflow {workflow_id!r}") as conn:
            rows = conn.execute("SELECT status FROM workflows WHERE workflow_id = ?", (workflow_id,)).fetchall()
            if not rows:
                raise WorkflowNotFoundError(workflow_id)
            if rows[0][0] not in ACTIVE_STATUSES:
                return rows[0][0], []
            if if_deadline is not None and conn.execute(
                "SELECT deadline IS NOT ? FROM workflows WHERE workflow_id = ?", (if_deadline, workflow_id)
            ).fetchall()[0][0]:
                return rows[0][0], []
            tree = [(workflow_id, reason)] + [
                (child, cascade_reason(parent, reason))
                for child, parent in conn.execute(
                    "WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT w.workflow_id FROM workflows w "
                    "JOIN tree ON w.parent_id = tree.id) SELECT w.workflow_id, w.parent_id FROM workflows w "
                    "JOIN tree ON w.workflow_id = tree.id WHERE w.workflow_id != ? AND w.status IN (?, ?)",
                    (workflow_id, workflow_id, *ACTIVE_STATUSES),
                ).fetchall()
            ]
            now = time.time()
            for target, why in tree:
                conn.execute(
                    "UPDATE workflows SET status = 'CANCELLED', cancel_reason = ?, updated_at = ? "
                    "WHERE workflow_id = ?",
                    (why, now, target),
                )
                _close_open_streams(conn, target)
        return rows[0][0], [target for target, _ in tree]

    def resume_workflow(self, workflow_id: str) -> list[str]:
        """Make a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow PENDING again, with no executor.

        Its streams closed by termination reopen (their end entries go, so the next value takes the
        next offset); streams the workflow closed stay closed. Recovery attempts, the cancel reason
        and the deadline are cleared. Descendants cancelled with it are resumed too. Returns the ids
        resumed; raises WorkflowStatusError (writing nothing) for any other status.
        """
        with self._write(f"resume workflow {workflow_id!r}") as conn:
            rows = conn.execute("SELECT status FROM workflows WHERE workflow_id = ?", (workflow_id,)).fetchall()
            if not rows:
                raise WorkflowNotFoundError(workflow_id)
            check_resumable(workflow_id, rows[0][0])
            resumed = [workflow_id] + [
                row[0]
                for row in conn.execute(
                    "WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT w.workflow_id FROM workflows w "
                    "JOIN tree ON w.parent_id = tree.id WHERE w.status = 'CANCELLED' AND w.cancel_reason LIKE ?) "
                    "SELECT id FROM tree WHERE id != ?",
                    (workflow_id, f"{CASCADE_REASON} %", workflow_id),
                ).fetchall()
            ]
            _refuse_taken_deduplication(conn, resumed)
            now = time.time()
            for target in resumed:
                conn.execute(
                    "UPDATE workflows SET executor_id = NULL, recovery_attempts = 0, "
                    "status = CASE WHEN queue_name IS NULL THEN 'PENDING' ELSE 'ENQUEUED' END, "
                    "cancel_reason = NULL, deadline = NULL, output_encoding = NULL, output = NULL, error = NULL, "
                    "error_pickle = NULL, updated_at = ? WHERE workflow_id = ?",
                    (now, target),
                )
                _reopen_terminated_streams(conn, target)
            _bump(conn, ANY_UNOWNED)
        return resumed

    def fork_workflow(self, workflow_id: str, new_id: str, start_step: int) -> WorkflowRow:
        """A new PENDING workflow (no executor) with the inputs of ``workflow_id`` and its record before
        ``start_step``: steps, waits and events at earlier positions, and the stream entries those
        positions wrote (renumbered densely from 0, the streams open). One transaction.
        """
        with self._write(f"fork workflow {workflow_id!r}") as conn:
            original = _fetch_workflow(conn, workflow_id)
            if original is None:
                raise WorkflowNotFoundError(workflow_id)
            row = forked_workflow_row(original, new_id, time.time())
            conn.execute(_INSERT_WORKFLOW, row)
            if conn.changes() == 0:
                raise fork_exists_error(workflow_id, new_id)
            _copy_record(conn, workflow_id, new_id, start_step)
            _bump(conn, new_id, ANY_UNOWNED)
        return row

    # ---- retention: deletion, space, backup --------------------------------------------------

    def collection_cutoff(self, ended_before: float | None, keep_last: int | None) -> float | None:
        """The end time before which finished workflows go: ``ended_before``, or later if more than
        ``keep_last`` finished workflows ended after it (the end of the newest ``keep_last``-th)."""
        return collection_cutoff(ended_before, keep_last, self._nth_newest_end)

    def _nth_newest_end(self, index: int) -> float | None:
        """When the finished workflow at ``index`` (0: the newest) ended; None if there are fewer."""
        with self._read("find workflows to collect") as conn:
            rows = conn.execute(_NTH_NEWEST_FINISHED, (index,)).fetchall()
        return rows[0][0] if rows else None

    def collectable_workflows(self, ended_before: float, limit: int) -> list[str]:
        """Up to ``limit`` (-1: all) finished workflows that ended before ``ended_before``, oldest first,
        leaving out children of workflows still running (their parent may still ask for their result)."""
        with self._read("find workflows to collect") as conn:
            return [row[0] for row in conn.execute(_COLLECTABLE, (ended_before, limit)).fetchall()]

    def collect_batch(self, ended_before: float, limit: int) -> list[str]:
        """`delete_workflows` on the next `collectable_workflows`, chosen in the same transaction (so a
        workflow resumed and ended meanwhile is not taken for an old one)."""
        with self._write("delete workflows") as conn:
            chosen = [row[0] for row in conn.execute(_COLLECTABLE, (ended_before, limit)).fetchall()]
            return _delete_workflows(conn, chosen)

    def workflow_family(self, workflow_id: str) -> list[WorkflowRow]:
        """A workflow's row and its descendants' (children, their children, ...), the workflow first."""
        with self._read(f"read workflow {workflow_id!r} and its children") as conn:
            rows = conn.execute(
                "WITH RECURSIVE family (id) AS (SELECT ? UNION SELECT w.workflow_id FROM workflows w "
                f"JOIN family f ON w.parent_id = f.id) SELECT {_WORKFLOW_COLUMNS} FROM workflows "
                "JOIN family ON workflow_id = family.id",
                (workflow_id,),
            ).fetchall()
        found = [WorkflowRow(*row) for row in rows]
        return sorted(found, key=lambda row: row.workflow_id != workflow_id)

    def delete_workflows(self, workflow_ids: Sequence[str]) -> list[str]:
        """Delete these workflows if they are (still) finished, in one transaction; the ids deleted.

        Only the workflow rows go at once (the workflows vanish for every reader, and a resume can no
        longer find them); their end-of-stream entries become "deleted" marks, so a reader behind
        stops with an error where the values end, and the rest (steps, stream entries, events,
        messages) is queued for `purge_some`.
        """
        with self._write("delete workflows") as conn:
            return _delete_workflows(conn, workflow_ids)

    def purge_some(self, max_rows: int, max_seconds: float) -> tuple[int, int]:
        """Remove up to about ``max_rows`` rows of deleted workflows in one short transaction that
        stops taking more after ``max_seconds``.

        Returns ``(rows, values)`` removed (values: stream entries); ``(0, 0)`` when nothing is left.
        A stream's entries go from its end backwards, so what a reader still finds is always a
        prefix followed by the "deleted" mark, never a gap.
        """
        rows = values = 0
        with self._write("remove rows of deleted workflows") as conn:
            stop_at = time.monotonic() + max_seconds
            for (workflow_id,) in conn.execute("SELECT workflow_id FROM purging LIMIT 20").fetchall():
                removed, removed_values = _purge_workflow_rows(conn, workflow_id, max_rows - rows)
                rows, values = rows + removed, values + removed_values
                if rows >= max_rows or time.monotonic() > stop_at:
                    break
        return rows, values

    def _finish_purges(self) -> None:
        """Remove every row deleted workflows left, in short commits (see `purge_some`)."""
        while self.purge_some(1_000, 0.002)[0]:
            pass

    def vacuum_some(self, max_pages: int) -> int:
        """Give up to ``max_pages`` free pages back to the file system (one short write); how many.

        The file itself shrinks at the next checkpoint of the WAL (see `checkpoint`)."""
        with self._write("vacuum free pages") as conn:
            before = conn.execute("PRAGMA freelist_count").fetchall()[0][0]
            if before:
                list(conn.execute(f"PRAGMA incremental_vacuum({int(max_pages)})"))
            return before - conn.execute("PRAGMA freelist_count").fetchall()[0][0]

    def checkpoint(self) -> None:
        """Copy the WAL back into the file without waiting for anyone (it truncates a shrunk file)."""
        with self._write_lock, self._translate_errors("checkpoint the WAL"):
            list(self._writer().execute("PRAGMA wal_checkpoint(PASSIVE)"))

    def backup(self, destination: str) -> None:
        """Write a consistent copy of the whole database to ``destination`` (a new file).

        SQLite's online backup, copying in one step inside one read snapshot: writers of this and
        other processes carry on meanwhile (WAL), and the copy holds exactly one committed state.
        """
        _create_private_file(destination)
        try:
            target = apsw.Connection(destination)
            try:
                with target.backup("main", self._connection(), "main") as copy:
                    copy.step(-1)
                list(target.execute("PRAGMA journal_mode = WAL"))
            finally:
                target.close()
        except apsw.Error as exc:
            with contextlib.suppress(OSError):
                os.unlink(destination)
            raise self._database_error(f"back up to {destination}", exc) from exc

    def file_sizes(self) -> dict[str, int]:
        """Bytes on disk of the database and its WAL."""
        sizes = {}
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                sizes["database" if not suffix else "wal"] = os.path.getsize(self.path + suffix)
        return sizes

    # ---- overview (top) ---------------------------------------------------------------------------
    # Reads for a live view of the whole file (``litedur top``), repeated a few times a second.

    def open_stream_lengths(self) -> list[StreamRow]:
        """Every open stream of a PENDING workflow with its length (an ended workflow's are closed)."""
        with self._read("list open streams") as conn:
            rows = conn.execute(
                f"SELECT s.workflow_id, s.key, ({_NEXT_OFFSET}), s.closed FROM workflows w "
                f"JOIN streams s ON s.workflow_id = w.workflow_id WHERE w.status = 'PENDING' AND s.closed = {OPEN}"
            ).fetchall()
        return [StreamRow(*row) for row in rows]

    def recovered_workflows(self, limit: int) -> list[WorkflowRow]:
        """Up to ``limit`` workflows taken over from a dead executor at least once, latest updated first."""
        with self._read("list recovered workflows") as conn:
            rows = conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE recovery_attempts > 0 "
                "ORDER BY updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [WorkflowRow(*row) for row in rows]

    def pending_owners(self) -> list[tuple[str | None, int | None, str | None, int]]:
        """``(executor_id, pid, hostname, count)`` for each owner of PENDING workflows, as the executor
        registered itself (pid and hostname None if it never did; executor_id None: nobody owns them)."""
        with self._read("list owners of pending workflows") as conn:
            rows = conn.execute(
                "SELECT w.executor_id, e.pid, e.hostname, count(*) FROM workflows w "
                "LEFT JOIN executors e ON e.executor_id = w.executor_id WHERE w.status = 'PENDING' "
                "GROUP BY w.executor_id ORDER BY w.executor_id"
            ).fetchall()
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    def last_modified(self) -> float | None:
        """When a process last wrote to the file: the later mtime of the database and its WAL (None:
        neither), an empty WAL left out (opening the file, even to read, creates one)."""
        times = []
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                found = os.stat(self.path + suffix)
                if found.st_size or not suffix:
                    times.append(found.st_mtime)
        return max(times, default=None)

    # ---- end of overview (top) --------------------------------------------------------------------

    # ---- HTTP streams -----------------------------------------------------------------------------
    # The standalone streams of `litedur serve` (the Durable Streams protocol). ``http_streams`` has one
    # row per path: content type, expiry, closed flag, tail (next seq and position) and where a fork
    # came from; a deleted stream that forks came from stays as a tombstone (its path is not reused
    # until its last fork goes). ``http_stream_entries`` has one row per append: its bytes, or in
    # JSON mode its messages one per line (a JSON text holds no raw line break outside whitespace).
    # An entry's position counts the bytes (JSON: messages) before it. ``http_stream_producers`` holds
    # each idempotent producer's epoch and last sequence number, written with the append it accepted.
    # Every write numbers a change of `http_stream_key(path)`, so waiters of other processes wake.

    def create_http_stream(
        self, spec: HttpStreamSpec, body: HttpEntry | None, now: float
    ) -> tuple[str, HttpStreamRow | None]:
        """Create the stream ``spec.path`` (a fork of ``spec.fork_source`` if given) with ``body`` as its
        first entry, in one transaction that first removes expired streams. Returns ``(outcome, row)``.

        Outcomes: "created"; for a path in use "exists" (same configuration, nothing written),
        "conflict" (another one) or "gone" (a tombstone); for a fork "source-missing", "source-gone",
        "source-mismatch" (another media type), "bad-fork-offset" (not an entry boundary of the
        source) or "bad-sub-offset" (past the entry at the fork offset). A fork copies the source's
        entries before its fork point, and the first ``fork_sub_offset`` bytes (JSON: messages) of
        the next, so it never depends on its source again; without TTL and expiry of its own it takes
        the source's.
        """
        with self._write(f"create stream {spec.path!r}") as conn:
            _purge_expired_http_streams(conn, now)
            existing = _http_stream_at(conn, spec.path)
            if existing is not None:
                return existing_http_outcome(existing, spec), existing
            fork = None
            if spec.fork_source is not None:
                outcome, fork = _http_fork_point(conn, spec)
                if fork is None:
                    return outcome, None
                spec = forked_spec(spec, fork)
            conn.execute(
                "INSERT INTO http_streams (path, content_type, media_type, json, ttl, expires_at, expiry, closed, "
                "forked_from, fork_source, fork_seq, fork_sub_offset, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new_http_stream_params(spec, fork, now),
            )
            stream_id = conn.last_insert_rowid()
            seq, position = _copy_fork(conn, fork, stream_id) if fork is not None else (0, 0)
            if body is not None:
                conn.execute(_INSERT_HTTP_ENTRY, (stream_id, seq, position, body.size, body.data))
                seq, position = seq + 1, position + body.size
            conn.execute(
                "UPDATE http_streams SET next_seq = ?, next_position = ? WHERE stream_id = ?",
                (seq, position, stream_id),
            )
            return "created", _http_stream_at(conn, spec.path)

    def append_http_stream(
        self,
        path: str,
        entry: HttpEntry | None,
        media_type: str | None,
        *,
        close: bool = False,
        stream_seq: str | None = None,
        producer: HttpProducer | None = None,
        now: float,
    ) -> HttpAppendResult:
        """Append ``entry`` (None: none) to a stream and close it if asked, in one transaction that
        checks first, in this order, and writes nothing when a check fails:

        "missing" or "gone"; "content-type" (``media_type`` is not the stream's); for a producer
        "stale-epoch" (older than its recorded one, given back in ``epoch``) and "duplicate" (this
        epoch's seq was accepted already: ``seq`` is the highest accepted); "closed" (the stream is
        closed: an append is refused, a close alone is done already); for a producer "bad-epoch-seq"
        (a new epoch must start at seq 0) and "seq-gap" (``seq`` is the one expected); "stream-seq"
        (``stream_seq`` does not sort after the last one). Otherwise "appended": the entry, the
        producer's new state, the closed flag and the renewed TTL are committed together.
        """
        with self._write(f"append to stream {path!r}") as conn:
            row = _http_stream_at(conn, path)
            missing = _http_stream_missing(conn, row, now)
            if missing is not None or row is None:
                return HttpAppendResult(missing or "missing", row)
            if entry is not None and media_type != row.media_type:
                return HttpAppendResult("content-type", row)
            state = _http_producer(conn, row.stream_id, producer)
            refused = http_append_refused(row, producer, state, stream_seq)
            if refused is not None:
                return refused
            if entry is not None:
                placed = (row.stream_id, row.next_seq, row.next_position, entry.size, entry.data)
                conn.execute(_INSERT_HTTP_ENTRY, placed)
            row = appended_http_row(row, entry, close, stream_seq, now)
            conn.execute(
                "UPDATE http_streams SET next_seq = ?, next_position = ?, closed = ?, stream_seq = ?, expiry = ? "
                "WHERE stream_id = ?",
                (row.next_seq, row.next_position, row.closed, row.stream_seq, row.expiry, row.stream_id),
            )
            if producer is not None:
                conn.execute(
                    "INSERT INTO http_stream_producers (stream_id, producer_id, epoch, last_seq) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq",
                    (row.stream_id, producer.producer_id, producer.epoch, producer.seq),
                )
            _bump(conn, http_stream_key(path))
        return appended_result(row, producer)

    def read_http_stream(
        self, path: str, start: tuple[int, int] | None, max_bytes: int, now: float
    ) -> HttpReadResult:
        """The entries of a stream from ``start`` = ``(seq, position)`` (None: its tail), in one
        snapshot: at least one entry if there is any, then more while they total under ``max_bytes``.

        Outcomes: "ok"; "missing" or "gone"; "bad-offset" (``start`` is not an entry boundary of
        this stream, or lies past its tail).
        """
        with self._read(f"read stream {path!r}") as conn:
            row = _http_stream_at(conn, path)
            missing = _http_stream_missing(conn, row, now)
            if missing is not None or row is None:
                return HttpReadResult(missing or "missing", row, [])
            stream_id = row.stream_id
            return http_read_result(row, start, lambda seq: _http_entries(conn, stream_id, seq, max_bytes))

    def http_stream_info(self, path: str, now: float) -> tuple[str, HttpStreamRow | None]:
        """``(outcome, row)`` of a stream: "ok", "missing" or "gone"; reads only (a TTL is not renewed)."""
        with self._read(f"read stream {path!r}") as conn:
            row = _http_stream_at(conn, path)
            missing = _http_stream_missing(conn, row, now)
        return (missing or "ok"), row

    def touch_http_stream(self, stream_id: int, now: float) -> None:
        """Renew the sliding TTL of a stream that was read (nothing for a stream without TTL)."""
        self._commit_one(
            "UPDATE http_streams SET expiry = min(coalesce(expires_at, ? + ttl), ? + ttl) "
            "WHERE stream_id = ? AND ttl IS NOT NULL AND deleted = 0 AND expiry > ?",
            (now, now, stream_id, now),
            f"renew the TTL of stream {stream_id}",
        )

    def delete_http_stream(self, path: str, now: float) -> str:
        """Delete a stream and its entries, in one transaction: "deleted"; "tombstoned" when forks came
        from it (its path then stays taken, see `create_http_stream`); "missing"; "gone" (a tombstone).
        Tombstones left with no fork are removed with the last one (up the chain of forks)."""
        with self._write(f"delete stream {path!r}") as conn:
            _purge_expired_http_streams(conn, now)
            row = _http_stream_at(conn, path)
            absent = http_absent(row)
            if absent is not None or row is None:
                return absent or "missing"
            return _delete_http_stream(conn, row)

    def purge_expired_http_streams(self, now: float) -> int:
        """Delete every stream whose TTL or expiry time has passed (in one transaction); how many."""
        with self._write("delete expired streams") as conn:
            return _purge_expired_http_streams(conn, now)

    # ---- end of HTTP streams ----------------------------------------------------------------------


class _GroupedWrite:
    """One statement waiting in `SQLiteStorage._commit_one`, and what became of it."""

    __slots__ = ("statement", "params", "changes", "error", "done")

    def __init__(self, statement: str, params: Sequence[Any]) -> None:
        self.statement = statement
        self.params = params
        self.changes = 0
        self.error: BaseException | None = None
        self.done = False


class _BusyWait:
    """SQLite busy handler: short sleeps that grow from 0.1 ms to 5 ms, for up to BUSY_TIMEOUT_MS.

    SQLite's own busy timeout sleeps in steps of up to 100 ms, far too coarse for writers that hold
    the lock for microseconds.
    """

    def __init__(self) -> None:
        self._since = 0.0

    def __call__(self, count: int) -> bool:
        now = time.monotonic()
        if count == 0:
            self._since = now
        elif now - self._since > BUSY_TIMEOUT_MS / 1000:
            return False
        time.sleep(min(0.0001 * 1.5 ** min(count, 20), 0.005))
        return True


def _fetch_workflow(conn: apsw.Connection, workflow_id: str) -> WorkflowRow | None:
    rows = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchall()
    return WorkflowRow(*rows[0]) if rows else None


_NEXT_OFFSET = "SELECT coalesce(max(offset) + 1, 0) FROM stream_entries e WHERE e.stream_id = s.stream_id"

_RUNNING_IN_QUEUE = "SELECT count(*) FROM workflows WHERE status = 'PENDING' AND queue_name = ?"
_RUNNING_HERE = "SELECT count(*) FROM workflows WHERE status = 'PENDING' AND queue_name = ? AND executor_id = ?"
_ENQUEUE_WORKFLOW = (
    f"INSERT INTO workflows ({_WORKFLOW_COLUMNS}) VALUES ({', '.join('?' * len(WorkflowRow._fields))}) "
    "ON CONFLICT (workflow_id) DO NOTHING"
)
_FINAL_LIST = "('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED')"
_COLLECTABLE = (
    f"SELECT workflow_id FROM workflows w WHERE status IN {_FINAL_LIST} AND updated_at < ? AND NOT EXISTS "
    "(SELECT 1 FROM workflows p WHERE p.workflow_id = w.parent_id AND p.status IN ('PENDING', 'ENQUEUED')) "
    "ORDER BY updated_at LIMIT ?"
)
_NTH_NEWEST_FINISHED = (
    f"SELECT updated_at FROM workflows WHERE status IN {_FINAL_LIST} ORDER BY updated_at DESC LIMIT 1 OFFSET ?"
)
_MARK_STREAM_DELETED = (  # a stream's end entry: one seek to the end of the stream
    "UPDATE stream_entries SET encoding = ? WHERE stream_id = ? AND encoding = ? AND offset = "
    "(SELECT offset FROM stream_entries WHERE stream_id = ? ORDER BY offset DESC LIMIT 1)"
)
_DELETE_FINISHED = f"DELETE FROM workflows WHERE workflow_id = ? AND status IN {_FINAL_LIST}"
_READ_STATE = f"SELECT {_STATE_COLUMNS} FROM workflows WHERE workflow_id = ?"
_READ_VALUES = "SELECT encoding, value FROM stream_entries WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT ?"
_LAST_ENTRY = "SELECT offset, encoding FROM stream_entries WHERE stream_id = ? ORDER BY offset DESC LIMIT 1"
_INSERT_ENTRY = (
    "INSERT INTO stream_entries (stream_id, offset, encoding, value, position, attempt, written_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ENTRY_WHILE_OWNED = (
    f"INSERT INTO stream_entries (stream_id, offset, encoding, value, position, attempt) "
    f"SELECT ?, ?, ?, ?, ?, ? {_WHILE_OWNED}"
)
# One value at a remembered offset, fenced on the run and on the stream still being the workflow's
# (a stream id is never reused, but a deleted workflow's id may be); see `append_stream`.
_APPEND_REMEMBERED = (
    "INSERT INTO stream_entries (stream_id, offset, encoding, value, position, attempt, written_at) "
    "SELECT s.stream_id, ?, ?, ?, ?, ?, ? FROM streams s WHERE s.stream_id = ? AND s.workflow_id = ? AND EXISTS "
    "(SELECT 1 FROM workflows w WHERE w.workflow_id = s.workflow_id AND w.status = 'PENDING' AND w.executor_id = ?)"
)
_ENTRY_CHECKPOINTS = ENTRY_CHECKPOINTS.format(mark="?")
_BODY_WRITES = BODY_WRITES.format(mark="?")
# Changes of a workflow's status, events and messages are numbered by triggers (see the schema).
_BUMP = "INSERT INTO workflow_changes (workflow_id) VALUES (?)"


def _refuse_taken_deduplication(conn: apsw.Connection, workflow_ids: list[str]) -> None:
    """Raise DuplicateWorkflowError if a queued workflow about to go back to its queue has a
    deduplication id that another active workflow of that queue took meanwhile."""
    for workflow_id in workflow_ids:
        holder = conn.execute(
            "SELECT other.workflow_id, w.queue_name, w.deduplication_id FROM workflows w JOIN workflows other "
            "ON other.queue_name = w.queue_name AND other.deduplication_id = w.deduplication_id "
            "AND other.status IN ('ENQUEUED', 'PENDING') WHERE w.workflow_id = ? AND other.workflow_id != ?",
            (workflow_id, workflow_id),
        ).fetchall()
        if holder:
            other, queue, deduplication_id = holder[0]
            raise deduplication_taken_error(workflow_id, queue, other, deduplication_id)


def _count(conn: apsw.Connection, query: str, *params: Any) -> int:
    return conn.execute(query, params).fetchall()[0][0]


def _bump(conn: apsw.Connection, *workflow_ids: str) -> None:
    """Mark workflows as changed for waiters in other processes (beyond what the triggers number)."""
    for workflow_id in workflow_ids:
        conn.execute(_BUMP, (workflow_id,))


def _fence(conn: apsw.Connection, workflow_id: str, executor_id: str | None) -> None:
    """Raise unless the workflow is PENDING and owned by ``executor_id`` (the run may still write)."""
    rows = conn.execute(
        "SELECT status, executor_id, cancel_reason FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchall()
    status, owner, reason = rows[0] if rows else (None, None, None)
    if status == "PENDING" and owner == executor_id:
        return
    raise run_refusal(workflow_id, executor_id, status, owner, reason)


def _open_stream(conn: apsw.Connection, workflow_id: str, key: str) -> tuple[int, int, int]:
    """``(stream_id, next_offset, closed)``, creating the stream if it does not exist."""
    rows = conn.execute(
        f"SELECT stream_id, ({_NEXT_OFFSET}), closed FROM streams s WHERE workflow_id = ? AND key = ?",
        (workflow_id, key),
    ).fetchall()
    if rows:
        return rows[0]
    conn.execute("INSERT INTO streams (workflow_id, key) VALUES (?, ?)", (workflow_id, key))
    return conn.last_insert_rowid(), 0, OPEN


def _insert_entries(
    conn: apsw.Connection, group: StreamGroup, stream_id: int, offset: int, written_at: float | None = None
) -> None:
    position, attempt = group.position, group.attempt
    values = enumerate(group.values, offset)
    rows = [(stream_id, at, enc, data, position, attempt, written_at) for at, (enc, data) in values]
    conn.executemany(_INSERT_ENTRY, rows)


def _gives_space_back(conn: apsw.Connection) -> bool:
    return conn.execute("PRAGMA auto_vacuum").fetchall()[0][0] == AUTO_VACUUM_INCREMENTAL


def _delete_workflows(conn: apsw.Connection, workflow_ids: Sequence[str]) -> list[str]:
    deleted = []
    now = time.time()
    for workflow_id in workflow_ids:
        conn.execute(_DELETE_FINISHED, (workflow_id,))
        if conn.changes() == 0:
            continue
        conn.execute("INSERT OR IGNORE INTO purging (workflow_id, deleted_at) VALUES (?, ?)", (workflow_id, now))
        streams = conn.execute("SELECT stream_id FROM streams WHERE workflow_id = ?", (workflow_id,)).fetchall()
        for (stream_id,) in streams:
            conn.execute(_MARK_STREAM_DELETED, (STREAM_DELETED, stream_id, END_OF_STREAM, stream_id))
        _bump(conn, workflow_id)
        deleted.append(workflow_id)
    return deleted


def _purge_workflow_rows(conn: apsw.Connection, workflow_id: str, budget: int) -> tuple[int, int]:
    """Delete up to ``budget`` rows of one deleted workflow; ``(rows, values)``. Its last rows gone,
    the workflow leaves the purge list."""
    rows = values = 0
    for table, key in (("steps", "workflow_id, position"), ("events", "workflow_id, key"),
                       ("timers", "workflow_id, position"), ("messages", "message_id")):  # fmt: skip
        rows += _delete_some(conn, table, key, workflow_id, budget - rows)
        if rows >= budget:
            return rows, values
    for (stream_id,) in conn.execute("SELECT stream_id FROM streams WHERE workflow_id = ?", (workflow_id,)).fetchall():
        conn.execute(
            "DELETE FROM stream_entries WHERE stream_id = ? AND offset IN (SELECT offset FROM stream_entries "
            "WHERE stream_id = ? AND encoding != ? ORDER BY offset DESC LIMIT ?)",
            (stream_id, stream_id, STREAM_DELETED, budget - rows),
        )
        rows, values = rows + conn.changes(), values + conn.changes()
        if rows >= budget:
            return rows, values
        conn.execute("DELETE FROM stream_entries WHERE stream_id = ?", (stream_id,))  # the "deleted" mark
        conn.execute("DELETE FROM streams WHERE stream_id = ?", (stream_id,))
        rows += 2
    conn.execute("DELETE FROM purging WHERE workflow_id = ?", (workflow_id,))
    _bump(conn, workflow_id)
    return rows + 1, values


def _delete_some(conn: apsw.Connection, table: str, key: str, workflow_id: str, limit: int) -> int:
    """Delete up to ``limit`` rows of a WITHOUT ROWID table keyed by ``key`` for one workflow."""
    conn.execute(
        f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE workflow_id = ? LIMIT ?)",
        (workflow_id, limit),
    )
    return conn.changes()


def _close_open_streams(conn: apsw.Connection, workflow_id: str) -> None:
    """Close every open stream of a workflow as "closed by termination", each with its end entry."""
    conn.execute(
        "INSERT INTO stream_entries (stream_id, offset, encoding, value, position, attempt) "
        f"SELECT stream_id, ({_NEXT_OFFSET}), ?, NULL, -1, 0 FROM streams s WHERE workflow_id = ? AND closed = ?",
        (END_OF_STREAM, workflow_id, OPEN),
    )
    conn.execute(
        "UPDATE streams SET closed = ? WHERE workflow_id = ? AND closed = ?",
        (CLOSED_BY_TERMINATION, workflow_id, OPEN),
    )


def _reopen_terminated_streams(conn: apsw.Connection, workflow_id: str) -> None:
    """Undo "closed by termination": drop those streams' end entries and mark them open."""
    conn.execute(
        "DELETE FROM stream_entries WHERE encoding = ? AND stream_id IN "
        "(SELECT stream_id FROM streams WHERE workflow_id = ? AND closed = ?)",
        (END_OF_STREAM, workflow_id, CLOSED_BY_TERMINATION),
    )
    conn.execute(
        "UPDATE streams SET closed = ? WHERE workflow_id = ? AND closed = ?",
        (OPEN, workflow_id, CLOSED_BY_TERMINATION),
    )


def _copy_record(conn: apsw.Connection, source: str, target: str, before: int) -> None:
    """Copy what ``source`` recorded at positions < ``before`` to ``target`` (a fork)."""
    conn.execute(
        f"INSERT INTO steps ({_STEP_COLUMNS}) SELECT ?, {_STEP_COLUMNS.split(', ', 1)[1]} FROM steps "
        "WHERE workflow_id = ? AND position < ?",
        (target, source, before),
    )
    conn.execute(
        "INSERT INTO timers (workflow_id, position, deadline) SELECT ?, position, deadline FROM timers "
        "WHERE workflow_id = ? AND position < ?",
        (target, source, before),
    )
    conn.execute(
        "INSERT INTO events (workflow_id, key, encoding, value, position, updated_at) "
        "SELECT ?, key, encoding, value, position, updated_at FROM events WHERE workflow_id = ? AND position < ?",
        (target, source, before),
    )
    # A body's set_event records its value in its checkpoint: the latest before the fork point wins,
    # even where a later set_event has replaced the current value.
    prefix = f"{SET_EVENT_STEP}:"
    conn.execute(
        "INSERT INTO events (workflow_id, key, encoding, value, position, updated_at) "
        "SELECT ?, substr(name, ?), output_encoding, output, max(position), finished_at FROM steps "
        "WHERE workflow_id = ? AND position < ? AND name LIKE ? AND output_encoding IS NOT NULL GROUP BY name "
        "ON CONFLICT (workflow_id, key) DO UPDATE SET encoding = excluded.encoding, value = excluded.value, "
        "position = excluded.position, updated_at = excluded.updated_at WHERE excluded.position > events.position",
        (target, len(prefix) + 1, source, before, f"{prefix}%"),
    )
    streams = conn.execute(
        "SELECT stream_id, key FROM streams s WHERE workflow_id = ? AND EXISTS (SELECT 1 FROM stream_entries e "
        "WHERE e.stream_id = s.stream_id AND e.position >= 0 AND e.position < ?)",
        (source, before),
    ).fetchall()
    for stream_id, key in streams:
        conn.execute("INSERT INTO streams (workflow_id, key) VALUES (?, ?)", (target, key))
        conn.execute(
            "INSERT INTO stream_entries (stream_id, offset, encoding, value, position, attempt, written_at) "
            "SELECT ?, row_number() OVER (ORDER BY offset) - 1, encoding, value, position, attempt, written_at "
            "FROM stream_entries WHERE stream_id = ? AND encoding != ? AND position >= 0 AND position < ?",
            (conn.last_insert_rowid(), stream_id, END_OF_STREAM, before),
        )


def _is_readonly(conn: apsw.Connection) -> bool:
    return bool(conn.readonly("main"))


def _check_path(path: str, create: bool) -> bool:
    """Validate ``path`` before SQLite touches it; True when a new file must be created."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path) or "."
        if not create:
            raise DatabaseError(f"no litedur database at {path}") from None
        if not os.path.isdir(parent):
            raise DatabaseError(f"cannot create database {path}: directory {parent} does not exist") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DatabaseError(
                f"cannot create database {path}: directory {parent} is not writable"
            ) from None
        return True
    except OSError as exc:
        raise DatabaseError(f"cannot use database {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise DatabaseError(f"cannot use database {path}: it is a directory")
    if info.st_size == 0:
        return False
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise DatabaseError(f"cannot read database {path}: {exc.strerror}") from exc
    if header != SQLITE_HEADER:
        raise DatabaseError(f"{path} is not a litedur database (not a SQLite file)")
    return False


def _on_read_only_file_system(path: str) -> bool:
    """True for a file on a read-only mount that has no write-ahead log to replay.

    A WAL-mode reader needs a ``-shm`` index next to the file, which cannot be created there; such a
    file is opened as immutable instead (safe: nothing can change it). With a non-empty ``-wal``
    left behind, immutable would hide committed data, so the file is opened normally (and fails).
    """
    try:
        if not os.statvfs(path).f_flag & os.ST_RDONLY:
            return False
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False
    try:
        return os.path.getsize(f"{path}-wal") == 0
    except OSError:
        return True  # no -wal at all


def _create_private_file(path: str) -> None:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise DatabaseError(f"cannot create database {path}: {exc.strerror}") from exc


# ---- HTTP streams (the helpers of SQLiteStorage's "HTTP streams" section) ------------------------

_HTTP_STREAM_COLUMNS = ", ".join(HttpStreamRow._fields)
_INSERT_HTTP_ENTRY = "INSERT INTO http_stream_entries (stream_id, seq, position, size, data) VALUES (?, ?, ?, ?, ?)"


def _http_stream_at(conn: apsw.Connection, path: str) -> HttpStreamRow | None:
    rows = conn.execute(f"SELECT {_HTTP_STREAM_COLUMNS} FROM http_streams WHERE path = ?", (path,)).fetchall()
    return HttpStreamRow(*rows[0]) if rows else None


def _has_forks(conn: apsw.Connection, stream_id: int) -> bool:
    return bool(conn.execute("SELECT 1 FROM http_streams WHERE forked_from = ? LIMIT 1", (stream_id,)).fetchall())


def _http_stream_missing(conn: apsw.Connection, row: HttpStreamRow | None, now: float) -> str | None:
    return http_stream_missing(row, now, functools.partial(_has_forks, conn))


def _http_fork_point(conn: apsw.Connection, spec: HttpStreamSpec) -> tuple[str, HttpForkPoint | None]:
    source = _http_stream_at(conn, spec.fork_source or "")
    return http_fork_point(spec, source, functools.partial(_http_entry_at, conn))


def _http_entry_at(conn: apsw.Connection, stream_id: int, seq: int) -> tuple[int, int, bytes] | None:
    """``(position, size, data)`` of an entry of a stream, or None."""
    rows = conn.execute(
        "SELECT position, size, data FROM http_stream_entries WHERE stream_id = ? AND seq = ?", (stream_id, seq)
    ).fetchall()
    return rows[0] if rows else None


def _copy_fork(conn: apsw.Connection, fork: HttpForkPoint, stream_id: int) -> tuple[int, int]:
    """Copy a fork's inherited entries into the new stream; its ``(next seq, next position)``."""
    conn.execute(
        "INSERT INTO http_stream_entries (stream_id, seq, position, size, data) "
        "SELECT ?, seq, position, size, data FROM http_stream_entries WHERE stream_id = ? AND seq < ?",
        (stream_id, fork.source.stream_id, fork.seq),
    )
    if fork.partial is None:
        return fork.seq, fork.position
    conn.execute(_INSERT_HTTP_ENTRY, (stream_id, fork.seq, fork.position, fork.partial.size, fork.partial.data))
    return fork.seq + 1, fork.position + fork.partial.size


def _http_producer(conn: apsw.Connection, stream_id: int, producer: HttpProducer | None) -> tuple[int, int] | None:
    """``(epoch, last seq)`` recorded for a producer of a stream, or None."""
    if producer is None:
        return None
    rows = conn.execute(
        "SELECT epoch, last_seq FROM http_stream_producers WHERE stream_id = ? AND producer_id = ?",
        (stream_id, producer.producer_id),
    ).fetchall()
    return (rows[0][0], rows[0][1]) if rows else None


def _http_entries(conn: apsw.Connection, stream_id: int, seq: int, max_bytes: int) -> list[tuple[int, int, int, bytes]]:
    """Entries from ``seq`` on: the first, then more while their bytes total under ``max_bytes``."""
    cursor = conn.cursor()
    entries: list[tuple[int, int, int, bytes]] = []
    total = 0
    try:
        for entry in cursor.execute(
            "SELECT seq, position, size, data FROM http_stream_entries WHERE stream_id = ? AND seq >= ? ORDER BY seq",
            (stream_id, seq),
        ):
            if entries and total + len(entry[3]) > max_bytes:
                break
            entries.append(entry)
            total += len(entry[3])
    finally:
        cursor.close()
    return entries


def _delete_http_stream(conn: apsw.Connection, row: HttpStreamRow) -> str:
    """Delete a stream's entries and producers, and its row unless forks came from it (then it stays
    as a tombstone); then the tombstones up its chain of origins that no fork needs any more."""
    conn.execute("DELETE FROM http_stream_entries WHERE stream_id = ?", (row.stream_id,))
    conn.execute("DELETE FROM http_stream_producers WHERE stream_id = ?", (row.stream_id,))
    _bump(conn, http_stream_key(row.path))
    if _has_forks(conn, row.stream_id):
        conn.execute("UPDATE http_streams SET deleted = 1, expiry = NULL WHERE stream_id = ?", (row.stream_id,))
        return "tombstoned"
    conn.execute("DELETE FROM http_streams WHERE stream_id = ?", (row.stream_id,))
    origin = row.forked_from
    while origin is not None:
        found = conn.execute("SELECT deleted, forked_from FROM http_streams WHERE stream_id = ?", (origin,)).fetchall()
        if not found or not found[0][0] or _has_forks(conn, origin):
            break
        conn.execute("DELETE FROM http_streams WHERE stream_id = ?", (origin,))
        origin = found[0][1]
    return "deleted"


def _purge_expired_http_streams(conn: apsw.Connection, now: float) -> int:
    expired = conn.execute(
        f"SELECT {_HTTP_STREAM_COLUMNS} FROM http_streams WHERE expiry <= ? AND deleted = 0", (now,)
    ).fetchall()
    for row in expired:
        _delete_http_stream(conn, HttpStreamRow(*row))
    return len(expired)
