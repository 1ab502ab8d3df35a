"""`litedur gc`, `litedur delete`, `litedur backup` and `litedur -v`, through CliRunner on a real file."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner, Result
from litedur.cli import main

import litedur

PLAIN_ENV = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None, "COLUMNS": None, "LITEDUR_DB": None}


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env=PLAIN_ENV)


@pytest.fixture
def db(tmp_path):
    """done-0 .. done-3 (SUCCESS, each with a stream of 5 values) and waiting (PENDING in recv)."""
    path = tmp_path / "m.db"
    app = litedur.Engine(path)

    @app.workflow(name="done")
    def done(n: int) -> int:
        for i in range(5):
            app.write_stream("s", i)
        return n

    @app.workflow(name="wait")
    def wait() -> object:
        return app.recv(timeout=60)

    with app:
        for n in range(4):
            with litedur.SetWorkflowID(f"done-{n}"):
                done(n)
        with litedur.SetWorkflowID("waiting"):
            app.start_workflow(wait)
    return path


def ids(path) -> set[str]:
    with litedur.Client(path) as client:
        return {status.workflow_id for status in client.list_workflows()}


def test_gc_dry_run_lists_and_deletes_nothing_then_gc_deletes(db):
    result = run("--db", db, "gc", "--keep-last", 1, "--dry-run")
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.split()) == ["done-0", "done-1", "done-2"]
    assert "would delete 3 workflows" in result.stderr
    assert ids(db) == {"done-0", "done-1", "done-2", "done-3", "waiting"}

    result = run("--db", db, "gc", "--keep-last", 1, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["deleted"]) == ["done-0", "done-1", "done-2"] and report["values"] == 15
    assert ids(db) == {"done-3", "waiting"}


def test_gc_older_than_takes_units_and_refuses_nonsense(db):
    assert run("--db", db, "gc", "--older-than", "7d", "--json").stdout.count("done-") == 0
    result = run("--db", db, "gc", "--older-than", "banana")
    assert result.exit_code == 2 and "'banana' is not an age" in result.stderr
    result = run("--db", db, "gc")
    assert result.exit_code == 2 and "--older-than" in result.stderr
    result = run("--db", db, "gc", "--older-than", "0s")
    assert result.exit_code == 0 and "deleted 4 workflows" in result.stderr
    assert ids(db) == {"waiting"}


def test_delete_says_what_it_removed_and_refuses_pending(db):
    result = run("--db", db, "delete", "done-1")
    assert result.exit_code == 0 and "deleted 1 workflows" in result.stderr
    result = run("--db", db, "delete", "waiting")
    assert result.exit_code == 1 and "waiting" in result.stderr and "PENDING" in result.stderr
    result = run("--db", db, "delete", "nope", "--json")
    assert result.exit_code == 2 and "'nope'" in result.stderr
    assert ids(db) == {"done-0", "done-2", "done-3", "waiting"}


def test_backup_writes_a_copy_that_opens(db, tmp_path):
    copy = tmp_path / "copy.db"
    result = run("--db", db, "backup", copy, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backup"] == str(copy) and report["bytes"] == os.path.getsize(copy)
    assert ids(copy) == ids(db)
    result = run("--db", db, "backup", copy)
    assert result.exit_code == 1 and "exists" in result.stderr


def test_verbose_shows_the_library_log_on_stderr(db):
    result = run("-v", "--db", db, "gc", "--keep-last", 0)
    assert result.exit_code == 0, result.output
    assert "INFO litedur: collected 4 workflows" in result.stderr


def test_gc_with_both_rules_deletes_what_either_selects(db):
    """done-0 .. done-3 ended just now: --older-than 1h selects none of them and --older-than 0s all."""
    result = run("--db", db, "gc", "--older-than", "1h", "--keep-last", 1, "--dry-run")
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.split()) == ["done-0", "done-1", "done-2"]  # --keep-last alone selects them
    result = run("--db", db, "gc", "--older-than", "0s", "--keep-last", 3, "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["deleted"]) == ["done-0", "done-1", "done-2", "done-3"]  # the newest 3 too
    assert ids(db) == {"waiting"}
    assert "either rule selects it" in " ".join(run("gc", "--help").stdout.split())
