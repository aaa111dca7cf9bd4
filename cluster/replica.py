"""A partition replica: the object that accepts a partition's appends and serves its reads.

`Replica` is the seam between the broker's services and replication. `LocalReplica` is the
single-broker implementation: the partition log plus group commit, where "acknowledged" means fsynced
locally and the high watermark is the durable end of the log. The Raft-replicated replica takes the
same role, with "acknowledged" meaning fsynced by a majority and the high watermark the commit index.

Invariants: consumers never see an offset at or past the high watermark; offsets are assigned in
request order and never reused; a request's batches are validated as a whole before any is staged,
so a bad batch in a request leaves no trace.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from raftka.cluster.group_commit import GroupCommitter
from raftka.cluster.topics import TopicConfig
from raftka.errors import (BatchTooLargeError, CorruptBatchError, InvalidBatchError,
                           OffsetOutOfRangeError, RequestTimedOutError)
from raftka.partition import batch as batch_format
from raftka.partition import errors as log_errors
from raftka.partition.log import PartitionLog


@dataclass(frozen=True)
class AppendOutcome:
    base_offset: int
    last_offset: int
    append_time_ms: int


@dataclass(frozen=True)
class ReadResult:
    batches: bytes
    high_watermark: int
    log_start_offset: int


class Replica(Protocol):
    @property
    def high_watermark(self) -> int: ...

    @property
    def log_start_offset(self) -> int: ...

    async def append(self, batches: bytes, *, durable: bool, timeout_s: float) -> AppendOutcome: ...

    def read(self, offset: int, max_bytes: int) -> ReadResult: ...

    def data_after(self, offset: int) -> asyncio.Future[None]: ...

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None: ...


class LocalReplica:
    """The only replica of a partition on a single-broker cluster."""

    def __init__(self, log: PartitionLog, committer: GroupCommitter, config: TopicConfig) -> None:
        self._log = log
        self._committer = committer
        self._config = config
        self._grown: asyncio.Future[None] | None = None

    @property
    def high_watermark(self) -> int:
        return self._log.durable_end_offset

    @property
    def log_start_offset(self) -> int:
        return self._log.start_offset

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self._log.segments())

    def validate(self, batches: bytes) -> list[tuple[int, int]]:
        """The (start, end) spans of the request's batches; raises on any bad one."""
        if not batches:
            raise InvalidBatchError("produce request holds no record batch")
        try:
            spans = batch_format.split_batches(batches)
        except log_errors.CorruptBatchError as exc:
            raise CorruptBatchError(str(exc)) from None
        except log_errors.BatchError as exc:
            raise InvalidBatchError(str(exc)) from None
        limit = self._config.max_message_bytes
        for start, end in spans:
            if end - start > limit:
                raise BatchTooLargeError(
                    f"record batch of {end - start} bytes exceeds max.message.bytes={limit}")
        return spans

    async def append(self, batches: bytes, *, durable: bool, timeout_s: float) -> AppendOutcome:
        spans = self.validate(batches)
        view = memoryview(batches)
        results = [self._log.append(bytes(view[start:end]), crc_verified=True) for start, end in spans]
        outcome = AppendOutcome(results[0].base_offset, results[-1].last_offset, int(time.time() * 1000))
        flushed = self._committer.durable(self._on_durable)
        if durable:
            try:
                await asyncio.wait_for(asyncio.shield(flushed), timeout_s)
            except TimeoutError:
                raise RequestTimedOutError(
                    f"batch staged at offset {outcome.base_offset} was not fsynced within {timeout_s:.3f}s; "
                    "it may still become durable") from None
        return outcome

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one holding `offset`, below the high watermark.

        As in Kafka, an offset between the high watermark and the log end is not an error: it reads
        nothing yet. Only offsets before the log start or past the log end are out of range.
        """
        hw, start, end = self.high_watermark, self._log.start_offset, self._log.end_offset
        if offset < start or offset > end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range: the log runs from {start} to {end} (high watermark {hw})")
        if offset >= hw:
            return ReadResult(b"", hw, start)
        try:
            data = self._log.read(offset, max_bytes, upper_bound=hw)
        except log_errors.OffsetOutOfRangeError as exc:
            raise OffsetOutOfRangeError(str(exc)) from None
        return ReadResult(data, hw, start)

    def data_after(self, offset: int) -> asyncio.Future[None]:
        """A future that resolves when the high watermark passes `offset` (at once if it has)."""
        if self.high_watermark > offset:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        if self._grown is None or self._grown.done():
            self._grown = asyncio.get_running_loop().create_future()
        return self._grown

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        return self._log.offset_for_timestamp(timestamp_ms)

    def apply_retention(self, now_ms: int) -> int:
        return self._log.apply_retention(now_ms)

    def _on_durable(self) -> None:
        grown, self._grown = self._grown, None
        if grown is not None and not grown.done():
            grown.set_result(None)
