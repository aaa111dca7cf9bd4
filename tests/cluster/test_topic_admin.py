"""Changing live topics against real brokers: settings, more partitions, deleting records, the cluster's
description; bad input gets a precise status and changes nothing; a leader killed mid-change loses
nothing and every replica ends up agreeing."""

from __future__ import annotations

import threading
from functools import partial

import grpc
import pytest

from raftka import Admin, Consumer, Producer, Record, TopicPartition
from raftka.errors import (BatchTooLargeError, InvalidConfigError, InvalidPartitionsError, InvalidRequestError,
                           OffsetOutOfRangeError, RaftkaError, UnknownPartitionError, UnknownTopicError)
from raftka.proto import api_pb2, api_pb2_grpc
from waiting import wait_until


def produce(address: str, topic: str, count: int, partition: int = 0, size: int = 8) -> None:
    """`count` records, one batch each (each is acknowledged before the next is sent)."""
    with Producer(address, linger_ms=0) as producer:
        for i in range(count):
            producer.send(topic, f"{i:0{size}d}".encode(), partition=partition).result(timeout=30)


def consume(consumer: Consumer, count: int, what: str) -> list[Record]:
    """Poll until `count` records came (the consumer is closed after)."""
    records: list[Record] = []

    def more() -> bool:
        records.extend(consumer.poll(timeout_ms=200))
        return len(records) >= count

    wait_until(more, what)
    consumer.close()
    return records


def offsets_on(address: str, topic: str) -> dict[int, api_pb2.PartitionOffsets]:
    """The offsets of the replicas that the broker at `address` holds, as it reports them itself."""
    with grpc.insecure_channel(address) as channel:
        answer = api_pb2_grpc.AdminStub(channel).DescribeTopic(api_pb2.DescribeTopicRequest(name=topic), timeout=10)
    return {o.partition: o for o in answer.offsets}


def replicas_are(address: str, topic: str, expected: dict[int, tuple[int, int]]) -> bool:
    """Whether the broker's replicas of `topic` have the (log start offset, high watermark) `expected`."""
    return {p: (o.log_start_offset, o.high_watermark) for p, o in offsets_on(address, topic).items()} == expected


def test_settings_change_on_a_live_topic_and_bad_ones_change_nothing(start_broker) -> None:
    address = start_broker("--retention-check-ms", "200").address
    with Admin(address) as admin:
        admin.create_topic("live", config={"segment.bytes": 4096})
        produce(address, "live", 1, size=2000)
        before = admin.describe_topic_config("live")
        assert ("retention.bytes", "-1", True) in before and ("segment.bytes", "4096", False) in before
        for changes, reset, error, why in [
                ({"retention.byts": "1"}, [], InvalidConfigError, "unknown topic config 'retention.byts'"),
                ({"retention.bytes": "lots"}, [], InvalidConfigError, "not an integer"),
                ({"retention.bytes": "8192", "segment.bytes": "12"}, [], InvalidConfigError, "at least 1024"),
                ({}, [], InvalidRequestError, "changes no setting")]:
            with pytest.raises(error, match=why):
                admin.alter_topic_config("live", changes, reset)
        with pytest.raises(UnknownTopicError):
            admin.alter_topic_config("nope", {"retention.ms": "1000"})
        assert admin.describe_topic_config("live") == before, "a refused change changes nothing"

        after = admin.alter_topic_config("live", {"max.message.bytes": "1024", "retention.bytes": "8192"},
                                         ["segment.bytes"])
        assert ("max.message.bytes", "1024", False) in after and ("segment.bytes", "67108864", True) in after
        with Producer(address, linger_ms=0) as producer, pytest.raises(BatchTooLargeError):
            producer.send("live", b"x" * 2000).result(timeout=10)
        admin.alter_topic_config("live", {"segment.bytes": "4096"}, ["max.message.bytes"])
        produce(address, "live", 40, size=1000)
        wait_until(lambda: admin.describe_topic("live").partitions[0].log_start_offset > 0,
                   "retention.bytes set on the live topic deletes its oldest segments")
        partition = admin.describe_topic("live").partitions[0]
        assert partition.high_watermark == 41 and partition.size_bytes >= 8192


def test_partitions_are_added_and_never_removed(start_broker) -> None:
    address = start_broker().address
    with Admin(address) as admin:
        admin.create_topic("grow", partitions=2)
        for count in (1, 2, 10_001):
            with pytest.raises(InvalidPartitionsError, match="has 2 partitions"):
                admin.create_partitions("grow", count)
        with pytest.raises(UnknownTopicError):
            admin.create_partitions("nope", 3)
        assert len(admin.describe_topic("grow").partitions) == 2
        topic = admin.create_partitions("grow", 4)
        assert [p.partition for p in topic.partitions] == [0, 1, 2, 3]
        wait_until(lambda: all(p.leader == 1 for p in admin.describe_topic("grow").partitions), "new partitions lead")
    produce(address, "grow", 5, partition=3)
    consumer = Consumer(address, auto_offset_reset="earliest")
    consumer.assign([TopicPartition("grow", 3)])
    assert len(consume(consumer, 5, "the records of partition 3")) == 5


def test_records_are_deleted_below_an_offset_and_consumers_reset(start_broker) -> None:
    address = start_broker("--retention-check-ms", "200").address
    with Admin(address) as admin:
        admin.create_topic("trim", partitions=2, config={"segment.bytes": 1024})
        produce(address, "trim", 100)
        size = admin.describe_topic("trim").partitions[0].size_bytes
        for offsets, error, why in [({0: 101}, OffsetOutOfRangeError, "high watermark is 100"),
                                    ({0: -1}, InvalidRequestError, "offset must be >= 0"),
                                    ({1: 1}, OffsetOutOfRangeError, "high watermark is 0"),
                                    ({2: 0}, UnknownPartitionError, "no partition 2")]:
            with pytest.raises(error, match=why):
                admin.delete_records("trim", offsets)
        with pytest.raises(UnknownTopicError):
            admin.delete_records("nope", {0: 0})
        assert admin.describe_topic("trim").partitions[0].log_start_offset == 0, "refused deletes change nothing"
        assert admin.delete_records("trim", {0: 40, 1: 0}) == {0: 40, 1: 0}
        assert admin.delete_records("trim", {0: 30}) == {0: 40}, "a lower offset changes nothing"
        assert admin.describe_topic("trim").partitions[0].log_start_offset == 40
        wait_until(lambda: admin.describe_topic("trim").partitions[0].size_bytes < size * 0.7,
                   "retention deletes the segments below the new log start")
    tp = TopicPartition("trim", 0)
    strict = Consumer(address, auto_offset_reset="error")
    strict.assign([tp])
    strict.seek(tp, 10)
    with pytest.raises(OffsetOutOfRangeError):
        wait_until(lambda: strict.poll(timeout_ms=200), "a fetch below the log start fails")
    strict.close()
    consumer = Consumer(address, auto_offset_reset="earliest")
    consumer.assign([tp])
    consumer.seek(tp, 10)
    records = consume(consumer, 60, "the records from 40 on")
    assert [r.offset for r in records] == list(range(40, 100))


def test_the_cluster_description_names_the_controller_and_the_controllers(start_cluster) -> None:
    brokers = start_cluster(3, racks=["a", "b", "c"])
    with Admin(brokers[0].address) as admin:
        wait_until(lambda: (cluster := admin.describe_cluster_info()).controller_id is not None
                   and all(b.rack for b in cluster.brokers), "a metadata leader and every broker registered")
        info = admin.describe_cluster_info()
    assert info.cluster_id and info.controller_id in (1, 2, 3) and info.controller_epoch > 0
    assert info.voters == (1, 2, 3) and info.learners == ()
    assert [(b.broker_id, b.address, b.rack, b.role) for b in info.brokers] == [
        (b.broker_id, b.address, rack, "voter") for b, rack in zip(brokers, "abc")]


def run_during_kill(victim, bootstrap: str, *steps) -> list[object]:
    """Run the Admin calls `steps` in a thread while `victim` is SIGKILLed, then restart it; their outcomes."""
    outcomes: list[object] = []

    def change() -> None:
        with Admin(bootstrap, request_timeout_ms=60_000) as changer:
            for step in steps:
                try:
                    outcomes.append(step(changer))
                except RaftkaError as exc:
                    outcomes.append(exc)

    worker = threading.Thread(target=change)
    worker.start()
    victim.kill()
    worker.join(timeout=150)
    assert not worker.is_alive(), "the changes neither completed nor failed"
    victim.start()
    return outcomes


def test_changes_complete_across_leader_failovers_and_hold_on_every_replica(start_cluster, leader_of) -> None:
    """SIGKILL the metadata leader, then the partition's leader, while changes are in flight: each
    completes (the client retries), and every replica ends up with the new settings, partitions and
    log start, and no acknowledged record is lost."""
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("moving", partitions=1, replication_factor=3)
        produce(bootstrap, "moving", 50)
        controller = admin.describe_cluster_info().controller_id
        outcomes = run_during_kill(next(b for b in brokers if b.broker_id == controller), bootstrap,
                                   lambda a: a.delete_records("moving", {0: 20}),
                                   lambda a: a.alter_topic_config("moving", {"retention.ms": "3600000"}))
        assert outcomes == [{0: 20}, admin.describe_topic_config("moving")], outcomes
        assert ("retention.ms", "3600000", False) in admin.describe_topic_config("moving")
        outcomes = run_during_kill(leader_of(bootstrap, "moving", 0, brokers), bootstrap,
                                   lambda a: a.delete_records("moving", {0: 30}),
                                   lambda a: len(a.create_partitions("moving", 3).partitions))
        assert outcomes == [{0: 30}, 3], outcomes
    produce(bootstrap, "moving", 10, partition=2)
    for broker in brokers:
        wait_until(partial(replicas_are, broker.address, "moving", {0: (30, 50), 1: (0, 0), 2: (0, 10)}),
                   f"broker {broker.broker_id} has every partition, the log start and every record")
        with Admin(broker.address) as own:
            assert ("retention.ms", "3600000", False) in own.describe_topic_config("moving")
    consumer = Consumer(bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition("moving", 0), TopicPartition("moving", 2)])
    records = consume(consumer, 30, "every record")
    assert sorted((r.partition, r.offset) for r in records) == [(0, o) for o in range(30, 50)] + [
        (2, o) for o in range(10)]
