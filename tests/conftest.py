"""Fixtures shared by the test modules."""

from __future__ import annotations

import signal
import subprocess

import pytest
from support import SideEffectLog, kill

import litedur


@pytest.fixture
def engines():
    """Make engines that are shut down when the test ends: ``engines(path, **options)``."""
    made: list[litedur.Engine] = []

    def make(path, **options) -> litedur.Engine:
        app = litedur.Engine(path, **options)
        made.append(app)
        return app

    yield make
    for app in made:
        app.shutdown(timeout=10)


@pytest.fixture
def log(tmp_path) -> SideEffectLog:
    """A side-effect log that survives SIGKILL (one line per effect)."""
    return SideEffectLog(tmp_path / "effects.log")


@pytest.fixture
def children():
    """Child processes a test started: killed at its end if still running (resumed first if stopped)."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
        kill(process)
