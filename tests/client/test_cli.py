"""The `raftka` command against real brokers, run as a user would run it."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from commands import RAFTKA, raftka
from raftka import __version__ as raftka_version
from raftka.proto import api_pb2
from raftka.wire.batch import encode_batch


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


def test_topic_changes_and_the_cluster_description(cli_env) -> None:
    assert raftka("topic", "create", "changing", env=cli_env).returncode == 0
    produced = raftka("produce", "changing", env=cli_env, stdin="a\nb\nc\n")
    assert produced.returncode == 0, produced.stderr
    altered = raftka("topic", "alter-config", "changing", "--set", "retention.ms=60000", "--format", "json",
                     env=cli_env)
    assert altered.returncode == 0, altered.stderr
    assert {"name": "retention.ms", "value": "60000", "default": False} in json.loads(altered.stdout)
    shown = raftka("topic", "describe-config", "changing", env=cli_env).stdout.splitlines()
    assert shown[0].split() == ["KEY", "VALUE", "SOURCE"] and "retention.ms 60000 topic" in [
        " ".join(line.split()) for line in shown]
    bad = raftka("topic", "alter-config", "changing", "--set", "retention.ms=soon", env=cli_env)
    assert bad.returncode == 1 and "InvalidConfigError: topic config retention.ms='soon' is not" in bad.stderr
    grown = raftka("topic", "add-partitions", "changing", "--partitions", "3", env=cli_env)
    assert grown.returncode == 0 and "topic changing now has 3 partition(s)" in grown.stdout
    fewer = raftka("topic", "add-partitions", "changing", "--partitions", "2", env=cli_env)
    assert fewer.returncode == 1 and "InvalidPartitionsError: topic 'changing' has 3 partitions" in fewer.stderr
    trimmed = raftka("topic", "delete-records", "changing", "--offset", "0=2", "--format", "json", env=cli_env)
    assert json.loads(trimmed.stdout) == [{"partition": 0, "log_start_offset": 2}]
    past = raftka("topic", "delete-records", "changing", "--offset", "0=4", env=cli_env)
    assert past.returncode == 1 and "OffsetOutOfRangeError" in past.stderr and "high watermark is 3" in past.stderr
    consumed = raftka("consume", "changing", "--partition", "0", "--from-beginning", "--max-messages", "1",
                      env=cli_env)
    assert consumed.stdout == "c\n", consumed.stderr
    cluster = json.loads(raftka("cluster", "describe", "--format", "json", env=cli_env).stdout)
    assert cluster["controller"] == 1 and cluster["controllers"] == [1] and cluster["cluster_id"]
    assert [b["id"] for b in cluster["brokers"]] == [1]
    text = raftka("cluster", "describe", env=cli_env).stdout
    assert text.startswith(f"cluster {cluster['cluster_id']}  controller 1 ") and "controllers 1  learners -" in text


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


def test_a_consumer_whose_reader_goes_away_stops_quietly_as_a_pipe_writer_does(cli_env) -> None:
    """`raftka consume ... | head -n 3`: once head exits, the consumer stops with SIGPIPE's status and
    says nothing (it used to print `[Errno 32] Broken pipe` and exit 2)."""
    assert raftka("topic", "create", "piped", "--partitions", "1", env=cli_env).returncode == 0
    assert raftka("produce", "piped", env=cli_env, stdin="\n".join(map(str, range(5000))) + "\n").returncode == 0
    consumer = subprocess.Popen([*RAFTKA, "consume", "piped", "--from-beginning"], env=cli_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert consumer.stdout is not None and consumer.stderr is not None
    assert [consumer.stdout.readline() for _ in range(3)] == [b"0\n", b"1\n", b"2\n"]
    consumer.stdout.close()
    assert consumer.wait(timeout=30) == 128 + signal.SIGPIPE
    assert consumer.stderr.read() == b""


def test_keys_partitions_offsets_and_json_records(cli_env) -> None:
    assert raftka("topic", "create", "keyed", "--partitions", "2", env=cli_env).returncode == 0
    produced = raftka("produce", "keyed", "--key-separator", ":", "--on-missing-key", "keyless", "--partition", "1",
                      "--format", "json", env=cli_env, stdin="k1:v1\nk2:v2:with colon\nno separator\n")
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
    assert local.stdout is not None
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


def test_admin_commands_fail_at_once_when_no_broker_answers(cli_env, free_port) -> None:
    """A long request timeout must not turn a wrong address into a silent wait: nothing answering at
    the bootstrap is an error at once (the subprocess timeout would fail a hang)."""
    for command in (("topic", "list"), ("topic", "describe", "x"), ("group", "list"), ("group", "describe", "g")):
        for bootstrap in (f"127.0.0.1:{free_port()}", "nonexistent.invalid:9092"):
            result = raftka(*command, "--bootstrap", bootstrap, "--request-timeout-ms", "600000", env=cli_env,
                            timeout=60)
            assert result.returncode == 1, (command, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "BrokerUnavailableError: no broker answered" in result.stderr


def test_counts_below_one_are_refused_and_if_not_exists_succeeds(cli_env) -> None:
    for flag in ("--partitions", "--replication-factor"):
        refused = raftka("topic", "create", "zero", flag, "0", env=cli_env)
        assert refused.returncode == 2 and "must be 1 or more, not 0" in refused.stderr
    assert json.loads(raftka("topic", "list", "--format", "json", env=cli_env).stdout) == []
    first = raftka("topic", "create", "twice", "--partitions", "2", "--if-not-exists", env=cli_env)
    again = raftka("topic", "create", "twice", "--partitions", "5", "--if-not-exists", env=cli_env)
    assert first.returncode == again.returncode == 0, again.stderr
    assert "already exists with 2 partition(s)" in again.stdout
    plain = raftka("topic", "create", "twice", env=cli_env)
    assert plain.returncode == 1 and "TopicExistsError" in plain.stderr


def test_topic_list_states_the_same_facts_as_describe(cli_env) -> None:
    assert raftka("topic", "create", "facts", "--partitions", "2", env=cli_env).returncode == 0
    assert raftka("produce", "facts", "--partition", "1", env=cli_env, stdin="a\nb\n").returncode == 0
    [listed] = json.loads(raftka("topic", "list", "--format", "json", env=cli_env).stdout)
    described = json.loads(raftka("topic", "describe", "facts", "--format", "json", env=cli_env).stdout)
    assert listed == described
    assert [p["in_sync_replicas"] for p in listed["partitions"]] == [[1], [1]]
    assert [p["high_watermark"] for p in listed["partitions"]] == [0, 2]


def test_a_group_waiting_for_a_missing_topic_is_warned_about_and_described(cli_env) -> None:
    waiting = raftka("consume", "not-yet", "--group", "patient", "--timeout-ms", "1500", env=cli_env)
    assert waiting.returncode == 0, waiting.stderr
    assert "topic 'not-yet' does not exist (yet); waiting for it to be created" in waiting.stderr
    groups = json.loads(raftka("group", "list", "--format", "json", env=cli_env).stdout)
    assert [g["group"] for g in groups] == ["patient"]
    described = raftka("group", "describe", "patient", "--format", "json", env=cli_env)
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["members"] == []


def test_lines_without_the_key_separator_and_binary_values(cli_env) -> None:
    assert raftka("topic", "create", "bin", env=cli_env).returncode == 0
    refused = raftka("produce", "bin", "--key-separator", ":", env=cli_env, stdin="k:v\nno separator\n")
    assert refused.returncode == 2 and "line 2 has no key separator ':'" in refused.stderr
    payload = bytes(range(256))
    encoded = base64.b64encode(payload).decode()
    sent = raftka("produce", "bin", "--value-format", "base64", "--key-separator", " ", env=cli_env,
                  stdin=f"k {encoded}\n")
    assert sent.returncode == 0, sent.stderr
    bad = raftka("produce", "bin", "--value-format", "base64", env=cli_env, stdin="not base64!\n")
    assert bad.returncode == 2 and "line 1: the value is not base64" in bad.stderr
    records = [json.loads(line) for line in raftka("consume", "bin", "--offset", "start", "--max-messages", "2",
                                                   "--format", "json", env=cli_env).stdout.splitlines()]
    assert [(r["key"], r["value"]) for r in records] == [("k", "v"), ("k", {"base64": encoded})]


def test_headers_keys_and_where_consuming_starts(cli_env) -> None:
    assert raftka("topic", "create", "hdr", env=cli_env).returncode == 0
    old = raftka("produce", "hdr", "--key", "fixed", "--header", "trace=1", "--header", "trace=2",
                 "--header", "kind=old", env=cli_env, stdin="first\n")
    assert old.returncode == 0, old.stderr
    cut = datetime.now(UTC)
    time.sleep(0.05)
    assert raftka("produce", "hdr", "--header", "kind=new", env=cli_env, stdin="second\n").returncode == 0
    [first] = [json.loads(line) for line in raftka("consume", "hdr", "--offset", "start", "--max-messages", "1",
                                                   "--format", "json", env=cli_env).stdout.splitlines()]
    assert first["key"] == "fixed"
    assert first["headers"] == [["trace", "1"], ["trace", "2"], ["kind", "old"]]
    text = raftka("consume", "hdr", "--offset", "start", "--max-messages", "2", "--print-key", "--print-headers",
                  env=cli_env).stdout
    assert text == "fixed\ttrace=1,trace=2,kind=old\tfirst\n\tkind=new\tsecond\n"
    since = raftka("consume", "hdr", "--from-timestamp", cut.isoformat(), "--max-messages", "1", env=cli_env)
    assert since.stdout == "second\n"
    for age in ("1h", "--from-timestamp=-1h"):
        arguments = ("--from-timestamp", age) if not age.startswith("--") else (age,)
        recent = raftka("consume", "hdr", *arguments, "--max-messages", "2", env=cli_env)
        assert recent.stdout == "first\nsecond\n", recent.stderr
    at_end = raftka("consume", "hdr", "--offset", "end", "--timeout-ms", "1000", env=cli_env)
    assert at_end.returncode == 0 and at_end.stdout == ""
    negative = raftka("consume", "hdr", "--timeout-ms", "-1", env=cli_env)
    assert negative.returncode == 2 and "--timeout-ms must be 0 or more" in negative.stderr
    bad_age = raftka("consume", "hdr", "--from-timestamp", "5x", env=cli_env)
    assert bad_age.returncode == 2 and "expected ISO 8601" in bad_age.stderr
    bad_unit = raftka("consume", "hdr", "--from-timestamp", "5.5.5m", env=cli_env)
    assert bad_unit.returncode == 2 and "expected an age such as 5m" in bad_unit.stderr


def test_reset_plans_say_where_a_target_was_clamped(cli_env) -> None:
    assert raftka("topic", "create", "clamp", env=cli_env).returncode == 0
    assert raftka("produce", "clamp", env=cli_env, stdin="a\nb\nc\n").returncode == 0
    plan = raftka("group", "reset-offsets", "g", "--topic", "clamp", "--to-offset", "-5", env=cli_env)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[1].split() == ["clamp", "0", "-", "0", "-5", "is", "outside", "the", "log,",
                                                   "clamped"]
    shifted = json.loads(raftka("group", "reset-offsets", "g", "--topic", "clamp", "--to-offset", "999",
                                "--format", "json", env=cli_env).stdout)
    assert shifted["offsets"] == [{"topic": "clamp", "partition": 0, "current": None, "requested": 999, "new": 3,
                                   "clamped": True}]


def test_version_names_the_client_and_the_cluster(cli_env, free_port) -> None:
    version = raftka("--version", env=cli_env)
    assert version.returncode == 0
    assert version.stdout.splitlines() == [f"raftka {raftka_version} (client)",
                                           f"raftka {raftka_version} (cluster raftka-local, broker at "
                                           f"{cli_env['RAFTKA_BOOTSTRAP']})"]
    alone = raftka("--bootstrap", f"127.0.0.1:{free_port()}", "--version", env=cli_env)
    assert alone.returncode == 0 and alone.stdout.splitlines()[1].startswith("cluster: no broker answered")


def test_broker_id_from_a_stateful_set_host_name() -> None:
    """A StatefulSet names its pods `<name>-0`, `<name>-1`, ...; broker ids start at 1."""
    from raftka.cluster.cli import id_from_name

    assert id_from_name("raftka-0", 1) == 1
    assert id_from_name("raftka-12", 1) == 13
    assert id_from_name("broker7", 0) == 7
    with pytest.raises(ValueError, match="does not end in a number"):
        id_from_name("raftka-a", 1)


def test_a_null_header_value_prints_as_empty(cli_env, stubs) -> None:
    """Another client may write a header with a null value (the Raftka producer never does)."""
    broker_stub, _ = stubs
    assert raftka("topic", "create", "nulls", env=cli_env).returncode == 0
    batch = encode_batch([(None, b"v", [("trace", None), ("kind", b"x")], 1_700_000_000_000)])
    broker_stub.Produce(api_pb2.ProduceRequest(topic="nulls", partition=0, batches=batch), timeout=10)
    text = raftka("consume", "nulls", "--offset", "start", "--max-messages", "1", "--print-headers", env=cli_env)
    assert text.returncode == 0, text.stderr
    assert text.stdout == "trace=,kind=x\tv\n"


def test_scale_check_refuses_until_the_brokers_above_n_are_decommissioned(start_cluster, joiner) -> None:
    """What the Helm chart's pre-upgrade hook runs: dropping to 3 pods would remove broker 4, which
    still holds replicas, until `raftka broker decommission 4 --wait` has moved them and it has left."""
    founders = start_cluster(3)
    joiner(4, founders).start(30)
    env = {**os.environ, "RAFTKA_BOOTSTRAP": founders[0].address}
    assert raftka("topic", "create", "spread", "--partitions", "4", "--replication-factor", "3",
                  env=env).returncode == 0
    described = json.loads(raftka("topic", "describe", "spread", "--format", "json", env=env).stdout)
    on_four = [f"spread/{p['partition']}" for p in described["partitions"] if 4 in p["replicas"]]
    assert on_four, "placement spreads replicas onto the joiner"

    refused = raftka("cluster", "scale-check", "--brokers", "3", env=env)
    assert refused.returncode == 1
    assert f"broker 4: learner, not draining, {len(on_four)} replica(s): {', '.join(on_four)}" in refused.stderr
    assert "raftka broker decommission 4 --wait" in refused.stderr
    as_json = json.loads(raftka("cluster", "scale-check", "--brokers", "3", "--format", "json", env=env).stdout)
    assert as_json == {"brokers": 3, "safe": False, "remaining": [
        {"id": 4, "role": "learner", "draining": False, "replicas": len(on_four), "partitions": on_four}]}
    assert raftka("cluster", "scale-check", "--brokers", "4", env=env).returncode == 0
    assert raftka("cluster", "scale-check", "--brokers", "0", env=env).returncode == 2

    decommissioned = raftka("broker", "decommission", "4", "--wait", env=env, timeout=120)
    assert decommissioned.returncode == 0, decommissioned.stderr
    allowed = raftka("cluster", "scale-check", "--brokers", "3", env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "a scale-down to 3 broker(s) is safe: no broker above 3 is in the cluster\n"
