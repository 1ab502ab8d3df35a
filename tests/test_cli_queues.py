"""`litedur queues`, `litedur workflows --queue`, and the queue fields of `show`, through CliRunner
against a quiet file: a declared queue holding ENQUEUED workflows that nothing takes, and a queue whose
workflows ran (one ended, one left PENDING in a wait when its engine shut down)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from litedur.cli import main

import litedur

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PLAIN_ENV = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None, "COLUMNS": None, "LITEDUR_DB": None}
LONG_QUEUE = "a_queue_with_a_name_long_enough_to_need_cutting_in_the_table"


def run(*args: object, env: dict | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env={**PLAIN_ENV, **(env or {})})


def lines_fit(text: str, width: int = 80) -> bool:
    return all(len(ANSI.sub("", line)) <= width for line in text.splitlines())


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """fast-1 (SUCCESS) and fast-2 (PENDING, running) in queue "fast" (no limits), plain-1 (SUCCESS,
    no queue); then, from an engine never launched, "jobs" (concurrency 2, 1 per worker, 5/1s,
    priorities) holding q-1, q-2 (priority 3, deduplication id order-9) and q-3 (by Client.enqueue),
    all ENQUEUED, and LONG_QUEUE declared and empty."""
    path = tmp_path_factory.mktemp("cli-queues") / "queues.db"

    runner = litedur.Engine(path)
    fast = runner.queue("fast")

    @runner.workflow(name="quick")
    def quick(n: int) -> int:
        return n + 1

    @runner.workflow(name="hold")
    def hold() -> None:
        runner.set_event("state", "waiting")
        runner.recv(timeout=60)

    with runner:
        with litedur.SetWorkflowID("fast-1"):
            assert fast.enqueue(quick, 1).get_result(timeout=30) == 2
        with litedur.SetWorkflowID("fast-2"):
            fast.enqueue(hold)
        assert runner.get_event("fast-2", "state", timeout=30) == "waiting"
        with litedur.SetWorkflowID("plain-1"):
            assert runner.start_workflow(quick, 5).get_result(timeout=30) == 6
    # shutdown ended fast-2's wait: it stays PENDING, taken from its queue

    idle = litedur.Engine(path)  # declares and enqueues, never launched: nothing runs
    jobs = idle.queue("jobs", concurrency=2, worker_concurrency=1, limiter={"limit": 5, "period": 1.0},
                      priority_enabled=True)  # fmt: skip
    idle.queue(LONG_QUEUE)

    @idle.workflow(name="job")
    def job(n: int) -> int:
        return n

    with litedur.SetWorkflowID("q-1"):
        jobs.enqueue(job, 1)
    with litedur.SetWorkflowID("q-2"), litedur.SetEnqueueOptions(deduplication_id="order-9", priority=3):
        jobs.enqueue(job, 2)
    idle.close()
    with litedur.Client(path) as client, litedur.SetWorkflowID("q-3"):
        client.enqueue("jobs", "job", 3)
    return path


# ---- queues ----------------------------------------------------------------------------------------


def test_queues_is_a_plain_table_of_counts_and_limits(db):
    result = run("--db", db, "queues")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert "\x1b" not in result.stdout and lines_fit(result.stdout)
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ENQUEUED", "RUNNING", "CONCURRENCY", "PER-WORKER", "RATE", "PRIORITY"]
    assert [row.split() for row in rows[1:]] == [
        ["fast", "0", "1", "-", "-", "-", "off"],
        ["jobs", "3", "0", "2", "1", "5/1s", "on"],
    ]
    long_row = rows[0].split()
    assert long_row[0].startswith("a_queue_with") and long_row[0].endswith("…")
    assert long_row[1:] == ["0", "0", "-", "-", "-", "off"]


def test_queues_on_a_terminal_is_coloured_and_fits_80_columns(db):
    result = run("--db", db, "queues", env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    assert result.exit_code == 0
    assert "\x1b[" in result.stdout and lines_fit(result.stdout)
    assert "5/1s" in result.stdout


def test_queues_json_is_an_array_with_counts_and_limits(db):
    result = run("--db", db, "queues", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    documents = json.loads(result.stdout)
    assert [d["name"] for d in documents] == [LONG_QUEUE, "fast", "jobs"]
    by_name = {d["name"]: d for d in documents}
    assert by_name["jobs"] == {
        "name": "jobs", "enqueued": 3, "running": 0, "concurrency": 2, "worker_concurrency": 1,
        "limiter": {"limit": 5, "period": 1.0}, "priority_enabled": True,
    }  # fmt: skip
    assert by_name["fast"] == {
        "name": "fast", "enqueued": 0, "running": 1, "concurrency": None, "worker_concurrency": None,
        "limiter": None, "priority_enabled": False,
    }  # fmt: skip


def test_queues_of_a_file_without_any(tmp_path):
    path = tmp_path / "none.db"
    app = litedur.Engine(path)

    @app.workflow(name="w")
    def w() -> int:
        return 1

    with app:
        app.start_workflow(w).get_result(timeout=30)
    result = run("--db", path, "queues")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr.startswith("no queues")
    assert json.loads(run("--db", path, "queues", "--json").stdout) == []


def test_queues_of_a_missing_database_exits_2_and_creates_nothing(tmp_path):
    for args in (["queues"], ["queues", "--json"], ["workflows", "--queue", "jobs"]):
        result = run("--db", tmp_path / "nope.db", *args)
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.startswith("Error: no litedur database at ")
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_queue_commands():
    assert "litedur queues" in run("--help").output and "--queue jobs" in run("--help").output
    assert "Examples:" in run("queues", "--help").output
    assert "--queue QUEUE" in run("workflows", "--help").output


# ---- workflows --queue -----------------------------------------------------------------------------


def test_workflows_filters_by_queue_newest_first(db):
    result = run("--db", db, "workflows", "--queue", "jobs")
    assert result.exit_code == 0 and result.stderr == ""
    assert [row.split()[:3] for row in result.stdout.splitlines()[1:]] == [
        ["q-3", "job", "ENQUEUED"], ["q-2", "job", "ENQUEUED"], ["q-1", "job", "ENQUEUED"],
    ]  # fmt: skip
    fast = [row.split()[:3] for row in run("--db", db, "workflows", "--queue", "fast").stdout.splitlines()[1:]]
    assert fast == [["fast-2", "hold", "PENDING"], ["fast-1", "quick", "SUCCESS"]]


def test_workflows_queue_combines_with_status_and_limit(db):
    result = run("--db", db, "workflows", "--queue", "fast", "--status", "success", "--json")
    assert [d["workflow_id"] for d in json.loads(result.stdout)] == ["fast-1"]
    limited = run("--db", db, "workflows", "--queue", "jobs", "--limit", "2")
    assert [row.split()[0] for row in limited.stdout.splitlines()[1:]] == ["q-3", "q-2"]
    assert "showing the newest 2" in limited.stderr


def test_workflows_queue_json_gives_queue_fields(db):
    result = run("--db", db, "workflows", "--queue", "jobs", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    documents = json.loads(result.stdout)
    assert [(d["workflow_id"], d["queue_name"], d["priority"], d["deduplication_id"]) for d in documents] == [
        ("q-3", "jobs", 0, None), ("q-2", "jobs", 3, "order-9"), ("q-1", "jobs", 0, None),
    ]  # fmt: skip
    assert documents[0]["inputs"] == {"args": [3], "kwargs": {}}
    assert {d["status"] for d in documents} == {"ENQUEUED"}


def test_workflows_of_an_unknown_queue_is_empty_with_a_notice(db):
    result = run("--db", db, "workflows", "--queue", "nope")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "no queue named 'nope' (litedur queues lists them)\n"
    result = run("--db", db, "workflows", "--queue", "nope", "--json")
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])
    assert "no queue named 'nope'" in result.stderr


def test_workflows_of_a_known_queue_with_no_match_says_no_workflows(db):
    result = run("--db", db, "workflows", "--queue", LONG_QUEUE)  # declared, never used
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no workflows\n")
    result = run("--db", db, "workflows", "--queue", "jobs", "--status", "ERROR", "--json")
    assert (result.exit_code, result.stdout.strip(), result.stderr) == (0, "[]", "")


# ---- show ------------------------------------------------------------------------------------------


def test_show_gives_queue_priority_and_deduplication_id(db):
    result = run("--db", db, "show", "q-2")
    assert result.exit_code == 0 and lines_fit(result.stdout)
    out = result.stdout
    assert re.search(r"^status\s+ENQUEUED$", out, re.M)
    assert re.search(r"^queue\s+jobs$", out, re.M)
    assert re.search(r"^priority\s+3$", out, re.M)
    assert re.search(r"^deduplication id\s+order-9$", out, re.M)
    assert re.search(r"^inputs\s+\(2\)$", out, re.M)


def test_show_leaves_out_queue_fields_that_are_not_set(db):
    queued = run("--db", db, "show", "q-1").stdout
    assert re.search(r"^queue\s+jobs$", queued, re.M)
    assert not re.search(r"^(priority|deduplication id)\s", queued, re.M)
    plain = run("--db", db, "show", "plain-1").stdout
    assert re.search(r"^status\s+SUCCESS$", plain, re.M)
    assert not re.search(r"^(queue|priority|deduplication id)\s", plain, re.M)


def test_show_json_has_queue_fields(db):
    document = json.loads(run("--db", db, "show", "q-2", "--json").stdout)
    assert (document["queue_name"], document["priority"], document["deduplication_id"]) == ("jobs", 3, "order-9")
    assert document["status"] == "ENQUEUED" and document["steps"] == []
    plain = json.loads(run("--db", db, "show", "plain-1", "--json").stdout)
    assert (plain["queue_name"], plain["priority"], plain["deduplication_id"]) == (None, None, None)
    ran = json.loads(run("--db", db, "show", "fast-1", "--json").stdout)
    assert (ran["queue_name"], ran["status"], ran["output"]) == ("fast", "SUCCESS", 2)
