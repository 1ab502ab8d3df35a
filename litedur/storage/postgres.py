"""The PostgreSQL backend: the verbs of `SQLiteStorage` on PostgreSQL 15+ through psycopg 3.

`PostgresStorage` keeps litedur's tables in one schema of a database (``litedur`` unless the URL says
``?schema=NAME``). Each verb is one transaction on this thread's connection (autocommit at the driver
level, so a read leaves no transaction open; every multi-statement verb sends its own BEGIN/COMMIT).
What SQLite gets from its single writer, this backend gets from locks:

- **The fence** locks the workflow's row (``FOR NO KEY UPDATE``) before a run writes, so a cancel,
  resume or recovery commits either before the write (which is then refused) or after it.
- **Stream offsets** are taken after locking the workflow's row (every writer of a stream is fenced
  on it, or changes that row itself): appenders of one stream serialize, and each reads the end its
  predecessor committed (READ COMMITTED: each statement, also in the schema's functions, sees every
  commit before it).
- **Change numbers** (`changes_since`) follow commit order: every numbering takes a transaction-level
  advisory lock of the schema and numbers ``max(seq) + 1``. It happens only at commit time
  (deferred constraint triggers, and explicit numbers in the last statement before COMMIT), so the
  lock is held from numbering to commit and the holder never waits for another lock: a reader that
  sees number ``n`` sees every number below it.
- **Queues** serialize their dequeues on a transaction-level advisory lock keyed by the queue name,
  so the limits counted under it are exact across processes.
- **Wake-ups**: a write transaction that a stream reader may wait for (all but a step's record) ends
  with ``pg_notify`` on the schema's channel, and one that numbers changes also notifies its changes
  channel (as the SQLite backend's signal file is written only for numbered changes); a process has
  one LISTEN connection per channel that fans notifications out to its watches: stream readers on the
  first, workflow watchers on the second, where a process ignores its own connections' changes (it
  rang its own waiters already, as a SQLite process ignores its own signal file).
- **Round trips**: the verbs on the hot path of a workflow (create, record a step, append to a stream,
  finish) are one statement each, a function of the schema where they need several: one round trip
  and one implicit transaction, instead of BEGIN, the statements, `end_write` and COMMIT.
- **Liveness**: an executor holds a session-level advisory lock on a connection of its own; the
  server drops it when the process dies (its socket closes), on whatever host it ran.

Durability: a commit returns once flushed on the server (``synchronous_commit=local`` for "normal",
``on`` for "full", which also waits for synchronous standbys where the server has them). A crash of
the client process never loses a committed transaction; neither setting risks the server's own crash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ..errors import (
    DatabaseError,
    ExecutorError,
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
    mask_url,
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

T = TypeVar("T")

APPLICATION = "litedur"
DEFAULT_SCHEMA = "litedur"
LOCK_CLASS = 0x4C544452  # "LTDR": the first key of litedur's two-key advisory locks
LOCK_TIMEOUT_MS = 30_000  # like SQLite's busy timeout: a lock held longer is a DatabaseError
MAX_RETRIES = 20  # a verb chosen as a deadlock victim runs again, up to this many times
log = logging.getLogger("litedur")
LOCK_KEEPALIVE_IDLE, LOCK_KEEPALIVE_INTERVAL, LOCK_KEEPALIVE_COUNT = 5, 2, 3  # seconds, seconds, probes
LOCK_KEEPALIVE_SECONDS = 12  # a silent host loses its executor locks after about this long
RELOCK_INTERVAL = 0.5  # how often a lost executor lock is tried again while the server is away
LISTEN_SLICE = 1.0  # how often a listener thread checks whether any watch is left
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TEXT_ENCODINGS = (0, 1)  # litedur.values TEXT and JSON: str values, stored as UTF-8 bytes

# Version 1 is the schema of SQLite version 6 (PostgreSQL numbers its own versions). ``@S`` is
# the quoted schema, ``@CHANNEL`` the NOTIFY channel, ``@K2`` the schema's key of the change lock.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE @S.litedur_meta (
        singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        application TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE @S.workflows (
        workflow_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        inputs_encoding INTEGER NOT NULL,
        inputs BYTEA,
        output_encoding INTEGER,
        output BYTEA,
        error TEXT,
        error_pickle BYTEA,
        executor_id TEXT,
        recovery_attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        parent_id TEXT,
        timeout DOUBLE PRECISION,
        deadline DOUBLE PRECISION,
        cancel_reason TEXT,
        queue_name TEXT,
        priority BIGINT,
        deduplication_id TEXT,
        available_at DOUBLE PRECISION,
        inserted BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX workflows_by_created ON @S.workflows (created_at);
    CREATE INDEX workflows_by_status ON @S.workflows (status, executor_id);
    CREATE INDEX workflows_by_parent ON @S.workflows (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX workflows_enqueued ON @S.workflows (queue_name, priority, created_at) WHERE status = 'ENQUEUED';
    CREATE INDEX workflows_queue_running ON @S.workflows (queue_name, executor_id)
        WHERE status = 'PENDING' AND queue_name IS NOT NULL;
    CREATE UNIQUE INDEX workflows_deduplicated ON @S.workflows (queue_name, deduplication_id)
        WHERE deduplication_id IS NOT NULL AND status IN ('ENQUEUED', 'PENDING');
    CREATE INDEX workflows_finished ON @S.workflows (updated_at)
        WHERE status IN ('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED');
    CREATE TABLE @S.steps (
        workflow_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        output_encoding INTEGER,
        output BYTEA,
        error TEXT,
        error_pickle BYTEA,
        attempts INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (workflow_id, position)
    );
    CREATE TABLE @S.streams (
        stream_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        key TEXT NOT NULL,
        closed INTEGER NOT NULL DEFAULT 0,
        UNIQUE (workflow_id, key)
    );
    CREATE TABLE @S.stream_entries (
        stream_id BIGINT NOT NULL,
        "offset" BIGINT NOT NULL,
        encoding INTEGER NOT NULL,
        value BYTEA,
        position INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        PRIMARY KEY (stream_id, "offset")
    );
    CREATE TABLE @S.executors (
        executor_id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE @S.events (
        workflow_id TEXT NOT NULL,
        key TEXT NOT NULL,
        encoding INTEGER NOT NULL,
        value BYTEA,
        position INTEGER NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (workflow_id, key)
    );
    CREATE TABLE @S.messages (
        message_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        topic TEXT,
        encoding INTEGER NOT NULL,
        value BYTEA,
        idempotency_key TEXT,
        sent_at DOUBLE PRECISION NOT NULL,
        consumed_at DOUBLE PRECISION
    );
    CREATE INDEX messages_pending ON @S.messages (workflow_id, topic, message_id) WHERE consumed_at IS NULL;
    CREATE UNIQUE INDEX messages_once ON @S.messages (workflow_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX messages_by_workflow ON @S.messages (workflow_id);
    CREATE TABLE @S.timers (
        workflow_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        deadline DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (workflow_id, position)
    );
    CREATE TABLE @S.workflow_changes (
        seq BIGINT PRIMARY KEY,
        workflow_id TEXT NOT NULL
    );
    CREATE TABLE @S.queues (
        name TEXT PRIMARY KEY,
        concurrency BIGINT,
        worker_concurrency BIGINT,
        rate_limit BIGINT,
        rate_period DOUBLE PRECISION,
        priority_enabled INTEGER NOT NULL,
        declared_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE @S.queue_starts (
        queue_name TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX queue_starts_by_time ON @S.queue_starts (queue_name, started_at);
    CREATE TABLE @S.purging (workflow_id TEXT PRIMARY KEY, deleted_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE @S.http_streams (
        stream_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        content_type TEXT NOT NULL,
        media_type TEXT NOT NULL,
        json INTEGER NOT NULL,
        ttl BIGINT,
        expires_at DOUBLE PRECISION,
        expiry DOUBLE PRECISION,
        closed INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        next_seq BIGINT NOT NULL DEFAULT 0,
        next_position BIGINT NOT NULL DEFAULT 0,
        stream_seq TEXT,
        forked_from BIGINT,
        fork_source TEXT,
        fork_seq BIGINT,
        fork_sub_offset BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX http_streams_by_expiry ON @S.http_streams (expiry) WHERE expiry IS NOT NULL;
    CREATE INDEX http_streams_by_source ON @S.http_streams (forked_from) WHERE forked_from IS NOT NULL;
    CREATE TABLE @S.http_stream_entries (
        stream_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        position BIGINT NOT NULL,
        size BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (stream_id, seq)
    );
    CREATE TABLE @S.http_stream_producers (
        stream_id BIGINT NOT NULL,
        producer_id TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (stream_id, producer_id)
    );
    CREATE TABLE @S.schedules (
        name TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        cron TEXT NOT NULL,
        tz TEXT,
        catch_up INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        declared_at DOUBLE PRECISION NOT NULL,
        last_tick DOUBLE PRECISION
    );
    -- Change numbering in commit order: the schema's advisory lock, held to the commit, then max + 1.
    CREATE FUNCTION @S.bump(change_key TEXT) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        next_seq BIGINT;
    BEGIN
        PERFORM pg_advisory_xact_lock(@K1, @K2);
        SELECT coalesce(max(seq), 0) + 1 INTO next_seq FROM @S.workflow_changes;
        INSERT INTO @S.workflow_changes (seq, workflow_id) VALUES (next_seq, change_key);
        PERFORM pg_notify('@CHANGES', '');  -- once per transaction (the same notification is sent once)
        IF next_seq % 4096 = 0 THEN
            DELETE FROM @S.workflow_changes WHERE seq <= next_seq - 65536;
        END IF;
    END $$;
    -- The last statement of every write transaction: its explicit change numbers, and the wake-up.
    CREATE FUNCTION @S.end_write(change_keys TEXT[]) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        change_key TEXT;
    BEGIN
        FOREACH change_key IN ARRAY change_keys LOOP
            PERFORM @S.bump(change_key);
        END LOOP;
        PERFORM pg_notify('@CHANNEL', '');
    END $$;
    CREATE FUNCTION @S.workflow_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM @S.bump(NEW.workflow_id);
        RETURN NULL;
    END $$;
    CREATE FUNCTION @S.queue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM @S.bump('queue:' || NEW.queue_name);
        RETURN NULL;
    END $$;
    CREATE FUNCTION @S.refuse_id_being_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM @S.purging WHERE workflow_id = NEW.workflow_id) THEN
            RAISE EXCEPTION 'litedur: @BEING_REMOVED';
        END IF;
        RETURN NULL;
    END $$;
    -- Deferred: they number at commit, after every row lock of the transaction is held.
    CREATE CONSTRAINT TRIGGER workflow_status_changed AFTER UPDATE OF status ON @S.workflows
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @S.workflow_changed();
    CREATE CONSTRAINT TRIGGER workflow_queue_moved AFTER UPDATE OF status ON @S.workflows
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.queue_name IS NOT NULL)
        EXECUTE FUNCTION @S.queue_changed();
    CREATE CONSTRAINT TRIGGER workflow_enqueued AFTER INSERT ON @S.workflows
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'ENQUEUED')
        EXECUTE FUNCTION @S.queue_changed();
    CREATE CONSTRAINT TRIGGER workflow_event_set AFTER INSERT OR UPDATE ON @S.events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @S.workflow_changed();
    CREATE CONSTRAINT TRIGGER workflow_message_sent AFTER INSERT ON @S.messages
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @S.workflow_changed();
    -- After the insert: it has waited on the unique index for a deletion of that id to commit, and
    -- this check's fresh snapshot sees the id that deletion put in purging.
    CREATE TRIGGER workflow_id_being_deleted AFTER INSERT ON @S.workflows
        FOR EACH ROW EXECUTE FUNCTION @S.refuse_id_being_removed();
    -- The verbs of the hot path as one statement each (see PostgresStorage._call). In these functions
    -- each statement takes a new snapshot, so a read after a lock sees every commit before the lock.
    -- The fence: the workflow's row locked, and whether this run may write (else what it found).
    CREATE FUNCTION @S.fence(run_workflow TEXT, run_executor TEXT, OUT refused BOOLEAN, OUT found_status TEXT,
        OUT found_owner TEXT, OUT found_reason TEXT) LANGUAGE plpgsql AS $$
    BEGIN
        SELECT status, executor_id, cancel_reason INTO found_status, found_owner, found_reason
            FROM @S.workflows WHERE workflow_id = run_workflow FOR NO KEY UPDATE;
        refused := found_status IS DISTINCT FROM 'PENDING' OR found_owner IS DISTINCT FROM run_executor;
    END $$;
    CREATE FUNCTION @S.append_one(run_workflow TEXT, run_executor TEXT, target BIGINT, new_encoding INTEGER,
        new_value BYTEA, new_position INTEGER, new_attempt INTEGER, OUT refused BOOLEAN, OUT found_status TEXT,
        OUT found_owner TEXT, OUT found_reason TEXT, OUT new_offset BIGINT) LANGUAGE plpgsql AS $$
    DECLARE
        last_offset BIGINT;
        last_encoding INTEGER;
    BEGIN
        SELECT * INTO refused, found_status, found_owner, found_reason FROM @S.fence(run_workflow, run_executor);
        IF refused THEN
            RETURN;
        END IF;
        SELECT "offset", encoding INTO last_offset, last_encoding FROM @S.stream_entries
            WHERE stream_id = target ORDER BY "offset" DESC LIMIT 1;
        IF last_encoding = @END_ENTRY THEN
            RETURN;  -- closed: no offset
        END IF;
        new_offset := coalesce(last_offset + 1, 0);
        INSERT INTO @S.stream_entries (stream_id, "offset", encoding, value, position, attempt)
            VALUES (target, new_offset, new_encoding, new_value, new_position, new_attempt);
        PERFORM pg_notify('@CHANNEL', '');
    END $$;
    CREATE FUNCTION @S.append_values(run_workflow TEXT, run_executor TEXT, stream_key TEXT, new_position INTEGER,
        new_attempt INTEGER, new_encodings INTEGER[], new_values BYTEA[], OUT refused BOOLEAN, OUT found_status TEXT,
        OUT found_owner TEXT, OUT found_reason TEXT, OUT target BIGINT, OUT first_offset BIGINT)
    LANGUAGE plpgsql AS $$
    DECLARE
        closed_as INTEGER;
    BEGIN
        SELECT * INTO refused, found_status, found_owner, found_reason FROM @S.fence(run_workflow, run_executor);
        IF refused THEN
            RETURN;
        END IF;
        SELECT stream_id, closed INTO target, closed_as FROM @S.streams
            WHERE workflow_id = run_workflow AND key = stream_key;
        IF NOT FOUND THEN
            INSERT INTO @S.streams (workflow_id, key) VALUES (run_workflow, stream_key) RETURNING stream_id INTO target;
            closed_as := @OPEN_STREAM;
        END IF;
        IF closed_as <> @OPEN_STREAM THEN
            RETURN;  -- closed: no offset
        END IF;
        SELECT coalesce(max("offset") + 1, 0) INTO first_offset FROM @S.stream_entries WHERE stream_id = target;
        INSERT INTO @S.stream_entries (stream_id, "offset", encoding, value, position, attempt)
            SELECT target, first_offset + number - 1, each_encoding, each_value, new_position, new_attempt
            FROM unnest(new_encodings, new_values) WITH ORDINALITY AS given(each_encoding, each_value, number);
        PERFORM pg_notify('@CHANNEL', '');
    END $$;
    CREATE FUNCTION @S.record_step(run_workflow TEXT, run_executor TEXT, step_position INTEGER, step_name TEXT,
        step_output_encoding INTEGER, step_output BYTEA, step_error TEXT, step_error_pickle BYTEA,
        step_attempts INTEGER, step_started_at DOUBLE PRECISION, step_finished_at DOUBLE PRECISION,
        OUT refused BOOLEAN, OUT found_status TEXT, OUT found_owner TEXT, OUT found_reason TEXT)
    LANGUAGE plpgsql AS $$
    BEGIN
        SELECT * INTO refused, found_status, found_owner, found_reason FROM @S.fence(run_workflow, run_executor);
        IF refused THEN
            RETURN;
        END IF;
        INSERT INTO @S.steps (workflow_id, position, name, output_encoding, output, error, error_pickle, attempts,
            started_at, finished_at) VALUES (run_workflow, step_position, step_name, step_output_encoding,
            step_output, step_error, step_error_pickle, step_attempts, step_started_at, step_finished_at);
    END $$;
    -- Close every open stream of a workflow as "closed by termination", each with its end entry.
    CREATE FUNCTION @S.close_open_streams(run_workflow TEXT) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO @S.stream_entries (stream_id, "offset", encoding, value, position, attempt)
            SELECT s.stream_id, (SELECT coalesce(max(e."offset") + 1, 0) FROM @S.stream_entries e
                WHERE e.stream_id = s.stream_id), @END_ENTRY, NULL, -1, 0
            FROM @S.streams s WHERE s.workflow_id = run_workflow AND s.closed = @OPEN_STREAM;
        UPDATE @S.streams SET closed = @TERMINATED_STREAM WHERE workflow_id = run_workflow AND closed = @OPEN_STREAM;
    END $$;
    CREATE FUNCTION @S.finish_workflow(run_workflow TEXT, run_executor TEXT, final_status TEXT,
        final_output_encoding INTEGER, final_output BYTEA, final_error TEXT, final_error_pickle BYTEA,
        finished_at DOUBLE PRECISION, close_streams BOOLEAN) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE @S.workflows SET status = final_status, output_encoding = final_output_encoding,
            output = final_output, error = final_error, error_pickle = final_error_pickle, updated_at = finished_at
            WHERE workflow_id = run_workflow AND status = 'PENDING' AND executor_id IS NOT DISTINCT FROM run_executor;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        IF close_streams THEN
            PERFORM @S.close_open_streams(run_workflow);
        END IF;
        PERFORM pg_notify('@CHANNEL', '');
        RETURN true;
    END $$;
    """,
    # version 2: which live executors declared each schedule (SQLite version 7)
    """
    CREATE TABLE @S.schedule_declarations (
        name TEXT NOT NULL,
        executor_id TEXT NOT NULL,
        declared_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, executor_id)
    );
    """,
    # version 3: a workflow body's write_stream is its own checkpoint (SQLite version 8)
    """
    ALTER TABLE @S.stream_entries ADD COLUMN written_at DOUBLE PRECISION;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
BODY_WRITES_IN_ENTRIES = 3  # older processes must not run on a schema upgraded to this (see _migrate)

_WORKFLOW_COLUMNS = ", ".join(WorkflowRow._fields)
_STEP_COLUMNS = ", ".join(StepRow._fields)
_INSERT_WORKFLOW = (
    f"INSERT INTO workflows ({_WORKFLOW_COLUMNS}) VALUES ({', '.join(['%s'] * len(WorkflowRow._fields))}) "
    "ON CONFLICT (workflow_id) DO NOTHING"
)
_ENQUEUE_WORKFLOW = (  # any conflict: the id, or a deduplication id held by active work
    f"INSERT INTO workflows ({_WORKFLOW_COLUMNS}) VALUES ({', '.join(['%s'] * len(WorkflowRow._fields))}) "
    "ON CONFLICT DO NOTHING"
)
_INSERT_STEP = f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES ({', '.join(['%s'] * len(StepRow._fields))})"
_READ_STATE = f"SELECT {', '.join(WorkflowState._fields)} FROM workflows WHERE workflow_id = %s"
_NEXT_OFFSET = 'SELECT coalesce(max("offset") + 1, 0) FROM stream_entries e WHERE e.stream_id = s.stream_id'
_LAST_ENTRY = 'SELECT "offset", encoding FROM stream_entries WHERE stream_id = %s ORDER BY "offset" DESC LIMIT 1'
_INSERT_ENTRY = (
    'INSERT INTO stream_entries (stream_id, "offset", encoding, value, position, attempt, written_at) '
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_ENTRY_CHECKPOINTS = ENTRY_CHECKPOINTS.format(mark="%s")
_BODY_WRITES = BODY_WRITES.format(mark="%s")
_READ_VALUES = (
    'SELECT encoding, value FROM stream_entries WHERE stream_id = %s AND "offset" >= %s ORDER BY "offset" LIMIT %s'
)
_FINAL_LIST = "('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED')"
_COLLECTABLE = (
    f"SELECT workflow_id FROM workflows w WHERE status IN {_FINAL_LIST} AND updated_at < %s AND NOT EXISTS "
    "(SELECT 1 FROM workflows p WHERE p.workflow_id = w.parent_id AND p.status IN ('PENDING', 'ENQUEUED')) "
    "ORDER BY updated_at LIMIT %s"
)
_RUNNING_IN_QUEUE = "SELECT count(*) FROM workflows WHERE status = 'PENDING' AND queue_name = %s"
_RUNNING_HERE = "SELECT count(*) FROM workflows WHERE status = 'PENDING' AND queue_name = %s AND executor_id = %s"
_HTTP_STREAM_COLUMNS = ", ".join(HttpStreamRow._fields)
_INSERT_HTTP_ENTRY = (
    "INSERT INTO http_stream_entries (stream_id, seq, position, size, data) VALUES (%s, %s, %s, %s, %s)"
)
_HTTP_CHUNK = 64  # entries fetched per query while filling a read up to its byte budget


# ---- values: stored as BYTEA --------------------------------------------------------------------


def _to_db(value: Any) -> bytes | None:
    """An encoded value as stored: text (JSON or a plain string) as UTF-8 bytes, bytes as they are."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def _from_db(encoding: int | None, data: bytes | None) -> Any:
    """A stored value as `litedur.values` made it: ``str`` for TEXT and JSON, bytes otherwise."""
    if data is None:
        return None
    if encoding in _TEXT_ENCODINGS:
        return bytes(data).decode("utf-8", "surrogatepass")
    return bytes(data)


def _workflow_params(row: WorkflowRow) -> tuple[Any, ...]:
    return row._replace(inputs=_to_db(row.inputs), output=_to_db(row.output))


def _workflow_row(values: Sequence[Any]) -> WorkflowRow:
    row = WorkflowRow(*values)
    return row._replace(
        inputs=_from_db(row.inputs_encoding, row.inputs), output=_from_db(row.output_encoding, row.output)
    )


def _step_params(row: StepRow) -> tuple[Any, ...]:
    return row._replace(output=_to_db(row.output))


def _step_row(values: Sequence[Any]) -> StepRow:
    row = StepRow(*values)
    return row._replace(output=_from_db(row.output_encoding, row.output))


# ---- URLs and keys ------------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, str]:
    """``(conninfo for psycopg, schema)``: the ``schema`` query parameter taken out of ``url``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.match(schema):
        raise DatabaseError(
            f"cannot use schema {schema!r}: a litedur schema name is lowercase letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _key64(*parts: str) -> int:
    """A signed 64-bit advisory lock key for these words."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _key32(*parts: str) -> int:
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Session:
    """One thread's connection to the database and its server process id."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.backend: int = conn.info.backend_pid


def _idle_session_usable(conn: psycopg.Connection) -> bool:
    """False if the server said something to an idle session: that is its goodbye (a restart,
    ``pg_terminate_backend``, a timeout), or at worst a notice; either way a new session is safer
    than a verb that would fail once for nothing (libpq leaves the goodbye unread until then)."""
    try:
        return not select.select([conn.pgconn.socket], [], [], 0)[0]  # one system call, usually
    except (psycopg.Error, OSError, ValueError):
        return False


def _end_session(storage_ref: Any, conn: psycopg.Connection, backend: int, pid: int) -> None:
    """Close a thread's session when its thread has ended (never a forked parent's)."""
    if os.getpid() != pid:
        return
    storage = storage_ref()
    if storage is not None:
        with storage._connections_lock, contextlib.suppress(ValueError):
            storage._connections.remove(conn)
        storage._forget_backend(backend)
    with contextlib.suppress(psycopg.Error):
        conn.close()


# ---- transactions -------------------------------------------------------------------------------


class _Tx:
    """One open transaction: run statements, and name the changes it numbers at its end."""

    __slots__ = ("conn", "keys")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.keys: list[str] = []

    def execute(self, query: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, params)  # type: ignore[arg-type]

    def rows(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def one(self, query: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        return self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]

    def changed(self, query: str, params: Sequence[Any] | None = None) -> int:
        """Run a write statement; the number of rows it changed."""
        return self.conn.execute(query, params).rowcount  # type: ignore[arg-type]

    def bump(self, *keys: str) -> None:
        """Number a change of each key when this transaction commits (see `changes_since`)."""
        self.keys.extend(keys)


_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


class PostgresStorage:
    """A litedur database in one schema of a PostgreSQL database; one connection per thread."""

    def __init__(self, url: str, *, create: bool = True, durability: str = "normal") -> None:
        check_durability(durability)
        self.durability = durability
        self._location = mask_url(url)
        self._conninfo, self.schema = split_url(url)
        self._channel = f"litedur_{self.schema}"[:63]
        self._changes_channel = f"litedur.{self.schema}"[:63]  # ("." is in no schema name)
        self._change_key = _key32("changes", self.schema)
        self._local = threading.local()
        self._connections: list[psycopg.Connection] = []
        self._connections_lock = threading.Lock()
        self._backends: set[int] = set()  # server processes of this object's connections (see _own_backends)
        self._pid = os.getpid()
        self._closed = False
        self._end_write = f"SELECT {self._quoted()}.end_write(%s::text[])"
        fenced = "refused, found_status, found_owner, found_reason"
        self._append_one = (
            f"SELECT {fenced}, new_offset FROM {self._quoted()}.append_one(%s::text, %s::text, %s::bigint, "
            "%s::integer, %s::bytea, %s::integer, %s::integer)"
        )
        self._append_values = (
            f"SELECT {fenced}, target, first_offset FROM {self._quoted()}.append_values(%s::text, %s::text, "
            "%s::text, %s::integer, %s::integer, %b::integer[], %b::bytea[])"  # (binary arrays: faster to make)
        )
        self._record_step = (
            f"SELECT {fenced} FROM {self._quoted()}.record_step(%s::text, %s::text, %s::integer, %s::text, "
            "%s::integer, %s::bytea, %s::text, %s::bytea, %s::integer, %s::float8, %s::float8)"
        )
        self._finish_workflow = (
            f"SELECT {self._quoted()}.finish_workflow(%s::text, %s::text, %s::text, %s::integer, %s::bytea, "
            "%s::text, %s::bytea, %s::float8, %s::boolean)"
        )
        self._create_workflow = (  # the insert and the wake-up, in one statement
            f"WITH made AS ({_INSERT_WORKFLOW} RETURNING 1) SELECT (SELECT count(*) FROM made), "
            f"pg_notify('{self._channel}', '')"
        )
        try:
            self._prepare_schema(create)
        except BaseException:
            self.close()
            raise

    # ---- connections and transactions -------------------------------------------------------

    @property
    def location(self) -> str:
        """The URL, password masked: names the database in messages and keys the process's change feed."""
        return self._location

    @property
    def path(self) -> str:
        """The same as `location` (error messages of older callers read ``path``)."""
        return self._location

    def _quoted(self) -> str:
        return '"' + self.schema + '"'  # a validated name: lowercase letters, digits and _

    def _options(self) -> dict[str, str]:
        """Connection parameters: the schema first on the search path, durability, lock timeout."""
        existing = psycopg.conninfo.conninfo_to_dict(self._conninfo).get("options") or ""
        commit = "on" if self.durability == "full" else "local"
        ours = f"-c search_path={self.schema} -c synchronous_commit={commit} -c lock_timeout={LOCK_TIMEOUT_MS}"
        return {"options": f"{existing} {ours}".strip()}

    def _connect(self) -> psycopg.Connection:
        if self._closed:
            raise DatabaseError(f"database {self._location} is closed")
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, **self._options())
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to {self._location}: {_first_line(exc)}") from exc
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _connection(self) -> psycopg.Connection:
        """This thread's connection, opened (again) if it has none or lost it."""
        if os.getpid() != self._pid:  # a forked child: the parent's sessions are not ours to use or close
            _ORPHANED.extend(self._connections)
            self._connections, self._local, self._pid = [], threading.local(), os.getpid()
            self._backends = set()
        session = getattr(self._local, "session", None)
        if session is None or session.conn.closed or session.conn.broken or not _idle_session_usable(session.conn):
            if session is not None:
                self._forget_backend(session.backend)
            session = self._local.session = _Session(self._connect())
            self._backends.add(session.backend)
            self._process_backends().add(session.backend)
            # The thread's session ends with the thread (its thread-local goes), not with this object.
            weakref.finalize(session, _end_session, weakref.ref(self), session.conn, session.backend, os.getpid())
        return session.conn

    def _forget_backend(self, backend: int) -> None:
        self._backends.discard(backend)
        self._process_backends().discard(backend)

    def _process_backends(self) -> set[int]:
        """The server processes of this process's connections to this location (see `_own_backends`)."""
        return _own_backends.setdefault((os.getpid(), self._location), set())

    def _write(self, what: str, body: Callable[[_Tx], T]) -> T:
        """Run ``body`` in one write transaction (again if it was a deadlock victim); its result.

        The transaction ends with `end_write`: the changes it numbers and the NOTIFY that wakes
        waiters of every process, delivered when it commits.
        """
        for attempt in range(MAX_RETRIES + 1):
            with self._translate_errors(what):
                conn = self._connection()
                try:
                    return self._attempt(conn, body)
                except _RETRYABLE:
                    if attempt == MAX_RETRIES:
                        raise
        raise AssertionError("unreachable")

    def _attempt(self, conn: psycopg.Connection, body: Callable[[_Tx], T]) -> T:
        tx = _Tx(conn)
        conn.execute("BEGIN")
        try:
            result = body(tx)
            conn.execute(self._end_write, (tx.keys,))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return result

    def _call(self, what: str, query: str, params: Sequence[Any]) -> tuple[Any, ...]:
        """Run a write verb that is one statement (a function of the schema, which notifies itself): its
        own transaction, committed when it returns, in one round trip; its row. Again if it was a
        deadlock victim."""
        for attempt in range(MAX_RETRIES + 1):
            with self._translate_errors(what):
                try:
                    row = self._connection().execute(query, params).fetchone()  # type: ignore[arg-type]
                except _RETRYABLE:
                    if attempt == MAX_RETRIES:
                        raise
                    continue
                assert row is not None
                return row
        raise AssertionError("unreachable")

    def _read(self, what: str, body: Callable[[_Tx], T]) -> T:
        """Run ``body``'s reads in one snapshot (a read-only REPEATABLE READ transaction)."""
        def snapshot(conn: psycopg.Connection) -> T:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                return body(_Tx(conn))
            finally:
                _rollback(conn)

        return self._reading(what, snapshot)

    def _query(self, what: str, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """One read statement on its own (its own snapshot)."""
        return self._reading(what, lambda conn: conn.execute(query, params).fetchall())  # type: ignore[arg-type]

    def _reading(self, what: str, read: Callable[[psycopg.Connection], T]) -> T:
        """``read`` on this thread's connection; once more on a new one if the server had just ended
        that session (a read changes nothing, so it can always be asked again)."""
        with self._translate_errors(what):
            conn = self._connection()
            try:
                return read(conn)
            except psycopg.OperationalError:
                if not conn.broken:
                    raise
            return read(self._connection())

    @contextlib.contextmanager
    def _translate_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise self._database_error(what, exc) from exc

    def _database_error(self, what: str, exc: psycopg.Error) -> BaseException:
        """The error a user sees for a driver error (a constraint error of a caller's bug passes)."""
        where = self._location
        if isinstance(exc, pg_errors.RaiseException) and BEING_REMOVED in str(exc):
            return id_being_removed_error(what)
        if isinstance(exc, (pg_errors.ReadOnlySqlTransaction, pg_errors.InsufficientPrivilege)):
            return DatabaseError(f"cannot {what}: database {where} is read-only for this role ({_first_line(exc)})")
        if isinstance(exc, pg_errors.DiskFull):
            return DatabaseError(f"cannot {what}: disk full on the server of {where} ({_first_line(exc)})")
        if isinstance(exc, pg_errors.LockNotAvailable):
            return DatabaseError(
                f"cannot {what}: database {where} stayed locked by another connection "
                f"for {LOCK_TIMEOUT_MS // 1000} s ({_first_line(exc)})"
            )
        if isinstance(exc, pg_errors.IntegrityError):
            return exc
        if isinstance(exc, psycopg.DataError) and "NUL" in str(exc):
            return ValueError(
                f"cannot {what}: PostgreSQL text cannot hold a NUL character (\\x00); an id, key, topic "
                "or name with one can be stored only in a SQLite file"
            )
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, psycopg.DatabaseError)):
            return DatabaseError(f"cannot {what}: database {where}: {_first_line(exc)}")
        return exc

    def close(self) -> None:
        """Close every connection this object opened (idle ones; call when no thread uses it)."""
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for backend in list(self._backends):
            self._forget_backend(backend)
        if os.getpid() == self._pid:
            for conn in connections:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._local = threading.local()

    # ---- liveness and wake-up -------------------------------------------------------------------

    def executor_lock(self, executor_id: str) -> ExecutorLock:
        """Hold "executor ``executor_id`` is alive" until ``.release()``: a session-level advisory
        lock on a connection of its own, which the server drops when this process dies."""
        key = _key64("executor", self.schema, executor_id)
        try:
            conn = self._lock_session()
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to {self._location}: {_first_line(exc)}") from exc
        try:
            held = conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", (key,)).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise self._database_error(f"register executor {executor_id!r}", exc) from exc
        if not held or not held[0]:
            conn.close()
            raise ExecutorError(f"executor id {executor_id!r} is in use by another live process ({self._location})")
        return ExecutorLock(conn, executor_id, key, self._lock_session)

    def _lock_session(self) -> psycopg.Connection:
        """A connection of its own for an executor lock (see `ExecutorLock`). Over TCP the server
        probes it every few seconds, so a host that died or was cut off loses its locks within
        about `LOCK_KEEPALIVE_SECONDS` instead of the system's default of hours."""
        options = self._options()
        idle, interval, count = LOCK_KEEPALIVE_IDLE, LOCK_KEEPALIVE_INTERVAL, LOCK_KEEPALIVE_COUNT
        options["options"] += (
            f" -c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval}"
            f" -c tcp_keepalives_count={count} -c tcp_user_timeout={LOCK_KEEPALIVE_SECONDS * 1000}"
        )
        return psycopg.connect(self._conninfo, autocommit=True, **options)

    def executor_alive(self, executor_id: str | None) -> bool:
        """True while some session holds ``executor_id``'s advisory lock (as the server's pg_locks
        shows, for processes on any host); True also when it cannot tell."""
        if executor_id is None:
            return False
        key = _key64("executor", self.schema, executor_id)
        try:
            rows = self._query(
                f"check executor {executor_id!r}",
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1)",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
            )
        except DatabaseError:
            return True  # cannot tell; never adopt work that might still be running
        return bool(rows[0][0])

    def open_change_watch(self, changes_only: bool = False) -> ChangeWatch:
        """A watch that becomes readable when a process commits a write to this schema that a stream
        reader may wait for, or with ``changes_only`` when another process commits numbered workflow
        changes (LISTEN on one connection per process and channel, fanned out to every watch)."""
        if changes_only:
            return _open_watch(self._conninfo, self._changes_channel, ignore=self._process_backends())
        return _open_watch(self._conninfo, self._channel)

    def announce(self, keys: Sequence[str] = ()) -> None:
        """Nothing: each write transaction already sent its NOTIFY, delivered at its commit."""

    def wake_source(self) -> PostgresWakeSource:
        """How other processes' commits wake this one's waiters: the change watch for both kinds."""
        return PostgresWakeSource(self)

    # ---- schema -----------------------------------------------------------------------------

    def _prepare_schema(self, create: bool) -> None:
        version = self._inspect_schema(create)
        if version == SCHEMA_VERSION:
            return
        if self.is_readonly():
            raise DatabaseError(f"{self._location} needs a litedur schema upgrade but is read-only for this role")
        self._write("create the litedur schema", lambda tx: self._migrate(tx, create))

    def _inspect_schema(self, create: bool) -> int:
        """The schema version (0: none yet), refusing a schema that is not litedur's or is newer."""
        state = self._query(
            "open the database",
            "SELECT n.oid IS NOT NULL, (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid), "
            "to_regclass(%s) IS NOT NULL FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %s",
            (f"{self._quoted()}.litedur_meta", self.schema),
        )[0]
        exists, objects, has_meta = state
        if not has_meta:
            if objects:
                raise DatabaseError(
                    f"schema {self.schema!r} of {self._location} holds tables of another application, not litedur"
                )
            if not create:
                missing = "does not exist" if not exists else "is empty"
                raise DatabaseError(f"no litedur database at {self._location} (schema {self.schema!r} {missing})")
            return 0
        version = self._meta_version()
        if version > SCHEMA_VERSION:
            raise newer_schema_error(self._location, version, SCHEMA_VERSION)
        return version

    def _meta_version(self) -> int:
        try:
            rows = self._query("read the schema version", "SELECT application, version FROM litedur_meta")
        except (psycopg.Error, DatabaseError) as exc:
            raise DatabaseError(
                f"schema {self.schema!r} of {self._location} holds a litedur_meta table that is not litedur's"
            ) from exc
        if len(rows) != 1 or rows[0][0] != APPLICATION:
            raise DatabaseError(f"schema {self.schema!r} of {self._location} is not a litedur schema")
        return int(rows[0][1])

    def _migrate(self, tx: _Tx, create: bool) -> None:
        """Create or upgrade the schema, serialized with other processes doing the same."""
        tx.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _key32("migrate", self.schema)))
        tx.execute(f"CREATE SCHEMA IF NOT EXISTS {self._quoted()}")
        has_meta = tx.one("SELECT to_regclass(%s) IS NOT NULL", (f"{self._quoted()}.litedur_meta",))
        version = 0
        if has_meta and has_meta[0]:
            version = int(tx.rows("SELECT version FROM litedur_meta")[0][0])
        elif tx.one("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON c.relnamespace = n.oid "
                    "WHERE n.nspname = %s", (self.schema,))[0]:  # type: ignore[index]  # fmt: skip
            raise DatabaseError(
                f"schema {self.schema!r} of {self._location} holds tables of another application, not litedur"
            )
        if 0 < version < BODY_WRITES_IN_ENTRIES:
            running = tx.rows("SELECT executor_id, pid, hostname FROM executors")
            live = [tuple(row) for row in running if self.executor_alive(row[0])]
            refuse_older_executors(self._location, version, SCHEMA_VERSION, live)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            tx.execute(self._render(MIGRATIONS[number - 1]))
        tx.execute(
            "INSERT INTO litedur_meta (application, version) VALUES (%s, %s) "
            "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
            (APPLICATION, SCHEMA_VERSION),
        )
        comment = f"litedur database, schema version {SCHEMA_VERSION}"
        tx.execute(f"COMMENT ON SCHEMA {self._quoted()} IS '{comment}'")

    def _render(self, script: str) -> str:
        return (
            script.replace("@S", self._quoted())
            .replace("@CHANNEL", self._channel)
            .replace("@CHANGES", self._changes_channel)
            .replace("@K1", str(LOCK_CLASS))
            .replace("@K2", str(self._change_key))
            .replace("@BEING_REMOVED", BEING_REMOVED)
            .replace("@END_ENTRY", str(END_OF_STREAM))
            .replace("@OPEN_STREAM", str(OPEN))
            .replace("@TERMINATED_STREAM", str(CLOSED_BY_TERMINATION))
        )

    def schema_version(self) -> int:
        """The schema version recorded in the database (PostgreSQL's own numbering, from 1)."""
        return int(self._query("read the schema version", "SELECT version FROM litedur_meta")[0][0])

    def is_readonly(self) -> bool:
        """True when this session can only read (a standby, a read-only default, or no write grant)."""
        rows = self._query(
            "check write access",
            "SELECT current_setting('transaction_read_only') = 'on' OR (to_regclass('workflows') IS NOT NULL "
            "AND NOT has_table_privilege(to_regclass('workflows'), 'INSERT'))",
        )
        return bool(rows[0][0])

    # ---- executors ----------------------------------------------------------------------------

    def register_executor(self, executor_id: str, pid: int, hostname: str) -> None:
        """Record (or refresh) an executor's identity; liveness itself is the executor's advisory lock."""
        self._write(
            f"register executor {executor_id!r}",
            lambda tx: tx.execute(
                "INSERT INTO executors (executor_id, pid, hostname, started_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (executor_id) DO UPDATE SET pid = excluded.pid, "
                "hostname = excluded.hostname, started_at = excluded.started_at",
                (executor_id, pid, hostname, time.time()),
            ),
        )

    def forget_executor(self, executor_id: str) -> None:
        """Remove an executor's identity row if it owns no active workflow."""
        self._write(
            f"forget executor {executor_id!r}",
            lambda tx: tx.execute(
                "DELETE FROM executors WHERE executor_id = %s AND NOT EXISTS (SELECT 1 FROM workflows "
                "WHERE executor_id = %s AND status IN ('PENDING', 'ENQUEUED'))",
                (executor_id, executor_id),
            ),
        )

    def active_executors(self) -> list[str | None]:
        """Distinct owners of PENDING workflows; None stands for "no executor" (resumed, forked)."""
        rows = self._query("list executors", "SELECT DISTINCT executor_id FROM workflows WHERE status = 'PENDING'")
        return [row[0] for row in rows]

    def pending_workflows_of(self, executor_id: str | None) -> list[tuple[str, str]]:
        """``(workflow_id, name)`` of the PENDING workflows owned by ``executor_id``, oldest first."""
        rows = self._query(
            "list pending workflows",
            "SELECT workflow_id, name FROM workflows WHERE status = 'PENDING' "
            "AND executor_id IS NOT DISTINCT FROM %s ORDER BY created_at, inserted",
            (executor_id,),
        )
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

        A child (``parent_id``) is created fenced on its parent's run, and with ``checkpoint`` the
        parent's checkpoint commits in the same transaction (a replay never starts a second child).
        """
        row = new_workflow_row(workflow_id, name, inputs, executor_id, parent_id, timeout, deadline, time.time())
        if checkpoint is not None or parent_id is not None:
            fenced = parent_id or checkpoint.workflow_id  # type: ignore[union-attr]
            return self._write(
                f"start child workflow {workflow_id!r}", lambda tx: _create_child(tx, row, fenced, checkpoint)
            )
        what = f"create workflow {workflow_id!r}"
        try:
            created = self._call(what, self._create_workflow, _workflow_params(row))[0] == 1
        except WorkflowConflictError:
            self._finish_purges()  # a collection deleted this id and had not finished (or crashed)
            created = self._call(what, self._create_workflow, _workflow_params(row))[0] == 1
        if created:
            return True, row
        existing = self.get_workflow(workflow_id)
        assert existing is not None
        return False, existing

    def claim_workflow(
        self, workflow_id: str, previous_executor: str | None, executor_id: str, max_recoveries: int
    ) -> str:
        """Take over a PENDING workflow from ``previous_executor`` (None: unowned), atomically:
        "claimed", "exceeded" (now MAX_RECOVERY_ATTEMPTS_EXCEEDED) or "lost" (changed first)."""

        def claim(tx: _Tx) -> str:
            row = tx.one(
                "SELECT recovery_attempts FROM workflows WHERE workflow_id = %s AND status = 'PENDING' "
                "AND executor_id IS NOT DISTINCT FROM %s FOR NO KEY UPDATE",
                (workflow_id, previous_executor),
            )
            if row is None:
                return "lost"
            attempts, status = claimed_status(row[0], previous_executor, max_recoveries)
            tx.execute(
                "UPDATE workflows SET executor_id = %s, recovery_attempts = %s, status = %s, updated_at = %s "
                "WHERE workflow_id = %s",
                (executor_id, attempts, status, time.time(), workflow_id),
            )
            if status != "PENDING":
                _close_open_streams(tx, workflow_id)
            return "claimed" if status == "PENDING" else "exceeded"

        return self._write(f"claim workflow {workflow_id!r}", claim)

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
        Fenced: False (nothing written) unless PENDING and owned by ``executor_id``."""
        encoding, value, description, pickled = final_values(output, error)
        params = (workflow_id, executor_id, status, encoding, _to_db(value), description, pickled, time.time(),
                  has_streams)  # fmt: skip
        return bool(self._call(f"finish workflow {workflow_id!r}", self._finish_workflow, params)[0])

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """One workflow's row, or None."""
        rows = self._query(
            f"read workflow {workflow_id!r}", f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = %s",
            (workflow_id,),
        )  # fmt: skip
        return _workflow_row(rows[0]) if rows else None

    def workflow_state(self, workflow_id: str) -> WorkflowState | None:
        """Status, owner, deadline and cancel reason of a workflow in one cheap read; None if absent."""
        rows = self._query(f"read workflow {workflow_id!r}", _READ_STATE, (workflow_id,))
        return WorkflowState(*rows[0]) if rows else None

    def list_workflows(
        self, status: str | None = None, name: str | None = None, limit: int | None = None, queue: str | None = None
    ) -> list[WorkflowRow]:
        """Workflows newest first, optionally filtered by status, name and queue."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, wanted in (("queue_name", queue), ("status", status), ("name", name)):
            if wanted is not None:
                clauses.append(f"{column} = %s")
                params.append(wanted)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit if limit is not None and limit >= 0 else None)
        rows = self._query(
            "list workflows",
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows {where} ORDER BY created_at DESC, inserted DESC LIMIT %s",
            params,
        )
        return [_workflow_row(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """Number of workflows per status."""
        rows = self._query("count workflows", "SELECT status, count(*) FROM workflows GROUP BY status")
        return {status: count for status, count in rows}

    # ---- steps ----------------------------------------------------------------------------------

    def load_checkpoints(self, workflow_id: str) -> tuple[dict[int, StepRow], dict[int, int]]:
        """A workflow's recorded steps by position, and the highest stream-writing attempt per position."""

        def load(tx: _Tx) -> tuple[dict[int, StepRow], dict[int, int]]:
            steps = tx.rows(f"SELECT {_STEP_COLUMNS} FROM steps WHERE workflow_id = %s", (workflow_id,))
            entries = tx.rows(_ENTRY_CHECKPOINTS, (workflow_id,))
            return checkpoints_with_body_writes(workflow_id, {row[1]: _step_row(row) for row in steps}, entries)

        return self._read(f"load checkpoints of {workflow_id!r}", load)

    def record_step(self, row: StepRow, executor_id: str) -> None:
        """Record a step's output or final error, fenced on the run (WorkflowCancelledError or
        StaleRunError, recording nothing); a position already recorded fails (the driver's error)."""

        params = (row.workflow_id, executor_id, row.position, row.name, row.output_encoding, _to_db(row.output),
                  row.error, row.error_pickle, row.attempts, row.started_at, row.finished_at)  # fmt: skip
        fence = self._call(f"record step {row.position} of {row.workflow_id!r}", self._record_step, params)
        if fence[0]:
            raise run_refusal(row.workflow_id, executor_id, *fence[1:4])

    def list_steps(self, workflow_id: str) -> list[StepRow]:
        """A workflow's recorded steps in position order."""

        def list_(tx: _Tx) -> list[StepRow]:
            rows = tx.rows(f"SELECT {_STEP_COLUMNS} FROM steps WHERE workflow_id = %s", (workflow_id,))
            writes = tx.rows(_BODY_WRITES, (workflow_id,))
            return steps_with_body_writes(workflow_id, [_step_row(row) for row in rows], writes)

        return self._read(f"list steps of {workflow_id!r}", list_)

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
        StreamClosedError on a closed stream; with ``written_at`` the entry is a workflow body's
        checkpoint (see `Storage.append_stream`). Fenced."""

        def append(tx: _Tx) -> int:
            _fence(tx, workflow_id, executor_id)
            stream_id, offset, closed = _open_stream(tx, workflow_id, key)
            if closed != OPEN:
                raise stream_closed_error(workflow_id, key)
            group = StreamGroup(workflow_id, key, position, attempt, list(values))
            _insert_entries(tx, group, stream_id, offset, written_at)
            return offset

        return self._write(f"append to stream {key!r} of {workflow_id!r}", append)

    def open_stream(self, workflow_id: str, key: str, executor_id: str) -> tuple[int, bool]:
        """``(stream_id, closed)`` of a stream, creating it (open and empty) if needed; fenced."""

        def open_(tx: _Tx) -> tuple[int, bool]:
            _fence(tx, workflow_id, executor_id)
            stream_id, _, closed = _open_stream(tx, workflow_id, key)
            return stream_id, closed != OPEN

        return self._write(f"open stream {key!r} of {workflow_id!r}", open_)

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
        Fenced; the end is read after the fence's lock, so offsets stay dense. One statement."""

        params = (workflow_id, executor_id, stream_id, encoded[0], _to_db(encoded[1]), position, attempt)
        found = self._call("append to a stream", self._append_one, params)
        if found[0]:
            raise run_refusal(workflow_id, executor_id, *found[1:4])
        return found[4]

    def append_groups(
        self, groups: Sequence[StreamGroup], executor_id: str
    ) -> tuple[dict[str, BaseException], list[tuple[int, int, list[tuple[int, Any]]]]]:
        """Append several groups of values (each: one stream, one step attempt) in one transaction:
        ``(failures by workflow id, placed as (stream_id, first offset, values))``."""
        unstorable = {
            group.workflow_id: ValueError(
                f"cannot append to stream {group.key!r} of workflow {group.workflow_id!r}: PostgreSQL text "
                "cannot hold a NUL character (\\x00)"
            )
            for group in groups
            if "\0" in group.workflow_id or "\0" in group.key
        }
        groups = [group for group in groups if group.workflow_id not in unstorable]  # the others still go
        if not groups:
            return dict(unstorable), []
        if len(groups) == 1 and not unstorable:  # the usual batch: one statement
            return self._append_group(groups[0], executor_id)

        def append(tx: _Tx) -> tuple[dict[str, BaseException], list[tuple[int, int, list[tuple[int, Any]]]]]:
            failures: dict[str, BaseException] = dict(unstorable)
            placed: list[tuple[int, int, list[tuple[int, Any]]]] = []
            for workflow_id in sorted({group.workflow_id for group in groups}):  # one lock order for all
                try:
                    _fence(tx, workflow_id, executor_id)
                except (WorkflowCancelledError, StaleRunError) as exc:
                    failures[workflow_id] = exc
            for group in groups:
                if group.workflow_id in failures:
                    continue
                stream_id, offset, closed = _open_stream(tx, group.workflow_id, group.key)
                if closed != OPEN:
                    failures[group.workflow_id] = stream_closed_error(group.workflow_id, group.key)
                    continue
                _insert_entries(tx, group, stream_id, offset)
                placed.append((stream_id, offset, group.values))
            return failures, placed

        return self._write(f"append to {len(groups)} stream group(s)", append)

    def _append_group(
        self, group: StreamGroup, executor_id: str
    ) -> tuple[dict[str, BaseException], list[tuple[int, int, list[tuple[int, Any]]]]]:
        """`append_groups` of one group, in one statement."""
        params = (group.workflow_id, executor_id, group.key, group.position, group.attempt,
                  [encoding for encoding, _ in group.values], [_to_db(data) for _, data in group.values])  # fmt: skip
        refused, status, owner, reason, stream_id, offset = self._call(
            f"append to stream {group.key!r} of {group.workflow_id!r}", self._append_values, params
        )
        if refused:
            return {group.workflow_id: run_refusal(group.workflow_id, executor_id, status, owner, reason)}, []
        if offset is None:
            return {group.workflow_id: stream_closed_error(group.workflow_id, group.key)}, []
        return {}, [(stream_id, offset, group.values)]

    def close_stream(self, workflow_id: str, key: str, executor_id: str) -> None:
        """Mark a stream closed by its workflow (creating it empty if needed); idempotent; fenced."""

        def close(tx: _Tx) -> None:
            _fence(tx, workflow_id, executor_id)
            stream_id, offset, closed = _open_stream(tx, workflow_id, key)
            if closed == OPEN:
                tx.execute("UPDATE streams SET closed = %s WHERE stream_id = %s", (CLOSED_BY_WORKFLOW, stream_id))
                tx.execute(_INSERT_ENTRY, (stream_id, offset, END_OF_STREAM, None, -1, 0, None))

        self._write(f"close stream {key!r} of {workflow_id!r}", close)

    def find_stream(self, workflow_id: str, key: str) -> tuple[int | None, bool] | None:
        """``(stream_id or None, workflow_is_final)`` in one snapshot; None if no such workflow."""
        rows = self._query(
            f"read stream {key!r} of {workflow_id!r}",
            "SELECT s.stream_id, w.status FROM workflows w "
            "LEFT JOIN streams s ON s.workflow_id = w.workflow_id AND s.key = %s WHERE w.workflow_id = %s",
            (key, workflow_id),
        )
        if not rows:
            return None
        return rows[0][0], rows[0][1] not in ACTIVE_STATUSES

    def read_values(
        self, stream_id: int, offset: int, limit: int, first_read: bool = False, workflow_id: str = "?"
    ) -> tuple[list[tuple[int, Any]], bool]:
        """``(values, ended)``: up to ``limit`` encoded values from ``offset``, and whether the stream
        ends after them; a deleted workflow's stream: its values, then WorkflowNotFoundError."""
        with self._translate_errors("read a stream"):
            conn = self._connection()
            rows = [(enc, _from_db(enc, data)) for enc, data in conn.execute(_READ_VALUES, (stream_id, offset, limit))]
            if not rows:
                if conn.execute("SELECT 1 FROM streams WHERE stream_id = %s", (stream_id,)).fetchone() is None:
                    raise WorkflowNotFoundError(workflow_id)  # deleted, and its rows removed already
                if first_read and offset > 0:
                    last = conn.execute(_LAST_ENTRY, (stream_id,)).fetchone()
                    return [], ends_before_offset(last, offset, workflow_id)
        return without_end_mark(rows, workflow_id)

    def stream_end(self, stream_id: int) -> tuple[int, bool]:
        """``(length, ended)``: the offset after a stream's last value, and whether it ends there."""
        rows = self._query("read a stream", _LAST_ENTRY, (stream_id,))
        return stream_end(rows[0] if rows else None)

    def earlier_attempt_values(self, workflow_id: str, key: str, position: int, attempt: int) -> list[EntryRow]:
        """Entries that earlier attempts (< ``attempt``) of the step at ``position`` wrote to ``key``:
        those after the last entry of an earlier position (end entries aside), in offset order."""

        def read(tx: _Tx) -> list[EntryRow]:
            stream = tx.one("SELECT stream_id FROM streams WHERE workflow_id = %s AND key = %s", (workflow_id, key))
            if stream is None:
                return []
            rows = tx.rows(
                'SELECT "offset", encoding, value, position, attempt FROM stream_entries WHERE stream_id = %s '
                'AND "offset" > coalesce((SELECT max("offset") FROM stream_entries WHERE stream_id = %s '
                "AND encoding != %s AND position < %s), -1) AND encoding != %s AND position = %s AND attempt < %s "
                'ORDER BY "offset"',
                (stream[0], stream[0], END_OF_STREAM, position, END_OF_STREAM, position, attempt),
            )
            return [EntryRow(row[0], row[1], _from_db(row[1], row[2]), row[3], row[4]) for row in rows]

        return self._read(f"read stream {key!r} of {workflow_id!r}", read)

    def list_streams(self, workflow_id: str) -> list[StreamRow]:
        """A workflow's streams by key."""
        rows = self._query(
            f"list streams of {workflow_id!r}",
            f"SELECT workflow_id, key, ({_NEXT_OFFSET}) - (closed <> {OPEN})::int, closed FROM streams s "
            "WHERE workflow_id = %s ORDER BY key",
            (workflow_id,),
        )
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

        def set_(tx: _Tx) -> None:
            _fence(tx, workflow_id, executor_id)
            tx.execute(
                "INSERT INTO events (workflow_id, key, encoding, value, position, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (workflow_id, key) DO UPDATE SET "
                "encoding = excluded.encoding, value = excluded.value, position = excluded.position, "
                "updated_at = excluded.updated_at",
                (workflow_id, key, encoded[0], _to_db(encoded[1]), position, time.time()),
            )
            if checkpoint is not None:
                tx.execute(_INSERT_STEP, _step_params(checkpoint))

        self._write(f"set event {key!r} of {workflow_id!r}", set_)

    def get_event(self, workflow_id: str, key: str) -> tuple[str, tuple[int, Any] | None] | None:
        """``(workflow status, (encoding, value) or None if unset)`` in one snapshot; None if no workflow."""
        rows = self._query(
            f"read event {key!r} of {workflow_id!r}",
            "SELECT w.status, e.encoding, e.value, e.key IS NOT NULL FROM workflows w "
            "LEFT JOIN events e ON e.workflow_id = w.workflow_id AND e.key = %s WHERE w.workflow_id = %s",
            (key, workflow_id),
        )
        if not rows:
            return None
        status, encoding, value, found = rows[0]
        return status, ((encoding, _from_db(encoding, value)) if found else None)

    def list_events(self, workflow_id: str) -> list[EventRow]:
        """A workflow's events (latest values) by key."""
        rows = self._query(
            f"list events of {workflow_id!r}",
            f"SELECT {', '.join(EventRow._fields)} FROM events WHERE workflow_id = %s ORDER BY key",
            (workflow_id,),
        )
        return [EventRow(row[0], row[1], row[2], _from_db(row[2], row[3]), row[4], row[5]) for row in rows]

    def send_message(
        self,
        workflow_id: str,
        topic: str | None,
        encoded: tuple[int, Any],
        idempotency_key: str | None = None,
        checkpoint: tuple[StepRow, str] | None = None,
    ) -> bool:
        """Queue a message for a workflow that has not ended; False if ``idempotency_key`` already landed.
        WorkflowNotFoundError, WorkflowStatusError (ended); with ``checkpoint`` fenced on the sender."""

        def send(tx: _Tx) -> bool:
            if checkpoint is not None:
                _fence(tx, checkpoint[0].workflow_id, checkpoint[1])
            if idempotency_key is not None and tx.one(
                "SELECT 1 FROM messages WHERE workflow_id = %s AND idempotency_key = %s", (workflow_id, idempotency_key)
            ):
                return False
            status = tx.one("SELECT status FROM workflows WHERE workflow_id = %s FOR SHARE", (workflow_id,))
            if status is None:
                raise WorkflowNotFoundError(workflow_id)
            check_can_receive(workflow_id, status[0])
            inserted = tx.changed(
                "INSERT INTO messages (workflow_id, topic, encoding, value, idempotency_key, sent_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
                (workflow_id, topic, encoded[0], _to_db(encoded[1]), idempotency_key, time.time()),
            )
            if not inserted:
                return False  # a concurrent send with this key committed first
            if checkpoint is not None:
                tx.execute(_INSERT_STEP, _step_params(checkpoint[0]))
            return True

        return self._write(f"send a message to {workflow_id!r}", send)

    def consume_message(self, checkpoint: StepRow, topic: str | None, executor_id: str) -> tuple[int, Any] | None:
        """Take the oldest unconsumed message of ``topic`` and record it as the checkpoint, atomically;
        its ``(encoding, value)``, or None (nothing written). Fenced on the run."""
        workflow_id = checkpoint.workflow_id
        waiting = self._query(  # a read first: a wake-up for nothing takes no lock
            f"receive a message in {workflow_id!r}",
            "SELECT 1 FROM messages WHERE workflow_id = %s AND topic IS NOT DISTINCT FROM %s "
            "AND consumed_at IS NULL LIMIT 1",
            (workflow_id, topic),
        )
        if not waiting:
            return None

        def consume(tx: _Tx) -> tuple[int, Any] | None:
            _fence(tx, workflow_id, executor_id)
            row = tx.one(
                "SELECT message_id, encoding, value FROM messages WHERE workflow_id = %s "
                "AND topic IS NOT DISTINCT FROM %s AND consumed_at IS NULL ORDER BY message_id LIMIT 1 FOR UPDATE",
                (workflow_id, topic),
            )
            if row is None:
                return None
            message_id, encoding, value = row
            tx.execute("UPDATE messages SET consumed_at = %s WHERE message_id = %s", (time.time(), message_id))
            tx.execute(_INSERT_STEP, checkpoint._replace(output_encoding=encoding, output=value))
            return encoding, _from_db(encoding, value)

        return self._write(f"receive a message in {workflow_id!r}", consume)

    def pending_messages(self, workflow_id: str) -> list[MessageRow]:
        """Messages sent to a workflow and not yet received, oldest first."""
        rows = self._query(
            f"list messages of {workflow_id!r}",
            f"SELECT {', '.join(MessageRow._fields)} FROM messages "
            "WHERE workflow_id = %s AND consumed_at IS NULL ORDER BY message_id",
            (workflow_id,),
        )
        return [MessageRow(row[0], row[1], row[2], row[3], _from_db(row[3], row[4]), row[5]) for row in rows]

    # ---- durable waits and changes ----------------------------------------------------------------

    def wait_deadline(self, workflow_id: str, position: int, deadline: float, executor_id: str) -> float:
        """The deadline of the wait at ``position``: the one first recorded there, else ``deadline``
        (recorded). Fenced."""

        def record(tx: _Tx) -> float:
            _fence(tx, workflow_id, executor_id)
            tx.execute(
                "INSERT INTO timers (workflow_id, position, deadline) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (workflow_id, position, deadline),
            )
            found = tx.one(
                "SELECT deadline FROM timers WHERE workflow_id = %s AND position = %s", (workflow_id, position)
            )
            assert found is not None
            return float(found[0])

        return self._write(f"record a wait of {workflow_id!r}", record)

    def changes_since(self, seq: int | None) -> tuple[int, list[str] | None]:
        """``(latest change number, keys changed after seq)``; with seq None only the number.

        Numbers follow commit order (see the module docstring), so a reader that saw ``n`` misses
        nothing below it. Only the latest 65,536 or so are kept: for an older ``seq``, None."""
        if seq is None:
            rows = self._query("read workflow changes", "SELECT coalesce(max(seq), 0) FROM workflow_changes")
            return int(rows[0][0]), []

        rows = self._query(  # one statement: one snapshot
            "read workflow changes",
            "SELECT seq, workflow_id, (SELECT min(seq) FROM workflow_changes) FROM workflow_changes "
            "WHERE seq > %s ORDER BY seq",
            (seq,),
        )
        if not rows:
            return seq, []
        if rows[0][0] != seq + 1 and rows[0][2] > seq:  # the oldest kept is past ``seq``: pruned
            return rows[-1][0], None
        return rows[-1][0], [row[1] for row in rows]

    # ---- queues -----------------------------------------------------------------------------------

    def declare_queue(self, queue: QueueRow) -> None:
        """Record (or update) a queue's limits, for clients and the command line."""
        self._write(
            f"declare queue {queue.name!r}",
            lambda tx: tx.execute(
                f"INSERT INTO queues ({', '.join(QueueRow._fields)}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, "
                "worker_concurrency = excluded.worker_concurrency, rate_limit = excluded.rate_limit, "
                "rate_period = excluded.rate_period, priority_enabled = excluded.priority_enabled, "
                "declared_at = excluded.declared_at",
                tuple(queue),
            ),
        )

    def get_queue(self, name: str) -> QueueRow | None:
        """A declared queue, or None."""
        rows = self._query(
            f"read queue {name!r}", f"SELECT {', '.join(QueueRow._fields)} FROM queues WHERE name = %s", (name,)
        )
        return QueueRow(*rows[0]) if rows else None

    def list_queues(self) -> list[tuple[QueueRow | None, QueueCounts]]:
        """Every queue declared or holding workflows, with its enqueued and running counts, by name."""

        def read(tx: _Tx) -> list[tuple[QueueRow | None, QueueCounts]]:
            counts = {
                name: QueueCounts(name, enqueued, running)
                for name, enqueued, running in tx.rows(
                    "SELECT queue_name, count(*) FILTER (WHERE status = 'ENQUEUED'), "
                    "count(*) FILTER (WHERE status = 'PENDING') FROM workflows "
                    "WHERE queue_name IS NOT NULL AND status IN ('ENQUEUED', 'PENDING') GROUP BY queue_name"
                )
            }
            declared = {row[0]: QueueRow(*row) for row in tx.rows(f"SELECT {', '.join(QueueRow._fields)} FROM queues")}
            return queue_overview(declared, counts)

        return self._read("list queues", read)

    def enqueue_workflow(
        self, row: WorkflowRow, checkpoint: StepRow | None = None, executor_id: str | None = None
    ) -> tuple[bool, WorkflowRow]:
        """Insert an ENQUEUED workflow unless its id exists: ``(created, the row)``, atomically.
        DuplicateWorkflowError when an active workflow of the queue holds its deduplication id."""

        def enqueue(tx: _Tx) -> tuple[bool, WorkflowRow]:
            if checkpoint is not None:
                _fence(tx, checkpoint.workflow_id, executor_id)
                tx.execute(_INSERT_STEP, _step_params(checkpoint))
            if tx.changed(_ENQUEUE_WORKFLOW, _workflow_params(row)) == 1:
                return True, row
            existing = _fetch_workflow(tx, row.workflow_id)
            if existing is not None:
                return False, existing
            holder = tx.one(
                "SELECT workflow_id FROM workflows WHERE queue_name = %s AND deduplication_id = %s "
                "AND status IN ('ENQUEUED', 'PENDING')",
                (row.queue_name, row.deduplication_id),
            )
            if holder is None:
                raise pg_errors.SerializationFailure("the conflicting workflow went away: try again")
            raise duplicate_in_queue_error(row, holder[0])

        return self._write(f"enqueue workflow {row.workflow_id!r}", enqueue)

    def dequeue(
        self,
        queue: QueueRow,
        executor_id: str,
        names: Sequence[str],
        want: int,
    ) -> tuple[list[WorkflowRow], float | None]:
        """Take up to ``want`` ENQUEUED workflows of ``queue`` for this executor, in one transaction
        that holds the queue's advisory lock while it checks the limits recorded in the database
        (concurrency, worker_concurrency, rate), so they are exact across processes. Returns
        ``(rows taken, when to try again)``."""
        lock = _key64("queue", self.schema, queue.name)
        return self._write(f"take work from queue {queue.name!r}", lambda tx: _dequeue(tx, lock, queue, executor_id,
                                                                                      names, want))  # fmt: skip

    def requeue_workflows_of(self, executor_id: str) -> list[str]:
        """Put the queued workflows a dead executor was running back in their queues (ENQUEUED, no
        executor, their place kept), counting a recovery each; the ids, in one transaction."""

        def requeue(tx: _Tx) -> list[str]:
            rows = tx.rows(
                "UPDATE workflows SET status = 'ENQUEUED', executor_id = NULL, "
                "recovery_attempts = recovery_attempts + 1, updated_at = %s "
                "WHERE status = 'PENDING' AND executor_id = %s AND queue_name IS NOT NULL "
                "RETURNING workflow_id",
                (time.time(), executor_id),
            )
            return [row[0] for row in rows]

        return self._write(f"requeue the work of executor {executor_id!r}", requeue)

    def running_executors(self, queue_name: str) -> list[str]:
        """Executors running workflows of a queue now (to find dead ones holding its slots)."""
        rows = self._query(
            f"read queue {queue_name!r}",
            "SELECT DISTINCT executor_id FROM workflows WHERE status = 'PENDING' AND queue_name = %s",
            (queue_name,),
        )
        return [row[0] for row in rows if row[0] is not None]

    def give_up(self, workflow_id: str, executor_id: str) -> bool:
        """Mark a workflow this executor holds MAX_RECOVERY_ATTEMPTS_EXCEEDED and close its streams."""

        def give_up(tx: _Tx) -> bool:
            if not tx.changed(
                "UPDATE workflows SET status = 'MAX_RECOVERY_ATTEMPTS_EXCEEDED', updated_at = %s "
                "WHERE workflow_id = %s AND status = 'PENDING' AND executor_id = %s",
                (time.time(), workflow_id, executor_id),
            ):
                return False
            _close_open_streams(tx, workflow_id)
            return True

        return self._write(f"give up workflow {workflow_id!r}", give_up)

    # ---- schedules ----------------------------------------------------------------------------------

    def declare_schedule(
        self, schedule: ScheduleRow, executor_id: str | None = None, forget: Sequence[tuple[str, float]] = ()
    ) -> tuple[float, float | None]:
        """Record (or update) a schedule's declaration, keeping when it was first declared and its latest
        claimed tick; returns those ``(created_at, last_tick)``. ``executor_id``: the declaring process,
        recorded with ``declared_at``; ``forget``: ``(executor_id, declared_at)`` of dead declarers."""

        def declare(tx: _Tx) -> tuple[float, float | None]:
            tx.execute(
                f"INSERT INTO schedules ({', '.join(ScheduleRow._fields)}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET workflow_name = excluded.workflow_name, cron = excluded.cron, "
                "tz = excluded.tz, catch_up = excluded.catch_up, declared_at = excluded.declared_at",
                tuple(schedule),
            )
            for dead, declared_at in forget:
                tx.execute(
                    "DELETE FROM schedule_declarations WHERE name = %s AND executor_id = %s AND declared_at = %s",
                    (schedule.name, dead, declared_at),
                )
            if executor_id is not None:
                tx.execute(
                    "INSERT INTO schedule_declarations (name, executor_id, declared_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (name, executor_id) DO UPDATE SET declared_at = excluded.declared_at",
                    (schedule.name, executor_id, schedule.declared_at),
                )
            row = tx.one("SELECT created_at, last_tick FROM schedules WHERE name = %s", (schedule.name,))
            assert row is not None
            return row[0], row[1]

        return self._write(f"declare schedule {schedule.name!r}", declare)

    def claim_tick(self, name: str, tick: float, workflow: WorkflowRow) -> tuple[bool, float | None]:
        """Claim tick ``tick`` of schedule ``name`` (only if no later or equal tick was) and create its
        workflow, in one transaction: ``(created, the schedule's latest claimed tick)``."""

        def claim(tx: _Tx) -> tuple[bool, float | None]:
            if not tx.changed(
                "UPDATE schedules SET last_tick = %s WHERE name = %s AND (last_tick IS NULL OR last_tick < %s)",
                (tick, name, tick),
            ):
                row = tx.one("SELECT last_tick FROM schedules WHERE name = %s", (name,))
                return False, row[0] if row else None
            return tx.changed(_INSERT_WORKFLOW, _workflow_params(workflow)) == 1, tick

        return self._write(f"claim a tick of schedule {name!r}", claim)

    def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule recorded in the database, by name."""
        rows = self._query("list schedules", f"SELECT {', '.join(ScheduleRow._fields)} FROM schedules ORDER BY name")
        return [ScheduleRow(*row) for row in rows]

    def schedule_declarations(self, name: str | None = None) -> list[tuple[str, str, float]]:
        """``(name, executor_id, declared_at)`` of the recorded declarations of schedule ``name`` (of
        every schedule if None), by name and executor."""
        rows = self._query(
            "list schedule declarations",
            "SELECT name, executor_id, declared_at FROM schedule_declarations "
            "WHERE %s::text IS NULL OR name = %s ORDER BY name, executor_id",
            (name, name),
        )
        return [(row[0], row[1], row[2]) for row in rows]

    def remove_schedule(self, name: str, declared_at: float) -> bool:
        """Delete schedule ``name`` and its declarations unless it is gone or was declared again since
        ``declared_at``: whether it was removed (its ticks' workflows stay)."""

        def remove(tx: _Tx) -> bool:
            if not tx.changed("DELETE FROM schedules WHERE name = %s AND declared_at = %s", (name, declared_at)):
                return False
            tx.execute("DELETE FROM schedule_declarations WHERE name = %s", (name,))
            return True

        return self._write(f"remove schedule {name!r}", remove)

    # ---- management: cancel, resume, fork ---------------------------------------------------------

    def cancel_workflow(self, workflow_id: str, reason: str, if_deadline: float | None = None) -> tuple[str, list[str]]:
        """Cancel a workflow that has not ended and its unfinished descendants, in one transaction:
        ``(status before, ids cancelled)``; their open streams are closed by termination."""
        return self._write(f"cancel workflow {workflow_id!r}", lambda tx: _cancel(tx, workflow_id, reason, if_deadline))

    def resume_workflow(self, workflow_id: str) -> list[str]:
        """Make a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow (and descendants cancelled with
        it) PENDING again with no executor (ENQUEUED if queued); the ids resumed."""
        return self._write(f"resume workflow {workflow_id!r}", lambda tx: _resume(tx, workflow_id))

    def fork_workflow(self, workflow_id: str, new_id: str, start_step: int) -> WorkflowRow:
        """A new PENDING workflow (no executor) with the inputs of ``workflow_id`` and its record before
        ``start_step`` (steps, waits, events, stream values renumbered from 0). One transaction."""

        def fork(tx: _Tx) -> WorkflowRow:
            # FOR SHARE waits for a write of the source's run in flight (each holds its row lock) and
            # holds off the next: the copy below, statement by statement, sees one committed state.
            original = _fetch_workflow(tx, workflow_id, lock="FOR SHARE")
            if original is None:
                raise WorkflowNotFoundError(workflow_id)
            row = forked_workflow_row(original, new_id, time.time())
            if tx.changed(_INSERT_WORKFLOW, _workflow_params(row)) == 0:
                raise fork_exists_error(workflow_id, new_id)
            _copy_record(tx, workflow_id, new_id, start_step)
            tx.bump(new_id, ANY_UNOWNED)
            return row

        return self._write(f"fork workflow {workflow_id!r}", fork)

    # ---- retention: deletion, space, backup --------------------------------------------------

    def collection_cutoff(self, ended_before: float | None, keep_last: int | None) -> float | None:
        """The end time before which finished workflows go: ``ended_before``, or later if more than
        ``keep_last`` finished workflows ended after it."""
        return collection_cutoff(ended_before, keep_last, self._nth_newest_end)

    def _nth_newest_end(self, index: int) -> float | None:
        """When the finished workflow at ``index`` (0: the newest) ended; None if there are fewer."""
        rows = self._query(
            "find workflows to collect",
            f"SELECT updated_at FROM workflows WHERE status IN {_FINAL_LIST} "
            "ORDER BY updated_at DESC LIMIT 1 OFFSET %s",
            (index,),
        )
        return rows[0][0] if rows else None

    def collectable_workflows(self, ended_before: float, limit: int) -> list[str]:
        """Up to ``limit`` (-1: all) finished workflows that ended before ``ended_before``, oldest
        first, leaving out children of workflows still running."""
        rows = self._query("find workflows to collect", _COLLECTABLE, (ended_before, _limit(limit)))
        return [row[0] for row in rows]

    def collect_batch(self, ended_before: float, limit: int) -> list[str]:
        """`delete_workflows` on the next `collectable_workflows`, chosen in the same transaction."""

        def collect(tx: _Tx) -> list[str]:
            chosen = [row[0] for row in tx.rows(_COLLECTABLE, (ended_before, _limit(limit)))]
            return _delete_workflows(tx, chosen)

        return self._write("delete workflows", collect)

    def workflow_family(self, workflow_id: str) -> list[WorkflowRow]:
        """A workflow's row and its descendants' (children, their children, ...), the workflow first."""
        rows = self._query(
            f"read workflow {workflow_id!r} and its children",
            "WITH RECURSIVE family (id) AS (SELECT %s::text UNION SELECT w.workflow_id FROM workflows w "
            f"JOIN family f ON w.parent_id = f.id) SELECT {_WORKFLOW_COLUMNS} FROM workflows "
            "JOIN family ON workflow_id = family.id",
            (workflow_id,),
        )
        found = [_workflow_row(row) for row in rows]
        return sorted(found, key=lambda row: row.workflow_id != workflow_id)

    def delete_workflows(self, workflow_ids: Sequence[str]) -> list[str]:
        """Delete these workflows if they are (still) finished, in one transaction; the ids deleted.
        Their end entries become "deleted" marks; their other rows wait for `purge_some`."""
        return self._write("delete workflows", lambda tx: _delete_workflows(tx, workflow_ids))

    def purge_some(self, max_rows: int, max_seconds: float) -> tuple[int, int]:
        """Remove up to about ``max_rows`` rows of deleted workflows in one short transaction:
        ``(rows, values)`` removed; ``(0, 0)`` when nothing is left."""

        def purge(tx: _Tx) -> tuple[int, int]:
            rows = values = 0
            stop_at = time.monotonic() + max_seconds
            for (workflow_id,) in tx.rows("SELECT workflow_id FROM purging LIMIT 20 FOR UPDATE SKIP LOCKED"):
                removed, removed_values = _purge_workflow_rows(tx, workflow_id, max_rows - rows)
                rows, values = rows + removed, values + removed_values
                if rows >= max_rows or time.monotonic() > stop_at:
                    break
            return rows, values

        return self._write("remove rows of deleted workflows", purge)

    def _finish_purges(self) -> None:
        """Remove every row deleted workflows left, in short commits (see `purge_some`)."""
        while self.purge_some(1_000, 0.002)[0]:
            pass

    def vacuum_some(self, max_pages: int) -> int:
        """Nothing: the server's autovacuum gives space back. Returns 0."""
        return 0

    def checkpoint(self) -> None:
        """Nothing: the server checkpoints on its own."""

    def backup(self, destination: str) -> None:
        """Refused with DatabaseError: a PostgreSQL database is backed up with the server's tools."""
        raise DatabaseError(
            f"cannot back up {self._location} to {destination}: litedur backup writes SQLite files; "
            f"back up a PostgreSQL database with pg_dump --schema={self.schema}"
        )

    def file_sizes(self) -> dict[str, int]:
        """``{"database": bytes}``: the size of litedur's tables and indexes on the server."""
        rows = self._query(
            "measure the database",
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
            (self.schema,),
        )
        return {"database": int(rows[0][0])}

    # ---- overview (top) ---------------------------------------------------------------------------

    def open_stream_lengths(self) -> list[StreamRow]:
        """Every open stream of a PENDING workflow with its length."""
        rows = self._query(
            "list open streams",
            f"SELECT s.workflow_id, s.key, ({_NEXT_OFFSET}), s.closed FROM workflows w "
            f"JOIN streams s ON s.workflow_id = w.workflow_id WHERE w.status = 'PENDING' AND s.closed = {OPEN}",
        )
        return [StreamRow(*row) for row in rows]

    def recovered_workflows(self, limit: int) -> list[WorkflowRow]:
        """Up to ``limit`` workflows taken over from a dead executor at least once, latest updated first."""
        rows = self._query(
            "list recovered workflows",
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE recovery_attempts > 0 ORDER BY updated_at DESC LIMIT %s",
            (_limit(limit),),
        )
        return [_workflow_row(row) for row in rows]

    def pending_owners(self) -> list[tuple[str | None, int | None, str | None, int]]:
        """``(executor_id, pid, hostname, count)`` for each owner of PENDING workflows."""
        rows = self._query(
            "list owners of pending workflows",
            "SELECT w.executor_id, max(e.pid), max(e.hostname), count(*) FROM workflows w "
            "LEFT JOIN executors e ON e.executor_id = w.executor_id WHERE w.status = 'PENDING' "
            "GROUP BY w.executor_id ORDER BY w.executor_id NULLS FIRST",
        )
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    def last_modified(self) -> float | None:
        """The latest ``updated_at`` of a workflow (None: no workflow): when work last changed."""
        return self._query("read the last change", "SELECT max(updated_at) FROM workflows")[0][0]

    # ---- HTTP streams -----------------------------------------------------------------------------
    # The streams of `litedur serve`, as in `SQLiteStorage`; a write locks the stream's row (or, to
    # create one, a transaction-level advisory lock of its path).

    def create_http_stream(
        self, spec: HttpStreamSpec, body: HttpEntry | None, now: float
    ) -> tuple[str, HttpStreamRow | None]:
        """Create the stream ``spec.path`` (a fork of ``spec.fork_source`` if given) with ``body`` as its
        first entry, after removing expired streams: ``(outcome, row)`` as in `SQLiteStorage`."""

        def create(tx: _Tx) -> tuple[str, HttpStreamRow | None]:
            _purge_expired_http_streams(tx, now)
            tx.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (_key64("http", self.schema, spec.path),))
            return _create_http_stream(tx, spec, body, now)

        return self._write(f"create stream {spec.path!r}", create)

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
        """Append ``entry`` (None: none) and close the stream if asked, in one transaction that checks
        first and writes nothing when a check fails (outcomes as in `SQLiteStorage`)."""

        def append(tx: _Tx) -> HttpAppendResult:
            row = _http_stream_at(tx, path, lock=True)
            missing = _http_stream_missing(tx, row, now)
            if missing is not None or row is None:
                return HttpAppendResult(missing or "missing", row)
            if entry is not None and media_type != row.media_type:
                return HttpAppendResult("content-type", row)
            state = _http_producer(tx, row.stream_id, producer)
            refused = http_append_refused(row, producer, state, stream_seq)
            if refused is not None:
                return refused
            return _http_append(tx, row, entry, close, stream_seq, producer, now)

        return self._write(f"append to stream {path!r}", append)

    def read_http_stream(self, path: str, start: tuple[int, int] | None, max_bytes: int, now: float) -> HttpReadResult:
        """The entries of a stream from ``start`` = ``(seq, position)`` (None: its tail), in one
        snapshot: at least one if any, then more while they total under ``max_bytes``."""

        def read(tx: _Tx) -> HttpReadResult:
            row = _http_stream_at(tx, path)
            missing = _http_stream_missing(tx, row, now)
            if missing is not None or row is None:
                return HttpReadResult(missing or "missing", row, [])
            stream_id = row.stream_id
            return http_read_result(row, start, lambda seq: _http_entries(tx, stream_id, seq, max_bytes))

        return self._read(f"read stream {path!r}", read)

    def http_stream_info(self, path: str, now: float) -> tuple[str, HttpStreamRow | None]:
        """``(outcome, row)`` of a stream: "ok", "missing" or "gone"; reads only."""

        def read(tx: _Tx) -> tuple[str, HttpStreamRow | None]:
            row = _http_stream_at(tx, path)
            return (_http_stream_missing(tx, row, now) or "ok"), row

        return self._read(f"read stream {path!r}", read)

    def touch_http_stream(self, stream_id: int, now: float) -> None:
        """Renew the sliding TTL of a stream that was read (nothing for a stream without TTL)."""
        self._write(
            f"renew the TTL of stream {stream_id}",
            lambda tx: tx.execute(
                "UPDATE http_streams SET expiry = least(coalesce(expires_at, %s + ttl), %s + ttl) "
                "WHERE stream_id = %s AND ttl IS NOT NULL AND deleted = 0 AND expiry > %s",
                (now, now, stream_id, now),
            ),
        )

    def delete_http_stream(self, path: str, now: float) -> str:
        """Delete a stream and its entries: "deleted", "tombstoned" (forks came from it), "missing", "gone"."""

        def delete(tx: _Tx) -> str:
            _purge_expired_http_streams(tx, now)
            row = _http_stream_at(tx, path, lock=True)
            absent = http_absent(row)
            if absent is not None or row is None:
                return absent or "missing"
            return _delete_http_stream(tx, row)

        return self._write(f"delete stream {path!r}", delete)

    def purge_expired_http_streams(self, now: float) -> int:
        """Delete every stream whose TTL or expiry time has passed (in one transaction); how many."""
        return self._write("delete expired streams", lambda tx: _purge_expired_http_streams(tx, now))


# ---- helpers of the verbs -------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _rollback(conn: psycopg.Connection) -> None:
    """End the open transaction without its writes (nothing to do on a lost connection)."""
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")


def _limit(limit: int) -> int | None:
    """A LIMIT value: SQLite's -1 (no limit) is NULL here."""
    return None if limit < 0 else limit


def _fetch_workflow(tx: _Tx, workflow_id: str, lock: str = "") -> WorkflowRow | None:
    row = tx.one(f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = %s {lock}", (workflow_id,))
    return _workflow_row(row) if row is not None else None


def _fence(tx: _Tx, workflow_id: str, executor_id: str | None) -> None:
    """Lock the workflow's row and raise unless it is PENDING and owned by ``executor_id`` (the
    schema's ``fence``, which the one-statement verbs take too)."""
    found = tx.one(
        "SELECT refused, found_status, found_owner, found_reason FROM fence(%s::text, %s::text)",
        (workflow_id, executor_id),
    )
    assert found is not None
    if found[0]:
        raise run_refusal(workflow_id, executor_id, *found[1:])


def _create_child(tx: _Tx, row: WorkflowRow, fenced: str, checkpoint: StepRow | None) -> tuple[bool, WorkflowRow]:
    _fence(tx, fenced, row.executor_id)
    created = tx.changed(_INSERT_WORKFLOW, _workflow_params(row)) == 1
    existing = row if created else _fetch_workflow(tx, row.workflow_id)
    check_same_name(row.workflow_id, existing, row.name)
    if checkpoint is not None:
        tx.execute(_INSERT_STEP, _step_params(checkpoint))
    assert existing is not None
    return created, existing


def _open_stream(tx: _Tx, workflow_id: str, key: str) -> tuple[int, int, int]:
    """``(stream_id, next_offset, closed)`` with the stream's row locked, creating it if needed; the
    end is read after the lock, so it includes every append committed before."""
    found = tx.one(
        "SELECT stream_id, closed FROM streams WHERE workflow_id = %s AND key = %s FOR NO KEY UPDATE",
        (workflow_id, key),
    )
    if found is None:
        made = tx.one(
            "INSERT INTO streams (workflow_id, key) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING stream_id",
            (workflow_id, key),
        )
        if made is not None:
            return made[0], 0, OPEN
        found = tx.one(
            "SELECT stream_id, closed FROM streams WHERE workflow_id = %s AND key = %s FOR NO KEY UPDATE",
            (workflow_id, key),
        )
        assert found is not None
    stream_id, closed = found
    end = tx.one('SELECT coalesce(max("offset") + 1, 0) FROM stream_entries WHERE stream_id = %s', (stream_id,))
    assert end is not None
    return stream_id, end[0], closed


def _insert_entries(tx: _Tx, group: StreamGroup, stream_id: int, offset: int, written_at: float | None = None) -> None:
    rows = [(stream_id, at, enc, _to_db(data), group.position, group.attempt, written_at)
            for at, (enc, data) in enumerate(group.values, offset)]  # fmt: skip
    if len(rows) == 1:
        tx.execute(_INSERT_ENTRY, rows[0])
    elif rows:
        with tx.conn.cursor() as cursor:
            cursor.executemany(_INSERT_ENTRY, rows)


def _close_open_streams(tx: _Tx, workflow_id: str) -> None:
    """Close every open stream of a workflow as "closed by termination", each with its end entry (the
    schema's ``close_open_streams``, which `finish_workflow` runs too)."""
    tx.execute("SELECT close_open_streams(%s::text)", (workflow_id,))


def _reopen_terminated_streams(tx: _Tx, workflow_id: str) -> None:
    """Undo "closed by termination": drop those streams' end entries and mark them open."""
    tx.execute(
        "DELETE FROM stream_entries WHERE encoding = %s AND stream_id IN "
        "(SELECT stream_id FROM streams WHERE workflow_id = %s AND closed = %s)",
        (END_OF_STREAM, workflow_id, CLOSED_BY_TERMINATION),
    )
    tx.execute(
        "UPDATE streams SET closed = %s WHERE workflow_id = %s AND closed = %s",
        (OPEN, workflow_id, CLOSED_BY_TERMINATION),
    )


def _dequeue(
    tx: _Tx, lock: int, queue: QueueRow, executor_id: str, names: Sequence[str], want: int
) -> tuple[list[WorkflowRow], float | None]:
    """`PostgresStorage.dequeue` inside its transaction: the queue's lock first, then exact counts."""
    tx.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (lock,))
    now = time.time()  # once the lock is held: a start is counted when it commits
    recorded = tx.one(f"SELECT {', '.join(QueueRow._fields)} FROM queues WHERE name = %s", (queue.name,))
    if recorded is not None:
        queue = QueueRow(*recorded)
    free, retry_at = _free_slots(tx, queue, executor_id, want, now)
    if free <= 0 or not names:
        return [], retry_at
    order = "priority NULLS FIRST, created_at, inserted" if queue.priority_enabled else "created_at, inserted"
    rows = [
        _workflow_row(row)
        for row in tx.rows(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE status = 'ENQUEUED' AND queue_name = %s "
            f"AND (available_at IS NULL OR available_at <= %s) AND name = ANY(%s) ORDER BY {order} LIMIT %s "
            "FOR NO KEY UPDATE",  # not SKIP LOCKED: a row a send holds for a moment keeps its turn
            (queue.name, now, list(names), free),
        )
    ]
    taken = []
    for row in rows:
        deadline = dequeued_deadline(row, now)
        tx.execute(
            "UPDATE workflows SET status = 'PENDING', executor_id = %s, deadline = %s, updated_at = %s "
            "WHERE workflow_id = %s",
            (executor_id, deadline, now, row.workflow_id),
        )
        taken.append(row._replace(status="PENDING", executor_id=executor_id, deadline=deadline))
    if queue.rate_limit is not None and taken:
        with tx.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO queue_starts (queue_name, started_at) VALUES (%s, %s)", [(queue.name, now)] * len(taken)
            )
    if len(taken) < free:
        delayed = tx.one(
            "SELECT min(available_at) FROM workflows WHERE status = 'ENQUEUED' AND queue_name = %s "
            "AND available_at > %s",
            (queue.name, now),
        )
        if delayed is not None and delayed[0] is not None:
            retry_at = delayed[0] if retry_at is None else min(retry_at, delayed[0])
    return taken, retry_at


def _free_slots(tx: _Tx, queue: QueueRow, executor_id: str, want: int, now: float) -> tuple[int, float | None]:
    """How many workflows the queue's limits let this executor start now, and when the rate window
    frees a start if the rate is what limits it."""
    free, retry_at = want, None
    if queue.concurrency is not None:
        free = min(free, queue.concurrency - _count(tx, _RUNNING_IN_QUEUE, queue.name))
    if queue.worker_concurrency is not None:
        free = min(free, queue.worker_concurrency - _count(tx, _RUNNING_HERE, queue.name, executor_id))
    if queue.rate_limit is not None and queue.rate_period is not None:
        tx.execute(
            "DELETE FROM queue_starts WHERE queue_name = %s AND started_at <= %s", (queue.name, now - queue.rate_period)
        )
        started = tx.one("SELECT count(*), min(started_at) FROM queue_starts WHERE queue_name = %s", (queue.name,))
        assert started is not None
        if started[0] >= queue.rate_limit:
            retry_at = started[1] + queue.rate_period
        free = min(free, queue.rate_limit - started[0])
    return free, retry_at


def _count(tx: _Tx, query: str, *params: Any) -> int:
    row = tx.one(query, params)
    assert row is not None
    return int(row[0])


def _cancel(tx: _Tx, workflow_id: str, reason: str, if_deadline: float | None) -> tuple[str, list[str]]:
    row = tx.one("SELECT status, deadline FROM workflows WHERE workflow_id = %s FOR NO KEY UPDATE", (workflow_id,))
    if row is None:
        raise WorkflowNotFoundError(workflow_id)
    status, deadline = row
    if status not in ACTIVE_STATUSES or (if_deadline is not None and deadline != if_deadline):
        return status, []
    tree = [(workflow_id, reason)] + [
        (child, cascade_reason(parent, reason))
        for child, parent in tx.rows(
            "WITH RECURSIVE tree(id) AS (SELECT %s::text UNION SELECT w.workflow_id FROM workflows w "
            "JOIN tree ON w.parent_id = tree.id) SELECT w.workflow_id, w.parent_id FROM workflows w "
            "JOIN tree ON w.workflow_id = tree.id WHERE w.workflow_id != %s AND w.status IN (%s, %s) "
            "ORDER BY w.workflow_id",
            (workflow_id, workflow_id, *ACTIVE_STATUSES),
        )
    ]
    now = time.time()
    cancelled = []
    for target, why in tree:
        if tx.changed(
            "UPDATE workflows SET status = 'CANCELLED', cancel_reason = %s, updated_at = %s "
            "WHERE workflow_id = %s AND status IN (%s, %s)",
            (why, now, target, *ACTIVE_STATUSES),
        ):
            _close_open_streams(tx, target)
            cancelled.append(target)
    return status, cancelled


# A descendant cancelled with its parent (and with nothing of its own since): a resume revives it.
_CANCELLED_WITH_PARENT = "status = 'CANCELLED' AND starts_with(cancel_reason, %s)"


def _resume(tx: _Tx, workflow_id: str) -> list[str]:
    row = tx.one("SELECT status FROM workflows WHERE workflow_id = %s FOR NO KEY UPDATE", (workflow_id,))
    if row is None:
        raise WorkflowNotFoundError(workflow_id)
    check_resumable(workflow_id, row[0])
    resumed = [workflow_id] + [
        found[0]
        for found in tx.rows(
            "WITH RECURSIVE tree(id) AS (SELECT %s::text UNION SELECT w.workflow_id FROM workflows w "
            f"JOIN tree ON w.parent_id = tree.id WHERE {_CANCELLED_WITH_PARENT}) "
            "SELECT id FROM tree WHERE id != %s",
            (workflow_id, f"{CASCADE_REASON} ", workflow_id),
        )
    ]
    _refuse_taken_deduplication(tx, resumed)
    now = time.time()
    _reactivate(tx, workflow_id, now)  # (locked and checked above)
    resumed = [workflow_id] + [target for target in resumed[1:] if _reactivate(tx, target, now, cascaded=True)]
    for target in resumed:
        _reopen_terminated_streams(tx, target)
    tx.bump(ANY_UNOWNED)
    return resumed


def _reactivate(tx: _Tx, workflow_id: str, now: float, cascaded: bool = False) -> bool:
    """Make one resumed workflow PENDING (ENQUEUED if queued); whether it was. A descendant
    (``cascaded``) is not locked: it is made so only if it is still cancelled with its parent (another
    resume, or a cancel of its own, may have come meanwhile). An enqueue that took its deduplication
    id after the check committed first: refused as the check refuses it, naming that workflow."""
    still = f" AND {_CANCELLED_WITH_PARENT}" if cascaded else ""
    update = (
        "UPDATE workflows SET executor_id = NULL, recovery_attempts = 0, "
        "status = CASE WHEN queue_name IS NULL THEN 'PENDING' ELSE 'ENQUEUED' END, "
        "cancel_reason = NULL, deadline = NULL, output_encoding = NULL, output = NULL, error = NULL, "
        f"error_pickle = NULL, updated_at = %s WHERE workflow_id = %s{still}"
    )
    params = (now, workflow_id, f"{CASCADE_REASON} ") if cascaded else (now, workflow_id)
    while True:
        tx.execute("SAVEPOINT reactivate")
        try:
            changed = tx.changed(update, params)
        except pg_errors.UniqueViolation:
            tx.execute("ROLLBACK TO SAVEPOINT reactivate")
            _refuse_taken_deduplication(tx, [workflow_id])  # a new statement: sees that enqueue
            continue  # its holder ended meanwhile: the id is free again
        tx.execute("RELEASE SAVEPOINT reactivate")
        return changed > 0


def _refuse_taken_deduplication(tx: _Tx, workflow_ids: list[str]) -> None:
    """Raise DuplicateWorkflowError if a queued workflow about to go back to its queue has a
    deduplication id that another active workflow of that queue took meanwhile."""
    for workflow_id in workflow_ids:
        holder = tx.one(
            "SELECT other.workflow_id, w.queue_name, w.deduplication_id FROM workflows w JOIN workflows other "
            "ON other.queue_name = w.queue_name AND other.deduplication_id = w.deduplication_id "
            "AND other.status IN ('ENQUEUED', 'PENDING') WHERE w.workflow_id = %s AND other.workflow_id != %s",
            (workflow_id, workflow_id),
        )
        if holder is not None:
            other, queue, deduplication_id = holder
            raise deduplication_taken_error(workflow_id, queue, other, deduplication_id)


def _copy_record(tx: _Tx, source: str, target: str, before: int) -> None:
    """Copy what ``source`` recorded at positions < ``before`` to ``target`` (a fork)."""
    tx.execute(
        f"INSERT INTO steps ({_STEP_COLUMNS}) SELECT %s, {_STEP_COLUMNS.split(', ', 1)[1]} FROM steps "
        "WHERE workflow_id = %s AND position < %s",
        (target, source, before),
    )
    tx.execute(
        "INSERT INTO timers (workflow_id, position, deadline) SELECT %s, position, deadline FROM timers "
        "WHERE workflow_id = %s AND position < %s",
        (target, source, before),
    )
    tx.execute(
        "INSERT INTO events (workflow_id, key, encoding, value, position, updated_at) "
        "SELECT %s, key, encoding, value, position, updated_at FROM events WHERE workflow_id = %s AND position < %s",
        (target, source, before),
    )
    # A body's set_event records its value in its checkpoint: the latest before the fork point wins,
    # even where a later set_event has replaced the current value.
    prefix = f"{SET_EVENT_STEP}:"
    tx.execute(
        "INSERT INTO events (workflow_id, key, encoding, value, position, updated_at) "
        "SELECT DISTINCT ON (name) %s, substr(name, %s), output_encoding, output, position, finished_at FROM steps "
        "WHERE workflow_id = %s AND position < %s AND starts_with(name, %s) AND output_encoding IS NOT NULL "
        "ORDER BY name, position DESC "
        "ON CONFLICT (workflow_id, key) DO UPDATE SET encoding = excluded.encoding, value = excluded.value, "
        "position = excluded.position, updated_at = excluded.updated_at WHERE excluded.position > events.position",
        (target, len(prefix) + 1, source, before, prefix),
    )
    streams = tx.rows(
        "SELECT stream_id, key FROM streams s WHERE workflow_id = %s AND EXISTS (SELECT 1 FROM stream_entries e "
        "WHERE e.stream_id = s.stream_id AND e.position >= 0 AND e.position < %s) ORDER BY stream_id",
        (source, before),
    )
    for stream_id, key in streams:
        made = tx.one("INSERT INTO streams (workflow_id, key) VALUES (%s, %s) RETURNING stream_id", (target, key))
        assert made is not None
        tx.execute(
            'INSERT INTO stream_entries (stream_id, "offset", encoding, value, position, attempt, written_at) '
            'SELECT %s, row_number() OVER (ORDER BY "offset") - 1, encoding, value, position, attempt, written_at '
            "FROM stream_entries WHERE stream_id = %s AND encoding != %s AND position >= 0 AND position < %s",
            (made[0], stream_id, END_OF_STREAM, before),
        )


def _delete_workflows(tx: _Tx, workflow_ids: Sequence[str]) -> list[str]:
    deleted = []
    now = time.time()
    for workflow_id in workflow_ids:
        if not tx.changed(f"DELETE FROM workflows WHERE workflow_id = %s AND status IN {_FINAL_LIST}", (workflow_id,)):
            continue
        tx.execute(
            "INSERT INTO purging (workflow_id, deleted_at) VALUES (%s, %s) ON CONFLICT DO NOTHING", (workflow_id, now)
        )
        for (stream_id,) in tx.rows("SELECT stream_id FROM streams WHERE workflow_id = %s", (workflow_id,)):
            tx.execute(
                'UPDATE stream_entries SET encoding = %s WHERE stream_id = %s AND encoding = %s AND "offset" = '
                '(SELECT max("offset") FROM stream_entries WHERE stream_id = %s)',
                (STREAM_DELETED, stream_id, END_OF_STREAM, stream_id),
            )
        tx.bump(workflow_id)
        deleted.append(workflow_id)
    return deleted


def _purge_workflow_rows(tx: _Tx, workflow_id: str, budget: int) -> tuple[int, int]:
    """Delete up to ``budget`` rows of one deleted workflow; ``(rows, values)``. Its last rows gone,
    the workflow leaves the purge list."""
    rows = values = 0
    for table, key in (("steps", "workflow_id, position"), ("events", "workflow_id, key"),
                       ("timers", "workflow_id, position"), ("messages", "message_id")):  # fmt: skip
        rows += tx.changed(
            f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE workflow_id = %s LIMIT %s)",
            (workflow_id, budget - rows),
        )
        if rows >= budget:
            return rows, values
    for (stream_id,) in tx.rows("SELECT stream_id FROM streams WHERE workflow_id = %s", (workflow_id,)):
        removed = tx.changed(
            'DELETE FROM stream_entries WHERE stream_id = %s AND "offset" IN (SELECT "offset" FROM stream_entries '
            'WHERE stream_id = %s AND encoding != %s ORDER BY "offset" DESC LIMIT %s)',
            (stream_id, stream_id, STREAM_DELETED, budget - rows),
        )
        rows, values = rows + removed, values + removed
        if rows >= budget:
            return rows, values
        tx.execute("DELETE FROM stream_entries WHERE stream_id = %s", (stream_id,))  # the "deleted" mark
        tx.execute("DELETE FROM streams WHERE stream_id = %s", (stream_id,))
        rows += 2
    tx.execute("DELETE FROM purging WHERE workflow_id = %s", (workflow_id,))
    tx.bump(workflow_id)
    return rows + 1, values


# ---- HTTP streams (the helpers of PostgresStorage's "HTTP streams" section) -----------------------


def _http_stream_at(tx: _Tx, path: str, lock: bool = False) -> HttpStreamRow | None:
    suffix = " FOR NO KEY UPDATE" if lock else ""
    row = tx.one(f"SELECT {_HTTP_STREAM_COLUMNS} FROM http_streams WHERE path = %s{suffix}", (path,))
    return HttpStreamRow(*row) if row is not None else None


def _has_forks(tx: _Tx, stream_id: int) -> bool:
    return tx.one("SELECT 1 FROM http_streams WHERE forked_from = %s LIMIT 1", (stream_id,)) is not None


def _http_stream_missing(tx: _Tx, row: HttpStreamRow | None, now: float) -> str | None:
    return http_stream_missing(row, now, functools.partial(_has_forks, tx))


def _create_http_stream(
    tx: _Tx, spec: HttpStreamSpec, body: HttpEntry | None, now: float
) -> tuple[str, HttpStreamRow | None]:
    existing = _http_stream_at(tx, spec.path)
    if existing is not None:
        return existing_http_outcome(existing, spec), existing
    fork = None
    if spec.fork_source is not None:
        outcome, fork = _http_fork_point(tx, spec)
        if fork is None:
            return outcome, None
        spec = forked_spec(spec, fork)
    made = tx.one(
        "INSERT INTO http_streams (path, content_type, media_type, json, ttl, expires_at, expiry, closed, "
        "forked_from, fork_source, fork_seq, fork_sub_offset, created_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING stream_id",
        new_http_stream_params(spec, fork, now),
    )
    assert made is not None
    stream_id = made[0]
    seq, position = _copy_fork(tx, fork, stream_id) if fork is not None else (0, 0)
    if body is not None:
        tx.execute(_INSERT_HTTP_ENTRY, (stream_id, seq, position, body.size, body.data))
        seq, position = seq + 1, position + body.size
    tx.execute(
        "UPDATE http_streams SET next_seq = %s, next_position = %s WHERE stream_id = %s", (seq, position, stream_id)
    )
    tx.bump(http_stream_key(spec.path))
    return "created", _http_stream_at(tx, spec.path)


def _http_fork_point(tx: _Tx, spec: HttpStreamSpec) -> tuple[str, HttpForkPoint | None]:
    source = _http_stream_at(tx, spec.fork_source or "", lock=True)
    return http_fork_point(spec, source, functools.partial(_http_entry_at, tx))


def _http_entry_at(tx: _Tx, stream_id: int, seq: int) -> tuple[int, int, bytes] | None:
    """``(position, size, data)`` of an entry of a stream, or None."""
    found = tx.one(
        "SELECT position, size, data FROM http_stream_entries WHERE stream_id = %s AND seq = %s", (stream_id, seq)
    )
    return (found[0], found[1], found[2]) if found is not None else None


def _copy_fork(tx: _Tx, fork: HttpForkPoint, stream_id: int) -> tuple[int, int]:
    """Copy a fork's inherited entries into the new stream; its ``(next seq, next position)``."""
    tx.execute(
        "INSERT INTO http_stream_entries (stream_id, seq, position, size, data) "
        "SELECT %s, seq, position, size, data FROM http_stream_entries WHERE stream_id = %s AND seq < %s",
        (stream_id, fork.source.stream_id, fork.seq),
    )
    if fork.partial is None:
        return fork.seq, fork.position
    tx.execute(_INSERT_HTTP_ENTRY, (stream_id, fork.seq, fork.position, fork.partial.size, fork.partial.data))
    return fork.seq + 1, fork.position + fork.partial.size


def _http_producer(tx: _Tx, stream_id: int, producer: HttpProducer | None) -> tuple[int, int] | None:
    """``(epoch, last seq)`` recorded for a producer of a stream, or None."""
    if producer is None:
        return None
    row = tx.one(
        "SELECT epoch, last_seq FROM http_stream_producers WHERE stream_id = %s AND producer_id = %s",
        (stream_id, producer.producer_id),
    )
    return (row[0], row[1]) if row is not None else None


def _http_append(
    tx: _Tx,
    row: HttpStreamRow,
    entry: HttpEntry | None,
    close: bool,
    stream_seq: str | None,
    producer: HttpProducer | None,
    now: float,
) -> HttpAppendResult:
    """Write an accepted append: the entry, the stream's new tail and flags, the producer's state."""
    if entry is not None:
        tx.execute(_INSERT_HTTP_ENTRY, (row.stream_id, row.next_seq, row.next_position, entry.size, entry.data))
    row = appended_http_row(row, entry, close, stream_seq, now)
    tx.execute(
        "UPDATE http_streams SET next_seq = %s, next_position = %s, closed = %s, stream_seq = %s, expiry = %s "
        "WHERE stream_id = %s",
        (row.next_seq, row.next_position, row.closed, row.stream_seq, row.expiry, row.stream_id),
    )
    if producer is not None:
        tx.execute(
            "INSERT INTO http_stream_producers (stream_id, producer_id, epoch, last_seq) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (stream_id, producer_id) DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq",
            (row.stream_id, producer.producer_id, producer.epoch, producer.seq),
        )
    tx.bump(http_stream_key(row.path))
    return appended_result(row, producer)


def _http_entries(tx: _Tx, stream_id: int, seq: int, max_bytes: int) -> list[tuple[int, int, int, bytes]]:
    """Entries from ``seq`` on: the first, then more while their bytes total under ``max_bytes``."""
    entries: list[tuple[int, int, int, bytes]] = []
    total = 0
    while True:
        chunk = tx.rows(
            "SELECT seq, position, size, data FROM http_stream_entries WHERE stream_id = %s AND seq >= %s "
            "ORDER BY seq LIMIT %s",
            (stream_id, seq, _HTTP_CHUNK),
        )
        for found in chunk:
            data = bytes(found[3])
            if entries and total + len(data) > max_bytes:
                return entries
            entries.append((found[0], found[1], found[2], data))
            total += len(data)
        if len(chunk) < _HTTP_CHUNK:
            return entries
        seq = chunk[-1][0] + 1


def _delete_http_stream(tx: _Tx, row: HttpStreamRow) -> str:
    """Delete a stream's entries and producers, and its row unless forks came from it (a tombstone
    then); then the tombstones up its chain of origins that no fork needs any more."""
    tx.execute("DELETE FROM http_stream_entries WHERE stream_id = %s", (row.stream_id,))
    tx.execute("DELETE FROM http_stream_producers WHERE stream_id = %s", (row.stream_id,))
    tx.bump(http_stream_key(row.path))
    if _has_forks(tx, row.stream_id):
        tx.execute("UPDATE http_streams SET deleted = 1, expiry = NULL WHERE stream_id = %s", (row.stream_id,))
        return "tombstoned"
    tx.execute("DELETE FROM http_streams WHERE stream_id = %s", (row.stream_id,))
    origin = row.forked_from
    while origin is not None:
        found = tx.one("SELECT deleted, forked_from FROM http_streams WHERE stream_id = %s", (origin,))
        if found is None or not found[0] or _has_forks(tx, origin):
            break
        tx.execute("DELETE FROM http_streams WHERE stream_id = %s", (origin,))
        origin = found[1]
    return "deleted"


def _purge_expired_http_streams(tx: _Tx, now: float) -> int:
    expired = tx.rows(
        f"SELECT {_HTTP_STREAM_COLUMNS} FROM http_streams WHERE expiry <= %s AND deleted = 0 "
        "ORDER BY stream_id FOR NO KEY UPDATE SKIP LOCKED",
        (now,),
    )
    for row in expired:
        _delete_http_stream(tx, HttpStreamRow(*row))
    return len(expired)


# ---- liveness: the executor lock ------------------------------------------------------------------

_ORPHANED: list[psycopg.Connection] = []  # a forked child's copies of its parent's sessions: never closed here
_HELD: set[ExecutorLock] = set()


class ExecutorLock:
    """ "Executor ``executor_id`` is alive": a session-level advisory lock on a connection of its own.

    A keeper thread sleeps on the session's socket. If the session is lost while the process lives
    (the server restarted, a network cut, ``pg_terminate_backend``), the lock went with it and other
    processes may already be adopting this executor's work: the keeper takes the lock again on a new
    session at once, retrying every `RELOCK_INTERVAL` seconds, and logs a WARNING. Work adopted
    meanwhile is fenced away from this process's runs (their writes raise StaleRunError).
    """

    def __init__(
        self, conn: psycopg.Connection, executor_id: str, key: int, connect: Callable[[], psycopg.Connection]
    ) -> None:
        self.executor_id = executor_id
        self._conn: psycopg.Connection | None = conn
        self._key = key
        self._connect = connect
        self._pid = os.getpid()
        self._stop_read, self._stop_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.retaken = 0  # how many times the keeper took the lock again
        _HELD.add(self)  # like a file lock, held until released even if its holder drops the object
        self._keeper = threading.Thread(target=self._keep, name=f"litedur-lock-{executor_id}", daemon=True)
        self._keeper.start()

    def release(self) -> None:
        """End the session that holds the lock; after this the executor counts as dead."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        _HELD.discard(self)
        if os.getpid() != self._pid:
            _ORPHANED.append(conn)
            return
        with contextlib.suppress(OSError):
            os.write(self._stop_write, b"\0")
        if self._keeper is not threading.current_thread():
            self._keeper.join()
        for fd in (self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock_all()")  # at once: a closed session goes a moment later
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def _keep(self) -> None:
        while True:
            conn = self._conn
            if conn is None:
                return
            poller = select.poll()
            poller.register(self._stop_read, select.POLLIN)
            try:
                poller.register(conn.pgconn.socket, select.POLLIN)
            except psycopg.Error:
                pass  # already broken: take it again below
            else:
                ready = dict(poller.poll())
                if self._stop_read in ready or self._conn is None:
                    return
                if _session_alive(conn):
                    continue
            self._take_again()

    def _take_again(self) -> None:
        """Take the lock on a new session, every `RELOCK_INTERVAL` seconds until it is ours: the
        server may still hold it for the lost session (it notices a cut connection late)."""
        log.warning("executor %s lost its database session, and with it its lock: taking it again", self.executor_id)
        refused = False
        while self._conn is not None:
            try:
                conn = self._connect()
            except psycopg.Error:
                conn = None
            if conn is not None:
                try:
                    held = conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", (self._key,)).fetchone()
                except psycopg.Error:
                    held = None
                if held and held[0]:
                    old, self._conn = self._conn, conn
                    with contextlib.suppress(psycopg.Error):
                        old.close()
                    self.retaken += 1
                    log.warning("executor %s holds its lock again", self.executor_id)
                    return
                conn.close()
                if held is not None and not refused:
                    refused = True
                    log.warning(
                        "executor %s: its lock is still held (by its lost session, or another "
                        "process); trying again every %s s",
                        self.executor_id,
                        RELOCK_INTERVAL,
                    )
            if _stopped(self._stop_read, RELOCK_INTERVAL):
                return


def _session_alive(conn: psycopg.Connection) -> bool:
    """After its socket became readable: False if the session ended (what the server said is consumed)."""
    try:
        conn.pgconn.consume_input()
        while conn.pgconn.notifies() is not None:
            pass
    except psycopg.Error:
        return False
    return conn.pgconn.status == psycopg.pq.ConnStatus.OK


def _stopped(stop_fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the stop signal: True if it came."""
    return bool(select.select([stop_fd], [], [], timeout)[0])


# ---- wake-up: one LISTEN connection per process and database, fanned out to watches -------------


class ChangeWatch:
    """A pollable descriptor that becomes readable when a process commits to the database."""

    def __init__(self, listener: _Listener, ignore: set[int] | frozenset[int] = frozenset()) -> None:
        self._listener = listener
        self.ignore = ignore  # server processes whose notifications do not ring this watch
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe is readable already
            os.write(self._write, b"\0")

    def drain(self) -> bool:
        """Consume the pending wake-ups; True if there was one (every commit is relevant here)."""
        found = False
        while True:
            try:
                data = os.read(self._read, 4096)
            except BlockingIOError:
                return found
            except OSError:
                return found
            if not data:
                return found
            found = True

    def close(self) -> None:
        if self._read < 0:
            return
        self._listener.forget(self)
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read = self._write = -1


class _Listener:
    """A thread that LISTENs on one connection and rings the open watches at each notification (those
    that do not ignore its sender); it stops (closing its connection) once no watch is left."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self.key = (os.getpid(), conninfo, channel)
        self._conninfo = conninfo
        self._channel = channel
        self._watches: set[ChangeWatch] = set()
        self._conn = self._listen()  # before any watch is handed out: no commit after it goes unseen
        self._thread = threading.Thread(target=self._run, name=f"litedur-listen-{channel}", daemon=True)
        self._thread.start()

    def _listen(self) -> psycopg.Connection:
        conn = psycopg.connect(self._conninfo, autocommit=True)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        return conn

    def add(self, watch: ChangeWatch) -> None:
        self._watches.add(watch)  # under _listeners_lock (see _open_watch)

    def forget(self, watch: ChangeWatch) -> None:
        with _listeners_lock:
            self._watches.discard(watch)

    def _ring(self, senders: set[int] | None = None) -> None:
        """Ring the watches that do not ignore every one of ``senders`` (None: every watch)."""
        with _listeners_lock:
            watches = list(self._watches)
        for watch in watches:
            if senders is None or not senders <= watch.ignore:
                watch.ring()

    def _run(self) -> None:
        while True:
            try:
                senders = self._wait()
                if senders:
                    self._ring(senders)
            except psycopg.Error:
                self._reconnect()
            with _listeners_lock:
                if not self._watches:
                    _listeners.pop(self.key, None)
                    break
        with contextlib.suppress(psycopg.Error):
            self._conn.close()

    def _wait(self) -> set[int]:
        """Sleep on the connection's socket up to `LISTEN_SLICE`, then take every notification that
        came: the server processes that sent them (libpq's own calls: this is the wake-up's hot path)."""
        pgconn = self._conn.pgconn
        poller = select.poll()  # (not select(): a process with many watches has descriptors above 1024)
        poller.register(pgconn.socket, select.POLLIN)
        senders: set[int] = set()
        if not poller.poll(LISTEN_SLICE * 1000):
            return senders
        pgconn.consume_input()
        while (notification := pgconn.notifies()) is not None:
            senders.add(notification.be_pid)
        return senders

    def _reconnect(self) -> None:
        """Listen again after losing the connection, waking every watch (a notification may be lost);
        until then the watchers' own safety net re-reads the database."""
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        while True:
            with _listeners_lock:
                if not self._watches:
                    return
            try:
                self._conn = self._listen()
            except psycopg.Error:
                time.sleep(LISTEN_SLICE)  # the server is away: try again later
                continue
            self._ring()
            return


_listeners: dict[tuple[int, str, str], _Listener] = {}
_listeners_lock = threading.Lock()
# The server processes of this process's storage connections, by (process id, location): a workflow
# watcher is not woken by changes its own process made to its location, which rang their waiters
# through that location's change feed already (a SQLite process ignores its own signal file likewise).
_own_backends: dict[tuple[int, str], set[int]] = {}


def _open_watch(conninfo: str, channel: str, ignore: set[int] | frozenset[int] = frozenset()) -> ChangeWatch:
    """A watch on this process's listener of ``channel`` on that database (started if needed); made
    under the registry's lock, so a listener never stops between handing it out and adding it."""
    key = (os.getpid(), conninfo, channel)
    with _listeners_lock:
        listener = _listeners.get(key)
        if listener is None:
            try:
                listener = _listeners[key] = _Listener(conninfo, channel)
            except psycopg.Error as exc:
                raise DatabaseError(f"cannot listen for changes of {mask_url(conninfo)}: {_first_line(exc)}") from exc
        watch = ChangeWatch(listener, ignore)
        listener.add(watch)
        return watch


class PostgresWakeSource:
    """`litedur.wakeup.WakeSource` for PostgreSQL: a change watch on the schema's channel for stream
    readers, one on its changes channel for workflow watchers, and no announcement to make (the
    NOTIFY goes with the commit)."""

    def __init__(self, storage: PostgresStorage) -> None:
        self.location = storage.location
        self._storage = storage

    def database_watch(self) -> ChangeWatch | None:
        try:
            return self._storage.open_change_watch()
        except DatabaseError:
            return None  # the waiters poll

    def signal_watch(self) -> ChangeWatch | None:
        try:
            return self._storage.open_change_watch(changes_only=True)
        except DatabaseError:
            return None  # the watcher polls

    def announce(self) -> None:
        """Nothing: the NOTIFY went with the commit."""
