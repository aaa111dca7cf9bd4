"""Quotas against a real broker: per principal, per client id and per both, with Kafka's precedence;
a caller over its quota is slowed to it without errors, while other callers are not slowed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Callable

import grpc
import pytest
from commands import raftka
from raftka.client.admin import Admin
from raftka.client.aio import AIOProducer
from raftka.client.consumer import Consumer
from raftka.client.local import LocalBroker
from raftka.client.producer import Producer
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import RecordInput, encode_batch
from raftka.wire.structs import TopicPartition
from waiting import wait_until

QUOTA = 200_000
WARM_UP_S, WINDOW_S = 3.0, 10.0
TOKENS = {"admin-token": "User:admin", "app-token": "User:app", "one-token": "User:one", "two-token": "User:two"}


@pytest.fixture
def secured(start_broker, tmp_path: Path) -> LocalBroker:
    """A broker that knows the principals of TOKENS, with the topic `quota`."""
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{token} {principal}\n" for token, principal in TOKENS.items()))
    broker = start_broker("--auth-token-file", str(tokens))
    with Admin(broker.address, token="admin-token") as admin:
        admin.create_topic("quota")
    return broker


def call_metadata(token: str, client_id: str | None = None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) + ((("raftka-client-id", client_id),) if client_id else ())


def throttle_of(broker: LocalBroker, token: str, client_id: str | None, size: int = 5000) -> int:
    """The throttle_time_ms of one produce of `size` bytes by that caller."""
    batch = encode_batch([RecordInput(None, b"v" * size, (), 0)])
    with grpc.insecure_channel(broker.address) as channel:
        response = api_pb2_grpc.BrokerStub(channel).Produce(
            api_pb2.ProduceRequest(topic="quota", partition=0, batches=batch), timeout=30,
            metadata=call_metadata(token, client_id))
    return response.throttle_time_ms


def throttled_seconds(broker: LocalBroker, kind: str, entity: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=10).read().decode()
    match = re.search(rf'^raftka_quota_throttle_seconds_total{{entity="{re.escape(entity)}",kind="{kind}"}} (\S+)$',
                      body, re.M)
    assert match is not None, f"no throttle series for {kind} {entity}"
    return float(match.group(1))


def test_client_id_quotas_follow_kafkas_precedence(secured) -> None:
    """A (principal, client id) quota holds only that client of the principal; it beats the
    principal's own quota; a client-id quota is one budget for every principal using the id."""
    with Admin(secured.address, token="admin-token") as admin:
        admin.set_quota("User:app", client_id="batch", produce_bytes_per_s=1000)
        assert throttle_of(secured, "app-token", "batch") > 0
        assert throttle_of(secured, "app-token", "web") == 0
        assert throttle_of(secured, "app-token", None) == 0

        admin.set_quota("User:app", produce_bytes_per_s=1000)
        admin.set_quota("User:app", client_id="fast", produce_bytes_per_s=10**9)
        assert throttle_of(secured, "app-token", "fast") == 0, "the (principal, client id) quota wins"
        assert throttle_of(secured, "app-token", "web") > 0, "other clients of the principal fall to its quota"

        admin.set_quota(client_id="shared", produce_bytes_per_s=1000)
        assert throttle_of(secured, "one-token", "shared") > 2000
        assert throttle_of(secured, "two-token", "shared", size=1) > 2000, "User:two pays for User:one's use"
        assert throttle_of(secured, "two-token", "own") == 0

        assert sorted((q.principal, q.client_id) for q in admin.list_quotas()) == [
            ("", "shared"), ("User:app", ""), ("User:app", "batch"), ("User:app", "fast")]
        admin.remove_quota("User:app", client_id="fast")
        assert sorted((q.principal, q.client_id) for q in admin.list_quotas()) == [
            ("", "shared"), ("User:app", ""), ("User:app", "batch")]
    assert throttled_seconds(secured, "produce", "user+client") > 0
    assert throttled_seconds(secured, "produce", "user") > 0
    assert throttled_seconds(secured, "produce", "client") > 0
    assert throttled_seconds(secured, "produce", "client-default") == 0


def test_every_client_carries_its_client_id(secured) -> None:
    """The AIO producer, the consumer and the admin client each send their client id on their calls:
    each is throttled by the quota of its client id, which the metric names by entity shape."""
    with Admin(secured.address, token="admin-token") as admin:
        admin.set_quota(client_id="aio", produce_bytes_per_s=1000)
        admin.set_quota("User:app", client_id="reader", fetch_bytes_per_s=1000)
        admin.set_quota("*", client_id="ops", requests_per_s=1)

    async def produce() -> None:
        async with AIOProducer(secured.address, token="app-token", client_id="aio") as producer:
            await producer.send_and_wait("quota", b"a" * 5000, partition=0)
    asyncio.run(produce())
    assert throttled_seconds(secured, "produce", "client") > 0

    with Consumer(secured.address, token="app-token", client_id="reader", auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("quota", 0)])
        wait_until(lambda: consumer.poll(timeout_ms=200), "the consumer read the record")
    assert throttled_seconds(secured, "fetch", "user+client") > 0

    with Admin(secured.address, token="app-token", client_id="ops") as admin:
        admin.list_topics()
    assert throttled_seconds(secured, "requests", "user-default+client") > 0


@pytest.mark.parametrize("client_id, error", [
    (("x" * 256,), "at most 255"),
    (("two words",), "other than visible ASCII"),
    (("*",), "reserved"),
    (("a", "b"), "at most one raftka-client-id"),
])
def test_a_bad_client_id_is_refused_and_the_broker_keeps_serving(secured, client_id, error) -> None:
    metadata = (("authorization", "Bearer app-token"), *(("raftka-client-id", value) for value in client_id))
    with grpc.insecure_channel(secured.address) as channel:
        stub = api_pb2_grpc.BrokerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Metadata(api_pb2.MetadataRequest(), timeout=10, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error in (info.value.details() or "")
        assert stub.Metadata(api_pb2.MetadataRequest(), timeout=10, metadata=call_metadata("app-token", "good.id-1"))
    with pytest.raises(ValueError, match=error if len(client_id) == 1 else "visible ASCII"):
        Producer(secured.address, client_id=",".join(client_id) if len(client_id) == 1 else "a\tb")


def test_cli_sets_lists_and_removes_quotas_by_entity(secured, tmp_path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text("admin-token\n")
    env = {**os.environ, "RAFTKA_BOOTSTRAP": secured.address, "RAFTKA_TOKEN_FILE": str(token_file)}

    cli = partial(raftka, env=env)

    for args in (("User:old", "--produce-rate", "1MB/s"),
                 ("--principal", "User:app", "--client-id", "batch", "--fetch-rate", "2MB/s"),
                 ("--client-id", "*", "--requests-per-s", "50")):
        done = cli("quota", "set", *args)
        assert done.returncode == 0, done.stderr
    listed = cli("quota", "list", "--format", "json")
    assert json.loads(listed.stdout) == [
        {"principal": "", "client_id": "*", "produce_bytes_per_s": 0, "fetch_bytes_per_s": 0, "requests_per_s": 50},
        {"principal": "User:app", "client_id": "batch", "produce_bytes_per_s": 0, "fetch_bytes_per_s": 2_000_000,
         "requests_per_s": 0},
        {"principal": "User:old", "client_id": "", "produce_bytes_per_s": 1_000_000, "fetch_bytes_per_s": 0,
         "requests_per_s": 0}]
    assert cli("quota", "list").stdout.splitlines()[0] == ("client_id=* produce_bytes_per_s=0 fetch_bytes_per_s=0 "
                                                              "requests_per_s=50")
    removed = cli("quota", "remove", "--principal", "User:app", "--client-id", "batch")
    assert removed.returncode == 0 and "quota of principal=User:app client_id=batch removed" in removed.stdout
    assert [q["principal"] for q in json.loads(cli("quota", "list", "--format", "json").stdout)] == ["", "User:old"]
    nameless = cli("quota", "set", "--produce-rate", "1MB/s")
    assert nameless.returncode == 2 and "name a principal" in nameless.stderr
    bad = cli("--client-id", "two words", "quota", "list")
    assert bad.returncode == 2 and "visible ASCII" in bad.stderr
    own = cli("--client-id", "ops-cli", "quota", "list")
    assert own.returncode == 0, own.stderr


def flood(address: str, token: str, client_id: str, stop: threading.Event,
          acked: list[tuple[float, int]], errors: list[BaseException]) -> None:
    """Produce as fast as the producer's (small) buffer lets it: only a quota holds it back."""
    def done(future) -> None:
        if future.exception() is not None:
            errors.append(future.exception())
        else:
            acked.append((time.monotonic(), 1000))

    with Producer(address, token=token, client_id=client_id, linger_ms=1, batch_size=16_384,
                  buffer_memory=512 * 1024) as producer:
        while not stop.is_set():
            producer.send("quota", b"x" * 1000, partition=0).add_done_callback(done)


def measure(address: str, floods: list[tuple[str, str]], other: Callable[[], Producer]) -> tuple[float, list[float]]:
    """Run the floods for WARM_UP_S + WINDOW_S while `other` sends a small record every 50 ms: the
    floods' acknowledged bytes per second over the window, and `other`'s latencies."""
    acked: list[tuple[float, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=flood, args=(address, token, client_id, stop, acked, errors), daemon=True)
               for token, client_id in floods]
    for thread in threads:
        thread.start()
    latencies = []
    with other() as producer:
        while time.monotonic() < started + WARM_UP_S + WINDOW_S:
            sent = time.monotonic()
            producer.send("quota", b"y" * 100, partition=0).result(timeout=30)
            latencies.append(time.monotonic() - sent)
            time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    begin, end = started + WARM_UP_S, started + WARM_UP_S + WINDOW_S
    return sum(size for at, size in acked if begin <= at < end) / WINDOW_S, latencies


@pytest.mark.slow
def test_a_producer_over_quota_is_slowed_to_it_and_another_principal_is_not(secured) -> None:
    with Admin(secured.address, token="admin-token") as admin:
        admin.set_quota("User:one", produce_bytes_per_s=QUOTA)
    rate, latencies = measure(secured.address, [("one-token", "")],
                              lambda: Producer(secured.address, token="two-token", linger_ms=0))
    print(f"quota {QUOTA} B/s: measured {rate:.0f} B/s; other principal's median latency "
          f"{statistics.median(latencies) * 1000:.1f} ms over {len(latencies)} sends")
    assert abs(rate - QUOTA) <= 0.1 * QUOTA, rate
    assert statistics.median(latencies) < 0.5


@pytest.mark.slow
def test_producers_sharing_a_client_id_share_its_quota_and_another_client_id_is_not_slowed(secured) -> None:
    """Two principals' producers with client id `batch` are slowed together to its quota; a producer
    of one of those principals with another client id keeps its latency."""
    with Admin(secured.address, token="admin-token") as admin:
        admin.set_quota(client_id="batch", produce_bytes_per_s=QUOTA)
    rate, latencies = measure(secured.address, [("one-token", "batch"), ("two-token", "batch")],
                              lambda: Producer(secured.address, token="one-token", client_id="web", linger_ms=0))
    print(f"client-id quota {QUOTA} B/s shared by two producers: measured {rate:.0f} B/s together; client id "
          f"web's median latency {statistics.median(latencies) * 1000:.1f} ms over {len(latencies)} sends")
    assert abs(rate - QUOTA) <= 0.1 * QUOTA, rate
    assert statistics.median(latencies) < 0.5
