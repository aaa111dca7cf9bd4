"""The README's quickstart and ten-line Python example work as written, and twice in a row (a reader
who runs them again must not meet an error)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def block_after(heading: str, language: str) -> str:
    section = README[README.index(heading):]
    block = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert block is not None, f"no {language} block after {heading!r}"
    return block.group(1)


def test_the_quickstart_runs_twice(start_cluster) -> None:
    brokers = start_cluster(3)
    env = {**os.environ, "RAFTKA_BOOTSTRAP": ",".join(b.address for b in brokers),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    commands = [line.split("  #")[0].strip() for line in block_after("## Quickstart", "sh").splitlines()]
    commands = [c for c in commands if c and not c.startswith(("source ", "export "))]
    assert len(commands) == 4
    for run in range(2):
        for command in commands:
            result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, (run, command, result.stderr)
            if " consume " in command:
                assert len(result.stdout.splitlines()) == 3 and result.stdout.startswith("line "), result.stdout


def test_the_ten_line_example_runs_twice(broker) -> None:
    code = block_after("## The Python API in ten lines", "python").replace("127.0.0.1:9092", broker.address)
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "b'customer-7'" in result.stdout
