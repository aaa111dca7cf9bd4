"""A client in another language against a real broker: the Node.js example (examples/node, installed by
scripts/install-node-deps) creates a topic, produces protobuf records with headers, reads them back as
decoded records from offset 1 and as batches decoded with its own decoder of proto/BATCH_FORMAT.md,
and checks the batch test vectors. This test asserts what it printed, and reads the records with the
Python consumer too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


ROOT = Path(__file__).parents[2]
NODE_DIR = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node_deps() -> None:
    subprocess.run([str(ROOT / "scripts" / "install-node-deps")], check=True, timeout=300)


def test_the_node_client_produces_records_and_reads_them_back_both_ways(node_deps, broker, consume_all) -> None:
    done = subprocess.run(["node", "raftka-demo.js", "--bootstrap", broker.address, "--topic", "from-node",
                           "--from-offset", "1", "--vectors", str(ROOT / "proto" / "batch-vectors.json")],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    steps: dict[str, list[dict]] = {}
    for line in lines:
        steps.setdefault(line.pop("step"), []).append(line)
    assert steps["created"] == [{"topic": "from-node", "partitions": 1}]
    assert steps["produced"] == [{"base_offset": "0", "last_offset": "2"}]

    def content(records: list[dict]) -> list[tuple]:
        return [(r["offset"], r["key"], r["value"], [tuple(h) for h in r["headers"]]) for r in records]
    written: list[tuple[str, str | None, str, list[tuple[str, str | None]]]] = [
        ("0", "user-1", "signed up", [("trace-id", "t-001"), ("source", "node")]),
        ("1", None, "no key here", [("flag", None)]),
        ("2", "user-2", "logged in", [])]
    assert content(steps["record"]) == written[1:], "decoded records start at the requested offset"
    assert content(steps["batch-record"]) == written

    consumed = consume_all(broker.address, "from-node", 1)[0]
    assert [(str(r.offset), r.key, r.value, list(r.headers)) for r in consumed] == [
        (offset, key and key.encode(), value.encode(), [(k, v and v.encode()) for k, v in headers])
        for offset, key, value, headers in written]
    assert [r.timestamp for r in consumed] == [int(r["timestamp_ms"]) for r in steps["batch-record"]]

    vectors = {v["name"]: v for v in steps["vector"]}
    assert all(v["header_ok"] for v in vectors.values()), vectors
    assert {name for name, v in vectors.items() if v["records_ok"]} == {"two-records", "nulls-and-headers",
                                                                        "idempotent"}
    assert {name: v["codec"] for name, v in vectors.items() if v["records_ok"] is None} == {"zstd": "zstd",
                                                                                             "lz4": "lz4"}
    assert [(v["expected"], v["raised"]) for v in steps["invalid-vector"]] == [
        ("corrupt", "corrupt"), ("corrupt", "corrupt"), ("invalid", "invalid")]
    assert steps["done"] == [{}]
