"""The README's library example runs as printed and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_opens_with_the_two_commands():
    first_block = re.search(r"^```sh\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert first_block is not None
    demo, tests = first_block.group(1).splitlines()
    assert demo.endswith("examples/chat.py") and tests.endswith("-m pytest -q")
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == tests


def run_block(example: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_library_example_streams_its_tokens_and_returns_its_result(tmp_path):
    example = python_blocks()[0]
    assert run_block(example, tmp_path) == "Durable streams keep every token in order . {'chars': 44}\n"


def test_the_communication_example_prints_what_its_comments_say(tmp_path):
    example = python_blocks()[1]
    assert run_block(example, tmp_path) == "waiting\nreply: approve, child says 42\n"
