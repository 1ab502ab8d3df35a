"""Retention figures (issue 13): how fast collection removes, the longest pause it causes a live writer
in another process, and the file size before and after collecting a large stream.

    python benchmarks/retention.py [--values 1000000] [--workflows 2000] [--dir DIR]

1. A file gets ``--workflows`` finished one-step workflows (each with a step and three stream
   values) and one finished workflow whose stream holds ``--values`` small values.
2. A writer process starts: a workflow whose step appends one small value per commit
   (``group_writes=False``) as fast as it can, noting the time of each commit. It first writes alone
   for a second (the baseline pauses), then this process collects everything finished
   (``garbage_collect(keep_last=0)``) while it writes.
3. Printed: workflows/s and values/s removed, the longest gap between two commits of the writer
   during the collection beside the longest during its solo second (p99 too), and the database file
   size before and after (after a checkpoint), with the live size for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import litedur

SMALL = {"t": "token", "n": 1}


def build(path: Path, workflows: int, values: int) -> None:
    app = litedur.Engine(path)

    @app.step(name="bench.small_step")
    def small_step(i: int) -> int:
        for _ in range(3):
            app.write_stream("s", SMALL)
        return i

    @app.workflow(name="bench.small")
    def small(i: int) -> int:
        return small_step(i)

    @app.step(name="bench.big_step")
    def big_step(n: int) -> int:
        for _ in range(n):
            app.write_stream("big", SMALL)
        return n

    @app.workflow(name="bench.big")
    def big(n: int) -> int:
        return big_step(n)

    with app:
        for i in range(workflows):
            small(i)
        big(values)


def writer(path: str, marks: str) -> None:
    """Child role: append values one commit each until ``marks`` + ".stop" exists; dump commit times."""
    app = litedur.Engine(path, group_writes=False)
    times: list[float] = []

    @app.step(name="bench.live_step")
    def live_step() -> int:
        stop = marks + ".stop"
        while not os.path.exists(stop):
            for _ in range(50):
                app.write_stream("live", SMALL)
                times.append(time.monotonic())
        return len(times)

    @app.workflow(name="bench.live")
    def live() -> int:
        return live_step()

    with app:
        live()
    Path(marks).write_text(json.dumps(times))


def gaps_ms(times: list[float], start: float, end: float) -> list[float]:
    inside = [t for t in times if start <= t <= end]
    return [1000 * (b - a) for a, b in zip(inside, inside[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--workflows", type=int, default=2_000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role == "writer":
        writer(rest[0], rest[1])
        return
    folder = Path(args.dir or tempfile.mkdtemp(prefix="litedur-retention-"))
    path = folder / "retention.db"
    started = time.monotonic()
    build(path, args.workflows, args.values)
    built = time.monotonic() - started
    print(f"built {args.workflows:,} workflows and a {args.values:,}-value stream in {built:.1f} s")
    client = litedur.Client(path)
    client._storage.checkpoint()
    size_before = os.path.getsize(path)

    marks = str(folder / "marks.json")
    child = subprocess.Popen([sys.executable, __file__, "--role", "writer", str(path), marks])
    while not client.list_workflows(name="bench.live"):
        time.sleep(0.01)
    time.sleep(0.2)  # let the writer get going
    solo_start = time.monotonic()
    time.sleep(1.0)
    solo_end = gc_start = time.monotonic()
    collected = client.garbage_collect(keep_last=0)
    gc_end = time.monotonic()
    Path(marks + ".stop").touch()
    child.wait(timeout=120)
    times = json.loads(Path(marks).read_text())

    client.garbage_collect(keep_last=0)  # the live workflow too, now that it ended
    client._storage.checkpoint()
    size_after = os.path.getsize(path)
    seconds = gc_end - gc_start
    solo, during = gaps_ms(times, solo_start, solo_end), gaps_ms(times, gc_start, gc_end)

    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100)[98] if len(values) > 100 else max(values)

    print(f"collected {len(collected.workflows):,} workflows and {collected.values:,} values in {seconds:.2f} s: "
          f"{len(collected.workflows) / seconds:,.0f} workflows/s, {collected.values / seconds:,.0f} values/s")
    print(f"writer commits: {len(during):,} during the collection ({len(solo):,} in its solo second)")
    print(f"longest pause of the writer: {max(during):.2f} ms during collection, {max(solo):.2f} ms alone; "
          f"p99 {p99(during):.3f} ms vs {p99(solo):.3f} ms")
    print(f"database file: {size_before / 1e6:.1f} MB before, {size_after / 1e6:.2f} MB after "
          f"({size_after / size_before:.1%})")


if __name__ == "__main__":
    main()
