"""`Consumer`: reads assigned partitions from any offset, in order within each partition.

    consumer = Consumer("127.0.0.1:9092", auto_offset_reset="earliest")
    consumer.assign([TopicPartition("orders", 0)])
    for record in consumer:
        print(record.offset, record.value)

A partition's position is the offset of the next record `poll()` will return. Without a `seek`, the
first poll resolves it from `auto_offset_reset` ("earliest", "latest" or "error"). Fetches long-poll
on the brokers, so an idle consumer costs one open request per broker, not a busy loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from itertools import repeat
from typing import Callable, Iterable, Iterator, Sequence

import grpc

from raftka.client.connection import ClusterConnection
from raftka.client.records import Record, TopicPartition
from raftka.errors import (ClientClosedError, CorruptBatchError, OffsetOutOfRangeError, RaftkaError,
                           from_proto, from_rpc_error)
from raftka.partition import errors as batch_errors
from raftka.partition import batch as batch_format
from raftka.partition.batch import decode_batch, split_batches
from raftka.proto import api_pb2

log = logging.getLogger(__name__)

RESETS = ("earliest", "latest", "error")


_new_tuple = tuple.__new__


def _client_records(tp: TopicPartition, records: list[batch_format.Record]) -> Iterator[Record]:
    """The decoder's records as client Records, built by C-level transposes instead of a Python
    call per record (the per-record cost is what bounds a Python consumer's throughput)."""
    offsets, timestamps, keys, values, headers = zip(*records)
    return map(_new_tuple, repeat(Record), zip(repeat(tp.topic), repeat(tp.partition), offsets, keys, values,
                                                headers, timestamps))


class Consumer:
    def __init__(self, bootstrap: str | Sequence[str], *, auto_offset_reset: str = "latest",
                 fetch_max_wait_ms: int = 500, fetch_min_bytes: int = 1,
                 fetch_max_bytes: int = 16 * 1024 * 1024, max_partition_fetch_bytes: int = 4 * 1024 * 1024,
                 request_timeout_ms: int = 30_000) -> None:
        if auto_offset_reset not in RESETS:
            raise ValueError(f"auto_offset_reset must be one of {', '.join(RESETS)}, not {auto_offset_reset!r}")
        self._conn = ClusterConnection(bootstrap, request_timeout_s=request_timeout_ms / 1000)
        self._reset = auto_offset_reset
        self._max_wait_ms = fetch_max_wait_ms
        self._min_bytes = fetch_min_bytes
        self._max_bytes = fetch_max_bytes
        self._partition_max_bytes = max_partition_fetch_bytes
        self._positions: dict[TopicPartition, int | None] = {}
        self._fetched_to: dict[TopicPartition, int] = {}
        self._buffer: deque[tuple[TopicPartition, list[Record]]] = deque()
        self._closed = False

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly these partitions (replacing any earlier assignment)."""
        wanted = [p if isinstance(p, TopicPartition) else TopicPartition(*p) for p in partitions]
        for tp in wanted:
            self._conn.leader(tp.topic, tp.partition)
        self._positions = {tp: self._positions.get(tp) for tp in wanted}
        self._drop_buffered(lambda tp: tp not in self._positions)

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def partitions_for(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(self._conn.partition_count(topic))]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Make `offset` the next record poll() returns for `tp`."""
        if tp not in self._positions:
            raise ValueError(f"{tp} is not assigned to this consumer")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        self._positions[tp] = offset
        self._drop_buffered(lambda t: t == tp)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps or tuple(self._positions):
            self.seek(tp, self._list_offset(tp, api_pb2.EARLIEST))

    def seek_to_end(self, *tps: TopicPartition) -> None:
        for tp in tps or tuple(self._positions):
            self.seek(tp, self._list_offset(tp, api_pb2.LATEST))

    def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """Base offset of the first batch with records at or after `timestamp_ms`, or None."""
        offset = self._list_offset(tp, api_pb2.TIMESTAMP, timestamp_ms)
        return None if offset < 0 else offset

    def position(self, tp: TopicPartition) -> int:
        if tp not in self._positions:
            raise ValueError(f"{tp} is not assigned to this consumer")
        position = self._positions[tp]
        return self._resolve(tp) if position is None else position

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._list_offset(tp, api_pb2.LATEST) for tp in tps}

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[Record]:
        """Records after each partition's position, waiting up to timeout_ms for some to arrive."""
        if self._closed:
            raise ClientClosedError("consumer is closed")
        if not self._positions:
            raise ValueError("no partition is assigned; call assign() first")
        deadline = time.monotonic() + timeout_ms / 1000
        while not self._buffer:
            self._fetch(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                break
        records: list[Record] = []
        while self._buffer and (max_records is None or len(records) < max_records):
            tp, chunk = self._buffer[0]
            take = len(chunk) if max_records is None else min(len(chunk), max_records - len(records))
            records.extend(chunk[:take])
            if take == len(chunk):
                self._buffer.popleft()
            else:
                del chunk[:take]
            self._positions[tp] = records[-1].offset + 1
        return records

    def __iter__(self) -> Iterator[Record]:
        while not self._closed:
            yield from self.poll()

    def close(self) -> None:
        self._closed = True
        self._conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self, wait_s: float) -> None:
        by_leader: dict[str, list[api_pb2.FetchPartition]] = {}
        for tp in self._positions:
            start = self._fetched_to.get(tp)
            if start is None:
                position = self._positions[tp]
                start = self._resolve(tp) if position is None else position
            try:
                leader = self._conn.leader(tp.topic, tp.partition)
            except RaftkaError as exc:
                if not exc.retriable:
                    raise
                continue
            by_leader.setdefault(leader, []).append(api_pb2.FetchPartition(
                topic=tp.topic, partition=tp.partition, offset=start, max_bytes=self._partition_max_bytes))
        if not by_leader:
            time.sleep(min(0.05, wait_s))
        for leader, partitions in by_leader.items():
            request = api_pb2.FetchRequest(partitions=partitions, max_bytes=self._max_bytes,
                                           min_bytes=self._min_bytes,
                                           max_wait_ms=0 if self._buffer else int(wait_s * 1000))
            try:
                for response in self._conn.broker(leader).Fetch(request, timeout=wait_s + self._conn.request_timeout_s):
                    self._take(response)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if not error.retriable:
                    raise error from None
                log.info("fetch from %s failed, refreshing metadata: %s", leader, error)
                for item in partitions:
                    self._conn.learned(item.topic, item.partition, error)

    def _take(self, response: api_pb2.FetchResponse) -> None:
        tp = TopicPartition(response.topic, response.partition)
        if tp not in self._positions:
            return
        error = from_proto(response.error)
        if isinstance(error, OffsetOutOfRangeError) and self._reset != "error":
            log.warning("offset of %s out of range (%s); resetting to %s", tp, error.message, self._reset)
            self._positions[tp] = None
            self._fetched_to.pop(tp, None)
            return
        if error is not None:
            if error.retriable:
                self._conn.learned(tp.topic, tp.partition, error)
                return
            raise error
        position = self._fetched_to.get(tp, self._positions[tp] or 0)
        data = response.batches
        try:
            spans = split_batches(data)
        except batch_errors.BatchError as exc:
            raise CorruptBatchError(f"fetch from {tp} returned a bad batch: {exc}") from None
        chunk: list[Record] = []
        view = memoryview(data)
        for start, end in spans:
            batch = decode_batch(view[start:end])
            records = batch.records
            if batch.header.base_offset < position:
                records = records[position - batch.header.base_offset:]
            if records:
                chunk.extend(_client_records(tp, records))
            position = max(position, batch.header.next_offset)
        if chunk:
            self._buffer.append((tp, chunk))
        self._fetched_to[tp] = position

    def _resolve(self, tp: TopicPartition) -> int:
        """The starting position from auto_offset_reset."""
        if self._reset == "error":
            raise OffsetOutOfRangeError(f"{tp} has no position and auto_offset_reset is 'error'; seek first")
        offset = self._list_offset(tp, api_pb2.EARLIEST if self._reset == "earliest" else api_pb2.LATEST)
        self._positions[tp] = offset
        return offset

    def _list_offset(self, tp: TopicPartition, spec: int, timestamp_ms: int = 0) -> int:
        request = api_pb2.ListOffsetsRequest(queries=[api_pb2.OffsetQuery(
            topic=tp.topic, partition=tp.partition, spec=spec, timestamp_ms=timestamp_ms)])

        def attempt() -> int:
            leader = self._conn.leader(tp.topic, tp.partition)
            try:
                result = self._conn.call(leader, lambda stub: stub.ListOffsets, request).results[0]
                error = from_proto(result.error)
                if error is not None:
                    raise error
            except RaftkaError as exc:
                self._conn.learned(tp.topic, tp.partition, exc)
                raise
            return result.offset

        return self._conn.retrying(attempt, deadline_s=time.monotonic() + self._conn.request_timeout_s)

    def _drop_buffered(self, which: Callable[[TopicPartition], bool]) -> None:
        self._buffer = deque(item for item in self._buffer if not which(item[0]))
        for tp in [tp for tp in self._fetched_to if which(tp) or tp not in self._positions]:
            del self._fetched_to[tp]
