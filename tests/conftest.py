"""Fixtures shared by the test modules."""

from __future__ import annotations

import signal
import subprocess
import uuid

import pytest
from pg_server import pg_server_url, pg_url, with_schema
from support import SideEffectLog, kill

import litedur

FIXTURES = (pg_server_url, pg_url)  # imported for pytest, which finds them by name

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Which storage backend a test runs on: a test module opts in by asking for it (through
    `location`); tests that need the SQLite file itself are marked ``sqlite_only``."""
    if request.param == "postgres" and request.node.get_closest_marker("sqlite_only"):
        pytest.skip("needs the SQLite file itself")
    return request.param


@pytest.fixture
def location(request, backend, tmp_path):
    """Where a test's database is, on its backend: ``location(name)`` gives a file path under the
    test's directory, or a URL naming a fresh schema on the test run's PostgreSQL server."""

    schemas: dict[str, str] = {}

    def make(name: str) -> str:
        if backend == "sqlite":
            return str(tmp_path / name)
        if name not in schemas:  # one schema per name, as one file per name
            schemas[name] = with_schema(request.getfixturevalue("pg_server_url"), f"t_{uuid.uuid4().hex[:16]}")
        return schemas[name]

    return make


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
