"""Thirty jobs through a durable, rate-limited queue, two worker processes, one SIGKILLed half-way.

Two worker processes (children of this one) declare the queue ``jobs`` with ``concurrency=3``,
``worker_concurrency=2`` and a limiter of 10 starts per second, and run what it holds: at most 3
jobs at once in all (although each worker may run 2) and 10 starts in any second, counted across
both processes in the database file. This process is a plain ``litedur.Client``: it enqueues the
jobs by workflow name (``Client.enqueue``), draws a progress bar from
``list_workflows(queue="jobs")``, and half-way through SIGKILLs the worker that runs the most jobs.
The jobs it was running go back to the queue, at their place, and the other worker finishes them.

Each job is one step that works for a moment (a call to a rate-limited API, say) and then appends
``done N by WORKER`` to ``<db>.effects`` with O_APPEND: its side effect. At the end this process
checks that every job's line is there exactly once and reports, from the steps' recorded times,
how many jobs ever ran at once and how the limiter spread their starts.

A recorded step never runs again, but a step killed after its side effect and before its checkpoint
runs again, side effect included (durable execution is exactly-once per checkpoint; a real external
effect takes an idempotency key). So the kill here is aimed: the worker is frozen (SIGSTOP) and
killed only if none of its jobs is in that instant, else let go for a few milliseconds.

    python examples/rate_limited.py [--db PATH] [--jobs N] [--concurrency N] [--worker-concurrency N]
                                    [--limit N] [--period SECONDS] [--no-crash]
    litedur --db PATH queues          # from another terminal while it runs: counts and limits
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import litedur

QUEUE = "jobs"
WORKERS = ("A", "B")
FINAL = ("SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")


def work_seconds(n: int) -> float:
    """How long job ``n`` works: 0.10 to 0.25 s (so 3 at once could do ~17 a second; the limiter says 10)."""
    return 0.10 + 0.05 * (n % 4)


def record_effect(path: str, line: str) -> None:
    """The job's side effect: one line appended with O_APPEND (atomic, and it survives a SIGKILL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def build(db: str, worker: str, concurrency: int, per_worker: int, limit: int, period: float) -> litedur.Engine:
    app = litedur.Engine(db, executor_id=f"worker-{worker}-{os.getpid()}")
    effects = db + ".effects"

    @app.step()
    def process(n: int) -> dict:
        time.sleep(work_seconds(n))  # the slow part
        record_effect(effects, f"done {n} by {worker}")  # the side effect, once per job
        return {"n": n, "square": n * n, "worker": worker}

    @app.workflow(name="job")
    def job(n: int) -> dict:
        return process(n)

    # Every process that runs the queue declares it with the same limits; they hold across all of them.
    limiter = {"limit": limit, "period": period}
    app.queue(QUEUE, concurrency=concurrency, worker_concurrency=min(per_worker, concurrency), limiter=limiter)
    return app


def run_worker(db: str, worker: str, options: argparse.Namespace) -> None:
    """Run queued jobs until this process's stdin closes (the parent closes it when all are done)."""
    limits = options.concurrency, options.worker_concurrency, options.limit, options.period
    with build(db, worker, *limits):  # launch(): its dispatcher takes work from the queue
        sys.stdin.read()


def spawn_worker(db: str, worker: str, options: argparse.Namespace) -> subprocess.Popen:
    limits = ["--concurrency", options.concurrency, "--worker-concurrency", options.worker_concurrency,
              "--limit", options.limit, "--period", options.period]  # fmt: skip
    command = [sys.executable, __file__, "--worker", worker, "--db", db, *map(str, limits)]
    return subprocess.Popen(command, stdin=subprocess.PIPE)


def worker_of(status: litedur.WorkflowStatus) -> str:
    """``A`` for a workflow that the executor ``worker-A-<pid>`` runs or ran."""
    return (status.executor_id or "?-?").split("-")[1]


def effect_counts(path: str) -> collections.Counter[int]:
    """How many times each job's side effect happened, from the effects file."""
    if not os.path.exists(path):
        return collections.Counter()
    with open(path, encoding="utf-8") as file:
        return collections.Counter(int(line.split()[1]) for line in file if line.startswith("done "))


def kill_between_checkpoints(
    client: litedur.Client, worker: subprocess.Popen, name: str, effects: str
) -> list[int] | None:
    """SIGKILL a worker that runs jobs, at a moment when none of them has done its side effect without
    recording its step (see the module docstring); the jobs it was running (None: it ran none, and
    was let go)."""
    while True:
        os.kill(worker.pid, signal.SIGSTOP)
        os.waitpid(worker.pid, os.WUNTRACED)  # returns once it is stopped (it is not reaped)
        running = [s for s in client.list_workflows(status="PENDING", queue=QUEUE) if worker_of(s) == name]
        done = effect_counts(effects)
        if not running:
            os.kill(worker.pid, signal.SIGCONT)
            return None
        if not any(done[s.inputs["args"][0]] and not client.list_steps(s.workflow_id) for s in running):
            worker.kill()
            worker.wait()
            return sorted(s.inputs["args"][0] for s in running)
        os.kill(worker.pid, signal.SIGCONT)  # one job is between its effect and its checkpoint
        time.sleep(0.003)


def wait_for_queue(db: str, timeout: float = 30.0) -> litedur.Client:
    """A client on ``db`` once a worker has created it and declared the queue."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = litedur.Client(db)
            if any(queue.name == QUEUE for queue in client.list_queues()):
                return client
            client.close()
        except litedur.DatabaseError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker declared the queue {QUEUE!r} in {db} within {timeout} s")
        time.sleep(0.02)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that contain one instant (an end before a start at the same time)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, change in edges:
        now += change
        most = max(most, now)
    return most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database file (default: a new temporary file)")
    parser.add_argument("--jobs", type=int, default=30, help="jobs to enqueue (default: 30)")
    parser.add_argument("--concurrency", type=int, default=3, help="jobs running at once, at most (default: 3)")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="in one worker, at most (default: 2)")
    parser.add_argument("--limit", type=int, default=10, help="starts per period, at most (default: 10)")
    parser.add_argument("--period", type=float, default=1.0, help="the limiter's period in seconds (default: 1)")
    parser.add_argument("--no-crash", action="store_true", help="do not kill a worker")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    db = options.db or os.path.join(tempfile.mkdtemp(prefix="litedur-queue-"), "jobs.db")
    if options.worker:
        run_worker(db, options.worker, options)
        return

    effects = db + ".effects"
    print(f"database: {db}  (from another terminal: litedur --db {db} queues)", file=sys.stderr)
    workers = {name: spawn_worker(db, name, options) for name in WORKERS}
    killed: tuple[str, list[int]] | None = None
    try:
        client = wait_for_queue(db)
        started = time.monotonic()
        ids = []
        for n in range(1, options.jobs + 1):
            with litedur.SetWorkflowID(f"job-{n:02d}"):  # a rerun on the same file finds the same jobs
                ids.append(client.enqueue(QUEUE, "job", n).workflow_id)  # by name: this process has no `job`

        columns = [TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}")]  # fmt: skip
        with Progress(*columns) as bar:
            task = bar.add_task("", total=len(ids))
            while True:
                statuses = {s.workflow_id: s for s in client.list_workflows(queue=QUEUE)}
                jobs = [statuses[i] for i in ids]
                done = sum(s.status in FINAL for s in jobs)
                running = collections.Counter(worker_of(s) for s in jobs if s.status == "PENDING")
                queued = sum(s.status == "ENQUEUED" for s in jobs)
                per_worker = ", ".join(f"{name} killed" if killed and killed[0] == name else f"{name} {running[name]}"
                                       for name in WORKERS)  # fmt: skip
                detail = f"running {sum(running.values())} ({per_worker})  queued {queued}"
                bar.update(task, completed=done, description=detail)
                if done == len(ids):
                    break
                if killed is None and not options.no_crash and done >= len(ids) // 2 and running:
                    victim = running.most_common(1)[0][0]
                    interrupted = kill_between_checkpoints(client, workers[victim], victim, effects)
                    if interrupted is not None:
                        killed = victim, interrupted
                        print(f"[worker {victim} killed with SIGKILL while running jobs {interrupted}; they go "
                              f"back to the queue]", file=sys.stderr, flush=True)  # fmt: skip
                if time.monotonic() - started > 120:
                    raise TimeoutError("the jobs did not finish within 120 s")
                time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.stdin.close()  # the worker shuts down once its stdin closes
        for worker in workers.values():
            worker.wait()

    jobs = [client.get_status(i) for i in ids]
    by_worker = collections.Counter(worker_of(s) for s in jobs if s.status == "SUCCESS")
    print(f"{by_worker.total()}/{len(ids)} jobs done in {elapsed:.1f} s: "
          + ", ".join(f"worker {name} {by_worker[name]}" for name in WORKERS))  # fmt: skip
    if killed is not None:
        victim, interrupted = killed
        survivor = next(name for name in WORKERS if name != victim)
        again = [s.inputs["args"][0] for s in jobs if s.recovery_attempts]
        print(f"worker {victim} was SIGKILLed running jobs {interrupted}; back in the queue: {again}, "
              f"finished by worker {survivor}")  # fmt: skip
    counts = effect_counts(effects)
    wrong = {n: counts[n] for n in range(1, options.jobs + 1) if counts[n] != 1}
    if wrong:
        print(f"side effects NOT exactly once (job: times): {wrong}")
    else:
        print(f"side effects: {sum(counts.values())} lines in {effects}, each job exactly once")
    intervals = [(step.started_at, step.finished_at) for i in ids for step in client.list_steps(i)]
    print(f"most jobs running at once (the steps' recorded times): {max_overlap(intervals)} "
          f"(concurrency {options.concurrency})")  # fmt: skip
    starts = sorted(start for start, _ in intervals)
    span = starts[-1] - starts[0] if starts else 0.0
    least = (math.ceil(len(ids) / options.limit) - 1) * options.period
    print(f"the limiter spread the starts over {span:.1f} s ({options.limit} per {options.period:g} s at most: "
          f"{len(ids)} starts take {least:g} s or more)")  # fmt: skip
    client.close()
    if wrong or by_worker.total() != len(ids):
        sys.exit(1)


if __name__ == "__main__":
    main()
