"""litedur: durable execution for one machine, with durable streams, in one SQLite file.

Workflows and their checkpointed steps survive crashes and restarts; values written to a stream
reach every reader (this process, another process, the ``litedur tail`` command) in order, live,
and keep arriving across a crash and recovery of the writer.
"""

from __future__ import annotations

import logging

from .client import Client, MessageInfo, StepInfo, StreamInfo, WorkflowHandle, WorkflowStatus
from .engine import Engine
from .errors import (
    DatabaseError,
    DuplicateWorkflowError,
    ExecutorError,
    LitedurError,
    MaxRecoveryAttemptsExceededError,
    NonDeterminismError,
    NotInWorkflowError,
    RecordedError,
    SerializationError,
    StaleRunError,
    StreamClosedError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowInterrupted,
    WorkflowNotFoundError,
    WorkflowStatusError,
)
from .options import SetEnqueueOptions, SetWorkflowID, SetWorkflowTimeout
from .queues import Queue
from .schedules import Cron, ScheduleInfo
from .streams import AsyncStreamReader, StreamReader
from .values import Pickled, Serializer

__version__ = "0.1.0"

logging.getLogger("litedur").addHandler(logging.NullHandler())  # silent unless the application logs

__all__ = [
    "AsyncStreamReader",
    "Client",
    "Cron",
    "DatabaseError",
    "DuplicateWorkflowError",
    "Engine",
    "ExecutorError",
    "LitedurError",
    "MaxRecoveryAttemptsExceededError",
    "MessageInfo",
    "NonDeterminismError",
    "NotInWorkflowError",
    "Pickled",
    "Queue",
    "RecordedError",
    "ScheduleInfo",
    "SerializationError",
    "Serializer",
    "SetEnqueueOptions",
    "SetWorkflowID",
    "SetWorkflowTimeout",
    "StaleRunError",
    "StepInfo",
    "StreamClosedError",
    "StreamInfo",
    "StreamReader",
    "WorkflowCancelledError",
    "WorkflowConflictError",
    "WorkflowHandle",
    "WorkflowInterrupted",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "WorkflowStatusError",
    "__version__",
    "serve",
    "Server",
]


def __getattr__(name: str) -> object:
    """`serve` and `Server` (``litedur serve``) load the HTTP layer only when first used."""
    if name in ("serve", "Server"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'litedur' has no attribute {name!r}")
