"""The random workflow of the crash-injection and power-loss suites, built from a seed.

`shape_of(seed)` draws a workflow shape: steps with a side effect, some writing a stream through a
producer that resumes with ``already_written`` (one of them fails on its first attempt and is
retried), workflow-body stream writes (checkpoints), closes, writes to a closed stream that must be
refused, and sometimes a final exception (the workflow ends in ERROR). `build(app, shape, event)`
registers it on an engine. Everything the workflow stores is a function of the seed alone, except
the step outputs: each step returns a fresh token that its side effect also names, so a test can
tie every recorded output to the one side effect that produced it.

``event(kind, *fields)`` is told what happens, as it happens:

- ``body``: the workflow body (re)starts;
- ``w KEY VALUE``: write_stream(KEY, VALUE) returned (in the body, or in a step attempt);
- ``effect STEP TOKEN``: a step's side effect, just before it returns TOKEN;
- ``observed STEP TOKEN``: the body got TOKEN back from the step (run or replayed);
- ``refused KEY``: a write to a closed stream raised StreamClosedError, as it must.

Imported by the workers (their directory is on sys.path) and by the tests (which add it).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import litedur

KEYS = ("k0", "k1", "k2")
WORKFLOW_NAME = "fault"


class FaultError(Exception):
    """The exception a workflow that ends in ERROR raises (same message in every run of a seed)."""


class FlakyError(Exception):
    """Raised by the first attempt of the failing-then-retrying step."""


@dataclass(frozen=True)
class Op:
    """One thing the workflow body does.

    kind: ``step`` (a step; with ``key``, it writes ``count`` values there, resuming from
    already_written; with ``fail_at``, its first attempt raises after ``fail_at`` values),
    ``step_closed`` (a step that writes to the closed stream ``key`` and must be refused),
    ``body`` (``count`` checkpointed writes to ``key``), ``close`` (closes ``key``),
    ``closed_write`` (a body write to the closed stream ``key``, which must be refused).
    """

    index: int
    kind: str
    key: str | None = None
    count: int = 0
    fail_at: int | None = None


@dataclass(frozen=True)
class Shape:
    seed: int
    ops: tuple[Op, ...]
    ends_in_error: bool
    pace: float  # seconds a step producer sleeps after each value (spreads the run so kills land mid-way)

    @property
    def keys(self) -> list[str]:
        return sorted({op.key for op in self.ops if op.key is not None})

    @property
    def steps(self) -> list[Op]:
        return [op for op in self.ops if op.kind in ("step", "step_closed")]


def shape_of(seed: int) -> Shape:
    """The workflow shape of ``seed`` (deterministic)."""
    rng = random.Random(f"shape-{seed}")
    keys = list(KEYS[: rng.randint(1, len(KEYS))])
    open_keys, closed_keys = list(keys), []
    ops: list[Op] = []
    flaky_left = rng.random() < 0.7
    for index in range(rng.randint(3, 9)):
        roll = rng.random()
        if roll < 0.45 or not open_keys:
            key = rng.choice(open_keys) if open_keys and rng.random() < 0.85 else None
            count = rng.randint(1, 30) if key else 0
            fail_at = None
            if key and flaky_left and count >= 2:
                fail_at, flaky_left = rng.randint(1, count - 1), False
            ops.append(Op(index, "step", key, count, fail_at))
        elif roll < 0.7:
            ops.append(Op(index, "body", rng.choice(open_keys), rng.randint(1, 4)))
        elif roll < 0.82 and len(open_keys) > 0:
            key = rng.choice(open_keys)
            open_keys.remove(key)
            closed_keys.append(key)
            ops.append(Op(index, "close", key))
        elif closed_keys:
            kind = "closed_write" if rng.random() < 0.5 else "step_closed"
            ops.append(Op(index, kind, rng.choice(closed_keys)))
        else:
            ops.append(Op(index, "body", rng.choice(open_keys), 1))
    if flaky_left and open_keys:  # most workflows get their failing-then-retrying step
        count = rng.randint(2, 20)
        ops.append(Op(len(ops), "step", rng.choice(open_keys), count, rng.randint(1, count - 1)))
    for key in open_keys:  # some streams are closed by the workflow, the rest by its termination
        if rng.random() < 0.5:
            ops.append(Op(len(ops), "close", key))
    return Shape(seed, tuple(ops), rng.random() < 0.2, rng.choice([0.0, 0.0005, 0.001, 0.002]))


def value_of(op: Op, j: int) -> str:
    """The ``j``-th value op ``op`` writes."""
    return f"{'s' if op.kind == 'step' else 'b'}{op.index}.{j}"


def build(
    app: litedur.Engine,
    shape: Shape,
    event: Callable[..., None],
    pace: float | None = None,
    name: str = WORKFLOW_NAME,
) -> Callable[[int], Any]:
    """Register the workflow of ``shape`` (and its steps) on ``app`` as ``name``; returns the workflow."""
    pace = shape.pace if pace is None else pace
    steps: dict[int, Callable[[], str]] = {}

    def effect(op: Op) -> str:
        token = f"{os.getpid()}.{uuid.uuid4().hex[:12]}"
        event("effect", op.index, token)
        return token

    def make_step(op: Op) -> Callable[[], str]:
        retries = op.fail_at is not None

        @app.step(name=f"step{op.index}", max_attempts=3 if retries else 1, interval=0.001, backoff=1.0)
        def step() -> str:
            if op.kind == "step_closed":
                try:
                    app.write_stream(op.key, "never")
                except litedur.StreamClosedError:
                    event("refused", op.key)
                else:
                    raise AssertionError(f"a write to the closed stream {op.key!r} was accepted")
            elif op.key is not None:
                earlier = app.already_written(op.key)
                for j in range(len(earlier), op.count):
                    if j == op.fail_at and not earlier:
                        raise FlakyError(f"step {op.index} fails once at value {j}")
                    app.write_stream(op.key, value_of(op, j))
                    event("w", op.key, value_of(op, j))
                    if pace:
                        time.sleep(pace)
            return effect(op)

        return step

    for op in shape.steps:
        steps[op.index] = make_step(op)

    @app.workflow(name=name)
    def fault(seed: int) -> dict[str, int]:
        event("body")
        for op in shape.ops:
            if op.kind in ("step", "step_closed"):
                event("observed", op.index, steps[op.index]())
            elif op.kind == "body":
                for j in range(op.count):
                    app.write_stream(op.key, value_of(op, j))
                    event("w", op.key, value_of(op, j))
            elif op.kind == "close":
                app.close_stream(op.key)
            elif op.kind == "closed_write":
                try:
                    app.write_stream(op.key, "never")
                except litedur.StreamClosedError:
                    event("refused", op.key)
                else:
                    raise AssertionError(f"a write to the closed stream {op.key!r} was accepted")
        if shape.ends_in_error:
            raise FaultError(f"seed {seed} ends in ERROR")
        return {"seed": seed, "steps": len(steps)}

    return fault
