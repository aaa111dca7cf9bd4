"""Rendering helm/raftka offline with `helm template` (helm from scripts/install-helm): the chart tests
(tests/helm) check the rendered objects; the container tests (tests/container) start the rendered pods."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "raftka"
RELEASE, NAMESPACE = "rk", "streams"
FULLNAME = "rk-raftka"
POD_DOMAIN = f"{FULLNAME}-headless.{NAMESPACE}.svc.cluster.local"
BOOTSTRAP = f"{FULLNAME}.{NAMESPACE}.svc.cluster.local:9092"

Helm = tuple[str, dict[str, str]]
"""The helm binary and the environment to run it in."""


def install_helm(home: Path) -> Helm:
    """scripts/install-helm's binary, with HOME and the HELM_* directories private under `home`."""
    binary = subprocess.run([str(ROOT / "scripts" / "install-helm")], capture_output=True, text=True, check=True,
                            timeout=300).stdout.strip()
    env = {**os.environ, "HOME": str(home), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    return binary, env


def run_helm(helm: Helm, *args: str) -> subprocess.CompletedProcess[str]:
    binary, env = helm
    return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60)


def render_text(helm: Helm, *args: str) -> str:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(helm: Helm, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every rendered object by (kind, name)."""
    return {(doc["kind"], doc["metadata"]["name"]): doc
            for doc in yaml.safe_load_all(render_text(helm, *args)) if doc}


def broker_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The StatefulSet's one container, the broker."""
    [container] = objects[("StatefulSet", FULLNAME)]["spec"]["template"]["spec"]["containers"]
    return container
