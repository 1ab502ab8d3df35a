"""A throwaway PostgreSQL server for the test run, and fixtures that give each test its own schema.

``LITEDUR_TEST_PG=postgresql://...`` uses an existing server instead. Otherwise the newest server
binaries found (env ``PG_BIN``, else Debian's ``/usr/lib/postgresql/*/bin``) start a cluster in a
temporary directory that listens only on a unix socket inside it, stopped when the run ends. As root
the cluster runs as the ``postgres`` user (through ``runuser``), since the server refuses root.

Import the fixtures into a test module (or a conftest): ``from pg_server import pg_server_url, pg_url``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ENV_URL = "LITEDUR_TEST_PG"
START_TIMEOUT = 60


@dataclass
class PgServer:
    """A running server: ``url`` to connect to, ``directory`` to remove (None: not ours to stop)."""

    url: str
    directory: str | None = None
    bin_dir: str | None = None
    run_as: str | None = None

    def stop(self) -> None:
        """Stop a server this module started and remove its files (nothing for an existing server)."""
        if self.directory is None or self.bin_dir is None:
            return
        data = os.path.join(self.directory, "data")
        _run(self.run_as, [os.path.join(self.bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None


def find_bin_dir() -> str | None:
    """The directory of ``initdb`` and ``pg_ctl``: env PG_BIN, else the newest Debian version."""
    explicit = os.environ.get("PG_BIN")
    if explicit:
        return explicit if os.path.exists(os.path.join(explicit, "pg_ctl")) else None
    found = [path for path in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(path, "pg_ctl"))]
    found.sort(key=lambda path: _version_of(path))
    return found[-1] if found else None


def _version_of(bin_dir: str) -> tuple[int, ...]:
    name = os.path.basename(os.path.dirname(bin_dir))
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _run(user: str | None, command: list[str]) -> subprocess.CompletedProcess[str]:
    full = ["runuser", "-u", user, "--", *command] if user else command
    return subprocess.run(full, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)


def start_server() -> tuple[PgServer | None, str]:
    """A server to test against and ``""``, or ``(None, why not)``."""
    existing = os.environ.get(ENV_URL)
    if existing:
        return PgServer(existing), ""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None, f"no PostgreSQL server binaries (set PG_BIN, install postgresql, or set {ENV_URL})"
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no 'postgres' user to run the server as"
        run_as = "postgres"
    directory = tempfile.mkdtemp(prefix="litedur-pg-")
    server = PgServer("", directory, bin_dir, run_as)
    if run_as is not None:
        shutil.chown(directory, run_as, run_as)
    os.chmod(directory, 0o755)
    why = _init_and_start(server)
    if why:
        server.stop()
        return None, why
    user = run_as or pwd.getpwuid(os.geteuid()).pw_name
    server.url = f"postgresql://{user}@/postgres?host={directory}"
    return server, ""


def _init_and_start(server: PgServer) -> str:
    """Run initdb and pg_ctl start; ``""`` on success, else what went wrong."""
    assert server.directory is not None and server.bin_dir is not None
    data = os.path.join(server.directory, "data")
    init = _run(server.run_as, [os.path.join(server.bin_dir, "initdb"), "-D", data, "-A", "trust", "-E", "UTF8",
                                "--no-sync"])  # fmt: skip
    if init.returncode != 0:
        return f"initdb failed: {init.stderr.strip() or init.stdout.strip()}"
    options = f"-k {server.directory} -c listen_addresses='' -c max_connections=300 -c fsync=off"
    log = os.path.join(server.directory, "server.log")
    start = _run(server.run_as, [os.path.join(server.bin_dir, "pg_ctl"), "-D", data, "-l", log, "-o", options,
                                 "-w", "-t", str(START_TIMEOUT), "start"])  # fmt: skip
    if start.returncode != 0:
        with open(log, encoding="utf-8", errors="replace") as file:
            return f"pg_ctl start failed: {start.stderr.strip()} {file.read()[-2000:]}"
    return ""


def with_schema(url: str, schema: str) -> str:
    """``url`` with the query parameter that makes litedur use ``schema``."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The URL of the test run's server (started once); skips the test when there is none."""
    server, why = start_server()
    if server is None:
        pytest.skip(why)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    """A URL naming a fresh schema of its own on the test server (nothing of other tests in it)."""
    return with_schema(pg_server_url, f"t_{uuid.uuid4().hex[:16]}")
