"""The committed gRPC code is what scripts/gen-proto produces from proto/*.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-proto"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
