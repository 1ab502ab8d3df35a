"""The verbs of `PostgresStorage` against a real PostgreSQL server (see `pg_server`).

Each test gets a schema of its own. Skipped, with the reason, when psycopg is missing or no server
can be started (no binaries and no ``LITEDUR_TEST_PG``).
"""

from __future__ import annotations

import json
import logging
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL backend needs psycopg 3 (litedur[postgres])")

from pg_server import pg_server_url, pg_url  # noqa: E402
from support import spawn, wait_until  # noqa: E402

from litedur.errors import (  # noqa: E402
    DatabaseError,
    DuplicateWorkflowError,
    ExecutorError,
    StaleRunError,
    StreamClosedError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowNotFoundError,
    WorkflowStatusError,
)
from litedur.storage import mask_url  # noqa: E402
from litedur.storage.postgres import SCHEMA_VERSION, PostgresStorage, split_url  # noqa: E402
from litedur.storage.records import (  # noqa: E402
    ANY_UNOWNED,
    CLOSED_BY_TERMINATION,
    CLOSED_BY_WORKFLOW,
    OPEN,
    HttpEntry,
    HttpProducer,
    HttpStreamSpec,
    QueueRow,
    ScheduleRow,
    StepRow,
    StreamGroup,
    WorkflowRow,
)

EXECUTOR = "exec-a"
FIXTURES = (pg_server_url, pg_url)  # imported for pytest, which finds them by name


@pytest.fixture
def storage(pg_url: str) -> Iterator[PostgresStorage]:
    opened = PostgresStorage(pg_url)
    yield opened
    opened.close()


def step(workflow_id: str, position: int, output: str = "1", name: str = "step") -> StepRow:
    now = time.time()
    return StepRow(workflow_id, position, name, 1, output, None, None, 1, now, now)


def start(storage: PostgresStorage, workflow_id: str = "w", executor: str = EXECUTOR, **options) -> WorkflowRow:
    created, row = storage.create_workflow(workflow_id, "wf", (1, "[]"), executor, **options)
    assert created
    return row


def enqueued(workflow_id: str, queue: str, dedup: str | None = None, name: str = "job") -> WorkflowRow:
    now = time.time()
    return WorkflowRow(workflow_id, name, "ENQUEUED", 1, "[]", None, None, None, None, None, 0, now, now,
                       queue_name=queue, deduplication_id=dedup)  # fmt: skip


def children(url: str, mode: str, *args_per_child: tuple) -> list[subprocess.Popen]:
    """Start one worker per argument tuple, wait until all are ready, then release them together."""
    started = [
        spawn("pg_storage_worker.py", mode, url, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for args in args_per_child
    ]
    for child in started:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in started:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    return started


def results(started: list[subprocess.Popen]) -> list[dict]:
    found = []
    for child in started:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0, out
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found


# ---- opening, schema, URLs -------------------------------------------------------------------------


def test_url_schema_parameter_and_masked_password() -> None:
    conninfo, schema = split_url("postgresql://u:secret@h:5432/db?schema=app_1&sslmode=disable")
    assert schema == "app_1" and "schema" not in conninfo and "sslmode=disable" in conninfo
    assert split_url("postgresql://u@h/db")[1] == "litedur"
    assert "secret" not in mask_url("postgresql://u:secret@h/db?password=secret2")
    with pytest.raises(DatabaseError, match="Bad-Name"):
        split_url("postgresql://u@h/db?schema=Bad-Name")


def test_open_twice_and_concurrently_is_idempotent(pg_url: str) -> None:
    errors: list[BaseException] = []
    opened: list[PostgresStorage] = []

    def open_one() -> None:
        try:
            opened.append(PostgresStorage(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    again = PostgresStorage(pg_url)
    assert again.schema_version() == SCHEMA_VERSION
    for each in [*opened, again]:
        each.close()


def test_refuses_a_schema_of_another_application(pg_server_url: str) -> None:
    schema = f"foreign_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.invoices (id int)")
    with pytest.raises(DatabaseError, match=f"{schema}.*another application"):
        PostgresStorage(f"{pg_server_url}&schema={schema}")


def test_refuses_a_newer_schema_and_a_missing_one(pg_url: str, pg_server_url: str) -> None:
    with pytest.raises(DatabaseError, match="no litedur database"):
        PostgresStorage(pg_url, create=False)
    opened = PostgresStorage(pg_url)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"UPDATE {opened.schema}.litedur_meta SET version = 999")
    with pytest.raises(DatabaseError, match="version 999"):
        PostgresStorage(pg_url)
    opened.close()


def test_an_older_schema_is_migrated(pg_url: str, pg_server_url: str) -> None:
    opened = PostgresStorage(pg_url)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:  # back to version 1
        conn.execute(f"DROP TABLE {opened.schema}.schedule_declarations")
        conn.execute(f"ALTER TABLE {opened.schema}.stream_entries DROP COLUMN written_at")
        conn.execute(f"UPDATE {opened.schema}.litedur_meta SET version = 1")
    assert opened.schema_version() == 1
    upgraded = PostgresStorage(pg_url)
    assert upgraded.schema_version() == SCHEMA_VERSION == 3
    assert upgraded.schedule_declarations() == []
    assert upgraded.load_checkpoints("nobody") == ({}, {})
    for each in (opened, upgraded):
        each.close()


def test_a_schema_is_not_upgraded_past_version_2_while_a_process_of_an_older_litedur_runs(
    pg_url: str, pg_server_url: str
) -> None:
    opened = PostgresStorage(pg_url)
    older = opened.executor_lock("older")  # alive: its session holds the lock
    with psycopg.connect(pg_server_url, autocommit=True) as conn:  # back to version 2, as the older one ran it
        conn.execute(f"ALTER TABLE {opened.schema}.stream_entries DROP COLUMN written_at")
        conn.execute(f"UPDATE {opened.schema}.litedur_meta SET version = 2")
        conn.execute(f"INSERT INTO {opened.schema}.executors VALUES ('older', 4242, 'box', 0)")
    try:
        with pytest.raises(DatabaseError, match=r"'older' \(pid 4242 on box\).*Stop them"):
            PostgresStorage(pg_url)
        assert opened.schema_version() == 2
    finally:
        older.release()
    upgraded = PostgresStorage(pg_url)
    assert upgraded.schema_version() == SCHEMA_VERSION
    for each in (opened, upgraded):
        each.close()


def test_unreachable_server_is_a_database_error() -> None:
    with pytest.raises(DatabaseError, match="cannot connect"):
        PostgresStorage("postgresql://nobody@/nowhere?host=/nonexistent-dir&connect_timeout=2")


# ---- workflows, steps, fence -------------------------------------------------------------------------


def test_create_claim_finish(storage: PostgresStorage) -> None:
    row = start(storage)
    created, again = storage.create_workflow("w", "wf", (1, "[]"), "exec-b")
    assert not created and again.executor_id == EXECUTOR and again.inputs == "[]"
    assert storage.claim_workflow("w", "exec-x", "exec-b", 5) == "lost"
    assert storage.claim_workflow("w", EXECUTOR, "exec-b", 5) == "claimed"
    assert storage.get_workflow("w").recovery_attempts == 1
    assert not storage.finish_workflow("w", "SUCCESS", EXECUTOR, output=(1, "2"))  # fenced: no longer its
    assert storage.finish_workflow("w", "SUCCESS", "exec-b", output=(1, "2"))
    done = storage.get_workflow("w")
    assert (done.status, done.output, done.created_at) == ("SUCCESS", "2", row.created_at)
    start(storage, "x")
    assert storage.claim_workflow("x", EXECUTOR, "exec-b", 0) == "exceeded"
    assert storage.get_workflow("x").status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
    assert storage.count_by_status() == {"SUCCESS": 1, "MAX_RECOVERY_ATTEMPTS_EXCEEDED": 1}
    assert [r.workflow_id for r in storage.list_workflows()] == ["x", "w"]
    assert [r.workflow_id for r in storage.list_workflows(status="SUCCESS", limit=5)] == ["w"]


def test_steps_are_fenced_and_recorded_once(storage: PostgresStorage) -> None:
    start(storage)
    storage.record_step(step("w", 0, "10"), EXECUTOR)
    steps, _ = storage.load_checkpoints("w")
    assert steps[0].output == "10"
    with pytest.raises(psycopg.IntegrityError):
        storage.record_step(step("w", 0), EXECUTOR)
    with pytest.raises(StaleRunError):
        storage.record_step(step("w", 1), "exec-b")
    storage.cancel_workflow("w", "enough")
    with pytest.raises(WorkflowCancelledError, match="enough"):
        storage.record_step(step("w", 1), EXECUTOR)
    assert [s.position for s in storage.list_steps("w")] == [0]


def test_child_with_checkpoint_and_conflicting_name(storage: PostgresStorage) -> None:
    start(storage, "p")
    created, child = storage.create_workflow(
        "p-1", "child", (1, "[]"), EXECUTOR, parent_id="p", checkpoint=step("p", 1)
    )
    assert created and child.parent_id == "p"
    with pytest.raises(WorkflowConflictError):
        storage.create_workflow("p-1", "other", (1, "[]"), EXECUTOR, parent_id="p", checkpoint=step("p", 2))
    assert [s.position for s in storage.list_steps("p")] == [1]


# ---- streams ---------------------------------------------------------------------------------------


def test_stream_verbs(storage: PostgresStorage) -> None:
    start(storage)
    assert storage.append_stream("w", "k", [(0, "a"), (2, b"\x80\x00")], 1, 1, EXECUTOR) == 0
    stream_id, closed = storage.open_stream("w", "k", EXECUTOR)
    assert not closed
    assert storage.append_one(stream_id, (1, '{"x":1}'), 2, 1, "w", EXECUTOR) == 2
    failures, placed = storage.append_groups([StreamGroup("w", "k", 3, 2, [(0, "z")])], EXECUTOR)
    assert failures == {} and placed == [(stream_id, 3, [(0, "z")])]
    assert storage.read_values(stream_id, 0, 10) == ([(0, "a"), (2, b"\x80\x00"), (1, '{"x":1}'), (0, "z")], False)
    assert storage.earlier_attempt_values("w", "k", 3, 3)[0].value == "z"
    storage.close_stream("w", "k", EXECUTOR)
    storage.close_stream("w", "k", EXECUTOR)  # idempotent
    assert storage.append_one(stream_id, (0, "late"), 3, 2, "w", EXECUTOR) is None
    with pytest.raises(StreamClosedError):
        storage.append_stream("w", "k", [(0, "late")], 3, 2, EXECUTOR)
    assert storage.read_values(stream_id, 0, 10)[1] is True
    assert storage.read_values(stream_id, 9, 10, first_read=True) == ([], True)
    assert storage.stream_end(stream_id) == (4, True)
    assert storage.find_stream("w", "k") == (stream_id, False)
    storage.append_stream("w", "open", [(0, "o")], 4, 1, EXECUTOR)
    assert storage.finish_workflow("w", "SUCCESS", EXECUTOR, output=(1, "1"))
    lengths = {row.key: (row.length, row.closed) for row in storage.list_streams("w")}
    assert lengths == {"k": (4, CLOSED_BY_WORKFLOW), "open": (1, CLOSED_BY_TERMINATION)}


def test_concurrent_appenders_in_threads_get_dense_offsets(storage: PostgresStorage) -> None:
    start(storage)
    stream_id, _ = storage.open_stream("w", "k", EXECUTOR)
    got: list[int] = []

    def writer(tag: int) -> None:
        for index in range(60):
            if index % 3 == 0:
                got.append(storage.append_stream("w", "k", [(0, f"{tag}-{index}")], 1, 1, EXECUTOR))
            else:
                got.append(storage.append_one(stream_id, (0, f"{tag}-{index}"), 1, 1, "w", EXECUTOR))

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values, _ = storage.read_values(stream_id, 0, 1000)
    assert sorted(got) == list(range(360)) and len(values) == 360
    for tag in range(6):  # each writer's values in its own order
        mine = [int(v.split("-")[1]) for _, v in values if v.startswith(f"{tag}-")]
        assert mine == list(range(60))


def test_concurrent_appenders_in_processes_get_dense_offsets(storage: PostgresStorage, pg_url: str) -> None:
    start(storage)
    stream_id, _ = storage.open_stream("w", "k", EXECUTOR)
    found = results(children(pg_url, "append", *[("w", EXECUTOR, f"p{n}", 150) for n in range(3)]))
    offsets = sorted(offset for result in found for offset in result["offsets"])
    assert offsets == list(range(450))
    values, _ = storage.read_values(stream_id, 0, 1000)
    for n in range(3):
        assert [v for _, v in values if v.startswith(f"p{n}-")] == [f"p{n}-{i}" for i in range(150)]


def test_an_appender_killed_mid_stream_leaves_a_dense_prefix(storage: PostgresStorage, pg_url: str) -> None:
    start(storage)
    stream_id, _ = storage.open_stream("w", "k", EXECUTOR)
    (child,) = children(pg_url, "append", ("w", EXECUTOR, "c", 1_000_000))
    wait_until(lambda: storage.stream_end(stream_id)[0] >= 200)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    values, _ = storage.read_values(stream_id, 0, 10_000_000)
    assert [v for _, v in values] == [f"c-{i}" for i in range(len(values))]
    assert storage.append_one(stream_id, (0, "after"), 1, 1, "w", EXECUTOR) == len(values)


# ---- changes, notifications ----------------------------------------------------------------------------


def test_change_numbers_follow_commit_order(storage: PostgresStorage, pg_url: str, pg_server_url: str) -> None:
    start(storage, "slow")
    start(storage, "fast")
    base, _ = storage.changes_since(None)
    with psycopg.connect(pg_server_url) as held:  # a transaction that changes "slow" and commits last
        held.execute(f"UPDATE {storage.schema}.workflows SET status = status WHERE workflow_id = 'slow'")
        storage.set_event("fast", "e", (0, "v"), 1, EXECUTOR)
        seen, keys = storage.changes_since(base)
        assert keys == ["fast"]
        held.commit()
    later, keys = storage.changes_since(seen)
    assert keys == ["slow"] and later > seen


def test_change_numbers_are_never_skipped_under_concurrency(storage: PostgresStorage) -> None:
    for n in range(4):
        start(storage, f"w{n}")
    base, _ = storage.changes_since(None)
    stop = threading.Event()
    collected: list[str] = []

    def reader() -> None:
        seq = base
        while True:
            final = stop.is_set()
            seq, keys = storage.changes_since(seq)
            assert keys is not None
            collected.extend(keys)
            if final:
                return

    def writer(n: int) -> None:
        for index in range(50):
            storage.set_event(f"w{n}", "e", (0, str(index)), 1, EXECUTOR)

    watching = threading.Thread(target=reader)
    watching.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watching.join()
    assert sorted(collected) == sorted(f"w{n}" for n in range(4) for _ in range(50))


def test_change_watch_wakes_on_a_commit_of_another_process(storage: PostgresStorage, pg_url: str) -> None:
    first, second = storage.open_change_watch(), storage.open_change_watch()
    try:
        assert first._listener is second._listener  # one LISTEN connection for the process
        first.drain()
        second.drain()
        (child,) = children(pg_url, "write", ("exec-child",))
        began = time.monotonic()
        readable, _, _ = select.select([first, second], [], [], 20)
        assert readable, "no wake-up within 20 s"
        results([child])
        assert first.drain() or select.select([first], [], [], 20)[0]
        assert second.drain() or (select.select([second], [], [], 20)[0] and second.drain())
        assert time.monotonic() - began < 20
    finally:
        first.close()
        second.close()
    storage.announce(["anything"])  # a no-op on PostgreSQL


# ---- liveness ----------------------------------------------------------------------------------------


def test_executor_lock_is_exclusive_and_released(storage: PostgresStorage) -> None:
    assert storage.executor_alive(None) is False
    lock = storage.executor_lock("e1")
    assert storage.executor_alive("e1") and not storage.executor_alive("e2")
    with pytest.raises(ExecutorError, match="e1"):
        storage.executor_lock("e1")
    lock.release()
    lock.release()
    assert not storage.executor_alive("e1")


def test_executor_lock_drops_when_its_process_is_killed(storage: PostgresStorage, pg_url: str, record_property) -> None:
    (child,) = children(pg_url, "hold", ("doomed",))
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    assert storage.executor_alive("doomed")
    killed = time.monotonic()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    wait_until(lambda: not storage.executor_alive("doomed"), timeout=10, interval=0.001)
    seconds = time.monotonic() - killed
    record_property("executor_lock_release_seconds", seconds)
    print(f"executor lock gone {seconds * 1000:.1f} ms after SIGKILL")
    storage.executor_lock("doomed").release()  # and the id is free again


def test_an_executor_whose_session_is_cut_takes_its_lock_again(storage: PostgresStorage, caplog) -> None:
    """A lock session ended by the server (as by a restart) while its process lives is taken again at
    once, with a WARNING; the executor stays alive for others but for that moment."""
    lock = storage.executor_lock("cut")
    [(pid,)] = storage._query(
        "find the lock's session",
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() "
        "AND classid::bigint = %s AND objid::bigint = %s",
        ((lock._key >> 32) & 0xFFFFFFFF, lock._key & 0xFFFFFFFF),
    )
    with caplog.at_level(logging.WARNING, logger="litedur"):
        storage._query("cut the session", "SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: lock.retaken == 1, timeout=10)
        assert storage.executor_alive("cut")
    assert "executor cut lost its database session" in caplog.text
    with pytest.raises(ExecutorError, match="cut"):
        storage.executor_lock("cut")
    lock.release()
    assert not storage.executor_alive("cut")


# ---- events, messages, waits -------------------------------------------------------------------------


def test_events_messages_and_waits(storage: PostgresStorage) -> None:
    start(storage)
    assert storage.get_event("w", "e") == ("PENDING", None)
    storage.set_event("w", "e", (1, "[1]"), 1, EXECUTOR, checkpoint=step("w", 1))
    storage.set_event("w", "e", (0, "two"), 2, EXECUTOR)
    assert storage.get_event("w", "e") == ("PENDING", (0, "two"))
    assert [(e.key, e.value) for e in storage.list_events("w")] == [("e", "two")]
    assert storage.send_message("w", None, (0, "hi"), idempotency_key="once")
    assert not storage.send_message("w", None, (0, "hi"), idempotency_key="once")
    assert storage.send_message("w", "t", (2, b"\x01"))
    assert [m.value for m in storage.pending_messages("w")] == ["hi", b"\x01"]
    assert storage.consume_message(step("w", 3), "t", EXECUTOR) == (2, b"\x01")
    assert storage.consume_message(step("w", 4), "t", EXECUTOR) is None
    assert storage.consume_message(step("w", 4), None, EXECUTOR) == (0, "hi")
    assert storage.list_steps("w")[-1].output == "hi"
    assert storage.wait_deadline("w", 5, 100.0, EXECUTOR) == 100.0
    assert storage.wait_deadline("w", 5, 200.0, EXECUTOR) == 100.0
    with pytest.raises(WorkflowNotFoundError):
        storage.send_message("nobody", None, (0, "x"))
    storage.finish_workflow("w", "SUCCESS", EXECUTOR, output=(1, "1"))
    with pytest.raises(WorkflowStatusError):
        storage.send_message("w", None, (0, "x"))


def test_concurrent_consumers_take_each_message_once(storage: PostgresStorage) -> None:
    start(storage)
    for index in range(40):
        storage.send_message("w", None, (0, str(index)))
    taken: list[str] = []

    def consumer(offset: int) -> None:
        for position in range(offset, 400, 4):
            got = storage.consume_message(step("w", position), None, EXECUTOR)
            if got is not None:
                taken.append(got[1])

    threads = [threading.Thread(target=consumer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken, key=int) == [str(i) for i in range(40)]


# ---- queues ------------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_and_deduplicated(storage: PostgresStorage) -> None:
    assert storage.enqueue_workflow(enqueued("q1", "q", dedup="d"))[0]
    created, row = storage.enqueue_workflow(enqueued("q1", "q", dedup="d"))
    assert not created and row.status == "ENQUEUED"
    with pytest.raises(DuplicateWorkflowError) as caught:
        storage.enqueue_workflow(enqueued("q2", "q", dedup="d"))
    assert caught.value.workflow_id == "q1"
    storage.declare_queue(QueueRow("q", 2, None, None, None, 1, time.time()))
    assert storage.get_queue("q").concurrency == 2
    (queue, counts), = storage.list_queues()  # fmt: skip
    assert queue.name == "q" and counts.enqueued == 1


def test_dequeue_limits_hold_across_processes(storage: PostgresStorage, pg_url: str) -> None:
    storage.declare_queue(QueueRow("q", 3, None, None, None, 0, time.time()))
    for index in range(40):
        storage.enqueue_workflow(enqueued(f"j{index}", "q"))
    found = results(children(pg_url, "dequeue", *[("q", f"worker-{n}", 3) for n in range(4)]))
    finished = [workflow for result in found for workflow in result["finished"]]
    assert sorted(finished) == sorted(f"j{i}" for i in range(40))  # each taken and finished once
    assert max(result["most_running"] for result in found) <= 3


def test_concurrency_worker_concurrency_and_rate_are_exact(storage: PostgresStorage, pg_url: str) -> None:
    storage.declare_queue(QueueRow("q", 5, None, None, None, 0, time.time()))
    storage.declare_queue(QueueRow("w", None, 1, None, None, 0, time.time()))
    storage.declare_queue(QueueRow("r", None, None, 4, 3600.0, 0, time.time()))
    for name in ("q", "w", "r"):
        for index in range(30):
            storage.enqueue_workflow(enqueued(f"{name}{index}", name))
    for name, expected in (("q", 5), ("r", 4)):
        found = results(children(pg_url, "grab", *[(name, f"worker-{n}", 10) for n in range(4)]))
        assert sum(len(result["taken"]) for result in found) == expected
    found = results(children(pg_url, "grab", *[("w", f"worker-{n}", 10) for n in range(3)]))
    assert [len(result["taken"]) for result in found] == [1, 1, 1]
    rows, retry_at = storage.dequeue(storage.get_queue("r"), "late", ["job"], 5)
    assert rows == [] and retry_at is not None and retry_at > time.time() + 3000


def test_priority_delay_requeue(storage: PostgresStorage) -> None:
    queue = QueueRow("p", None, None, None, None, 1, time.time())
    storage.declare_queue(queue)
    storage.enqueue_workflow(enqueued("low", "p")._replace(priority=5))
    storage.enqueue_workflow(enqueued("high", "p")._replace(priority=1))
    storage.enqueue_workflow(enqueued("later", "p")._replace(priority=0, available_at=time.time() + 3600))
    rows, retry_at = storage.dequeue(queue, "e", ["job"], 5)
    assert [r.workflow_id for r in rows] == ["high", "low"] and retry_at > time.time()
    assert storage.running_executors("p") == ["e"]
    assert sorted(storage.requeue_workflows_of("e")) == ["high", "low"]
    assert storage.get_workflow("high").recovery_attempts == 1


def test_a_row_share_locked_for_a_moment_keeps_its_turn_in_the_queue(storage: PostgresStorage, pg_url: str) -> None:
    """A send holds its target's row FOR SHARE for a moment: a dequeue waits for it rather than
    taking a later, lower-priority workflow first."""
    queue = QueueRow("turn", None, None, None, None, 1, time.time())
    storage.declare_queue(queue)
    storage.enqueue_workflow(enqueued("high", "turn")._replace(priority=1))
    storage.enqueue_workflow(enqueued("low", "turn")._replace(priority=9))
    conninfo, schema = split_url(pg_url)
    with psycopg.connect(conninfo, options=f"-c search_path={schema}") as holder:
        holder.execute("SELECT status FROM workflows WHERE workflow_id = 'high' FOR SHARE")
        taken: list[list[str]] = []
        dequeuer = threading.Thread(target=lambda: taken.append(
            [row.workflow_id for row in storage.dequeue(queue, "e", ["job"], 1)[0]]))  # fmt: skip
        dequeuer.start()
        wait_until(lambda: _waiting_on_a_lock(holder), timeout=10)
        holder.rollback()
    dequeuer.join(timeout=10)
    assert taken == [["high"]]


def _waiting_on_a_lock(conn: psycopg.Connection) -> bool:
    return bool(conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0])


def test_a_session_the_server_ended_while_idle_is_replaced_before_the_next_verb(
    storage: PostgresStorage, pg_url: str
) -> None:
    start(storage, "idle")
    [(backend,)] = storage._query("find this thread's session", "SELECT pg_backend_pid()")
    with psycopg.connect(split_url(pg_url)[0], autocommit=True) as other:  # as a restart would
        other.execute("SELECT pg_terminate_backend(%s)", (backend,))
        wait_until(lambda: not other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchall())
    storage.record_step(step("idle", 0), EXECUTOR)  # no error: a new session took over
    assert [row.position for row in storage.list_steps("idle")] == [0]


def test_a_threads_session_ends_with_the_thread(storage: PostgresStorage) -> None:
    def sessions() -> int:
        return storage._query("count sessions", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                              "'client backend' AND datname = current_database()")[0][0]  # fmt: skip

    before = sessions()
    threads = [threading.Thread(target=storage.list_workflows) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: sessions() <= before + 2, timeout=10)


def test_a_nul_in_a_key_fails_that_group_alone_and_big_integers_fit(storage: PostgresStorage) -> None:
    start(storage, "good")
    failures, placed = storage.append_groups(
        [StreamGroup("good", "tokens", 0, 1, [(1, "1")]), StreamGroup("good\0", "k", 0, 1, [(1, "2")])], EXECUTOR
    )
    assert list(failures) == ["good\0"] and "NUL" in str(failures["good\0"]) and len(placed) == 1
    with pytest.raises(ValueError, match="NUL"):
        storage.create_workflow("id\0nul", "wf", (1, "[]"), EXECUTOR)
    queue = QueueRow("big", 2**40, 2**40, None, None, 1, time.time())
    storage.declare_queue(queue)
    storage.enqueue_workflow(enqueued("far", "big")._replace(priority=2**40))
    assert storage.get_workflow("far").priority == 2**40


# ---- management ----------------------------------------------------------------------------------------


def test_cancel_resume_fork(storage: PostgresStorage) -> None:
    start(storage, "p")
    storage.create_workflow("p-1", "child", (1, "[]"), EXECUTOR, parent_id="p")
    storage.record_step(step("p", 0, "0"), EXECUTOR)
    storage.append_stream("p", "k", [(0, "a")], 0, 1, EXECUTOR)
    storage.append_stream("p", "k", [(0, "b")], 1, 1, EXECUTOR)
    status, cancelled = storage.cancel_workflow("p", "stop")
    assert status == "PENDING" and cancelled == ["p", "p-1"]
    assert storage.get_workflow("p-1").cancel_reason.startswith("cancelled with its parent")
    assert storage.cancel_workflow("p", "again") == ("CANCELLED", [])
    start(storage, "z")
    with pytest.raises(WorkflowStatusError):
        storage.resume_workflow("z")
    base, _ = storage.changes_since(None)
    assert storage.resume_workflow("p") == ["p", "p-1"]
    assert ANY_UNOWNED in storage.changes_since(base)[1]
    assert storage.list_streams("p")[0].closed == OPEN
    assert storage.pending_workflows_of(None) == [("p", "wf"), ("p-1", "child")]
    assert storage.get_workflow("z").status == "PENDING"
    fork = storage.fork_workflow("p", "p-fork", 1)
    assert fork.status == "PENDING" and fork.executor_id is None
    assert [s.position for s in storage.list_steps("p-fork")] == [0]
    (stream,) = storage.list_streams("p-fork")
    assert stream.length == 1
    with pytest.raises(WorkflowConflictError):
        storage.fork_workflow("p", "p-fork", 1)
    with pytest.raises(WorkflowNotFoundError):
        storage.cancel_workflow("nobody", "x")


# ---- retention, schedules, overview -------------------------------------------------------------------


def test_delete_and_purge(storage: PostgresStorage) -> None:
    start(storage)
    storage.append_stream("w", "k", [(0, str(i)) for i in range(5)], 1, 1, EXECUTOR)
    stream_id, _ = storage.open_stream("w", "k", EXECUTOR)
    assert storage.delete_workflows(["w"]) == []  # still running
    storage.finish_workflow("w", "SUCCESS", EXECUTOR, output=(1, "1"))
    cutoff = storage.collection_cutoff(time.time() + 1, None)
    assert storage.collectable_workflows(cutoff, -1) == ["w"]
    assert storage.collect_batch(cutoff, 10) == ["w"]
    assert storage.get_workflow("w") is None
    assert storage.read_values(stream_id, 0, 3) == ([(0, "0"), (0, "1"), (0, "2")], False)
    with pytest.raises(WorkflowNotFoundError):
        storage.read_values(stream_id, 5, 3)
    with pytest.raises(WorkflowConflictError):  # its rows are still being removed
        storage.enqueue_workflow(enqueued("w", "q"))
    assert start(storage, "w").workflow_id == "w"  # a top-level create finishes the purge first
    assert storage.purge_some(100, 1.0) == (0, 0)


def test_schedule_ticks_are_claimed_once(storage: PostgresStorage) -> None:
    now = time.time()
    assert storage.declare_schedule(ScheduleRow("s", "wf", "* * * * *", None, 0, now, now, None)) == (now, None)
    wins: list[bool] = []

    def claim(n: int) -> None:
        row = WorkflowRow(f"s-{n}", "wf", "PENDING", 1, "[]", None, None, None, None, f"e{n}", 0, now, now)
        wins.append(storage.claim_tick("s", 60.0, row)[0])

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 4 + [True]
    assert storage.list_schedules()[0].last_tick == 60.0
    storage.declare_schedule(ScheduleRow("s", "wf", "* * * * *", None, 0, now, now + 1, None), "e1")
    assert storage.schedule_declarations("s") == [("s", "e1", now + 1)]
    storage.declare_schedule(ScheduleRow("s", "wf", "* * * * *", None, 0, now, now + 2, None), "e2", [("e1", now + 1)])
    assert [d[1] for d in storage.schedule_declarations()] == ["e2"]
    assert not storage.remove_schedule("s", now)
    assert storage.remove_schedule("s", now + 2) and storage.list_schedules() == []


def test_overview_and_maintenance(storage: PostgresStorage) -> None:
    start(storage)
    storage.register_executor(EXECUTOR, 42, "host")
    storage.append_stream("w", "k", [(0, "a")], 1, 1, EXECUTOR)
    assert [(r.key, r.length) for r in storage.open_stream_lengths()] == [("k", 1)]
    assert storage.pending_owners() == [(EXECUTOR, 42, "host", 1)]
    assert storage.active_executors() == [EXECUTOR]
    assert storage.recovered_workflows(5) == []
    assert storage.last_modified() is not None and storage.file_sizes()["database"] > 0
    assert storage.vacuum_some(100) == 0
    storage.checkpoint()
    with pytest.raises(DatabaseError, match="pg_dump"):
        storage.backup("/tmp/never.db")
    storage.forget_executor(EXECUTOR)  # still owns work: kept
    assert storage.pending_owners()[0][1] == 42
    assert not storage.is_readonly()


# ---- HTTP streams --------------------------------------------------------------------------------------


def test_http_streams(storage: PostgresStorage) -> None:
    now = time.time()
    spec = HttpStreamSpec("/a", "text/plain", "text/plain", False)
    outcome, row = storage.create_http_stream(spec, HttpEntry(b"hello", 5), now)
    assert outcome == "created" and row.next_seq == 1
    assert storage.create_http_stream(spec, None, now)[0] == "exists"
    producer = HttpProducer("p", 0, 0)
    assert storage.append_http_stream(
        "/a", HttpEntry(b" world", 6), "text/plain", producer=producer, now=now
    ).outcome == ("appended")
    assert storage.append_http_stream("/a", HttpEntry(b"!", 1), "text/plain", producer=producer, now=now).outcome == (
        "duplicate"
    )
    read = storage.read_http_stream("/a", (0, 0), 1 << 20, now)
    assert read.outcome == "ok" and b"".join(e[3] for e in read.entries) == b"hello world"
    fork = HttpStreamSpec("/b", "text/plain", "text/plain", False, fork_source="/a", fork_at=(1, 5))
    assert storage.create_http_stream(fork, None, now)[0] == "created"
    assert storage.delete_http_stream("/a", now) == "tombstoned"
    assert storage.http_stream_info("/a", now)[0] == "gone"
    assert storage.delete_http_stream("/b", now) == "deleted"
    assert storage.http_stream_info("/a", now)[0] == "missing"  # the tombstone went with its last fork
    short = HttpStreamSpec("/c", "text/plain", "text/plain", False, ttl=1)
    storage.create_http_stream(short, None, now)
    storage.touch_http_stream(storage.http_stream_info("/c", now)[1].stream_id, now)
    assert storage.purge_expired_http_streams(now + 10) == 1
