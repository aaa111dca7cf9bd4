"""Producer, Consumer and Admin against a real broker process."""

from __future__ import annotations

import logging
import signal
import time

import pytest

from raftka import Admin, Consumer, Producer, TopicPartition
from raftka.errors import (BufferExhaustedError, ClientClosedError, OffsetOutOfRangeError, TopicExistsError,
                           UnknownPartitionError, UnknownTopicError)
from raftka.wire.partitioning import partition_for_key


def drain(consumer: Consumer, count: int, timeout_s: float = 30) -> list:
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(timeout_ms=500))
    return records


@pytest.fixture
def admin(broker):
    with Admin(broker.address) as client:
        yield client


def test_round_trip_keeps_every_field_and_partition_order(broker, admin: Admin) -> None:
    admin.create_topic("events", partitions=3)
    sent = []
    with Producer(broker.address, linger_ms=2, batch_size=4096) as producer:
        for i in range(3000):
            key = f"user-{i % 17}".encode()
            headers = [("trace", f"t{i}".encode()), ("empty", b"")] if i % 3 == 0 else None
            sent.append((producer.send("events", f"value-{i}".encode(), key=key, headers=headers,
                                       timestamp_ms=1_700_000_000_000 + i), key, headers, i))
        producer.flush()
    metadata = [(future.result(timeout=10), key, headers, i) for future, key, headers, i in sent]
    for meta, key, _, i in metadata:
        assert meta.partition == partition_for_key(key, 3)
        assert meta.timestamp == 1_700_000_000_000 + i

    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign(consumer.partitions_for("events"))
    records = drain(consumer, 3000)
    consumer.close()
    assert len(records) == 3000
    by_offset = {(m.partition, m.offset): (key, headers, i) for m, key, headers, i in metadata}
    for record in records:
        key, headers, i = by_offset[(record.partition, record.offset)]
        assert (record.key, record.value, record.timestamp) == (key, f"value-{i}".encode(), 1_700_000_000_000 + i)
        assert list(record.headers) == (headers or [])
    for partition in range(3):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets))), "each partition arrives in offset order, without gaps"


def test_a_keyed_producer_uses_added_partitions_once_its_metadata_ages(broker, admin: Admin) -> None:
    """murmur2(key) mod the new count, as in Kafka: a key may move to a new partition."""
    key = next(k for k in (f"key-{i}".encode() for i in range(1000))
               if partition_for_key(k, 1) == 0 and partition_for_key(k, 3) == 2)
    admin.create_topic("growing", partitions=1)
    with Producer(broker.address, linger_ms=0, metadata_max_age_ms=200) as producer:
        assert producer.send("growing", b"before", key=key).result(timeout=10).partition == 0
        admin.create_partitions("growing", 3)
        deadline = time.monotonic() + 30
        while (metadata := producer.send("growing", b"after", key=key).result(timeout=10)).partition == 0:
            assert time.monotonic() < deadline, "the producer never used the new partition count"
        assert metadata.partition == 2
    with Producer(broker.address, linger_ms=0) as producer:
        assert producer.send("growing", b"fresh", key=key).result(timeout=10).partition == 2


def test_seek_position_and_offsets_for_time(broker, admin: Admin) -> None:
    admin.create_topic("seekable", partitions=1)
    tp = TopicPartition("seekable", 0)
    with Producer(broker.address, linger_ms=0) as producer:
        for i in range(10):
            producer.send("seekable", str(i), partition=0, timestamp_ms=1_000_000 + i * 1000).result(timeout=10)
    consumer = Consumer(broker.address, auto_offset_reset="latest")
    consumer.assign([tp])
    assert consumer.position(tp) == 10
    assert consumer.poll(timeout_ms=200) == []
    consumer.seek(tp, 7)
    assert [r.value for r in drain(consumer, 3)] == [b"7", b"8", b"9"]
    assert consumer.position(tp) == 10
    assert consumer.offset_for_time(tp, 1_004_000) == 4
    assert consumer.offset_for_time(tp, 9_999_999) is None
    consumer.seek_to_beginning()
    first = consumer.poll(timeout_ms=2000, max_records=2)
    assert [r.offset for r in first] == [0, 1] and consumer.position(tp) == 2
    assert consumer.end_offsets([tp]) == {tp: 10}
    consumer.close()


def test_consumer_waits_for_new_records(broker, admin: Admin) -> None:
    admin.create_topic("live", partitions=1)
    consumer = Consumer(broker.address, auto_offset_reset="latest")
    consumer.assign([TopicPartition("live", 0)])
    assert consumer.poll(timeout_ms=100) == []
    with Producer(broker.address, linger_ms=0) as producer:
        producer.send("live", b"late").result(timeout=10)
    assert [r.value for r in drain(consumer, 1)] == [b"late"]
    consumer.close()


def test_reset_error_and_out_of_range(broker, admin: Admin) -> None:
    admin.create_topic("strict", partitions=1)
    tp = TopicPartition("strict", 0)
    consumer = Consumer(broker.address, auto_offset_reset="error")
    consumer.assign([tp])
    with pytest.raises(OffsetOutOfRangeError):
        consumer.poll(timeout_ms=100)
    consumer.seek(tp, 5)
    with pytest.raises(OffsetOutOfRangeError, match="out of range"):
        consumer.poll(timeout_ms=100)
    consumer.close()
    lenient = Consumer(broker.address, auto_offset_reset="earliest")
    lenient.assign([tp])
    lenient.seek(tp, 5)
    assert lenient.poll(timeout_ms=300) == []
    assert lenient.position(tp) == 0, "an out-of-range position resets to the earliest offset"
    lenient.close()


def test_client_errors_are_typed(broker, admin: Admin) -> None:
    admin.create_topic("typed", partitions=2)
    with pytest.raises(TopicExistsError):
        admin.create_topic("typed")
    with Producer(broker.address) as producer:
        with pytest.raises(UnknownTopicError):
            producer.send("missing", b"x")
        with pytest.raises(UnknownPartitionError):
            producer.send("typed", b"x", partition=2)
        with pytest.raises(TypeError):
            producer.send("typed", 42)
    with pytest.raises(ClientClosedError):
        producer.send("typed", b"x")
    consumer = Consumer(broker.address)
    with pytest.raises(UnknownTopicError):
        consumer.assign([TopicPartition("missing", 0)])
    consumer.close()


def test_acks_leader_and_compression(broker, admin: Admin) -> None:
    admin.create_topic("fast", partitions=1)
    for compression in ("none", "zstd", "lz4"):
        with Producer(broker.address, acks="leader", compression=compression) as producer:
            futures = [producer.send("fast", b"v" * 500) for _ in range(200)]
        assert all(f.result(timeout=10) for f in futures)
    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign([TopicPartition("fast", 0)])
    records = drain(consumer, 600)
    assert [r.offset for r in records] == list(range(600))
    assert {r.value for r in records} == {b"v" * 500}
    consumer.close()


def test_send_blocks_then_fails_when_the_buffer_stays_full(broker, admin: Admin) -> None:
    admin.create_topic("tiny", partitions=1)
    producer = Producer(broker.address, buffer_memory=4096, batch_size=1024, max_block_ms=300,
                        linger_ms=0, delivery_timeout_ms=60_000)
    producer.send("tiny", b"warm-up").result(timeout=10)
    broker.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(BufferExhaustedError, match="buffer_memory=4096"):
            for _ in range(100):
                producer.send("tiny", b"x" * 200)
    finally:
        broker.process.send_signal(signal.SIGCONT)
    producer.close(timeout=30)


def test_a_request_a_frozen_broker_never_answers_abandons_the_stream_and_lands_once(broker, admin: Admin,
                                                                                   caplog) -> None:
    """A frozen broker keeps its connections open; past request_timeout_ms the producer gives up on
    the stream and retries, and idempotence keeps the retried batch from landing twice."""
    admin.create_topic("frozen", partitions=1)
    with Producer(broker.address, linger_ms=0, request_timeout_ms=500, delivery_timeout_ms=60_000) as producer:
        producer.send("frozen", b"warm-up").result(timeout=10)
        broker.pause()
        try:
            future = producer.send("frozen", b"while frozen")
            deadline = time.monotonic() + 30
            while "abandoning the stream" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "abandoning the stream" in caplog.text and not future.done()
        finally:
            broker.resume()
        assert future.result(timeout=30).offset == 1
    with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("frozen", 0)])
        assert [r.value for r in drain(consumer, 2)] == [b"warm-up", b"while frozen"]
        assert consumer.poll(timeout_ms=500) == []


def consume_through_a_freeze(broker, admin: Admin, caplog, topic: str, logged: str, within_s: float,
                             **consumer_options: object) -> str:
    """Freeze the broker under a consumer whose fetch it holds until the log shows `logged` (or
    `within_s` passes), then resume it and check that consuming goes on; returns the log text."""
    admin.create_topic(topic, partitions=1)
    with Consumer(broker.address, auto_offset_reset="earliest", fetch_max_wait_ms=100,
                  **consumer_options) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        assert consumer.poll(timeout_ms=300) == []
        broker.pause()
        try:
            deadline = time.monotonic() + within_s
            while logged not in caplog.text and time.monotonic() < deadline:
                assert consumer.poll(timeout_ms=100) == []
            text = caplog.text
        finally:
            broker.resume()
        with Producer(broker.address, linger_ms=0) as producer:
            producer.send(topic, b"after").result(timeout=10)
        assert [r.value for r in drain(consumer, 1)] == [b"after"]
    return text


def test_a_fetch_a_frozen_broker_holds_is_given_up_and_consuming_resumes(broker, admin: Admin, caplog) -> None:
    text = consume_through_a_freeze(broker, admin, caplog, "held", "abandoning the stream", 30,
                                    request_timeout_ms=500)
    assert "abandoning the stream" in text


def test_with_default_timeouts_a_frozen_brokers_connection_ends_within_seconds(broker, admin: Admin,
                                                                               caplog) -> None:
    """The channel's pings end it (5-15 s), well before the 30 s request timeout would."""
    caplog.set_level(logging.INFO, logger="raftka.client.fetcher")
    text = consume_through_a_freeze(broker, admin, caplog, "stalled", "fetch from", 25)
    assert "fetch from" in text and "abandoning" not in text


def test_admin_lists_describes_and_deletes(broker, admin: Admin) -> None:
    admin.create_topic("b-topic", partitions=2, config={"retention.ms": 3_600_000})
    admin.create_topic("a-topic")
    assert [t.name for t in admin.list_topics()] == ["a-topic", "b-topic"]
    with Producer(broker.address) as producer:
        producer.send("b-topic", b"hello", partition=1)
    described = admin.describe_topic("b-topic")
    assert described.config["retention.ms"] == "3600000"
    assert [(p.partition, p.high_watermark) for p in described.partitions] == [(0, 0), (1, 1)]
    assert described.partitions[1].size_bytes > 0
    admin.delete_topic("b-topic")
    assert [t.name for t in admin.list_topics()] == ["a-topic"]
    admin.create_topic("b-topic", partitions=2)
    assert [p.high_watermark for p in admin.describe_topic("b-topic").partitions] == [0, 0], \
        "a re-created topic starts empty"


def test_create_topic_refuses_counts_below_one_and_exist_ok_returns_the_topic(broker, admin: Admin) -> None:
    with pytest.raises(ValueError, match="at least 1 partition"):
        admin.create_topic("none", partitions=0)
    with pytest.raises(ValueError, match="replication factor must be at least 1"):
        admin.create_topic("none", replication_factor=0)
    created = admin.create_topic("kept", partitions=2)
    existing = admin.create_topic("kept", partitions=7, exist_ok=True)
    assert [p.replicas for p in existing.partitions] == [p.replicas for p in created.partitions]
    with pytest.raises(TopicExistsError):
        admin.create_topic("kept")
    assert [t.name for t in admin.list_topics()] == ["kept"]
