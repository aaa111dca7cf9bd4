"""Health, server reflection (for grpcurl) and Prometheus metrics of a running broker."""

from __future__ import annotations

import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from raftka import Admin, Consumer, Producer, TopicPartition


def test_health_per_service(broker) -> None:
    with grpc.insecure_channel(broker.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "raftka.v1.Broker", "raftka.v1.Admin"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_api(broker) -> None:
    with grpc.insecure_channel(broker.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="raftka.v1.Broker")]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    services = {s.name for s in responses[0].list_services_response.service}
    assert {"raftka.v1.Broker", "raftka.v1.Admin", "grpc.health.v1.Health"} <= services
    assert responses[1].file_descriptor_response.file_descriptor_proto


def test_metrics_count_requests_bytes_and_latency(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("metered")
    with Producer(broker.address) as producer:
        for i in range(10):
            producer.send("metered", b"x" * 100).result(timeout=10)
    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign([TopicPartition("metered", 0)])
    assert len(consumer.poll(timeout_ms=2000)) > 0
    consumer.close()
    body = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=5).read().decode()
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
               if line and not line.startswith("#")}
    assert samples['raftka_produce_requests_total{outcome="ok"}'] == 10
    assert samples["raftka_produce_bytes_total"] > 1000
    assert samples["raftka_produce_latency_seconds_count"] == 10
    assert samples['raftka_fetch_requests_total{outcome="ok"}'] >= 1
    assert samples["raftka_fetch_bytes_total"] > 1000
    assert samples["raftka_log_flush_latency_seconds_count"] >= 1
    assert samples["raftka_partitions"] == 1
    assert samples["raftka_partition_leaders"] == 1
    assert samples["raftka_raft_round_groups_count"] >= 1
    assert samples['raftka_raft_messages{direction="sent"}'] == 0, "a one-broker cluster sends no Raft messages"
