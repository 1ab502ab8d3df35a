"""The benchmark suite runs: `benchmarks/run.py --quick` exits 0 and prints a line for every workload.

No speed is asserted here (CI machines are noisy and shared); the figures are for people to read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
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
