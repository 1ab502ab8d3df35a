"""The `litedur` command through click's CliRunner: every command, option and exit code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from litedur.cli import main
from support import finish, spawn

import litedur

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PLAIN_ENV = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "NO_COLOR": None, "COLUMNS": None, "LITEDUR_DB": None}
LONG_NAME = "a_workflow_with_a_name_long_enough_to_need_cutting_in_a_table"


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A finished database: chat-1 (SUCCESS), fail-1 (ERROR) and one with a generated id and long name."""
    path = tmp_path_factory.mktemp("cli") / "done.db"
    app = litedur.Engine(path)

    @app.step(name="produce", max_attempts=2, interval=0.01)
    def produce(key: str) -> str:
        earlier = app.already_written(key)
        for value in ["Hello", " world", {"n": 2}, Fraction(1, 3)][len(earlier) :]:
            app.write_stream(key, value)
            if not earlier:
                raise RuntimeError("retry me")  # after one value: the step shows 2 attempts
        return "Hello world"

    @app.step(name="half")
    def half() -> Fraction:
        return Fraction(1, 2)

    @app.step(name="explode")
    def explode() -> None:
        raise ValueError("boom [with brackets]")

    @app.workflow(name="chat")
    def chat(prompt: str, *, loud: bool = False) -> dict:
        app.write_stream("progress", "started")
        text = produce("tokens")
        app.close_stream("tokens")
        half()
        return {"text": text, "loud": loud}

    @app.workflow(name="failing")
    def failing() -> None:
        app.write_stream("events", 1)
        explode()

    @app.workflow(name=LONG_NAME)
    def long_named() -> int:
        return 1

    with app:
        with litedur.SetWorkflowID("chat-1"):
            app.start_workflow(chat, "hi there", loud=True).get_result(timeout=30)
        with litedur.SetWorkflowID("fail-1"):
            handle = app.start_workflow(failing)
        with pytest.raises(ValueError):
            handle.get_result(timeout=30)
        app.start_workflow(long_named).get_result(timeout=30)
    return path


@pytest.fixture(scope="module")
def pending_db(tmp_path_factory) -> Path:
    """A workflow left PENDING by a killed writer, with 3 values in its open stream."""
    path = tmp_path_factory.mktemp("cli") / "pending.db"
    assert finish(spawn("cli_writer.py", path, "wf", 10, "--die-at", 2)) == -9
    return path


def run(*args: object, env: dict | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env={**PLAIN_ENV, **(env or {})})


def lines_fit(text: str, width: int = 80) -> bool:
    return all(len(ANSI.sub("", line)) <= width for line in text.splitlines())


# ---- global options and errors ---------------------------------------------------------------


def test_help_shows_commands_examples_and_completion():
    result = run("--help")
    assert result.exit_code == 0
    for word in ("tail", "workflows", "show", "streams", "info", "Examples:", "_LITEDUR_COMPLETE", "--db"):
        assert word in result.output
    assert "Examples:" in run("tail", "--help").output


def test_version():
    result = run("--version")
    assert (result.exit_code, result.output) == (0, f"litedur, version {litedur.__version__}\n")


@pytest.mark.parametrize(
    "args", [["workflows"], ["info"], ["show", "x"], ["streams", "x"], ["tail", "x", "k"], ["workflows", "--json"]]
)
def test_missing_database_exits_2_with_one_line_and_creates_no_file(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    missing = tmp_path / "litedur.db"
    assert result.stderr == f"Error: no litedur database at {missing} (give --db PATH or set LITEDUR_DB)\n"
    assert list(tmp_path.iterdir()) == []
    result = run("--db", tmp_path / "sub" / "x.db", *args)
    assert result.exit_code == 2 and list(tmp_path.iterdir()) == []


def test_database_comes_from_env_when_no_db_option(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("info", env={"LITEDUR_DB": str(db)})
    assert result.exit_code == 0
    assert str(db) in result.stdout
    assert run("--db", tmp_path / "nope.db", "info", env={"LITEDUR_DB": str(db)}).exit_code == 2


@pytest.mark.parametrize("args", [["show", "nope"], ["streams", "nope"], ["tail", "nope", "tokens"]])
def test_unknown_workflow_exits_2(db, args):
    result = run("--db", db, *args)
    assert result.exit_code == 2
    assert result.stderr == "Error: no workflow with id 'nope'\n"
    assert "Traceback" not in result.output


def test_a_file_that_is_not_a_database_exits_2(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = run("--db", tmp_path / "notes.txt", "workflows")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and "not a litedur database" in result.stderr
    assert run("--db", tmp_path, "info").exit_code == 2  # a directory


@pytest.mark.parametrize(
    "args",
    [
        ["nope"],
        ["workflows", "--status", "sleeping"],
        ["workflows", "--limit", "x"],
        ["tail", "chat-1"],
        ["tail", "chat-1", "tokens", "--from", "-1"],
        ["show"],
    ],
)
def test_bad_usage_exits_2(db, args):
    result = run("--db", db, *args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_python_dash_m_litedur_runs_the_cli(db):
    done = subprocess.run([sys.executable, "-m", "litedur", "--db", str(db), "info", "--json"], capture_output=True)
    assert done.returncode == 0
    assert json.loads(done.stdout)["workflows"] == {"ERROR": 1, "SUCCESS": 2}


def test_shell_completion_offers_workflow_ids(db):
    env = {"_LITEDUR_COMPLETE": "bash_complete", "COMP_WORDS": f"litedur --db {db} show ch", "COMP_CWORD": "4"}
    result = CliRunner().invoke(main, [], env=env, prog_name="litedur")
    assert result.exit_code == 0
    assert result.output.split() == ["plain,chat-1"]


# ---- workflows -------------------------------------------------------------------------------


def test_workflows_is_a_plain_table_newest_first_when_not_a_tty(db):
    result = run("--db", db, "workflows")
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout and "─" not in result.stdout
    assert lines_fit(result.stdout)
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "CREATED", "TOOK"]
    assert [row.split()[0] for row in rows][1:] == ["fail-1", "chat-1"]
    assert rows[0].split()[1].startswith("a_workflo") and "…" in rows[0]
    assert [row.split()[2] for row in rows] == ["SUCCESS", "ERROR", "SUCCESS"]
    assert result.stderr == ""


def test_workflows_on_a_terminal_is_coloured_and_fits_80_columns(db):
    result = run("--db", db, "workflows", env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    assert result.exit_code == 0
    assert "\x1b[" in result.stdout
    assert lines_fit(result.stdout)
    assert "fail-1" in result.stdout


def test_workflows_filters_by_status_name_and_limit(db):
    assert run("--db", db, "workflows", "--status", "error").stdout.splitlines()[1].split()[:3] == [
        "fail-1", "failing", "ERROR",
    ]  # fmt: skip
    assert [row.split()[0] for row in run("--db", db, "workflows", "--name", "chat").stdout.splitlines()[1:]] == [
        "chat-1"
    ]
    limited = run("--db", db, "workflows", "--limit", "1")
    assert len(limited.stdout.splitlines()) == 2
    assert "showing the newest 1" in limited.stderr
    assert len(json.loads(run("--db", db, "workflows", "--limit", "0", "--json").stdout)) == 3


def test_workflows_json_is_one_parsable_array(db):
    result = run("--db", db, "workflows", "--json")
    assert result.exit_code == 0
    documents = json.loads(result.stdout)
    assert [d["workflow_id"] for d in documents][1:] == ["fail-1", "chat-1"]
    chat = documents[2]
    assert chat["status"] == "SUCCESS" and chat["name"] == "chat"
    assert chat["inputs"] == {"args": ["hi there"], "kwargs": {"loud": True}}
    assert chat["output"] == {"text": "Hello world", "loud": True}
    assert documents[1]["error"] == {"type": "builtins.ValueError", "message": "boom [with brackets]"}
    assert chat["created_at"] <= chat["updated_at"]


def test_workflows_with_no_match_prints_nothing_on_stdout(db):
    result = run("--db", db, "workflows", "--status", "CANCELLED")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "no workflows\n")
    assert json.loads(run("--db", db, "workflows", "--status", "CANCELLED", "--json").stdout) == []


# ---- show and streams --------------------------------------------------------------------------


def test_show_gives_status_times_inputs_output_steps_and_streams(db):
    result = run("--db", db, "show", "chat-1")
    assert result.exit_code == 0
    out = result.stdout
    assert "\x1b" not in out and lines_fit(out)
    assert re.search(r"^status\s+SUCCESS$", out, re.M)
    assert re.search(r"^inputs\s+\(\"hi there\", loud=true\)$", out, re.M)
    assert re.search(r'^output\s+\{"text": "Hello world", "loud": true\}$', out, re.M)
    assert re.search(r"^created\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", out, re.M)
    assert re.search(r"^\s+0\s+litedur\.write_stream:pr…\s+1\s", out, re.M)  # a body write is a checkpoint
    assert re.search(r'^\s+1\s+produce\s+2\s+<?\d+ ms\s+"Hello world"$', out, re.M)
    assert re.search(r"^\s+2\s+half\s+1\s+<?\d+ ms\s+<pickled fractions.Fraction>$", out, re.M)
    assert re.search(r"^progress\s+1\s+closed by termination$", out, re.M)
    assert re.search(r"^tokens\s+4\s+closed$", out, re.M)


def test_show_of_a_failed_workflow_gives_its_error(db):
    out = run("--db", db, "show", "fail-1").stdout
    assert re.search(r"^error\s+ValueError: boom \[with brackets\]$", out, re.M)
    assert re.search(r"^\s+1\s+explode\s+1\s+<?\d+ ms\s+raised ValueError: boom", out, re.M)


def test_show_json_has_steps_and_streams(db):
    document = json.loads(run("--db", db, "show", "chat-1", "--json").stdout)
    assert document["workflow_id"] == "chat-1" and document["status"] == "SUCCESS"
    assert [(s["position"], s["name"], s["attempts"]) for s in document["steps"]][1:] == [
        (1, "produce", 2), (2, "half", 1),
    ]  # fmt: skip
    assert document["steps"][2]["output"] == {"$pickled": "fractions.Fraction"}
    assert {s["key"]: (s["length"], s["closed_by"]) for s in document["streams"]} == {
        "progress": (1, "termination"), "tokens": (4, "workflow"),
    }  # fmt: skip


def test_show_unpickles_only_when_asked(db):
    assert "Fraction(1, 2)" not in run("--db", db, "show", "chat-1").stdout
    unpickled = run("--db", db, "show", "chat-1", "--unpickle").stdout
    assert re.search(r"half\s+1\s+<?\d+ ms\s+Fraction\(1, 2\)$", unpickled, re.M)


def test_show_on_a_terminal_fits_80_columns(db):
    for workflow_id in ("chat-1", "fail-1"):
        result = run("--db", db, "show", workflow_id, env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
        assert result.exit_code == 0 and "\x1b[" in result.stdout and lines_fit(result.stdout)


def test_streams_lists_length_and_state(db):
    result = run("--db", db, "streams", "chat-1")
    assert result.exit_code == 0
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["KEY", "LENGTH", "STATE"],
        ["progress", "1", "closed", "by", "termination"],
        ["tokens", "4", "closed"],
    ]
    assert json.loads(run("--db", db, "streams", "fail-1", "--json").stdout) == [
        {"key": "events", "length": 1, "closed": True, "closed_by": "termination"}
    ]


def test_streams_of_a_workflow_without_any(db):
    result = run("--db", db, "streams", "chat-1")
    assert result.exit_code == 0
    long_id = json.loads(run("--db", db, "workflows", "--name", LONG_NAME, "--json").stdout)[0]["workflow_id"]
    result = run("--db", db, "streams", long_id)
    assert (result.exit_code, result.stdout) == (0, "")
    assert "has no streams" in result.stderr


def test_pending_workflow_shows_open_stream(pending_db):
    out = run("--db", pending_db, "show", "wf").stdout
    assert re.search(r"^status\s+PENDING$", out, re.M)
    assert re.search(r"^tokens\s+3\s+open$", out, re.M)
    assert re.search(r"^wf\s+writer\s+PENDING\s.*-$", run("--db", pending_db, "workflows").stdout, re.M)


# ---- info --------------------------------------------------------------------------------------


def test_info_gives_file_schema_size_and_counts(db):
    result = run("--db", db, "info")
    assert result.exit_code == 0
    out = result.stdout
    assert re.search(rf"^file\s+{re.escape(str(db))}$", out, re.M)
    assert re.search(r"^schema version\s+\d+$", out, re.M)
    assert re.search(r"^size\s+[\d.]+ (kB|MB|bytes)", out, re.M)
    assert re.search(r"^workflows\s+3 \(ERROR 1, SUCCESS 2\)$", out, re.M)
    document = json.loads(run("--db", db, "info", "--json").stdout)
    assert document["path"] == str(db) and document["workflows"] == {"ERROR": 1, "SUCCESS": 2}
    assert document["sizes"]["database"] > 0 and isinstance(document["schema_version"], int)


# ---- tail --------------------------------------------------------------------------------------


def test_tail_writes_strings_as_they_are_and_other_values_as_json_lines(db):
    result = run("--db", db, "tail", "chat-1", "tokens")
    assert result.exit_code == 0
    assert result.stdout == 'Hello world\n{"n": 2}\n<pickled fractions.Fraction>\n'
    assert result.stderr == "[stream 'tokens' closed after 4 values]\n"


def test_tail_json_gives_one_object_per_value_with_its_offset(db):
    result = run("--db", db, "tail", "chat-1", "tokens", "--json")
    assert result.exit_code == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"offset": 0, "value": "Hello"},
        {"offset": 1, "value": " world"},
        {"offset": 2, "value": {"n": 2}},
        {"offset": 3, "value": {"$pickled": "fractions.Fraction"}},
    ]


def test_tail_from_an_offset(db):
    assert run("--db", db, "tail", "chat-1", "tokens", "--from", "1").stdout.startswith(' world\n{"n": 2}\n')
    assert run("--db", db, "tail", "chat-1", "tokens", "--from", "3", "--json").stdout == (
        '{"offset": 3, "value": {"$pickled": "fractions.Fraction"}}\n'
    )
    result = run("--db", db, "tail", "chat-1", "tokens", "--from", "9")
    assert (result.exit_code, result.stdout) == (0, "")


def test_tail_unpickles_only_when_asked(db):
    assert run("--db", db, "tail", "chat-1", "tokens", "--unpickle").stdout.endswith("\nFraction(1, 3)\n")


def test_tail_of_a_failed_workflow_exits_1_with_its_error(db):
    result = run("--db", db, "tail", "fail-1", "events")
    assert result.exit_code == 1
    assert result.stdout == "1\n"
    assert result.stderr == "Error: workflow fail-1 failed: ValueError: boom [with brackets]\n"


def test_tail_no_follow_of_an_open_stream_prints_what_exists(pending_db):
    result = run("--db", pending_db, "tail", "wf", "tokens", "--no-follow")
    assert result.exit_code == 0
    assert result.stdout == "wörd0 wörd1 wörd2 "
    assert result.stderr == "[stream 'tokens' still open at offset 3]\n"
    result = run("--db", pending_db, "tail", "wf", "tokens", "--no-follow", "--json", "--from", "2")
    assert result.stdout == '{"offset": 2, "value": "wörd2 "}\n'


def test_tail_no_follow_of_a_closed_stream_ends_like_follow(db):
    result = run("--db", db, "tail", "chat-1", "tokens", "--no-follow")
    assert result.exit_code == 0 and result.stdout.startswith("Hello world\n")
    assert run("--db", db, "tail", "fail-1", "events", "--no-follow").exit_code == 1


def test_tail_of_a_stream_that_never_existed_ends_with_the_workflow(db):
    result = run("--db", db, "tail", "chat-1", "nothing")
    assert (result.exit_code, result.stdout) == (0, "")
