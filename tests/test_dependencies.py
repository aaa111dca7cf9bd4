"""Dependencies run one way, and a concept has one name.

The direction, bottom to top (a module may import what is below it on its line, never across or up)::

    entry points (raftka, raftka.cli, raftka.__main__, raftka.aio)
        -> client -> wire -> errors -> proto
        -> cluster -> replication -> partition -> wire -> errors -> proto

So the client and the broker (cluster) never import each other: what both need (the record-batch
format, the partitioning rule, TopicPartition, address parsing) is in `wire`, and the `raftka`
command meets both only in `raftka.cli`. The one exception is `from raftka import __version__`, a
constant of the root package that imports nothing. Every import counts, including those inside
functions and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BELOW = {
    "proto": set(),
    "errors": {"proto"},
    "wire": {"errors", "proto"},
    "partition": {"wire", "errors", "proto"},
    "replication": {"partition", "wire", "errors", "proto"},
    "cluster": {"replication", "partition", "wire", "errors", "proto"},
    "client": {"wire", "errors", "proto"},
    "entry": {"client", "cluster", "replication", "partition", "wire", "errors", "proto"},
}
"""What each part may import besides itself."""

ENTRY_MODULES = {"__init__", "__main__", "cli", "aio"}
"""The root package's modules that are entry points (the root package is `raftka` itself)."""


TOP_LEVEL = set(BELOW) | ENTRY_MODULES
"""The root package's packages and modules (any other name imported from `raftka` is the root's own)."""


def installed_packages() -> list[str]:
    """The packages pyproject.toml installs, as folders of the repository ("" for the root)."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return [name.removeprefix("raftka").removeprefix(".").replace(".", "/") for name in packages]


def modules() -> dict[str, Path]:
    """Every installed module by dotted name, `raftka.<package>.<module>` (the root's as `raftka.<module>`)."""
    found = {}
    for package in installed_packages():
        for path in sorted((ROOT / package).glob("*.py")):
            found[".".join(filter(None, ("raftka", package.replace("/", "."), path.stem)))] = path
    return found


def part_of(module: str) -> str:
    """The part of the direction a dotted module name belongs to (a new one is in no part of BELOW)."""
    name = module.split(".")[1] if "." in module else "__init__"
    return "entry" if name in ENTRY_MODULES else name


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported raftka module or root-package name) of every import in the module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(filter(None, (base, node.module)))
            if source == "raftka":
                found += [(node.lineno, f"raftka.{alias.name}" if alias.name in TOP_LEVEL else "raftka")
                          for alias in node.names if alias.name != "__version__"]
            else:
                found.append((node.lineno, source))
    return [(line, name) for line, name in found if name == "raftka" or name.startswith("raftka.")]


def test_every_folder_with_an_init_is_installed() -> None:
    folders = {path.parent.name for path in ROOT.glob("*/__init__.py")} | {""}
    assert folders == set(installed_packages())


def test_imports_follow_the_dependency_direction() -> None:
    found = modules()
    assert {part_of(m) for m in found} <= set(BELOW), "every part of the tree has a place in BELOW"
    against = []
    for module, path in found.items():
        here = part_of(module)
        for line, imported in imports(module, path):
            there = part_of(imported)
            if there != here and there not in BELOW[here]:
                against.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {imported} ({there})")
    assert not against, "imports against the direction:\n" + "\n".join(against)


def type_names(tree: ast.Module) -> list[str]:
    """The public classes and type aliases (`Name = tuple[str, int]`) a module defines."""
    names = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    names += [node.targets[0].id for node in tree.body if isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name) and node.targets[0].id[:1].isupper()
              and not node.targets[0].id.isupper() and isinstance(node.value, (ast.Subscript, ast.BinOp))]
    return [name for name in names if not name.startswith("_")]


def test_no_type_name_is_defined_twice() -> None:
    """Two classes (or type aliases) of one name in two modules are one concept told twice, or two
    concepts that need names of their own (generated protobuf code aside)."""
    defined = defaultdict(list)
    for module, path in modules().items():
        if not path.stem.endswith(("_pb2", "_pb2_grpc")):
            for name in type_names(ast.parse(path.read_text())):
                defined[name].append(module)
    assert {name: places for name, places in defined.items() if len(places) > 1} == {}
