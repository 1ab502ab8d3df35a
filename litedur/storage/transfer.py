"""Copy a litedur database with its whole history to another one: SQLite to PostgreSQL and back.

`copy_database` is what ``litedur migrate`` runs. Both ends are opened through their backends (so
each is created or migrated to its current schema first). The source is read in one snapshot (one
SQLite read transaction; PostgreSQL REPEATABLE READ), so it may be live; the destination is written
in one transaction, so a failure leaves it as it was. Rows keep their ids, offsets, sequence numbers
and timestamps; the destination's id counters end past the source's, so no id is handed out twice.
Values keep their encodings (`litedur.values`): SQLite holds text as text, PostgreSQL as UTF-8 bytes.

``workflow_changes`` is not copied: it is each database's own wake-up feed, and the destination
numbers the changes the copied rows make there (its numbering never goes back, even on replace).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any, NamedTuple, Protocol

import apsw

from ..errors import DatabaseError, LitedurError
from . import is_url, open_storage
from .records import ANY_UNOWNED

BATCH = 1000  # rows read from the source, and written, at a time
Progress = Callable[[str, int], None]  # (table, rows of it copied so far), after every batch


class Table(NamedTuple):
    """A table the copy carries over: the order it is read in, and the column of ids a backend hands
    out (an identity column in PostgreSQL; the rowid, with AUTOINCREMENT or not, in SQLite)."""

    name: str
    order: str
    counter: str | None = None


# In copy order: workflows before `purging`, whose trigger refuses an insert of an id being removed.
TABLES: tuple[Table, ...] = (
    Table("workflows", "workflow_id", counter="inserted"),  # SQLite's rowid, PostgreSQL's "inserted"
    Table("steps", "workflow_id, position"),
    Table("streams", "stream_id", counter="stream_id"),
    Table("stream_entries", 'stream_id, "offset"'),
    Table("events", "workflow_id, key"),
    Table("messages", "message_id", counter="message_id"),
    Table("timers", "workflow_id, position"),
    Table("executors", "executor_id"),
    Table("queues", "name"),
    Table("queue_starts", "queue_name, started_at"),
    Table("purging", "workflow_id"),
    Table("http_streams", "stream_id", counter="stream_id"),
    Table("http_stream_entries", "stream_id, seq"),
    Table("http_stream_producers", "stream_id, producer_id"),
    Table("schedules", "name"),
    Table("schedule_declarations", "name, executor_id"),
)
NOT_COPIED = frozenset({"workflow_changes"})
# Value columns and the column that says how each value is encoded (the rest are plain bytes or not).
ENCODED = {
    ("workflows", "inputs"): "inputs_encoding",
    ("workflows", "output"): "output_encoding",
    ("steps", "output"): "output_encoding",
    ("stream_entries", "value"): "encoding",
    ("events", "value"): "encoding",
    ("messages", "value"): "encoding",
}
SQLITE_ROWIDS = {"workflows": "inserted"}  # the PostgreSQL column that SQLite keeps as the table's rowid


def copy_database(
    source: str, destination: str, *, replace: bool = False, progress: Progress | None = None
) -> dict[str, int]:
    """Copy every row of the litedur database at ``source`` into the one at ``destination`` (each a
    file path or a ``postgresql://`` URL); the rows copied per table.

    The destination is created if missing; one that holds any row is refused unless ``replace``,
    which empties it first in the same transaction. ``progress(table, rows)`` is called after each
    batch; an exception it raises stops the copy, leaving the destination as it was. Raises
    `DatabaseError` for a source that is missing or not a litedur database, a source that is the
    destination, a destination that is not empty, or schemas that differ.
    """
    _refuse_same_location(source, destination)
    source_storage = _open("source", source, create=False)
    try:
        _refuse_same_file(source_storage.location, destination)
        destination_storage = _open("destination", destination, create=True)
        try:
            reader, writer = _side(source_storage), _side(destination_storage)
            if reader.identity() == writer.identity():
                raise DatabaseError(f"cannot migrate {reader.location} into itself: give another destination")
            return _copy(reader, writer, replace, progress)
        finally:
            destination_storage.close()
    finally:
        source_storage.close()


def _open(role: str, location: str, *, create: bool) -> Any:
    """The backend of one end (every commit of it durable), its errors saying which end it is."""
    try:
        return open_storage(location, create=create, durability="full")
    except DatabaseError as exc:
        raise DatabaseError(f"{role}: {exc}") from exc


def _refuse_same_location(source: str, destination: str) -> None:
    """Refuse, before opening anything, a destination path naming the source file (URLs are compared
    once both are open, by the server and schema they reach)."""
    if not is_url(source) and not is_url(destination) and os.path.realpath(source) == os.path.realpath(destination):
        raise DatabaseError(f"cannot migrate {os.path.abspath(source)} into itself: give another destination")


def _refuse_same_file(source_location: str, destination: str) -> None:
    """Refuse a destination file that is the source file under another name (a link)."""
    if is_url(destination) or is_url(source_location) or not os.path.exists(destination):
        return
    if os.path.samefile(source_location, destination):
        raise DatabaseError(f"cannot migrate {source_location} into itself ({destination} is the same file)")


def _copy(reader: _Side, writer: _Side, replace: bool, progress: Progress | None) -> dict[str, int]:
    """The copy proper: one snapshot of ``reader`` into one transaction of ``writer``."""
    with reader.snapshot(), writer.transaction():
        columns = _common_columns(reader, writer)
        _make_room(writer, replace)
        for table in TABLES:  # first: PostgreSQL cannot alter a table with pending (deferred) trigger events
            if table.counter is not None:
                writer.raise_counter(table.name, table.counter, reader.counter(table.name, table.counter))
        counts = {table.name: _copy_table(reader, writer, table, columns[table.name], progress) for table in TABLES}
        writer.announce()
    return counts


def _common_columns(reader: _Side, writer: _Side) -> dict[str, list[str]]:
    """Each table's columns, in the source's order, once both ends are known to have the same tables
    and columns (the same generation of litedur's schema)."""
    known = {table.name for table in TABLES} | NOT_COPIED
    theirs = {"source": reader.tables(), "destination": writer.tables()}
    for side, tables in theirs.items():
        unknown, missing = sorted(set(tables) - known), sorted(known - set(tables))
        if unknown or missing:
            location = reader.location if side == "source" else writer.location
            raise DatabaseError(
                f"cannot migrate: the {side} {location} has a litedur schema this litedur does not know "
                f"(unknown tables: {', '.join(unknown) or 'none'}; missing: {', '.join(missing) or 'none'})"
            )
    for name in sorted(known - NOT_COPIED):
        ours, other = set(theirs["source"][name]), set(theirs["destination"][name])
        if ours != other:
            raise DatabaseError(
                f"cannot migrate: table {name} differs (only in the source {reader.location}: "
                f"{', '.join(sorted(ours - other)) or 'nothing'}; only in the destination {writer.location}: "
                f"{', '.join(sorted(other - ours)) or 'nothing'}): their litedur schemas are of different "
                "generations, which this litedur cannot copy between"
            )
    return theirs["source"]


def _make_room(writer: _Side, replace: bool) -> None:
    """Refuse a destination holding rows, or (``replace``) empty it."""
    holding = [table.name for table in TABLES if writer.has_rows(table.name)]
    if not holding:
        return
    if not replace:
        raise DatabaseError(
            f"destination {writer.location} is not empty (it holds rows in {', '.join(holding)}): "
            "pass replace=True (litedur migrate --replace) to empty it first"
        )
    for name in reversed(holding):
        writer.empty(name)


def _copy_table(reader: _Side, writer: _Side, table: Table, columns: list[str], progress: Progress | None) -> int:
    copied = 0
    for rows in reader.batches(table, columns):
        writer.insert(table.name, columns, rows)
        copied += len(rows)
        if progress is not None:
            progress(table.name, copied)
    return copied


# ---- the two ends ---------------------------------------------------------------------------------


class _Side(Protocol):
    """One end of a copy: its backend's connection, the SQL its dialect needs, its errors named."""

    location: str

    def identity(self) -> tuple[Any, ...]: ...

    def snapshot(self) -> contextlib.AbstractContextManager[None]: ...

    def transaction(self) -> contextlib.AbstractContextManager[None]: ...

    def tables(self) -> dict[str, list[str]]: ...

    def batches(self, table: Table, columns: list[str]) -> Iterator[list[Sequence[Any]]]: ...

    def counter(self, table: str, column: str) -> int: ...

    def has_rows(self, table: str) -> bool: ...

    def empty(self, table: str) -> None: ...

    def insert(self, table: str, columns: list[str], rows: list[Sequence[Any]]) -> None: ...

    def raise_counter(self, table: str, column: str, value: int) -> None: ...

    def announce(self) -> None: ...


def _side(storage: Any) -> _Side:
    if is_url(storage.location):
        return _PostgresSide(storage)
    return _SQLiteSide(storage)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SameOnBoth:
    """The verbs of a side whose SQL is the same on both backends (``conn`` and ``_errors``: the side's)."""

    conn: Any
    _errors: Callable[[str], contextlib.AbstractContextManager[None]]

    def has_rows(self, table: str) -> bool:
        with self._errors(f"read {table}"):
            return bool(self.conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchall()[0][0])

    def empty(self, table: str) -> None:
        with self._errors(f"empty {table}"):
            self.conn.execute(f"DELETE FROM {table}")


class _SQLiteSide(_SameOnBoth):
    """A SQLite file, through its backend's connection for this thread."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.location: str = storage.location
        self.conn: apsw.Connection = storage._connection()

    def identity(self) -> tuple[Any, ...]:
        return ("sqlite", os.path.realpath(self.location))

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except apsw.Error as exc:
            error = self.storage._database_error(what, exc)
            if isinstance(error, LitedurError):
                raise error from exc
            raise DatabaseError(f"cannot {what} ({self.location}): {exc}") from exc

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._transaction("BEGIN", "read the source"):
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._transaction("BEGIN IMMEDIATE", "write the destination"):
            yield

    @contextlib.contextmanager
    def _transaction(self, begin: str, what: str) -> Iterator[None]:
        with self._errors(what):
            self.conn.execute(begin)
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                if not self.conn.get_autocommit():
                    self.conn.execute("ROLLBACK")
                raise

    def tables(self) -> dict[str, list[str]]:
        with self._errors("read the schema"):
            names = [row[0] for row in self.conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]  # fmt: skip
            found = {
                name: [row[1] for row in self.conn.execute(f"PRAGMA table_info({_quote(name)})")] for name in names
            }
        for name, column in SQLITE_ROWIDS.items():
            if name in found:
                found[name].append(column)
        return found

    def _names(self, table: str, columns: list[str]) -> str:
        rowid = SQLITE_ROWIDS.get(table)
        return ", ".join("rowid" if column == rowid else _quote(column) for column in columns)

    def batches(self, table: Table, columns: list[str]) -> Iterator[list[Sequence[Any]]]:
        with self._errors(f"read {table.name}"):
            cursor = self.conn.execute(
                f"SELECT {self._names(table.name, columns)} FROM {table.name} ORDER BY {table.order}"
            )
            while rows := list(islice(cursor, BATCH)):
                yield rows

    def counter(self, table: str, column: str) -> int:
        """The highest id handed out: AUTOINCREMENT's record of it, else the highest rowid present."""
        name = "rowid" if SQLITE_ROWIDS.get(table) == column else _quote(column)
        with self._errors(f"read the ids of {table}"):
            found = self.conn.execute(
                f"SELECT max(coalesce((SELECT max({name}) FROM {table}), 0), "
                "coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?), 0))", (table,)
            ).fetchall()  # fmt: skip
        return int(found[0][0])

    def insert(self, table: str, columns: list[str], rows: list[Sequence[Any]]) -> None:
        marks = ", ".join("?" * len(columns))
        with self._errors(f"copy rows of {table}"):
            self.conn.executemany(f"INSERT INTO {table} ({self._names(table, columns)}) VALUES ({marks})", rows)

    def raise_counter(self, table: str, column: str, value: int) -> None:
        """Make an AUTOINCREMENT table hand out ids above ``value`` (other tables take max + 1)."""
        with self._errors(f"set the ids of {table}"):
            declared = self.conn.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (table,)).fetchall()
            if value <= 0 or "AUTOINCREMENT" not in declared[0][0].upper():
                return
            self.conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (value, table))
            if self.conn.changes() == 0:
                self.conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))

    def announce(self) -> None:
        """Number a change that makes launched processes look for PENDING work without an executor."""
        with self._errors("number a change"):
            self.conn.execute("INSERT INTO workflow_changes (workflow_id) VALUES (?)", (ANY_UNOWNED,))


class _PostgresSide(_SameOnBoth):
    """A schema of a PostgreSQL database, through its backend's connection for this thread."""

    def __init__(self, storage: Any) -> None:
        import psycopg

        from . import postgres

        self._psycopg, self._postgres = psycopg, postgres
        self.storage = storage
        self.location: str = storage.location
        self.conn = storage._connection()
        self._binary: dict[str, set[str]] = {}  # BYTEA columns of each table

    def identity(self) -> tuple[Any, ...]:
        with self._errors("identify the server"):
            found = self.conn.execute(
                "SELECT pg_postmaster_start_time()::text, current_setting('port'), current_database()"
            ).fetchall()
        return ("postgres", *found[0], self.storage.schema)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as exc:
            error = self.storage._database_error(what, exc)
            if isinstance(error, LitedurError):
                raise error from exc
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseError(f"cannot {what} ({self.location}): {first_line}") from exc

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "read the source", commit=False):
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._transaction("BEGIN", "write the destination", commit=True):
            yield

    @contextlib.contextmanager
    def _transaction(self, begin: str, what: str, *, commit: bool) -> Iterator[None]:
        with self._errors(what):
            self.conn.execute(begin)
            try:
                yield
                self.conn.execute("COMMIT" if commit else "ROLLBACK")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        with contextlib.suppress(self._psycopg.Error):
            self.conn.execute("ROLLBACK")

    def tables(self) -> dict[str, list[str]]:
        with self._errors("read the schema"):
            rows = self.conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name <> 'litedur_meta' ORDER BY table_name, ordinal_position",
                (self.storage.schema,),
            ).fetchall()
        found: dict[str, list[str]] = {}
        for table, column, data_type in rows:
            found.setdefault(table, []).append(column)
            if data_type == "bytea":
                self._binary.setdefault(table, set()).add(column)
        return found

    def batches(self, table: Table, columns: list[str]) -> Iterator[list[Sequence[Any]]]:
        names = ", ".join(_quote(column) for column in columns)
        values = self._values(table.name, columns)
        with self._errors(f"read {table.name}"), self.conn.cursor(name=f"litedur_copy_{table.name}") as cursor:
            cursor.execute(f"SELECT {names} FROM {table.name} ORDER BY {table.order}")
            while rows := cursor.fetchmany(BATCH):
                yield [self._as_stored(row, values) for row in rows]

    def _values(self, table: str, columns: list[str]) -> list[tuple[int, int | None]]:
        """Where the row's BYTEA values are, each with where its encoding is (None: plain bytes)."""
        binary = self._binary.get(table, set())
        found = []
        for index, column in enumerate(columns):
            if column in binary:
                encoding = ENCODED.get((table, column))
                found.append((index, columns.index(encoding) if encoding else None))
        return found

    def _as_stored(self, row: Sequence[Any], values: list[tuple[int, int | None]]) -> list[Any]:
        """A row with its values as SQLite stores them: text for the text encodings, else bytes."""
        stored = list(row)
        for index, encoding in values:
            if stored[index] is not None:
                kind = stored[encoding] if encoding is not None else None
                stored[index] = self._postgres._from_db(kind, stored[index])
        return stored

    def _as_bytes(
        self, table: str, columns: list[str], row: Sequence[Any], values: list[tuple[int, int | None]]
    ) -> list[Any]:
        """A row with its values as PostgreSQL stores them: BYTEA, text as UTF-8."""
        stored = list(row)
        for index, _ in values:
            value = stored[index]
            if value is None:
                continue
            if not isinstance(value, str | bytes | bytearray | memoryview):
                raise DatabaseError(
                    f"cannot copy {table}.{columns[index]}: it holds a {type(value).__name__} value where "
                    "litedur stores text or bytes (the source was changed outside litedur)"
                )
            stored[index] = self._postgres._to_db(value)
        return stored

    def counter(self, table: str, column: str) -> int:
        """The highest id handed out: by the column's identity sequence, or present in the table."""
        with self._errors(f"read the ids of {table}"):
            found = self.conn.execute(f"SELECT coalesce(max({_quote(column)}), 0) FROM {table}").fetchall()
        return max(self._issued(table, column), int(found[0][0]))

    def _issued(self, table: str, column: str) -> int:
        """The highest id the column's identity sequence handed out (0: none yet)."""
        with self._errors(f"read the ids of {table}"):
            sequence = self.conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, column)).fetchall()[0][0]
            if sequence is None:
                return 0
            found = self.conn.execute(
                f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {sequence}"
            ).fetchall()
        return int(found[0][0])

    def insert(self, table: str, columns: list[str], rows: list[Sequence[Any]]) -> None:
        """COPY the rows in: identity columns take the values given, as with OVERRIDING SYSTEM VALUE."""
        names = ", ".join(_quote(column) for column in columns)
        values = self._values(table, columns)
        copying = f"COPY {table} ({names}) FROM STDIN"
        with self._errors(f"copy rows of {table}"), self.conn.cursor() as cursor, cursor.copy(copying) as copy:
            for row in rows:
                copy.write_row(self._as_bytes(table, columns, row, values))

    def raise_counter(self, table: str, column: str, value: int) -> None:
        """Make the identity hand out ids above ``value`` (ALTER TABLE: undone with the transaction,
        unlike setval)."""
        if value <= self._issued(table, column):
            return
        with self._errors(f"set the ids of {table}"):
            self.conn.execute(f"ALTER TABLE {table} ALTER COLUMN {_quote(column)} RESTART WITH {int(value) + 1}")

    def announce(self) -> None:
        """Number a change that makes launched processes look for PENDING work without an executor,
        and wake every process of the destination when the transaction commits."""
        with self._errors("number a change"):
            self.conn.execute(f"SELECT {_quote(self.storage.schema)}.end_write(%s::text[])", ([ANY_UNOWNED],))
