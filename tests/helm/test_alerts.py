"""The alert rules of helm/raftka/alerts: valid for Prometheus, and each alert fires and stays silent as
its promtool unit tests (raftka.rules.test.yml) say. promtool comes from Debian's prometheus package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "helm" / "raftka" / "alerts"


@pytest.fixture(scope="module")
def promtool() -> str:
    subprocess.run([str(ROOT / "scripts" / "install-debian"), "prometheus"], check=True, timeout=600)
    found = shutil.which("promtool")
    assert found is not None
    return found


def test_the_rules_are_valid(promtool) -> None:
    result = subprocess.run([promtool, "check", "rules", str(ALERTS / "raftka.rules.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_unit_tests(promtool) -> None:
    result = subprocess.run([promtool, "test", "rules", "raftka.rules.test.yml"], cwd=ALERTS, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = (ALERTS / "raftka.rules.test.yml").read_text()
    rules = (ALERTS / "raftka.rules.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert len(alerts) == 6 and all(f"alertname: {alert}" in tested for alert in alerts)


def test_the_unit_tests_catch_a_wrong_threshold(promtool, tmp_path) -> None:
    """The unit tests can fail: with the disk alert's threshold moved, its expectations no longer hold."""
    for name in ("raftka.rules.yml", "raftka.rules.test.yml"):
        shutil.copy(ALERTS / name, tmp_path / name)
    rules = tmp_path / "raftka.rules.yml"
    rules.write_text(rules.read_text().replace("raftka_data_dir_capacity_bytes < 0.1",
                                               "raftka_data_dir_capacity_bytes < 0.6"))
    result = subprocess.run([promtool, "test", "rules", "raftka.rules.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "RaftkaDiskNearlyFull" in result.stdout + result.stderr
