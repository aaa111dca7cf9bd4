"""A broker is SERVING only once it can serve (gRPC health and the metrics port's HTTP probes agree),
and a broker that stops gracefully hands the leadership of every group it leads to an in-sync follower
first, so a rolling restart costs its clients a redirect, not an election timeout."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftka import Admin
from raftka.client.local import LocalBroker, free_port, plan


def health(address: str, service: str = "") -> int | None:
    try:
        with grpc.insecure_channel(address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2).status
    except grpc.RpcError:
        return None


def http_probe(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on the metrics port, as a kubelet httpGet probe sends it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_broker_is_not_serving_until_its_cluster_has_a_metadata_leader(tmp_path) -> None:
    brokers = plan(3, tmp_path, [free_port() for _ in range(3)], metrics_ports=[free_port() for _ in range(3)])
    first = brokers[0].spawn()
    assert first.metrics_port is not None
    try:
        deadline = time.monotonic() + 30
        while (status := health(first.address)) is None:
            assert time.monotonic() < deadline and first.alive(), first.log()[-2000:]
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING, "one broker of three cannot serve alone"
        assert health(first.address, "raftka.v1.Broker") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(first.address, "liveness") == health_pb2.HealthCheckResponse.SERVING, \
            "liveness does not depend on the quorum"
        assert http_probe(first.metrics_port, "/healthz/ready") == (503, "NOT_SERVING\n")
        assert http_probe(first.metrics_port, "/healthz/live") == (200, "SERVING\n")
        for broker in brokers[1:]:
            broker.spawn()
        for broker in brokers:
            broker.wait()
        assert health(first.address) == health_pb2.HealthCheckResponse.SERVING
        assert http_probe(first.metrics_port, "/healthz/ready") == (200, "SERVING\n")
        assert http_probe(first.metrics_port, "/healthz/live") == (200, "SERVING\n")
        status, body = http_probe(first.metrics_port, "/metrics")
        assert status == 200 and "raftka_partitions" in body, "the metrics are still served beside the probes"
    finally:
        for broker in brokers:
            broker.stop()


def test_a_stopping_broker_hands_off_leadership_and_producers_see_no_error(
        start_cluster: Callable[..., list[LocalBroker]], ack_recorder, consume_all, lost) -> None:
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("rolling", partitions=3)
    producers = ack_recorder(bootstrap, "rolling", workers=1, linger_ms=1, delivery_timeout_ms=60_000)
    try:
        producers.wait_for(500)
        for broker in brokers:
            with Admin(broker.address) as admin:
                leads = sum(p.leader == broker.broker_id for p in admin.describe_topic("rolling").partitions)
            assert broker.stop() == 0
            handed = [line for line in broker.log().splitlines() if "leadership handed off" in line][-1]
            assert "remaining=0 sole_voter=0" in handed, handed
            assert int(handed.split("groups=")[1].split()[0]) >= leads, handed
            count = len(producers.acknowledged)
            broker.start()
            producers.wait_for(count + 200)
    finally:
        acked = producers.stop()
    assert producers.failures == [], producers.failures[:3]
    found = consume_all(bootstrap, "rolling", 3)
    assert not lost(acked, found)


def test_a_one_broker_cluster_stops_without_waiting_for_a_follower(broker: LocalBroker) -> None:
    """No other voter can take its groups, so the hand-off waits for none (it used to wait its whole
    timeout, 5 s, on every stop of a one-broker cluster: `docker stop` of a plain container)."""
    with Admin(broker.address) as admin:
        admin.create_topic("alone", partitions=2)
    assert broker.stop() == 0
    handed = [line for line in broker.log().splitlines() if "leadership handed off" in line][-1]
    assert "remaining=0 sole_voter=3" in handed, handed
