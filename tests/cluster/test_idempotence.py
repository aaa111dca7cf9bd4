"""Idempotent produce on real brokers: a retried batch is written once, across failovers and restarts."""

from __future__ import annotations


import grpc
import pytest

from raftka import Admin, Producer
from raftka.client.connection import ClusterConnection
from raftka.errors import METADATA_CODE, rpc_metadata
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import encode_batch


def produce(address: str, topic: str, batch: bytes) -> api_pb2.ProduceResponse:
    with grpc.insecure_channel(address) as channel:
        return api_pb2_grpc.BrokerStub(channel).Produce(
            api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch), timeout=30)


def error_code(address: str, topic: str, batch: bytes) -> str:
    with pytest.raises(grpc.RpcError) as info:
        produce(address, topic, batch)
    return rpc_metadata(info.value)[METADATA_CODE]


def idempotent(producer_id: int, sequence: int, *values: bytes) -> bytes:
    return encode_batch([(None, v, (), 0) for v in values], producer_id=producer_id, producer_epoch=0,
                        base_sequence=sequence)


def producer_id(address: str) -> int:
    conn = ClusterConnection(address)
    try:
        return conn.init_producer_id()
    finally:
        conn.close()


def test_producer_ids_are_unique(start_cluster) -> None:
    brokers = start_cluster(3)
    ids = [producer_id(broker.address) for broker in brokers for _ in range(3)]
    assert len(set(ids)) == len(ids) and min(ids) >= 0


def test_leader_drops_retries_and_refuses_gaps(start_cluster, leader_of, consume_all) -> None:
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("once", partitions=1)
    leader = leader_of(bootstrap, "once", 0, brokers).address
    pid = producer_id(leader)
    first = produce(leader, "once", idempotent(pid, 0, b"a", b"b"))
    again = produce(leader, "once", idempotent(pid, 0, b"a", b"b"))
    assert (again.base_offset, again.last_offset) == (first.base_offset, first.last_offset) == (0, 1)
    assert error_code(leader, "once", idempotent(pid, 5, b"gap")) == "OUT_OF_ORDER_SEQUENCE"
    assert error_code(leader, "once", idempotent(pid + 1000, 3, b"who")) == "UNKNOWN_PRODUCER_ID"
    two = encode_batch([(None, b"x", (), 0)], producer_id=pid, producer_epoch=0, base_sequence=2) * 2
    assert error_code(leader, "once", two) == "INVALID_BATCH"
    assert produce(leader, "once", idempotent(pid, 2, b"c")).base_offset == 2
    assert [r.value for r in consume_all(bootstrap, "once", 1)[0]] == [b"a", b"b", b"c"]


def test_retries_are_recognised_after_a_failover_and_a_full_restart(start_cluster, leader_of, consume_all,
                                                                     restart_cluster) -> None:
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("failover", partitions=1)
    old = leader_of(bootstrap, "failover", 0, brokers)
    pid = producer_id(old.address)
    for sequence in range(3):
        produce(old.address, "failover", idempotent(pid, sequence, f"v{sequence}".encode()))
    old.kill()
    survivors = [b for b in brokers if b is not old]
    new = leader_of(",".join(b.address for b in survivors), "failover", 0, survivors)
    assert produce(new.address, "failover", idempotent(pid, 2, b"v2")).base_offset == 2
    assert error_code(new.address, "failover", idempotent(pid, 4, b"v4")) == "OUT_OF_ORDER_SEQUENCE"
    old.start()
    restart_cluster(brokers)
    leader = leader_of(bootstrap, "failover", 0, brokers)
    assert produce(leader.address, "failover", idempotent(pid, 1, b"v1")).base_offset == 1
    assert produce(leader.address, "failover", idempotent(pid, 3, b"v3")).base_offset == 3
    assert [r.value for r in consume_all(bootstrap, "failover", 1)[0]] == [b"v0", b"v1", b"v2", b"v3"]


def test_idempotent_producers_write_each_record_once_in_order_through_leader_kills(
        start_cluster, kill_leaders, consume_all, ack_recorder, lost) -> None:
    """Several batches in flight per partition while leaders are SIGKILLed: every record in the log
    appears once, acknowledged or not, and each producer's records keep their send order."""
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("exactly", partitions=2)
    producers = ack_recorder(bootstrap, "exactly", workers=2, linger_ms=2, batch_size=2048, max_in_flight=5,
                             delivery_timeout_ms=60_000, request_timeout_ms=5_000)
    try:
        kill_leaders(bootstrap, "exactly", 2, brokers, seed=11, down_s=(0.3, 1.0))
    finally:
        acked = producers.stop()
    assert len(acked) > 500
    found = consume_all(bootstrap, "exactly", 2)
    assert not lost(acked, found)
    values = [r.value for records in found.values() for r in records]
    assert len(values) == len(set(values)), "no record was written twice"
    for records in found.values():
        by_worker: dict[str, list[int]] = {}
        for record in records:
            worker, number = record.value.decode().split("-")
            by_worker.setdefault(worker, []).append(int(number))
        for numbers in by_worker.values():
            assert numbers == sorted(numbers), "a producer's records keep their order in a partition"


def test_idempotence_needs_acks_all_and_a_bounded_window(broker) -> None:
    with pytest.raises(ValueError, match="acks='all'"):
        Producer(broker.address, acks="leader", enable_idempotence=True)
    with pytest.raises(ValueError, match="max_in_flight"):
        Producer(broker.address, max_in_flight=17)
    Producer(broker.address, acks="leader").close()
    Producer(broker.address, max_in_flight=17, enable_idempotence=False).close()
