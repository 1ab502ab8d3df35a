"""Every exception litedur raises, under one base class."""

from __future__ import annotations


class LitedurError(Exception):
    """Base class of every error litedur raises on purpose."""


class DatabaseError(LitedurError):
    """The database file cannot be used: missing, foreign, corrupt, read-only, locked or full."""


class WorkflowNotFoundError(LitedurError):
    """No workflow with the given id exists in the database."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow with id {workflow_id!r}")
        self.workflow_id = workflow_id

    def __reduce__(self) -> tuple[type, tuple[str]]:  # recorded exceptions are pickled
        return type(self), (self.workflow_id,)


class WorkflowConflictError(LitedurError):
    """A workflow id is already taken by a workflow of another name."""


class StreamClosedError(LitedurError):
    """A value was written to a stream that is already closed."""


class SerializationError(LitedurError):
    """A value cannot be stored, or a stored value cannot be decoded."""


class NonDeterminismError(LitedurError):
    """On replay, the workflow called something other than what was recorded at that position."""


class NotInWorkflowError(LitedurError):
    """A call that needs a running workflow or step was made outside of one."""


class ExecutorError(LitedurError):
    """This process cannot act as an executor (its id is held by another live process)."""


class RecordedError(LitedurError):
    """A recorded exception whose original type could not be restored.

    Carries the original type's name and message, so replay and `get_result` still fail loudly.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.type_name, self.message)


class WorkflowCancelledError(LitedurError):
    """The workflow was cancelled: raised by ``get_result``, and inside the cancelled run at its next
    step, stream write or wait (the run stops; nothing more of it is recorded)."""


class DuplicateWorkflowError(LitedurError):
    """A queue already holds an active workflow with this deduplication id; ``workflow_id`` names it."""

    def __init__(self, message: str, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (str(self), self.workflow_id)


class StaleRunError(LitedurError):
    """This run of a workflow may no longer write: the workflow was resumed or adopted elsewhere."""


class WorkflowStatusError(LitedurError):
    """The workflow's status does not allow the operation (a send to an ended workflow, a resume of a
    running one); ``status`` names it."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (str(self), self.status)


class WorkflowInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: not an error of the workflow
    """Raised in a workflow's durable wait when its engine shuts down: the run stops without recording
    anything, the workflow stays PENDING, and the next launch of any process resumes it (a sleep or
    recv keeps its original deadline). A BaseException, so ``except Exception`` does not swallow it.
    """


class MaxRecoveryAttemptsExceededError(LitedurError):
    """The awaited workflow was recovered too many times and is no longer run automatically."""
