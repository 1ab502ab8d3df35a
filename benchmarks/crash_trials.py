"""The long mode of the crash-injection harness (tests/test_crash_injection.py).

    python benchmarks/crash_trials.py --trials 1000 [--first-seed 1] [--jobs 2] [--keep DIR]
    python benchmarks/crash_trials.py --seed N          # replay one trial, verbosely
    python benchmarks/crash_trials.py --trials 200 --postgres postgresql://...   # on PostgreSQL

Runs seeded trials (each: a random workflow SIGKILLed at random moments and relaunched until it
ends, with an attached reader process and a reference run of the same seed), ``--jobs`` at a time,
each job with its own attached reader. Prints one line per failed trial, naming its seed, and at
the end ``trials, lost, doubled, stuck, failures``. Exits 1 if any trial failed. The directories
of failed trials are kept (under ``--keep``, default a temporary directory) for inspection.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import test_crash_injection as harness  # noqa: E402
from pg_server import with_schema  # noqa: E402


def where(keep: Path, postgres: str | None) -> Callable[[str], str]:
    """Where a trial's database named ``name`` (``trial-<seed>/<kind>.db``) goes: under ``keep``, or
    in a fresh schema of the ``postgres`` server."""
    if postgres is None:
        return lambda name: str(keep / name)
    run = uuid.uuid4().hex[:8]
    return lambda name: with_schema(postgres, f"c{run}_" + re.sub(r"\W", "_", name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, help="replay this one trial and describe it")
    parser.add_argument("--jobs", type=int, default=2, help="trials run at once (default 2)")
    parser.add_argument("--keep", type=Path, help="where to keep the directories of failed trials")
    parser.add_argument("--postgres", metavar="URL", help="run the trials on this PostgreSQL server (a schema each)")
    args = parser.parse_args()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="litedur-crash-"))
    keep.mkdir(parents=True, exist_ok=True)
    location = where(keep, args.postgres)

    if args.seed is not None:
        print(f"shape: {harness.fault_shape.shape_of(args.seed)}")
        print(f"plan:  {harness.plan_of(args.seed)}")
        reader = harness.AttachedReader()
        try:
            trial = harness.run_trial(args.seed, keep / f"trial-{args.seed}", reader, location)
        finally:
            reader.close()
        print(trial.report() if trial.failed else f"seed {args.seed} ok: {trial}")
        print(f"files: {keep / f'trial-{args.seed}'}")
        return 1 if trial.failed else 0

    seeds = list(range(args.first_seed, args.first_seed + args.trials))
    summary = harness.Summary()
    lock = threading.Lock()
    started = time.monotonic()

    def work() -> None:
        reader = harness.AttachedReader()
        try:
            while True:
                with lock:
                    if not seeds:
                        return
                    seed = seeds.pop(0)
                directory = keep / f"trial-{seed}"
                try:
                    trial = harness.run_trial(seed, directory, reader, location)
                except Exception as exc:  # a harness error is a failure of its own, with its seed
                    trial = harness.Trial(seed, other=[f"harness error: {type(exc).__name__}: {exc}"])
                if not reader.alive():
                    trial.other.append("the attached reader process died")
                    reader = harness.AttachedReader()
                with lock:
                    summary.trials.append(trial)
                    done = len(summary.trials)
                    if trial.failed:
                        print(trial.report(), flush=True)
                    elif done % 50 == 0:
                        print(
                            f"[{done}/{args.trials}] {summary.line()} ({time.monotonic() - started:.0f} s)", flush=True
                        )
                if not trial.failed:
                    shutil.rmtree(directory, ignore_errors=True)
        finally:
            reader.close()

    threads = [threading.Thread(target=work) for _ in range(max(1, args.jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trials = summary.trials
    print(f"seconds: {time.monotonic() - started:.0f}; {summary.line()}")
    print("trials, lost, doubled, stuck, failures")
    print(
        f"{len(trials)}, {sum(bool(t.lost) for t in trials)}, {sum(bool(t.doubled) for t in trials)}, "
        f"{sum(bool(t.stuck) for t in trials)}, {sum(t.failed for t in trials)}"
    )
    failed = sorted(t.seed for t in trials if t.failed)
    if failed:
        print(f"failed seeds: {failed} (kept in {keep})")
    else:
        shutil.rmtree(keep, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
