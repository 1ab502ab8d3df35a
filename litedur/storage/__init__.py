"""Where litedur's state lives: the verbs the engine calls, and the backend that runs them.

`records` holds the rows and constants every backend shares; `sqlite` is the WAL-mode SQLite file
backend. Callers open a backend with `open_storage` and never import a backend module directly.
"""

from __future__ import annotations

from ..errors import DatabaseError
from .base import Storage
from .common import is_url, mask_url
from .records import (
    ACTIVE_STATUSES,
    ANY_UNOWNED,
    BEING_REMOVED,
    CASCADE_REASON,
    CLOSED_BY_TERMINATION,
    CLOSED_BY_WORKFLOW,
    END_OF_STREAM,
    HTTP_STREAM_CHANGE,
    OPEN,
    RESUMABLE_STATUSES,
    SET_EVENT_STEP,
    STREAM_DELETED,
    WRITE_STREAM_STEP,
    EntryRow,
    EventRow,
    HeldLock,
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
    http_stream_key,
)
from .sqlite import SCHEMA_VERSION, SQLiteStorage


def open_storage(location: str, *, create: bool = True, durability: str = "normal") -> Storage:
    """The backend for ``location``: a PostgreSQL URL (psycopg 3, the ``postgres`` extra, imported
    only here) or a SQLite file path."""
    if is_url(location):
        try:
            from .postgres import PostgresStorage
        except ImportError as exc:
            raise DatabaseError(
                f"cannot open {mask_url(location)}: the PostgreSQL backend needs psycopg 3 "
                f"(pip install 'litedur[postgres]'): {exc}"
            ) from exc
        return PostgresStorage(location, create=create, durability=durability)
    return SQLiteStorage(location, create=create, durability=durability)

__all__ = [
    "ACTIVE_STATUSES",
    "ANY_UNOWNED",
    "BEING_REMOVED",
    "CASCADE_REASON",
    "CLOSED_BY_TERMINATION",
    "CLOSED_BY_WORKFLOW",
    "END_OF_STREAM",
    "HTTP_STREAM_CHANGE",
    "OPEN",
    "RESUMABLE_STATUSES",
    "SCHEMA_VERSION",
    "SET_EVENT_STEP",
    "STREAM_DELETED",
    "WRITE_STREAM_STEP",
    "EntryRow",
    "HeldLock",
    "EventRow",
    "HttpAppendResult",
    "HttpEntry",
    "HttpProducer",
    "HttpReadResult",
    "HttpStreamRow",
    "HttpStreamSpec",
    "MessageRow",
    "QueueCounts",
    "QueueRow",
    "SQLiteStorage",
    "ScheduleRow",
    "StepRow",
    "Storage",
    "StreamGroup",
    "StreamRow",
    "WorkflowRow",
    "WorkflowState",
    "http_stream_key",
    "is_url",
    "mask_url",
    "open_storage",
]
