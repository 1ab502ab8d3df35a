"""Executor liveness through OS file locks: a live executor holds an exclusive lock on its own file.

A process that dies, however it dies, drops its locks at once, so a dead executor is known without
waiting for a lease to expire. The lock files live in ``<database>-executors/``.
"""

from __future__ import annotations

import contextlib
import os
import re

from .errors import DatabaseError, ExecutorError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


def lock_directory(db_path: str) -> str:
    return f"{db_path}-executors"


def _lock_path(db_path: str, executor_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", executor_id)
    return os.path.join(lock_directory(db_path), f"{safe}.lock")


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


class ExecutorLock:
    """The lock that says "executor ``executor_id`` is alive", held until `release`."""

    def __init__(self, db_path: str, executor_id: str) -> None:
        self.path = _lock_path(db_path, executor_id)
        self.executor_id = executor_id
        try:
            os.makedirs(lock_directory(db_path), mode=0o700, exist_ok=True)
        except OSError as exc:  # e.g. a file of that name, or a read-only directory
            raise DatabaseError(
                f"cannot register executor {executor_id!r}: cannot create {lock_directory(db_path)}: {exc.strerror}"
            ) from exc
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:  # e.g. a lock directory of another user
                raise DatabaseError(
                    f"cannot register executor {executor_id!r}: cannot open its lock file {self.path}: {exc.strerror}"
                ) from exc
            if not _try_lock(fd):
                os.close(fd)
                raise ExecutorError(
                    f"executor id {executor_id!r} is in use by another live process ({self.path})"
                )
            # A checker may have removed the file between our open and our lock: lock the new one.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock and remove the file; after this the executor counts as dead."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        _unlock(self._fd)
        os.close(self._fd)
        self._fd = None


def is_alive(db_path: str, executor_id: str | None) -> bool:
    """True while some process holds ``executor_id``'s lock. A dead executor's file is removed."""
    if executor_id is None:
        return False
    path = _lock_path(db_path, executor_id)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell; never adopt work that might still be running
    try:
        if not _try_lock(fd):
            return True
        if _same_file(fd, path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        _unlock(fd)
        return False
    finally:
        os.close(fd)
