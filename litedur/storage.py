"""Every SQL statement litedur runs, behind the verbs the engine needs.

`SQLiteStorage` is the one backend: a WAL-mode SQLite file opened through apsw. Each public method is
one transaction (writes use ``BEGIN IMMEDIATE``, so they wait in the busy handler instead of failing
on a lock upgrade) and its docstring says what it guarantees. Rows come back as plain tuples of stored
(still encoded) values; decoding is the caller's business. Nothing here imports the engine.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import apsw

from .errors import DatabaseError, StreamClosedError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4C544452  # "LTDR"
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000
MAX_REMEMBERED_OFFSETS = 4096  # streams whose next offset append_one keeps in memory

OPEN, CLOSED_BY_WORKFLOW, CLOSED_BY_TERMINATION = 0, 1, 2
END_OF_STREAM = -1  # encoding of the entry that closing a stream appends after its last value
ACTIVE_STATUSES = ("PENDING", "ENQUEUED")
WRITE_STREAM_STEP = "litedur.write_stream"

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
]


class WorkflowRow(NamedTuple):
    workflow_id: str
    name: str
    status: str
    inputs_encoding: int
    inputs: Any
    output_encoding: int | None
    output: Any
    error: str | None
    error_pickle: bytes | None
    executor_id: str | None
    recovery_attempts: int
    created_at: float
    updated_at: float


class StepRow(NamedTuple):
    workflow_id: str
    position: int
    name: str
    output_encoding: int | None
    output: Any
    error: str | None
    error_pickle: bytes | None
    attempts: int
    started_at: float
    finished_at: float


class StreamRow(NamedTuple):
    workflow_id: str
    key: str
    length: int
    closed: int


class StreamGroup(NamedTuple):
    """Values one step attempt wrote to one stream, in order: the unit of a grouped append."""

    workflow_id: str
    key: str
    position: int
    attempt: int
    values: list[tuple[int, Any]]


class EntryRow(NamedTuple):
    offset: int
    encoding: int
    value: Any
    position: int
    attempt: int


_WORKFLOW_COLUMNS = ", ".join(WorkflowRow._fields)
_STEP_COLUMNS = ", ".join(StepRow._fields)
_INSERT_WORKFLOW = (
    f"INSERT INTO workflows ({_WORKFLOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (workflow_id) DO NOTHING"
)
_FINISH_WORKFLOW = (
    "UPDATE workflows SET status = ?, output_encoding = ?, output = ?, error = ?, error_pickle = ?, updated_at = ? "
    "WHERE workflow_id = ?"
)
_INSERT_STEP = f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


class SQLiteStorage:
    """A litedur database in one WAL-mode SQLite file; one apsw connection per thread."""

    def __init__(self, path: str, *, create: bool = True, durability: str = "normal") -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.durability = durability
        self._local = threading.local()
        self._connections: list[apsw.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writer_conn: apsw.Connection | None = None
        self._next_offsets: dict[int, int] = {}  # stream_id -> next offset, for append_one
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

    # ---- schema -----------------------------------------------------------------------------

    def _prepare_schema(self, conn: apsw.Connection, create: bool = True) -> None:
        version, app_id, tables = self._inspect(conn)
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise DatabaseError(f"{self.path} is a SQLite database of another application, not litedur")
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path} has litedur schema version {version}; this litedur reads up to "
                f"{SCHEMA_VERSION}: upgrade litedur"
            )
        if version == SCHEMA_VERSION:
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
            for number in range(version + 1, SCHEMA_VERSION + 1):
                list(conn.execute(MIGRATIONS[number - 1]))
            list(conn.execute(f"PRAGMA application_id = {APPLICATION_ID}"))
            list(conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}"))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

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

    def active_executors(self, exclude: str | None = None) -> list[str]:
        """Distinct executors that own PENDING workflows (``exclude`` left out)."""
        with self._read("list executors") as conn:
            rows = conn.execute(
                "SELECT DISTINCT executor_id FROM workflows WHERE status = 'PENDING' "
                "AND executor_id IS NOT ?",
                (exclude,),
            ).fetchall()
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
    ) -> tuple[bool, WorkflowRow]:
        """Insert a PENDING workflow unless the id exists; atomically. Returns (created, row)."""
        now = time.time()
        row = WorkflowRow(workflow_id, name, "PENDING", inputs[0], inputs[1], None, None, None, None,
                          executor_id, 0, now, now)  # fmt: skip
        with self._write_lock:
            try:
                conn = self._writer()
                conn.execute(_INSERT_WORKFLOW, row)  # one statement: its own transaction
                if conn.changes() == 1:
                    return True, row
            except apsw.Error as exc:
                raise self._database_error(f"create workflow {workflow_id!r}", exc) from exc
        existing = self.get_workflow(workflow_id)  # rows are never deleted: it is there
        assert existing is not None
        return False, existing

    def claim_workflow(
        self, workflow_id: str, previous_executor: str | None, executor_id: str, max_recoveries: int
    ) -> str:
        """Take over a PENDING workflow from ``previous_executor``, atomically.

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
            attempts = row[0][0] + 1
            status = "PENDING" if attempts <= max_recoveries else "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
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
        output: tuple[int, Any] | None = None,
        error: tuple[str, bytes | None] | None = None,
        has_streams: bool = True,
    ) -> None:
        """Record a final status and close every open stream of the workflow, in one transaction.

        ``has_streams=False`` (the caller knows the workflow never opened one) saves the search.
        """
        encoding, value = output if output is not None else (None, None)
        description, pickled = error if error is not None else (None, None)
        values = (status, encoding, value, description, pickled, time.time(), workflow_id)
        if not has_streams:
            with self._write_lock:
                try:
                    self._writer().execute(_FINISH_WORKFLOW, values)  # one statement: its own transaction
                except apsw.Error as exc:
                    raise self._database_error(f"finish workflow {workflow_id!r}", exc) from exc
            return
        with self._write(f"finish workflow {workflow_id!r}") as conn:
            conn.execute(_FINISH_WORKFLOW, values)
            _close_open_streams(conn, workflow_id)

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """One workflow's row, or None."""
        with self._read(f"read workflow {workflow_id!r}") as conn:
            return _fetch_workflow(conn, workflow_id)

    def list_workflows(
        self, status: str | None = None, name: str | None = None, limit: int | None = None
    ) -> list[WorkflowRow]:
        """Workflows newest first, optionally filtered by status and name."""
        clauses, params = [], []
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
            attempts = conn.execute(
                "SELECT e.position, max(e.attempt) FROM stream_entries e "
                "JOIN streams s ON s.stream_id = e.stream_id WHERE s.workflow_id = ? "
                "GROUP BY e.position",
                (workflow_id,),
            ).fetchall()
        return {row[1]: StepRow(*row) for row in steps}, dict(attempts)

    def record_step(self, row: StepRow) -> None:
        """Record a step's output or final error; fails if the position is already recorded."""
        with self._write_lock:
            try:
                self._writer().execute(_INSERT_STEP, row)  # one statement: its own transaction
            except apsw.Error as exc:
                raise self._database_error(f"record step {row.position} of {row.workflow_id!r}", exc) from exc

    def list_steps(self, workflow_id: str) -> list[StepRow]:
        """A workflow's recorded steps in position order."""
        with self._read(f"list steps of {workflow_id!r}") as conn:
            rows = conn.execute(
                f"SELECT {_STEP_COLUMNS} FROM steps WHERE workflow_id = ? ORDER BY position",
                (workflow_id,),
            ).fetchall()
        return [StepRow(*row) for row in rows]

    # ---- streams --------------------------------------------------------------------------------

    def append_stream(
        self,
        workflow_id: str,
        key: str,
        values: Sequence[tuple[int, Any]],
        position: int,
        attempt: int,
        checkpoint: StepRow | None = None,
    ) -> int:
        """Append encoded values at the stream's end (creating it); returns the first new offset.

        Offsets stay dense: the next offset is read inside the same write transaction. Raises
        StreamClosedError (writing nothing) if the stream is closed. With ``checkpoint``, that step
        record is inserted in the same transaction (a workflow-body write).
        """
        with self._write(f"append to stream {key!r} of {workflow_id!r}") as conn:
            stream_id, offset, closed = _open_stream(conn, workflow_id, key)
            if closed != OPEN:
                raise StreamClosedError(f"stream {key!r} of workflow {workflow_id!r} is closed")
            _insert_entries(conn, StreamGroup(workflow_id, key, position, attempt, list(values)), stream_id, offset)
            if checkpoint is not None:
                conn.execute(_INSERT_STEP, checkpoint)
        return offset

    def open_stream(self, workflow_id: str, key: str) -> tuple[int, bool]:
        """``(stream_id, closed)`` of a stream, creating it (open and empty) if needed."""
        with self._write(f"open stream {key!r} of {workflow_id!r}") as conn:
            stream_id, _, closed = _open_stream(conn, workflow_id, key)
        return stream_id, closed != OPEN

    def append_one(self, stream_id: int, encoded: tuple[int, Any], position: int, attempt: int) -> int | None:
        """Append one value to an existing stream in its own transaction; its offset, None if closed.

        The hot path of unbatched writes. This process remembers the next offset of each stream it
        appended to, so a value usually costs one autocommitted insert, like a raw one-row
        transaction. Entries are never deleted, so a remembered offset can only be stale by being
        too low (another process appended, or the stream was closed by an end-of-stream entry):
        the primary key then refuses the insert, and the slow path reads the real end.
        """
        row = (stream_id, self._next_offsets.get(stream_id, -1), encoded[0], encoded[1], position, attempt)
        with self._write_lock:
            conn = self._writer()
            if row[1] >= 0:
                try:
                    conn.execute(_INSERT_ENTRY, row)
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
            last = conn.execute(_LAST_ENTRY, (stream_id,)).fetchall()
            appended = not last or last[0][1] != END_OF_STREAM
            if appended:
                offset = last[0][0] + 1 if last else 0
                conn.execute(_INSERT_ENTRY, (stream_id, offset, *row[2:]))
            conn.execute("COMMIT")
        except apsw.Error as exc:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise self._database_error("append to a stream", exc) from exc
        if len(self._next_offsets) >= MAX_REMEMBERED_OFFSETS:
            self._next_offsets.clear()
        if not appended:
            self._next_offsets.pop(stream_id, None)
            return None
        self._next_offsets[stream_id] = offset + 1
        return offset

    def append_groups(
        self, groups: Sequence[StreamGroup]
    ) -> tuple[dict[str, BaseException], list[tuple[int, int, list[tuple[int, Any]]]]]:
        """Append several groups of values (each: one stream, one step attempt) in one transaction.

        Returns ``(failures, placed)``: a group whose stream is closed is skipped and ``failures``
        maps its workflow id to a StreamClosedError; ``placed`` says where the others went, as
        ``(stream_id, first offset, values)``. Offsets stay dense: each stream's next offset is
        read inside the transaction.
        """
        failures: dict[str, BaseException] = {}
        placed: list[tuple[int, int, list[tuple[int, Any]]]] = []
        with self._write(f"append to {len(groups)} stream group(s)") as conn:
            for group in groups:
                stream_id, offset, closed = _open_stream(conn, group.workflow_id, group.key)
                if closed != OPEN:
                    failures[group.workflow_id] = StreamClosedError(
                        f"stream {group.key!r} of workflow {group.workflow_id!r} is closed"
                    )
                    continue
                _insert_entries(conn, group, stream_id, offset)
                placed.append((stream_id, offset, group.values))
        return failures, placed

    def close_stream(self, workflow_id: str, key: str) -> None:
        """Mark a stream closed by its workflow (creating it empty if needed); idempotent."""
        with self._write(f"close stream {key!r} of {workflow_id!r}") as conn:
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
        self, stream_id: int, offset: int, limit: int, first_read: bool = False
    ) -> tuple[list[tuple[int, Any]], bool]:
        """``(values, ended)``: up to ``limit`` encoded values from ``offset``, and whether the stream
        ends after them.

        Closing a stream (by the workflow or by its termination) appends an end-of-stream entry in
        the same transaction, so one range scan of one table tells a reader both what is new and
        whether that is all: the cheapest possible check after a wake-up. A reader's ``first_read``
        also learns whether it starts past the end of a closed stream (one more index seek).
        """
        try:
            conn = self._connection()
            rows = conn.execute(_READ_VALUES, (stream_id, offset, limit)).fetchall()
            if not rows and first_read and offset > 0:
                last = conn.execute(_LAST_ENTRY, (stream_id,)).fetchall()
                ended = bool(last) and last[0][1] == END_OF_STREAM and last[0][0] < offset
                return [], ended
        except apsw.Error as exc:
            raise self._database_error("read a stream", exc) from exc
        if rows and rows[-1][0] == END_OF_STREAM:
            del rows[-1]
            return rows, True
        return rows, False

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

    def file_sizes(self) -> dict[str, int]:
        """Bytes on disk of the database and its WAL."""
        sizes = {}
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                sizes["database" if not suffix else "wal"] = os.path.getsize(self.path + suffix)
        return sizes


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
        time.sleep(min(0.0001 * 1.5**count, 0.005))
        return True


def _fetch_workflow(conn: apsw.Connection, workflow_id: str) -> WorkflowRow | None:
    rows = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchall()
    return WorkflowRow(*rows[0]) if rows else None


_NEXT_OFFSET = "SELECT coalesce(max(offset) + 1, 0) FROM stream_entries e WHERE e.stream_id = s.stream_id"

_READ_VALUES = "SELECT encoding, value FROM stream_entries WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT ?"
_LAST_ENTRY = "SELECT offset, encoding FROM stream_entries WHERE stream_id = ? ORDER BY offset DESC LIMIT 1"
_INSERT_ENTRY = (
    "INSERT INTO stream_entries (stream_id, offset, encoding, value, position, attempt) VALUES (?, ?, ?, ?, ?, ?)"
)


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


def _insert_entries(conn: apsw.Connection, group: StreamGroup, stream_id: int, offset: int) -> None:
    position, attempt = group.position, group.attempt
    conn.executemany(
        _INSERT_ENTRY,
        [(stream_id, at, enc, data, position, attempt) for at, (enc, data) in enumerate(group.values, offset)],
    )


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
