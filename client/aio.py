"""asyncio faces of the Producer and Consumer, with the same semantics as the threaded ones.

    async with AIOProducer("127.0.0.1:9092") as producer:
        metadata = await producer.send_and_wait("orders", b"payload")
        pending = await producer.send("orders", b"more")      # queued; await `pending` for the ack

    async with AIOConsumer("127.0.0.1:9092", auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("orders", 0)])
        async for record in consumer:
            ...

The I/O stays in the client's own threads (the producer's sender, the consumer's fetchers, gRPC's);
these classes only turn its completions into asyncio futures on the caller's loop, so `send` costs
the event loop the same as the threaded `send` plus one future. Nothing blocks the loop: a full
buffer is waited out with `asyncio.sleep` (up to `max_block_ms`, then BufferExhaustedError as in the
threaded producer), and polls, flushes and closes (which join the consumer's fetch threads) run in
the loop's default executor. A consumer is used by one task at a time.

`async for record in consumer` follows the threaded iterator's rule (raftka.client.consumer): a record
counts as consumed once the task comes back for the next one, so the record in hand when the loop is
left (`break`, an exception, `close()`) is not committed and is delivered again. Records of a batch
are handed out on the loop; only fetching the next batch goes to the executor.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from raftka.client.accumulator import RecordFuture
from raftka.client.consumer import ITERATOR_POLL_MS, Consumer
from raftka.client.producer import Producer
from raftka.client.records import Record, RecordMetadata
from raftka.errors import BufferExhaustedError
from raftka.wire.structs import TopicPartition

T = TypeVar("T")

FULL_BUFFER_RETRY_S = 0.001


def _bridge(future: RecordFuture, loop: asyncio.AbstractEventLoop) -> asyncio.Future[RecordMetadata]:
    """An asyncio future on `loop` that settles when the producer's future does."""
    result: asyncio.Future[RecordMetadata] = loop.create_future()

    def settle(done: RecordFuture) -> None:
        error = done.exception()
        loop.call_soon_threadsafe(_set, result, error, None if error is not None else done.result())

    future.add_done_callback(settle)
    return result


def _set(target: asyncio.Future[RecordMetadata], error: BaseException | None, value: RecordMetadata | None) -> None:
    if target.done():
        return
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(value)  # type: ignore[arg-type]  # value is set whenever error is None


class AIOProducer:
    """`Producer` for asyncio code; takes the same arguments."""

    def __init__(self, bootstrap: str | Sequence[str], *, max_block_ms: int = 60_000, **options: Any) -> None:
        self._max_block_s = max_block_ms / 1000
        self._producer = Producer(bootstrap, max_block_ms=0, **options)

    async def send(self, topic: str, value: bytes | str | None, key: bytes | str | None = None,
                   headers: Any = None, partition: int | None = None,
                   timestamp_ms: int | None = None) -> asyncio.Future[RecordMetadata]:
        """Queue a record; returns a future for its RecordMetadata. Waits (without blocking the loop)
        while the buffer is full, like the threaded `send` blocks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_block_s
        while True:
            try:
                future = self._producer.send(topic, value, key, headers, partition, timestamp_ms)
                break
            except BufferExhaustedError:
                if loop.time() >= deadline:
                    raise BufferExhaustedError(
                        f"producer buffer stayed full for max_block_ms={self._max_block_s * 1000:.0f}") from None
                await asyncio.sleep(FULL_BUFFER_RETRY_S)
        return _bridge(future, loop)

    async def send_and_wait(self, topic: str, value: bytes | str | None, **kwargs: Any) -> RecordMetadata:
        return await (await self.send(topic, value, **kwargs))

    async def flush(self, timeout: float | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, timeout)

    async def close(self, timeout: float | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._producer.close, timeout)

    async def __aenter__(self) -> AIOProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AIOConsumer:
    """`Consumer` for asyncio code; takes the same arguments. Polls run in the default executor."""

    def __init__(self, bootstrap: str | Sequence[str], **options: Any) -> None:
        self._consumer = Consumer(bootstrap, **options)

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        self._consumer.assign(partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(tp, offset)

    def position(self, tp: TopicPartition) -> int:
        return self._consumer.position(tp)

    def partitions_for(self, topic: str) -> list[TopicPartition]:
        return self._consumer.partitions_for(topic)

    def pause(self, *tps: TopicPartition) -> None:
        self._consumer.pause(*tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._consumer.resume(*tps)

    def paused(self) -> set[TopicPartition]:
        return self._consumer.paused()

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        await self._run(self._consumer.seek_to_beginning, *tps)

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        await self._run(self._consumer.seek_to_end, *tps)

    async def seek_to_timestamp(self, tp: TopicPartition, timestamp_ms: int) -> None:
        await self._run(self._consumer.seek_to_timestamp, tp, timestamp_ms)

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        return await self._run(self._consumer.offset_for_time, tp, timestamp_ms)

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._run(self._consumer.end_offsets, list(tps))

    async def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[Record]:
        return await self._run(self._consumer.poll, timeout_ms, max_records)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None, *, metadata: str = "") -> None:
        await self._run(functools.partial(self._consumer.commit, offsets, metadata=metadata))

    async def committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        return await self._run(self._consumer.committed, list(tps))

    @staticmethod
    async def _run(fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call of the Consumer (it may ask brokers) in the default executor."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment()

    def __aiter__(self) -> AIOConsumer:
        return self

    async def __anext__(self) -> Record:
        consumer = self._consumer
        record = consumer._next_batched()
        while record is None:
            if not await asyncio.get_running_loop().run_in_executor(None, consumer._fill_batch, ITERATOR_POLL_MS):
                raise StopAsyncIteration
            record = consumer._next_batched()
        return record

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._consumer.close)

    async def __aenter__(self) -> AIOConsumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
