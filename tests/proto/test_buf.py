"""API hygiene with buf (the npm package @bufbuild/buf, pinned, from scripts/install-node-deps):
`buf lint` passes with proto/buf.yaml, and `buf breaking` finds nothing in proto/api.proto that
breaks the released API (proto/released/api.proto). A breaking edit is made in a copy to show that
the check can fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
BUF = ROOT / "examples" / "node" / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def buf() -> Path:
    subprocess.run([str(ROOT / "scripts" / "install-node-deps")], check=True, timeout=300)
    return BUF


def run(buf: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def released(tmp_path: Path) -> Path:
    """The released proto in a folder of its own: buf refuses an input inside the current module."""
    against = tmp_path / "released"
    against.mkdir()
    shutil.copy(PROTO / "released" / "api.proto", against / "api.proto")
    return against


def test_buf_lint_passes(buf: Path) -> None:
    done = run(buf, "lint", cwd=PROTO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_api_keeps_everything_it_released(buf: Path, tmp_path: Path) -> None:
    done = run(buf, "breaking", ".", "--against", str(released(tmp_path)), cwd=PROTO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_renumbered_field_is_reported_as_breaking(buf: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(PROTO, changed, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    api = changed / "api.proto"
    text = api.read_text()
    assert "uint32 timeout_ms = 6;" in text
    api.write_text(text.replace("uint32 timeout_ms = 6;", "uint32 timeout_ms = 60;"))
    done = run(buf, "breaking", ".", "--against", str(released(tmp_path)), cwd=changed)
    assert done.returncode != 0 and 'Previously present field "6" with name "timeout_ms"' in done.stdout
