"""`scripts/bench --quick --tls` runs end to end and writes well-formed results; timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from raftka.client.bench import RESULT_FIELDS, main

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_writes_one_json_line_per_measurement(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--tls",
                                "--output", str(output)], capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert {(r["workload"], r["msg_size"]) for r in results} >= {
        ("publish", 100), ("publish", 1024), ("consume", 100), ("consume", 1024), ("sync-publish", 100),
        ("end-to-end", 100), ("failover", 100), ("publish-batches", 100), ("publish-records", 100),
        ("sustained", 1024)}
    secure = {(r["workload"], r["msg_size"]) for r in results if r["system"] == "raftka+tls+acl"}
    assert secure == {("publish", 100), ("publish", 1024), ("sync-publish", 100), ("end-to-end", 100)}, \
        "the secure cluster's workloads ran as a principal its ACLs allow"
    for result in results:
        assert tuple(result) == RESULT_FIELDS
        assert result["system"] in ("raftka", "raftka+tls+acl")
        for name in ("msgs_per_s", "MB_per_s", "p50_ms", "p99_ms"):
            assert result[name] is None or result[name] >= 0
    paths = [r for r in results if r["workload"] in ("publish-batches", "publish-records")]
    assert all(r["broker_cpu_us_per_msg"] > 0 for r in paths), "the bench owns the brokers: their CPU is read"
    sustained = next(r for r in results if r["workload"] == "sustained")
    assert sustained["msgs_per_s"] > 0
    assert sustained["write_amp"] > 0, "the bench owns the brokers: their bytes written are read"
    assert sustained["broker_cpu_us_per_msg"] > 0, "and their CPU"
    assert "WORKLOAD" in completed.stdout, "a readable table is printed too"


def test_an_impossible_broker_count_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["--brokers", "0", "--output", str(tmp_path / "out.json")]) == 2
    assert "--brokers must be between 1 and 9" in capsys.readouterr().err
