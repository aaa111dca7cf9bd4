"""Running the `raftka` command as a user would: a real process, its output captured."""

from __future__ import annotations

import subprocess
import sys

RAFTKA = [sys.executable, "-m", "raftka"]


def raftka(*args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAFTKA, *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout)
