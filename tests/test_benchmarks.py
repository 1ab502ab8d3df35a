"""The benchmark suites run: `benchmarks/run.py --quick` exits 0 and prints a line for every workload;
`benchmarks/postgres.py --quick` too, on a throwaway PostgreSQL server (skipped where there is none).

No speed is asserted here (CI machines are noisy and shared); the figures are for people to read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
PG_SCRIPT = SCRIPT.parent / "postgres.py"
PG_WORKLOADS = ("RAW", "W1", "W2", "W3", "W4", "W5")
WORKLOADS = ("RAW", "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "IMPORT")


def test_quick_benchmark_runs_every_workload(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stdout.splitlines()
    for workload in WORKLOADS:
        assert any(line.startswith(f"{workload} ") for line in lines), f"no {workload} line in:\n{result.stdout}"
        assert f"| {workload} |" in result.stdout, f"no {workload} row in the Markdown table:\n{result.stdout}"
    assert not any("ERROR" in line for line in lines), result.stdout
    assert list(tmp_path.iterdir()) == [], "the suite left files behind"


def test_quick_postgres_benchmark_runs_every_workload() -> None:
    pytest.importorskip("psycopg", reason="the PostgreSQL benchmark needs psycopg 3 (litedur[postgres])")
    result = subprocess.run(
        [sys.executable, str(PG_SCRIPT), "--quick", "--no-dbos"], capture_output=True, text=True, timeout=300
    )
    if result.returncode == 2 and "no PostgreSQL server" in result.stderr:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    for workload in PG_WORKLOADS:
        assert f"| {workload} |" in result.stdout, f"no {workload} row in:\n{result.stdout}"
    assert "DBOS: skipped: --no-dbos" in result.stdout
    assert "ERROR" not in result.stdout, result.stdout
