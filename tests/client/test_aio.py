"""The asyncio producer and consumer against a real broker: same records, same errors, no blocking."""

from __future__ import annotations

import asyncio

import pytest

from raftka import Admin, TopicPartition
from raftka.aio import AIOConsumer, AIOProducer
from raftka.errors import BufferExhaustedError, UnknownTopicError


def test_async_round_trip_in_order(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("async", partitions=2)

    async def scenario() -> None:
        async with AIOProducer(broker.address, linger_ms=1) as producer:
            first = await producer.send_and_wait("async", b"first", partition=0)
            pending = [await producer.send("async", f"r{i}", partition=0) for i in range(500)]
            offsets = [meta.offset for meta in await asyncio.gather(*pending)]
            with pytest.raises(UnknownTopicError):
                await producer.send("missing", b"x")
        assert first.offset == 0 and offsets == list(range(1, 501))
        async with AIOConsumer(broker.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([TopicPartition("async", 0)])
            records = []
            async for record in consumer:
                records.append(record)
                if len(records) == 501:
                    break
        assert [r.value for r in records] == [b"first", *(f"r{i}".encode() for i in range(500))]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_full_buffer_waits_without_blocking_the_loop(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("slow")

    async def scenario() -> None:
        producer = AIOProducer(broker.address, buffer_memory=4096, batch_size=1024, max_block_ms=500, linger_ms=0)
        await producer.send_and_wait("slow", b"warm-up")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        clock = asyncio.create_task(ticker())
        broker.pause()
        try:
            with pytest.raises(BufferExhaustedError, match="max_block_ms=500"):
                for _ in range(100):
                    await producer.send("slow", b"x" * 200)
        finally:
            broker.resume()
            clock.cancel()
        assert ticks >= 20, "the loop kept running while send waited for buffer space"
        await producer.close(timeout=30)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_async_consumer_seeks_like_the_threaded_one(broker) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("seekable")
    tp = TopicPartition("seekable", 0)

    async def scenario() -> None:
        async with AIOProducer(broker.address, linger_ms=0) as producer:
            early = [await producer.send_and_wait("seekable", f"e{i}", partition=0, timestamp_ms=1_000 + i)
                     for i in range(3)]
            await producer.send_and_wait("seekable", b"late", partition=0, timestamp_ms=5_000)
        async with AIOConsumer(broker.address) as consumer:
            consumer.assign([tp])
            assert await consumer.end_offsets([tp]) == {tp: 4}
            assert await consumer.offset_for_time(tp, 5_000) == 3
            assert await consumer.offset_for_time(tp, 9_000) is None
            await consumer.seek_to_end(tp)
            assert consumer.position(tp) == 4
            await consumer.seek_to_beginning(tp)
            assert consumer.position(tp) == early[0].offset == 0
            await consumer.seek_to_timestamp(tp, 5_000)
            assert [r.value for r in await consumer.poll(timeout_ms=5_000)] == [b"late"]

    asyncio.run(asyncio.wait_for(scenario(), 60))
