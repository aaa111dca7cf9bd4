"""The consumer's prefetching fetcher against real brokers: one long-poll per leader, exact positions
through seek, pause and reassignment, leader failover, and a prompt close."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import grpc
import pytest

from raftka import Admin, Consumer, Producer, Record, TopicPartition
from raftka.aio import AIOConsumer
from raftka.client import fetcher
from raftka.client.local import LocalBroker
from raftka.errors import CorruptBatchError
from raftka.proto import api_pb2
from raftka.wire.batch import encode_batch, stamp_replicated
from waiting import wait_until


def bootstrap_of(brokers: list[LocalBroker]) -> str:
    return ",".join(b.address for b in brokers)


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("raftka-fetch-")]


def completed_fetches(broker: LocalBroker) -> float:
    return broker.metric_total("raftka_fetch_requests_total{")


def fetched_bytes(broker: LocalBroker) -> float:
    return broker.metric_total("raftka_fetch_bytes_total")


def follows_ended(broker: LocalBroker, reason: str) -> float:
    return broker.metric_total(f'raftka_fetch_follows_ended_total{{reason="{reason}"}}')


def produce(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> None:
    with Producer(bootstrap, linger_ms=2) as producer:
        futures = [producer.send(topic, value, partition=partition) for value in values]
    for future in futures:
        future.result(timeout=30)


def poll_until(consumer: Consumer, count: int, timeout_s: float = 60, **options: int) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(timeout_ms=500, **options))
    return records


def test_a_partition_is_not_held_back_by_another_leaders_long_poll(start_cluster) -> None:
    brokers = start_cluster(3)
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("spread", partitions=6)
        partitions = admin.describe_topic("spread").partitions
    quiet = partitions[0]
    busy = next(p for p in partitions if p.leader != quiet.leader)
    quiet_leader = next(b for b in brokers if b.broker_id == quiet.leader)
    consumer = Consumer(bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=20_000)
    consumer.assign([TopicPartition("spread", quiet.partition), TopicPartition("spread", busy.partition)])
    for tp in consumer.assignment():
        consumer.position(tp)
    fetches_before = completed_fetches(quiet_leader)
    produce(bootstrap, "spread", busy.partition, [b"a", b"b", b"c"])
    records = poll_until(consumer, 3, timeout_s=10)
    assert [(r.partition, r.value) for r in records] == [(busy.partition, v) for v in (b"a", b"b", b"c")]
    assert completed_fetches(quiet_leader) == fetches_before, \
        "the records came while the quiet leader's long-poll was still outstanding"
    consumer.close()


def test_seek_drops_buffered_and_in_flight_records(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("seeking")
    tp = TopicPartition("seeking", 0)
    produce(broker.address, "seeking", 0, [str(i).encode() for i in range(100)])
    consumer = Consumer(broker.address, auto_offset_reset="earliest", fetch_max_wait_ms=20_000)
    consumer.assign([tp])
    assert [r.offset for r in consumer.poll(timeout_ms=5000, max_records=10)] == list(range(10))
    consumer.seek(tp, 50)
    assert consumer.position(tp) == 50
    records = poll_until(consumer, 50)
    assert [r.offset for r in records] == list(range(50, 100))
    assert [r.value for r in records] == [str(i).encode() for i in range(50, 100)]
    assert consumer.position(tp) == 100
    assert consumer.poll(timeout_ms=200) == [], "a long-poll at the end is now outstanding"
    consumer.seek(tp, 3)
    assert [r.offset for r in consumer.poll(timeout_ms=10_000, max_records=5)] == [3, 4, 5, 6, 7], \
        "the seek interrupted the long-poll at the old position"
    assert consumer.position(tp) == 8
    consumer.close()


def test_pause_keeps_buffered_records_for_resume(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("pausing", partitions=2)
    first, second = TopicPartition("pausing", 0), TopicPartition("pausing", 1)
    for partition in (0, 1):
        produce(broker.address, "pausing", partition, [f"{partition}-{i}".encode() for i in range(200)])
    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign([first, second])
    taken = poll_until(consumer, 1, max_records=1)
    consumer.pause(first)
    assert consumer.paused() == {first}
    records = taken + poll_until(consumer, 200 - sum(r.partition == 1 for r in taken), timeout_s=10)
    assert [r.value for r in records if r.partition == 1] == [f"1-{i}".encode() for i in range(200)]
    before = [r for r in records if r.partition == 0]
    assert consumer.position(first) == len(before), "a paused partition keeps its position"
    assert consumer.poll(timeout_ms=300) == [], "nothing of a paused partition is returned"
    consumer.resume(first)
    assert consumer.paused() == set()
    after = poll_until(consumer, 200 - len(before))
    assert [r.value for r in before + after] == [f"0-{i}".encode() for i in range(200)]
    consumer.close()


def test_reassignment_drops_removed_partitions_and_keeps_the_others(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("moving", partitions=2)
    for partition in (0, 1):
        produce(broker.address, "moving", partition, [f"{partition}-{i}".encode() for i in range(100)])
    kept, dropped = TopicPartition("moving", 1), TopicPartition("moving", 0)
    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign([dropped, kept])
    taken = poll_until(consumer, 1, max_records=1)
    consumer.assign([kept])
    assert consumer.assignment() == {kept}
    records = taken + poll_until(consumer, 100 - sum(r.partition == 1 for r in taken), timeout_s=10)
    assert [r.value for r in records if r.partition == 1] == [f"1-{i}".encode() for i in range(100)]
    assert all(r.partition == 1 for r in records[len(taken):]), "no record of a removed partition"
    consumer.close()


def test_consuming_continues_exactly_once_through_a_leader_kill(start_cluster, leader_of) -> None:
    brokers = start_cluster(3)
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("failover", partitions=3)
    per_batch = 2000
    for partition in range(3):
        produce(bootstrap, "failover", partition, [f"{partition}-{i}".encode() for i in range(per_batch)])
    consumer = Consumer(bootstrap, auto_offset_reset="earliest", max_partition_fetch_bytes=4096,
                        prefetch_bytes=8192, request_timeout_ms=10_000)
    consumer.assign(consumer.partitions_for("failover"))
    records = poll_until(consumer, 500)
    victim = leader_of(bootstrap, "failover", 0, brokers)
    victim.kill()
    for partition in range(3):
        produce(bootstrap, "failover", partition,
                [f"{partition}-{i}".encode() for i in range(per_batch, 2 * per_batch)])
    records += poll_until(consumer, 6 * per_batch - len(records) - 1000, timeout_s=120)
    victim.start()
    records += poll_until(consumer, 6 * per_batch - len(records), timeout_s=120)
    consumer.close()
    for partition in range(3):
        mine = [r for r in records if r.partition == partition]
        assert [r.offset for r in mine] == list(range(2 * per_batch))
        assert [r.value for r in mine] == [f"{partition}-{i}".encode() for i in range(2 * per_batch)]


def test_a_consumer_that_keeps_up_is_followed_without_asking_again(broker, monkeypatch) -> None:
    """The broker goes on answering a followed fetch, so a consumer reading each record as it comes
    sends one fetch, not one per record; every record still arrives once, in order."""
    with Admin(broker.address) as admin:
        admin.create_topic("followed")
    sent: list[api_pb2.FetchRequest] = []
    send = fetcher._FetchStream.fetch

    def counted(stream: fetcher._FetchStream, request: api_pb2.FetchRequest) -> int:
        sent.append(request)
        return send(stream, request)

    monkeypatch.setattr(fetcher._FetchStream, "fetch", counted)
    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign([TopicPartition("followed", 0)])
    records: list[Record] = []
    with Producer(broker.address, linger_ms=0) as producer:
        for i in range(20):
            producer.send("followed", f"{i}".encode(), partition=0).result(timeout=30)
            records += poll_until(consumer, 1)
    consumer.close()
    assert [r.value for r in records] == [f"{i}".encode() for i in range(20)]
    assert [r.offset for r in records] == list(range(20))
    assert len(sent) <= 2, f"{len(sent)} fetches sent for 20 records read as they came"
    assert sent[0].follow_bytes > 0


@pytest.mark.parametrize("partitions", [1, 4])
def test_a_consumer_that_stops_polling_is_sent_at_most_one_answer_beyond_its_prefetch(broker, partitions) -> None:
    """What a followed consumer has not asked for is bounded by the room its prefetch had left, also
    when the records all wait on one of the partitions it follows."""
    with Admin(broker.address) as admin:
        admin.create_topic("slow-reader", partitions=partitions)
    with Producer(broker.address, linger_ms=0) as producer:
        for _ in range(100):
            producer.send("slow-reader", b"x" * 1000, partition=0).result(timeout=30)
    before = fetched_bytes(broker)
    consumer = Consumer(broker.address, auto_offset_reset="earliest", max_partition_fetch_bytes=4096,
                        prefetch_bytes=8192)
    consumer._fetcher.add({tp: 0 for tp in consumer.partitions_for("slow-reader")})
    wait_until(lambda: follows_ended(broker, "allowance") >= 1, what="the broker to stop following at the room sent")
    assert 8192 <= fetched_bytes(broker) - before <= 8192 + 4096, "the broker stopped once the room was sent"
    assert len(poll_until(consumer, 100)) == 100
    consumer.close()


def test_a_paused_partition_is_no_longer_followed(broker) -> None:
    """A marker written to a followed partition after the paused one's records comes back on the same
    followed fetch: once it has, those records would have come too, had the pause not stopped them."""
    with Admin(broker.address) as admin:
        admin.create_topic("paused-follow", partitions=2)
    tp, followed = TopicPartition("paused-follow", 0), TopicPartition("paused-follow", 1)
    consumer = Consumer(broker.address, auto_offset_reset="earliest")
    consumer.assign([tp, followed])
    assert consumer.poll(timeout_ms=300) == []
    consumer.pause(tp)
    before = fetched_bytes(broker)
    with Producer(broker.address, linger_ms=0) as producer:
        for i in range(50):
            producer.send("paused-follow", f"{i:04}".encode() * 250, partition=0).result(timeout=30)
        producer.send("paused-follow", b"marker", partition=1).result(timeout=30)
    assert [r.value for r in poll_until(consumer, 1)] == [b"marker"]
    assert fetched_bytes(broker) - before < 10_000, "the broker went on sending the paused partition's records"
    consumer.resume(tp)
    assert [r.value[:4] for r in poll_until(consumer, 50)] == [f"{i:04}".encode() for i in range(50)]
    consumer.close()


def test_an_answer_that_skips_offsets_is_refused() -> None:
    data = stamp_replicated(encode_batch([(None, b"v", (), 1_700_000_000_000)]), 10, 0)
    records, end = fetcher.decode_records(TopicPartition("t", 0), data, 10)
    assert ([r.offset for r in records], end) == ([10], 11)
    with pytest.raises(CorruptBatchError, match="skipped offsets 5 to 9"):
        fetcher.decode_records(TopicPartition("t", 0), data, 5)


def test_close_cancels_outstanding_long_polls(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("idle", partitions=2)
    consumer = Consumer(broker.address, auto_offset_reset="latest", fetch_max_wait_ms=20_000,
                        request_timeout_ms=5_000)
    consumer.assign(consumer.partitions_for("idle"))
    assert consumer.poll(timeout_ms=300) == []
    assert fetch_threads(), "a fetch thread is long-polling"
    consumer.close()
    assert fetch_threads() == []


def test_close_does_not_wait_for_a_broker_that_stopped_answering(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("frozen")
    consumer = Consumer(broker.address, auto_offset_reset="latest", fetch_max_wait_ms=20_000,
                        request_timeout_ms=60_000)
    consumer.assign(consumer.partitions_for("frozen"))
    assert consumer.poll(timeout_ms=300) == []
    broker.pause()
    try:
        consumer.close()
        assert fetch_threads() == [], "the long-poll was cancelled, not left to the frozen broker"
    finally:
        broker.resume()


def grpc_calls() -> set[int]:
    return {id(o) for o in gc.get_objects() if isinstance(o, grpc._channel._Rendezvous)}


def test_close_leaves_no_call_for_the_interpreter_exit_to_finalise(broker) -> None:
    """A cancelled stream is kept alive by its own traceback; finalised at exit, it could hang the
    process on a lock a stopped gRPC thread holds (the CLI consumer did, about 1 run in 40 under load)."""
    with Admin(broker.address) as admin:
        admin.create_topic("exit")
    produce(broker.address, "exit", 0, [b"x"])
    gc.collect()
    before = grpc_calls()
    gc.disable()
    try:
        consumer = Consumer(broker.address, auto_offset_reset="earliest", fetch_max_wait_ms=20_000)
        consumer.assign([TopicPartition("exit", 0)])
        assert [r.value for r in poll_until(consumer, 1)] == [b"x"]
        assert consumer.poll(timeout_ms=300) == [], "a long-poll is outstanding when the consumer closes"
        consumer.close()
        assert grpc_calls() - before == set()
    finally:
        gc.enable()


def test_aio_consumer_pauses_and_resumes(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("aio-pause")
    tp = TopicPartition("aio-pause", 0)
    produce(broker.address, "aio-pause", 0, [b"x", b"y"])

    async def scenario() -> None:
        async with AIOConsumer(broker.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([tp])
            consumer.pause(tp)
            assert consumer.paused() == {tp}
            assert await consumer.poll(timeout_ms=300) == []
            consumer.resume(tp)
            records: list[Record] = []
            while len(records) < 2:
                records += await consumer.poll(timeout_ms=500)
            assert [r.value for r in records] == [b"x", b"y"]
        assert fetch_threads() == []

    asyncio.run(asyncio.wait_for(scenario(), 60))
