"""The committed gRPC code is what scripts/gen-proto produces from proto/*.proto, and the versions
around it agree: the pinned generator, the lock, and the runtime lower bounds in pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def gen_proto_check(proto_dir: Path = PROTO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-proto"), "--check",
                           "--proto-dir", str(proto_dir)], capture_output=True, text=True)


def search(pattern: str, text: str, flags: int = 0) -> re.Match[str]:
    found = re.search(pattern, text, flags)
    assert found is not None, f"{pattern!r} not found"
    return found


def stamped_versions() -> tuple[str, str]:
    """(GRPC_GENERATED_VERSION, protobuf gencode version) as written in the committed code."""
    grpc_versions = {search(r"^GRPC_GENERATED_VERSION = '([^']+)'$", p.read_text(), re.M).group(1)
                     for p in PROTO.glob("*_pb2_grpc.py")}
    protobuf_versions = {".".join(search(r"Domain\.PUBLIC,\n\s+(\d+),\n\s+(\d+),\n\s+(\d+),",
                                            p.read_text()).groups())
                         for p in PROTO.glob("*_pb2.py")}
    assert len(grpc_versions) == 1 and len(protobuf_versions) == 1, (grpc_versions, protobuf_versions)
    return grpc_versions.pop(), protobuf_versions.pop()


def project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    return {r.name: r for r in requirements}


def lower_bound(requirement: Requirement) -> str:
    (bound,) = [s.version for s in requirement.specifier if s.operator == ">="]
    return bound


def test_generated_code_is_current() -> None:
    result = gen_proto_check()
    assert result.returncode == 0, result.stderr


def test_check_ignores_the_generators_version_stamps(tmp_path: Path) -> None:
    copy = shutil.copytree(PROTO, tmp_path / "proto")
    grpc_version, protobuf_version = stamped_versions()
    major, minor, patch = protobuf_version.split(".")
    for path in copy.glob("*_pb2*.py"):
        text = path.read_text()
        restamped = (text.replace(f"GRPC_GENERATED_VERSION = '{grpc_version}'", "GRPC_GENERATED_VERSION = '1.99.7'")
                     .replace(f"Protobuf Python Version: {protobuf_version}", "Protobuf Python Version: 7.99.3")
                     .replace(f"    {major},\n    {minor},\n    {patch},\n", f"    {major},\n    99,\n    3,\n"))
        assert restamped != text, path.name
        path.write_text(restamped)
    result = gen_proto_check(copy)
    assert result.returncode == 0, result.stderr


def test_check_fails_when_a_proto_file_changes(tmp_path: Path) -> None:
    copy = shutil.copytree(PROTO, tmp_path / "proto")
    api = copy / "api.proto"
    api.write_text(api.read_text() + "\nmessage AddedSinceGeneration {\n  int32 field = 1;\n}\n")
    result = gen_proto_check(copy)
    assert result.returncode == 1
    assert "api_pb2.py" in result.stderr and "raft_pb2.py" not in result.stderr


def test_check_fails_when_generated_code_is_edited(tmp_path: Path) -> None:
    copy = shutil.copytree(PROTO, tmp_path / "proto")
    stub = copy / "api_pb2_grpc.py"
    stub.write_text(stub.read_text().replace("'/raftka.v1.Broker/Produce'", "'/raftka.v1.Broker/Produce2'"))
    result = gen_proto_check(copy)
    assert result.returncode == 1
    assert "api_pb2_grpc.py" in result.stderr


def test_runtime_lower_bounds_are_what_the_generated_code_requires() -> None:
    grpc_version, protobuf_version = stamped_versions()
    requirements = project_requirements()
    assert lower_bound(requirements["grpcio"]) == grpc_version
    assert lower_bound(requirements["protobuf"]) == protobuf_version


def test_the_generator_is_pinned_to_the_release_that_generated_the_code() -> None:
    grpc_version, _ = stamped_versions()
    assert str(project_requirements()["grpcio-tools"].specifier) == f"=={grpc_version}"
    lock = (ROOT / "requirements" / "test.txt").read_text()
    assert re.search(rf"^grpcio-tools=={re.escape(grpc_version)} ", lock, re.M), \
        "requirements/test.txt is out of date: run scripts/lock"
