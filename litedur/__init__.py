"""litedur: durable execution for one machine, with durable streams, in one SQLite file.

Workflows and their checkpointed steps survive crashes and restarts; values written to a stream
reach every reader (this process, another process, the ``litedur tail`` command) in order, live,
and keep arriving across a crash and recovery of the writer.
"""

from __future__ import annotations

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
from .streams import AsyncStreamReader, StreamReader
from .values import Pickled, Serializer

__version__ = "0.1.0"

__all__ = [
    "AsyncStreamReader",
    "Client",
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
]
