"""The `raftka` command against real brokers, run as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RAFTKA = [sys.executable, "-m", "raftka"]


def raftka(*args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAFTKA, *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout)


def test_topic_commands_in_text_and_json(cli_env) -> None:
    created = raftka("topic", "create", "orders", "--partitions", "3", "--config", "retention.ms=3600000",
                     env=cli_env)
    assert created.returncode == 0, created.stderr
    assert "created topic orders with 3 partition(s)" in created.stdout
    listed = json.loads(raftka("topic", "list", "--format", "json", env=cli_env).stdout)
    assert [(t["name"], len(t["partitions"])) for t in listed] == [("orders", 3)]
    table = raftka("topic", "list", env=cli_env).stdout.splitlines()
    assert table[0].split() == ["TOPIC", "PARTITIONS", "REPLICATION"] and table[1].split() == ["orders", "3", "1"]
    described = json.loads(raftka("--format", "json", "topic", "describe", "orders", env=cli_env).stdout)
    assert described["config"]["retention.ms"] == "3600000"
    assert [p["leader"] for p in described["partitions"]] == [1, 1, 1]
    text = raftka("topic", "describe", "orders", env=cli_env).stdout
    assert "PARTITION" in text and "IN-SYNC" in text
    deleted = raftka("topic", "delete", "orders", env=cli_env)
    assert deleted.returncode == 0 and "deleted topic orders" in deleted.stdout
    assert json.loads(raftka("topic", "list", "--format", "json", env=cli_env).stdout) == []


def test_errors_are_one_clear_line_and_a_nonzero_exit(cli_env, free_port) -> None:
    bad = raftka("topic", "create", "bad/name", env=cli_env)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("raftka: InvalidTopicError: topic name 'bad/name'")
    missing = raftka("consume", "nope", "--timeout-ms", "100", env=cli_env)
    assert missing.returncode == 1 and "UnknownTopicError: unknown topic 'nope'" in missing.stderr
    produce = raftka("produce", "nope", env=cli_env, stdin="x\n")
    assert produce.returncode == 1 and "unknown topic 'nope'" in produce.stderr
    offset = raftka("consume", "nope", "--offset", "3", env=cli_env)
    assert offset.returncode == 2 and "--offset needs --partition" in offset.stderr
    no_id = raftka("broker", "--data-dir", "/tmp/x", env={k: v for k, v in cli_env.items() if k != "RAFTKA_ID"})
    assert no_id.returncode == 2 and "needs --id" in no_id.stderr
    unreachable = raftka("topic", "list", "--bootstrap", f"127.0.0.1:{free_port()}", "--request-timeout-ms", "1500",
                         env=cli_env)
    assert unreachable.returncode == 1 and "BrokerUnavailableError" in unreachable.stderr


def test_ten_thousand_lines_round_trip_exactly(cli_env) -> None:
    assert raftka("topic", "create", "lines", "--partitions", "3", env=cli_env).returncode == 0
    lines = [f"line {i} ünïcödé \t tabs and spaces " for i in range(10_000)]
    produced = raftka("produce", "lines", env=cli_env, stdin="\n".join(lines) + "\n")
    assert produced.returncode == 0, produced.stderr
    consumed = raftka("consume", "lines", "--from-beginning", "--max-messages", "10000", "--timeout-ms", "20000",
                      env=cli_env)
    assert consumed.returncode == 0, consumed.stderr
    assert sorted(consumed.stdout.splitlines()) == sorted(lines)
    again = raftka("consume", "lines", "--from-beginning", "--timeout-ms", "1500", env=cli_env)
    assert len(again.stdout.splitlines()) == 10_000, "--timeout-ms ends the consumer once it is idle"


def test_keys_partitions_offsets_and_json_records(cli_env) -> None:
    assert raftka("topic", "create", "keyed", "--partitions", "2", env=cli_env).returncode == 0
    produced = raftka("produce", "keyed", "--key-separator", ":", "--partition", "1", "--format", "json",
                      env=cli_env, stdin="k1:v1\nk2:v2:with colon\nno separator\n")
    assert produced.returncode == 0 and json.loads(produced.stdout) == {"acknowledged": 3}
    consumed = raftka("consume", "keyed", "--partition", "1", "--offset", "1", "--max-messages", "2",
                      "--format", "json", env=cli_env)
    records = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert [(r["partition"], r["offset"], r["key"], r["value"]) for r in records] == \
        [(1, 1, "k2", "v2:with colon"), (1, 2, None, "no separator")]
    printed = raftka("consume", "keyed", "--partition", "1", "--offset", "0", "--max-messages", "1",
                     "--print-key", env=cli_env)
    assert printed.stdout == "k1\tv1\n"


def test_raftka_local_starts_a_cluster_users_can_produce_to(tmp_path: Path, free_port) -> None:
    port = free_port()
    local = subprocess.Popen([*RAFTKA, "local", "--data-dir", str(tmp_path / "data"), "--base-port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bootstrap = None
        deadline = time.monotonic() + 60
        while bootstrap is None and time.monotonic() < deadline:
            line = local.stdout.readline()
            if line.startswith("bootstrap: "):
                bootstrap = line.split()[1]
        assert bootstrap == ",".join(f"127.0.0.1:{port + i}" for i in range(3)), "three brokers by default"
        env = {"RAFTKA_BOOTSTRAP": bootstrap, "PATH": "/usr/bin:/bin"}
        assert raftka("topic", "create", "demo", env=env).returncode == 0
        assert raftka("produce", "demo", env=env, stdin="hello\nworld\n").returncode == 0
        consumed = raftka("consume", "demo", "--from-beginning", "--max-messages", "2", env=env)
        assert consumed.stdout == "hello\nworld\n"
        described = json.loads(raftka("topic", "describe", "demo", "--format", "json", env=env).stdout)
        assert described["replication_factor"] == 3
        assert sorted(described["partitions"][0]["replicas"]) == [1, 2, 3]

        lines = [f"line {i}" for i in range(20_000)]
        producer = subprocess.Popen([*RAFTKA, "produce", "demo"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
        assert producer.stdin is not None
        producer.stdin.write("\n".join(lines[:10_000]) + "\n")
        producer.stdin.flush()
        victim = subprocess.run(["pgrep", "-f", f"broker --id 2 --listen 127.0.0.1:{port + 1}"],
                                capture_output=True, text=True).stdout.split()
        assert len(victim) == 1
        os.kill(int(victim[0]), signal.SIGKILL)
        _, produce_errors = producer.communicate("\n".join(lines[10_000:]) + "\n", timeout=120)
        assert producer.returncode == 0, produce_errors
        consumed = raftka("consume", "demo", "--from-beginning", "--max-messages", "20002", "--timeout-ms", "30000",
                          env=env, timeout=120)
        assert sorted(consumed.stdout.splitlines()) == sorted(["hello", "world", *lines])
    finally:
        local.send_signal(signal.SIGINT)
        out, err = local.communicate(timeout=30)
    assert local.returncode == 0, err
    assert "broker 2 exited (-9); restarting it" in out
    assert "Raftka local cluster stopped." in out
    assert (tmp_path / "data" / "broker-1.log").exists()
