"""The ``litedur`` logger across real processes: a worker holding queued work is SIGKILLed, and the
process that launches next logs, through a handler of its own, that the work went back to its queue
(naming each workflow and the dead executor), that it took it again, the retry of a failing step,
and the workflow it gave up after too many recoveries."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from support import kill, spawn, wait_until
from workers.log_worker import register

import litedur


class Records(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno == level]


@pytest.fixture
def records() -> Iterator[Records]:
    """A handler on the ``litedur`` logger at INFO, as an application would configure it."""
    logger = logging.getLogger("litedur")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_queued_work_of_a_killed_worker_is_logged_by_the_process_that_recovers_it(
    engines, tmp_path, log, children, records
):
    db = tmp_path / "logging.db"
    litedur.Engine(db).close()  # the file exists before the worker and the client open it
    worker = spawn("log_worker.py", db, log.path)
    children.append(worker)
    [[_, dead]] = wait_until(lambda: log.words_after("ready "), timeout=30)
    with litedur.Client(db) as client:
        for wid, name in (("patient-1", "held"), ("fragile-1", "fragile")):
            with litedur.SetWorkflowID(wid):
                client.enqueue("work", name, wid)
        wait_until(lambda: sorted(wid for wid, _ in log.words_after("holding ")) == ["fragile-1", "patient-1"],
                   timeout=30)  # fmt: skip
        assert {client.get_status(wid).executor_id for wid in ("patient-1", "fragile-1")} == {dead}
    kill(worker)
    assert not records.records  # nothing logged here before this process launches

    app = engines(db, executor_id="second")
    register(app, hold=lambda wid: None)
    app.launch()
    assert app.retrieve_workflow("patient-1").get_result(timeout=30) == 2
    wait_until(lambda: app.get_status("fragile-1").status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED", timeout=30)

    info = records.messages(logging.INFO)
    [requeued] = [message for message in info if "went back to their queues" in message]
    assert f"dead executor {dead}" in requeued
    assert "patient-1" in requeued and "fragile-1" in requeued
    assert "workflow patient-1 (held) taken again from queue work by executor second (recovery 1)" in info
    warnings = records.messages(logging.WARNING)
    [retried] = [message for message in warnings if message.startswith("step flaky")]
    assert "of workflow patient-1" in retried and "attempt 1 of 2" in retried and "first try of patient-1" in retried
    assert any(message.startswith("workflow fragile-1 (fragile) reached MAX_RECOVERY_ATTEMPTS_EXCEEDED")
               for message in warnings), warnings  # fmt: skip
    status = app.get_status("patient-1")
    assert (status.status, status.recovery_attempts, status.executor_id) == ("SUCCESS", 1, "second")
