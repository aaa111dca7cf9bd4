"""Health, server reflection (for grpcurl), Prometheus metrics and the Raft listener of a running broker."""

from __future__ import annotations

import socket
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from raftka import Admin, Consumer, Producer, TopicPartition
from raftka.proto import raft_pb2
from raftka.replication.codec import encode_message_batch
from raftka.replication.transport import FRAME_HEADER


def test_health_per_service(broker) -> None:
    with grpc.insecure_channel(broker.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "raftka.v1.Broker", "raftka.v1.Admin"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_the_broker_runs_on_uvloop(broker) -> None:
    assert "loop=uvloop" in broker.log()


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
        for _ in range(10):
            producer.send("metered", b"x" * 100).result(timeout=10)
    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign([TopicPartition("metered", 0)])
    assert len(consumer.poll(timeout_ms=2000)) > 0
    consumer.close()
    body = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=5).read().decode()
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
               if line and not line.startswith("#")}
    assert samples['raftka_produce_requests_total{outcome="ok"}'] == 10
    assert samples['raftka_produce_bytes_total{topic="metered"}'] > 1000
    assert samples['raftka_produce_records_total{topic="metered"}'] == 10
    assert samples["raftka_produce_latency_seconds_count"] == 10
    assert samples['raftka_fetch_requests_total{outcome="ok"}'] >= 1
    assert samples['raftka_fetch_bytes_total{topic="metered"}'] > 1000
    assert samples['raftka_fetch_records_total{topic="metered"}'] >= 10
    assert samples["raftka_log_flush_latency_seconds_count"] >= 1
    assert samples["raftka_partitions"] == 1
    assert samples["raftka_partition_leaders"] == 1
    assert samples["raftka_raft_round_groups_count"] >= 1
    assert samples['raftka_raft_messages{direction="sent"}'] == 0, "a one-broker cluster sends no Raft messages"
    assert samples['raftka_raft_refusals{by="this_broker"}'] == 0 and samples['raftka_raft_refusals{by="peers"}'] == 0


def test_metrics_aggregate_topics_on_request_and_time_raft_commits(start_broker) -> None:
    broker = start_broker("--no-metrics-per-topic")
    with Admin(broker.address) as admin:
        admin.create_topic("one")
        admin.create_topic("two")
    with Producer(broker.address) as producer:
        for topic in ("one", "two"):
            producer.send(topic, b"x").result(timeout=10)
    body = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=5).read().decode()
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
               if line and not line.startswith("#")}
    assert samples["raftka_produce_records_total"] == 2
    assert samples["raftka_log_segments"] == 2
    assert not [name for name in samples if 'topic="' in name], "no series names a topic"
    assert samples["raftka_raft_commit_latency_seconds_count"] >= 2


def test_the_raft_listener_is_found_over_grpc_and_refuses_another_cluster(broker) -> None:
    with grpc.insecure_channel(broker.address) as channel:
        endpoint = channel.unary_unary("/raftka.raft.v1.RaftTransport/Endpoint",
                                       request_serializer=raft_pb2.EndpointRequest.SerializeToString,
                                       response_deserializer=raft_pb2.EndpointResponse.FromString)
        address = endpoint(raft_pb2.EndpointRequest(cluster_id=broker.cluster_id, from_broker=9, to_broker=1),
                           timeout=5).address
        with pytest.raises(grpc.RpcError) as info:
            endpoint(raft_pb2.EndpointRequest(cluster_id="elsewhere", from_broker=9, to_broker=1), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    host, port = address.rsplit(":", 1)
    hello = encode_message_batch("elsewhere", 9, 1, ()).SerializeToString()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(FRAME_HEADER.pack(len(hello)) + hello)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    (size,) = FRAME_HEADER.unpack(reply[:FRAME_HEADER.size])
    ack = raft_pb2.Ack.FromString(reply[FRAME_HEADER.size:FRAME_HEADER.size + size])
    assert (ack.broker_id, ack.refusal) == (1, "CLUSTER_MISMATCH") and "elsewhere" in ack.detail
    body = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=5).read().decode()
    assert 'raftka_raft_refusals{by="this_broker"} 2.0' in body, "the Endpoint call and the connection"
