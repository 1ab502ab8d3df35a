"""`litedur send`, `events`, `cancel`, `resume`, `fork`, and what `show` tells of events, messages and
cancellation: through CliRunner against a live Engine in this process, and as a real `python -m litedur`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import apsw
import pytest
from click.testing import CliRunner, Result
from litedur.cli import main
from support import wait_until

import litedur

PLAIN_ENV = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None, "COLUMNS": None, "LITEDUR_DB": None}
STATUSES = ["PENDING", "ENQUEUED", "SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"]


def run(*args: object, env: dict | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env={**PLAIN_ENV, **(env or {})})


def snapshot(path: Path) -> dict[str, list[str]]:
    """Every row of every table, read on an apsw connection of its own (never the stdlib sqlite3)."""
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: sorted(repr(row) for row in db.execute(f'SELECT * FROM "{table}"')) for table in tables}
    finally:
        db.close()


@dataclass
class Talk:
    """An engine with workflows that wait for messages, and the arguments its `double` step ran with."""

    app: litedur.Engine
    db: Path
    collector: Callable[[], list]
    waiter: Callable[[int], int]
    doubled: list[int]


def talk_app(path: Path) -> Talk:
    app = litedur.Engine(path)
    doubled: list[int] = []

    @app.step(name="double")
    def double(x: int) -> int:
        doubled.append(x)
        return 2 * x

    @app.workflow(name="collector")
    def collector() -> list:
        """Receives messages on the topic "inbox" until "done"."""
        app.set_event("state", "listening")
        received = []
        while (message := app.recv("inbox", timeout=30)) not in ("done", None):
            received.append(message)
        return received

    @app.workflow(name="waiter")
    def waiter(x: int) -> int:
        first = double(x)  # position 0
        extra = app.recv(timeout=30)  # position 1
        return double(first + extra)  # position 2

    return Talk(app, path, collector, waiter, doubled)


@pytest.fixture
def live(tmp_path) -> Iterator[Talk]:
    """A launched engine on a fresh file; workflows still waiting when the test ends are cancelled."""
    talk = talk_app(tmp_path / "live.db")
    talk.app.launch()
    yield talk
    for status in talk.app.list_workflows(status="PENDING"):
        talk.app.cancel_workflow(status.workflow_id)
    talk.app.shutdown(timeout=10)


def start(talk: Talk, workflow_id: str, fn: Callable[..., Any], *args: Any) -> litedur.WorkflowHandle:
    with litedur.SetWorkflowID(workflow_id):
        return talk.app.start_workflow(fn, *args)


def wait_for_recv(talk: Talk, workflow_id: str) -> None:
    """Wait until the waiter's first step is recorded: then it is in (or entering) recv. That the
    step's body ran is not enough, since a cancel may come before its record and refuse it."""
    wait_until(lambda: [step.name for step in talk.app.list_steps(workflow_id)] == ["double"])


@pytest.fixture(scope="module")
def ended(tmp_path_factory) -> Path:
    """A quiet file of ended workflows: greet-1 (SUCCESS, with events), stopped-1 (CANCELLED while
    waiting, one message never received) and parent-1 (timeout 60 s) with its child parent-1-0."""
    path = tmp_path_factory.mktemp("cli-talk") / "ended.db"
    talk = talk_app(path)
    app = talk.app

    @app.workflow(name="greet")
    def greet(name: str) -> str:
        app.set_event("greeting", f"hello {name}")
        app.set_event("stats", {"n": 1, "tags": ["a"]})
        app.set_event("ratio", Fraction(1, 3))
        return "greeted"

    @app.workflow(name="stopper")
    def stopper() -> None:
        app.set_event("stage", "waiting for go")
        app.recv("go", timeout=30)

    @app.workflow(name="child")
    def child() -> str:
        return "from child"

    @app.workflow(name="parent", timeout=60)
    def parent() -> str:
        return app.start_workflow(child).get_result()

    with app:
        assert start(talk, "greet-1", greet, "ann").get_result(timeout=30) == "greeted"
        stopped = start(talk, "stopped-1", stopper)
        assert app.get_event("stopped-1", "stage", timeout=30) == "waiting for go"
        app.send("stopped-1", {"note": "never read [sic]"}, "other")
        assert app.cancel_workflow("stopped-1") is True
        with pytest.raises(litedur.WorkflowCancelledError):
            stopped.get_result(timeout=30)
        assert start(talk, "parent-1", parent).get_result(timeout=30) == "from child"
    return path


# ---- send --------------------------------------------------------------------------------------


def test_send_answers_a_workflow_waiting_in_recv(live):
    handle = start(live, "c-1", live.collector)
    assert live.app.get_event("c-1", "state", timeout=30) == "listening"  # it is in recv now
    result = run("--db", live.db, "send", "c-1", '{"n": 1}', "--topic", "inbox")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "sent {\"n\": 1} to workflow c-1 on topic 'inbox'\n"
    result = run("--db", live.db, "send", "c-1", '"done"', "--topic", "inbox", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "workflow_id": "c-1", "topic": "inbox", "message": "done", "sent": True, "idempotency_key": None,
    }  # fmt: skip
    assert handle.get_result(timeout=30) == [{"n": 1}]


def test_send_from_another_process_wakes_the_waiting_workflow(live):
    handle = start(live, "c-2", live.collector)
    assert live.app.get_event("c-2", "state", timeout=30) == "listening"
    cli = [sys.executable, "-m", "litedur", "--db", str(live.db), "send", "c-2", "--topic", "inbox"]
    first = subprocess.run([*cli, "[1, 2.5, null]"], capture_output=True, text=True, timeout=60)
    assert (first.returncode, first.stdout) == (0, ""), first.stderr
    assert first.stderr == "sent [1, 2.5, null] to workflow c-2 on topic 'inbox'\n"
    wait_until(lambda: live.app.list_messages("c-2") == [])  # received across processes
    done = subprocess.run([*cli, '"done"'], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert handle.get_result(timeout=30) == [[1, 2.5, None]]


def test_a_repeated_idempotency_key_lands_once(live):
    handle = start(live, "c-3", live.collector)
    sends = [('"a"', "k1", True), ('"a"', "k1", False), ('"b"', "k2", True), ('"b"', "k2", False), ('"a"', "k1", False)]
    for message, key, fresh in sends:
        result = run("--db", live.db, "send", "c-3", message, "--topic", "inbox", "--idempotency-key", key, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["sent"] is fresh
        quiet = run("--db", live.db, "send", "c-3", message, "--topic", "inbox", "--idempotency-key", key)
        assert quiet.stderr.startswith("already sent to workflow c-3: idempotency key")
    assert run("--db", live.db, "send", "c-3", '"done"', "--topic", "inbox").exit_code == 0
    assert handle.get_result(timeout=30) == ["a", "b"]


@pytest.mark.parametrize(
    ("workflow_id", "status", "extra"),
    [("greet-1", "SUCCESS", []), ("stopped-1", "CANCELLED", ["--topic", "go", "--json"])],
)
def test_send_to_an_ended_workflow_is_refused_naming_its_status(ended, workflow_id, status, extra):
    before = snapshot(ended)
    result = run("--db", ended, "send", workflow_id, '"late"', *extra)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: cannot send to workflow {workflow_id!r}: it has ended ({status})\n"
    assert snapshot(ended) == before


@pytest.mark.parametrize("word", ["yes", "{'a': 1}", "NaN", ""])
def test_send_of_a_value_that_is_not_json_is_a_usage_error(ended, word):
    before = snapshot(ended)
    result = run("--db", ended, "send", "greet-1", word)
    assert (result.exit_code, result.stdout) == (2, "")
    assert "is not valid JSON" in result.stderr
    assert "a string needs JSON quotes, e.g. '\"" in result.stderr
    assert "Traceback" not in result.output
    assert snapshot(ended) == before


def test_the_json_hint_quotes_the_word_given(ended):
    assert "e.g. '\"yes\"'" in run("--db", ended, "send", "greet-1", "yes").stderr


# ---- events ------------------------------------------------------------------------------------


def test_events_is_a_table_of_keys_and_values(ended):
    result = run("--db", ended, "events", "greet-1")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "KEY       VALUE",
        'greeting  "hello ann"',
        "ratio     <pickled fractions.Fraction>",
        'stats     {"n": 1, "tags": ["a"]}',
    ]
    assert re.search(r"^ratio\s+Fraction\(1, 3\)$", run("--db", ended, "events", "greet-1", "--unpickle").stdout, re.M)


def test_events_json_is_one_object(ended):
    result = run("--db", ended, "events", "greet-1", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "greeting": "hello ann", "ratio": {"$pickled": "fractions.Fraction"}, "stats": {"n": 1, "tags": ["a"]},
    }  # fmt: skip


def test_events_of_a_workflow_that_set_none(ended):
    result = run("--db", ended, "events", "parent-1")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "workflow parent-1 has set no events\n")
    assert json.loads(run("--db", ended, "events", "parent-1", "--json").stdout) == {}


# ---- cancel, resume, fork ----------------------------------------------------------------------


def test_cancel_then_resume_then_fork(live):
    handle = start(live, "w-1", live.waiter, 5)
    wait_for_recv(live, "w-1")
    result = run("--db", live.db, "cancel", "w-1")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "cancelled workflow w-1: it stops at its next step, stream write or wait\n"
    with pytest.raises(litedur.WorkflowCancelledError):
        handle.get_result(timeout=30)
    assert re.search(r"^cancel reason\s+cancelled on request$", run("--db", live.db, "show", "w-1").stdout, re.M)

    result = run("--db", live.db, "resume", "w-1")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr.startswith("resumed workflow w-1 (PENDING): a launched process that registered 'waiter'")
    assert run("--db", live.db, "send", "w-1", "3").exit_code == 0
    assert handle.get_result(timeout=30) == 26  # 2 * (10 + 3), the first double replayed
    assert live.doubled == [5, 13]

    result = run("--db", live.db, "fork", "w-1", "--from-step", "1", "--id", "w-2")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == (
        "forked workflow w-1 from step 1 as w-2: a launched process that registered 'waiter' runs it\n"
    )
    assert run("--db", live.db, "send", "w-2", "4").exit_code == 0  # the fork waits in recv again
    assert live.app.retrieve_workflow("w-2").get_result(timeout=30) == 28
    assert live.doubled == [5, 13, 14]  # position 0 reused, not run again


def test_cancel_resume_and_fork_json(live):
    start(live, "w-3", live.waiter, 1)
    wait_for_recv(live, "w-3")
    result = run("--db", live.db, "cancel", "w-3", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"workflow_id": "w-3", "cancelled": True, "status": "CANCELLED"}

    result = run("--db", live.db, "resume", "w-3", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"workflow_id": "w-3", "status": "PENDING"}  # waits in recv

    result = run("--db", live.db, "fork", "w-3", "--from-step", "0", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    document = json.loads(result.stdout)
    new_id = document.pop("workflow_id")
    assert document == {"forked_from": "w-3", "from_step": 0}
    assert new_id != "w-3" and live.app.get_status(new_id).name == "waiter"
    assert run("--db", live.db, "send", new_id, "0").exit_code == 0
    assert live.app.retrieve_workflow(new_id).get_result(timeout=30) == 4


def test_resume_of_a_running_workflow_is_refused(live):
    start(live, "w-4", live.waiter, 2)
    wait_for_recv(live, "w-4")
    result = run("--db", live.db, "resume", "w-4")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("Error: cannot resume workflow 'w-4': it is PENDING;")
    assert live.app.get_status("w-4").status == "PENDING"


def test_cancel_of_an_ended_workflow_is_a_no_op_that_says_so(ended):
    before = snapshot(ended)
    result = run("--db", ended, "cancel", "greet-1")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "workflow greet-1 already ended (SUCCESS); nothing to cancel\n"
    result = run("--db", ended, "cancel", "stopped-1", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"workflow_id": "stopped-1", "cancelled": False, "status": "CANCELLED"}
    assert snapshot(ended) == before


def test_resume_of_a_successful_workflow_is_a_clear_error(ended):
    before = snapshot(ended)
    for extra in ([], ["--json"]):
        result = run("--db", ended, "resume", "greet-1", *extra)
        assert (result.exit_code, result.stdout) == (1, "")
        assert result.stderr == (
            "Error: cannot resume workflow 'greet-1': it is SUCCESS; "
            "only CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflows can be resumed\n"
        )
    assert snapshot(ended) == before


def test_fork_to_an_id_that_exists_is_refused(ended):
    before = snapshot(ended)
    result = run("--db", ended, "fork", "greet-1", "--from-step", "0", "--id", "stopped-1")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: cannot fork 'greet-1' as 'stopped-1': that id exists\n"
    assert snapshot(ended) == before


@pytest.mark.parametrize(
    "args",
    [
        ["send", "nope", "1"],
        ["events", "nope"],
        ["cancel", "nope"],
        ["resume", "nope"],
        ["fork", "nope", "--from-step", "0"],
        ["cancel", "nope", "--json"],
    ],
)
def test_unknown_workflow_exits_2(ended, args):
    before = snapshot(ended)
    result = run("--db", ended, *args)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == "Error: no workflow with id 'nope'\n"
    assert snapshot(ended) == before


@pytest.mark.parametrize(
    "args",
    [
        ["send", "greet-1"],
        ["send", "greet-1", "1", "--topic"],
        ["fork", "greet-1"],
        ["fork", "greet-1", "--from-step", "-1"],
        ["fork", "greet-1", "--from-step", "x"],
        ["fork", "greet-1", "--from-step", "0", "--id", ""],
        ["events"],
        ["cancel"],
        ["resume", "a", "b"],
    ],
)
def test_bad_usage_exits_2(ended, args):
    result = run("--db", ended, *args)
    assert (result.exit_code, result.stdout) == (2, "")
    assert "Error: " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["send", "x", "1"], ["events", "x"], ["cancel", "x"], ["resume", "x"]])
def test_missing_database_exits_2_and_creates_no_file(tmp_path, args):
    result = run("--db", tmp_path / "none.db", *args)
    assert result.exit_code == 2 and "no litedur database" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---- show and workflows ------------------------------------------------------------------------


def test_show_lists_events_pending_messages_and_the_cancel_reason(ended):
    result = run("--db", ended, "show", "stopped-1")
    assert result.exit_code == 0
    out = result.stdout
    assert re.search(r"^status\s+CANCELLED\ncancel reason\s+cancelled on request$", out, re.M)
    assert re.search(r'^Events \(1\)\nKEY\s+VALUE\nstage\s+"waiting for go"$', out, re.M)
    assert re.search(r"^Pending messages \(1\)\n\s*ID\s+TOPIC\s+SENT\s+MESSAGE$", out, re.M)
    assert re.search(r'^\s*\d+\s+other\s+\d\d-\d\d \d\d:\d\d:\d\d\s+\{"note": "never read \[sic\]"\}$', out, re.M)


def test_show_gives_parent_timeout_and_deadline(ended):
    child = run("--db", ended, "show", "parent-1-0").stdout
    assert re.search(r"^name\s+child\nparent\s+parent-1\nstatus\s+SUCCESS$", child, re.M)
    assert re.search(r"^deadline\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", child, re.M)
    assert not re.search(r"^timeout", child, re.M)
    parent = run("--db", ended, "show", "parent-1").stdout
    assert re.search(r"^timeout\s+60\.0 s\ndeadline\s+\d{4}-", parent, re.M)
    assert not re.search(r"^(parent|cancel reason)\s", parent, re.M)
    assert re.search(r"^Events \(0\)\n\nPending messages \(0\)$", parent, re.M)


def test_show_json_has_events_messages_and_the_new_status_fields(ended):
    stopped = json.loads(run("--db", ended, "show", "stopped-1", "--json").stdout)
    assert stopped["events"] == {"stage": "waiting for go"}
    [message] = stopped["messages"]
    assert message["topic"] == "other" and message["message"] == {"note": "never read [sic]"}
    assert isinstance(message["message_id"], int) and message["sent_at"] >= stopped["created_at"]
    assert (stopped["cancel_reason"], stopped["parent_id"], stopped["timeout"]) == ("cancelled on request", None, None)
    child = json.loads(run("--db", ended, "show", "parent-1-0", "--json").stdout)
    parent = json.loads(run("--db", ended, "show", "parent-1", "--json").stdout)
    assert child["parent_id"] == "parent-1" and child["timeout"] is None
    assert parent["timeout"] == 60.0 and parent["deadline"] == child["deadline"]
    assert parent["deadline"] == pytest.approx(parent["created_at"] + 60, abs=1)
    assert (parent["events"], parent["messages"]) == ({}, [])


def test_show_on_a_terminal_fits_80_columns(ended):
    result = run("--db", ended, "show", "stopped-1", env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    assert result.exit_code == 0 and "\x1b[" in result.stdout
    assert all(len(re.sub(r"\x1b\[[0-9;]*m", "", line)) <= 80 for line in result.stdout.splitlines())
    assert "never read" in result.stdout


@pytest.mark.parametrize("status", STATUSES)
def test_workflows_accepts_every_status_in_any_case(ended, status):
    expected = {"SUCCESS": {"greet-1", "parent-1", "parent-1-0"}, "CANCELLED": {"stopped-1"}}.get(status, set())
    for spelling in (status, status.lower(), status.title()):
        result = run("--db", ended, "workflows", "--status", spelling, "--json")
        assert result.exit_code == 0, result.output
        assert {document["workflow_id"] for document in json.loads(result.stdout)} == expected


def test_workflows_json_has_the_new_status_fields(ended):
    documents = {d["workflow_id"]: d for d in json.loads(run("--db", ended, "workflows", "--json").stdout)}
    assert documents["stopped-1"]["cancel_reason"] == "cancelled on request"
    assert documents["parent-1-0"]["parent_id"] == "parent-1"
    assert documents["parent-1"]["timeout"] == 60.0
    assert all({"parent_id", "timeout", "deadline", "cancel_reason"} <= set(d) for d in documents.values())


def test_help_lists_the_new_commands_with_examples():
    result = run("--help")
    for word in ("send", "events", "cancel", "resume", "fork", "litedur send ask-1 '\"yes\"'"):
        assert word in result.stdout
    for command in ("send", "events", "cancel", "resume", "fork"):
        assert "Examples:" in run(command, "--help").stdout
