"""One partition's log: record batches at offsets, in segments, with a time index, in the log store.

A `PartitionLog` is obtained from `LogStore.open_log`; the Raft entry log on top of it
(`raftka.partition.raft_entries`) is its one writer. Mutations (append_stamped, truncate_suffix,
delete_segments_before, reset) are STAGED into the store's pending write batch together with the
metadata that describes them (segment records, time-index entries, start offset), and become durable
and readable only when `LogStore.flush()` writes that batch; a crash therefore loses whole staged
operations but never leaves data and metadata disagreeing.

Offsets: [start_offset, end_offset) is the log; everything below `durable_end_offset` is on disk
(fsynced) and readable; [durable_end_offset, end_offset) is staged or being flushed. Reads and
timestamp lookups see only the durable part (and never past the caller's upper bound, the high
watermark).

Segments are ranges of whole batches that retention deletes as units. The active (last) segment
rolls when a batch would take it past `segment_bytes` or when it is `segment_ms` old. Each segment's
batches sit in one segment file (`raftka.partition.segments`), written at stage time at the file's
end, which only grows (a truncation leaves dead bytes); RocksDB holds a pointer per batch. A segment
deleted by retention, truncation or reset loses its file after the flush that commits the deletion.

Small batches stay inline: a batch of at most `inline_max_bytes` is stored in its pointer, in
RocksDB, as before segment files. Every file written in a round costs the flush an fdatasync of its
own before the RocksDB write, and a trickle across many partitions (one small batch each per round)
would pay one per partition: measured in-process on the development machine, 100 logs with one
100 B batch each per flush went from 0.87 ms per flush (one WAL fsync) to 6-7 ms with 100 parallel
fdatasyncs, and a lone log's flush from 0.21 to 0.43 ms (file, then WAL). Inline batches ride the WAL
fsync the flush pays anyway; their bytes are few (a full-speed producer sends batches of up to 256
KiB), so RocksDB's rewrites of them cost little. A segment's file is created at its first batch too
big to inline.

Threading: one thread at a time mutates a log and reads it (the broker's event loop); the store's
flush runs on another thread and touches the log only under the store's staging lock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, NamedTuple, Protocol, cast

from rocksdict import ReadOptions, Rdict, WriteBatch

from raftka.errors import InvalidBatchError, OffsetOutOfRangeError
from raftka.partition import keys
from raftka.partition.errors import InvalidOffsetError, LogClosedError, LogError
from raftka.partition.segments import SegmentFiles
from raftka.wire.batch import BatchHeader, read_header

DAY_MS = 24 * 3600 * 1000
_NO_TIMESTAMP = -(1 << 63)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Per-log settings; -1 means unlimited for the retention limits (Kafka's defaults otherwise)."""

    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * DAY_MS
    retention_bytes: int = -1
    retention_ms: int = 7 * DAY_MS

    def __post_init__(self) -> None:
        if self.segment_bytes <= 0 or self.segment_ms <= 0:
            raise ValueError(f"segment_bytes and segment_ms must be positive: {self}")
        if self.retention_bytes < -1 or self.retention_ms < -1:
            raise ValueError(f"retention limits must be -1 (unlimited) or >= 0: {self}")


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    last_offset: int
    max_timestamp: int


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    base_offset: int
    end_offset: int
    size_bytes: int
    max_timestamp: int
    created_ms: int


class _Segment:
    """`size` counts the live batches' bytes; `file_end` is where the next batch goes in the file."""

    __slots__ = ("base", "size", "max_ts", "created_ms", "file_id", "file_end")

    def __init__(self, base: int, size: int, max_ts: int, created_ms: int, file_id: int, file_end: int) -> None:
        self.base = base
        self.size = size
        self.max_ts = max_ts
        self.created_ms = created_ms
        self.file_id = file_id
        self.file_end = file_end

    def packed(self) -> bytes:
        return keys.pack_segment(self.size, self.max_ts, self.created_ms, self.file_id, self.file_end)


class _Span(NamedTuple):
    """Consecutive bytes of one segment file."""

    file_id: int
    position: int
    size: int


class _Unflushed(NamedTuple):
    """A batch at or past durable_end_offset, remembered until a flush makes it durable."""

    base: int
    next: int
    size: int
    max_ts: int


class FlushParticipant(Protocol):
    """Something that stages writes into the store's pending batch and must learn when they are durable.

    Under the store's staging lock, `_flush_mark()` is called as the pending batch is taken and
    `_flush_done(mark)` once that batch is synced, with what `_flush_mark` returned.
    """

    name: str

    def _flush_mark(self) -> int: ...

    def _flush_done(self, mark: int) -> None: ...


Staging = Callable[[FlushParticipant], ContextManager[WriteBatch]]


class PartitionLog:
    """The log of one partition. Do not construct directly: use `LogStore.open_log`."""

    def __init__(self, name: str, log_id: int, config: LogConfig, *, db: Rdict, files: SegmentFiles,
                 inline_max_bytes: int, staging: Staging, clock: Callable[[], int], create: bool) -> None:
        self.name = name
        self.log_id = log_id
        self.config = config
        self._db = db
        self._files = files
        self._inline_max = inline_max_bytes
        self._staging = staging
        self._clock = clock
        self._keys = keys.LogKeys(log_id)
        self._closed = False
        self._unflushed: list[_Unflushed] = []
        self._segments: list[_Segment] = []
        self._start = self._end = 0
        if not create:
            self._start, self._segments = self._load()
            self._end = self._load_end()
        self._durable_end = self._end
        self._low_water = self._end
        self._roll_next = False

    def __repr__(self) -> str:
        return (f"PartitionLog({self.name!r}, start={self._start}, durable_end={self._durable_end}, "
                f"end={self._end}, segments={len(self._segments)})")

    @property
    def start_offset(self) -> int:
        return self._start

    @property
    def end_offset(self) -> int:
        return self._end

    @property
    def durable_end_offset(self) -> int:
        return self._durable_end

    def segments(self) -> list[SegmentInfo]:
        ends = [s.base for s in self._segments[1:]] + [self._end]
        return [SegmentInfo(s.base, end, s.size, s.max_ts, s.created_ms) for s, end in zip(self._segments, ends)]

    def append_stamped(self, batch: bytes, *, crc_verified: bool = False) -> AppendResult:
        """Stage one batch whose base offset was already stamped (by the Raft leader) and store it byte
        for byte as given; InvalidOffsetError unless that base offset is end_offset, so a leader's bug
        cannot leave a hole or an overlap in the offsets. It becomes durable and readable at the next
        store flush.

        `crc_verified=True` skips the CRC check for a caller that has just verified this very batch
        (the broker checks a whole request before staging any of it); structure is always checked."""
        self._check_open()
        header = self._single_batch_header(batch, crc_verified)
        if header.base_offset != self._end:
            raise InvalidOffsetError(f"batch stamped with base offset {header.base_offset} cannot be appended "
                                     f"to {self.name} at end offset {self._end}", offset=header.base_offset)
        return self._stage_append(batch, header)

    def _single_batch_header(self, batch: bytes, crc_verified: bool) -> BatchHeader:
        header = read_header(batch, verify_crc=not crc_verified)
        if header.batch_length != len(batch):
            raise InvalidBatchError(f"append takes exactly one batch: {len(batch)} bytes given, the batch "
                                    f"is {header.batch_length}")
        return header

    def _stage_append(self, stamped: bytes | bytearray | memoryview, header: BatchHeader) -> AppendResult:
        base, now = self._end, self._clock()
        size, next_offset, max_ts = len(stamped), base + header.record_count, header.max_timestamp
        segment = self._segments[-1] if self._segments else None
        roll = (segment is None or self._roll_next or segment.size + size > self.config.segment_bytes
                or now - segment.created_ms >= self.config.segment_ms)
        with self._staging(self) as wb:
            if roll:
                segment = _Segment(base, 0, _NO_TIMESTAMP, now, keys.INLINE, 0)
                self._segments.append(segment)
                self._roll_next = False
            assert segment is not None, "roll is set whenever there is no segment"
            if size <= self._inline_max:
                wb.put(self._keys.batch(base), keys.pack_batch_pointer(keys.INLINE, 0, size, next_offset, stamped))
            else:
                if segment.file_id == keys.INLINE:
                    segment.file_id = self._files.create()
                position = segment.file_end
                self._files.write(segment.file_id, position, stamped)
                segment.file_end += size
                wb.put(self._keys.batch(base), keys.pack_batch_pointer(segment.file_id, position, size, next_offset))
            if max_ts > segment.max_ts:
                segment.max_ts = max_ts
                wb.put(self._keys.time(segment.base, max_ts), keys.pack_u64(base))
            segment.size += size
            wb.put(self._keys.segment(segment.base), segment.packed())
            self._unflushed.append(_Unflushed(base, next_offset, size, max_ts))
            self._end = next_offset
        return AppendResult(base, next_offset - 1, max_ts)

    def read(self, offset: int, max_bytes: int, *, upper_bound: int | None = None) -> bytes:
        """Whole batches from the one holding `offset`, at most `max_bytes` (but at least one batch if any
        is readable), ending at or before `upper_bound` (capped at durable_end_offset)."""
        self._check_open()
        if offset < self._start or offset > self._end:
            raise self._out_of_range(offset)
        bound = self._durable_end if upper_bound is None else min(upper_bound, self._durable_end)
        if offset >= bound:
            return b""
        first = self._batch_key_at_or_before(offset)
        options = ReadOptions()
        options.set_iterate_upper_bound(self._keys.batch(bound))
        spans: list[_Span | bytes] = []
        total = 0
        for value in self._db.values(from_key=first, read_opt=options):
            file_id, position, size, next_offset = keys.unpack_batch_pointer(value)
            if (spans and total + size > max_bytes) or next_offset > bound:
                break
            _add_span(spans, value, file_id, position, size)
            total += size
        return self._read_spans(spans)

    def _read_batches(self, bases: list[int]) -> list[bytes | None]:
        """The durable batches at these base offsets (None for one that has no pointer), in order;
        consecutive batches of one file are read with one pread."""
        batch_keys: list[Any] = [self._keys.batch(b) for b in bases]
        # rocksdict types a multi-get as returning any picklable values; here all are bytes or None.
        pointers = cast(list[bytes | None], self._db.get(batch_keys))
        spans: list[_Span | bytes] = []
        sizes = []
        for pointer in pointers:
            if pointer is not None:
                file_id, position, size, _ = keys.unpack_batch_pointer(pointer)
                _add_span(spans, pointer, file_id, position, size)
                sizes.append(size)
        data = memoryview(self._read_spans(spans))
        out: list[bytes | None] = []
        at = 0
        batch_sizes = iter(sizes)
        for pointer in pointers:
            if pointer is None:
                out.append(None)
                continue
            size = next(batch_sizes)
            out.append(bytes(data[at:at + size]))
            at += size
        return out

    def _read_spans(self, spans: list[_Span | bytes]) -> bytes:
        parts = [self._files.read(*span) if isinstance(span, _Span) else span for span in spans]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def offset_for_timestamp(self, timestamp_ms: int, *, upper_bound: int | None = None) -> int | None:
        """Base offset of the first durable batch below `upper_bound` whose max_timestamp >= timestamp_ms."""
        self._check_open()
        bound = self._durable_end if upper_bound is None else min(upper_bound, self._durable_end)
        for segment in self._segments:
            if segment.base >= bound:
                return None
            if segment.max_ts >= timestamp_ms:
                options = ReadOptions()
                options.set_iterate_upper_bound(self._keys.time_segment(segment.base + 1))
                found = next(self._db.values(from_key=self._keys.time(segment.base, max(timestamp_ms, _NO_TIMESTAMP)),
                                             read_opt=options), None)
                if found is None:
                    return None
                offset = keys.offset_of(found)
                return offset if offset < bound else None
        return None

    def truncate_suffix(self, offset: int) -> None:
        """Remove every batch at or past `offset`, which must be a batch boundary in [start, end]."""
        self._check_open()
        if offset < self._start or offset > self._end:
            raise self._out_of_range(offset)
        if offset == self._end:
            return
        unflushed_from = bisect.bisect_left(self._unflushed, offset, key=lambda u: u.base)
        if offset >= self._durable_end:
            boundary = unflushed_from < len(self._unflushed) and self._unflushed[unflushed_from].base == offset
        else:
            boundary = self._db.get(self._keys.batch(offset)) is not None
        if not boundary:
            raise InvalidOffsetError(f"cannot truncate {self.name} at {offset}: not a batch boundary",
                                     offset=offset)
        cut = bisect.bisect_left(self._segments, offset, key=lambda s: s.base)
        kept = self._segments[cut - 1] if cut > 0 else None
        if kept is not None:
            kept_end = self._segments[cut].base if cut < len(self._segments) else self._end
            kept_max_ts = self._max_timestamp_before(kept, offset)
            kept_size = kept.size - self._bytes_between(offset, kept_end)
        with self._staging(self) as wb:
            wb.delete_range(self._keys.batch(offset), self._keys.batch_end)
            if cut < len(self._segments):
                self._delete_files_after_flush(self._segments[cut:])
                first_cut = self._segments[cut].base
                wb.delete_range(self._keys.segment(first_cut), self._keys.segment_end)
                wb.delete_range(self._keys.time_segment(first_cut), self._keys.time_end)
                del self._segments[cut:]
            if kept is not None:
                wb.delete_range(self._keys.time(kept.base, kept_max_ts) + b"\0",
                                self._keys.time_segment(kept.base + 1))
                kept.max_ts, kept.size = kept_max_ts, kept_size
                wb.put(self._keys.segment(kept.base), kept.packed())
            del self._unflushed[unflushed_from:]
            self._end = offset
            self._durable_end = min(self._durable_end, offset)
            self._low_water = min(self._low_water, offset)

    def retention_start(self, now_ms: int, *, limit: int | None = None, deleted_before: int = 0) -> int:
        """The start offset retention leaves at `now_ms` (a segment base), never past `limit` (a Raft log
        passes the end offset of its applied entries); `delete_segments_before` it applies it. Stages
        nothing.

        Like Kafka: a segment expires when its max timestamp is more than retention_ms before now_ms;
        by size, the oldest segment goes only if the log still holds >= retention_bytes without it.
        A segment that ends at or before `deleted_before` (records deleted by DeleteRecords) goes too.
        The active segment, and any segment not yet wholly durable, is never deleted.
        """
        self._check_open()
        retention_ms, retention_bytes = self.config.retention_ms, self.config.retention_bytes
        segments = self._segments
        total = sum(s.size for s in segments)
        bound = self._durable_end if limit is None else min(limit, self._durable_end)
        doomed = 0
        while doomed + 1 < len(segments) and segments[doomed + 1].base <= bound:
            oldest = segments[doomed]
            expired = retention_ms >= 0 and now_ms - oldest.max_ts > retention_ms
            oversize = retention_bytes >= 0 and total - oldest.size >= retention_bytes
            deleted = segments[doomed + 1].base <= deleted_before
            if not (expired or oversize or deleted):
                break
            total -= oldest.size
            doomed += 1
        return segments[doomed].base if doomed else self._start

    def segment_base_at(self, offset: int) -> int:
        """The base of the segment holding `offset` (the last segment if `offset` is the end offset):
        `delete_segments_before` of it deletes exactly the segments that end at or before `offset`."""
        self._check_open()
        holding = bisect.bisect_right(self._segments, offset, key=lambda s: s.base) - 1
        return self._segments[holding].base if holding >= 0 else self._start

    def roll(self) -> None:
        """Start a new segment at the next append, so that the records appended so far can go as whole
        segments once the caller no longer needs them (a snapshot covers them). Kept in memory only:
        after a restart the active segment takes appends until it rolls for its own reasons."""
        self._check_open()
        self._roll_next = True

    def delete_segments_before(self, new_start: int) -> int:
        """Delete the whole segments that end at or before `new_start` (a segment base, or start_offset);
        return how many."""
        self._check_open()
        segments = self._segments
        doomed = bisect.bisect_left(segments, new_start, key=lambda s: s.base)
        if doomed == len(segments) or segments[doomed].base != new_start:
            if new_start == self._start:
                return 0
            raise InvalidOffsetError(f"cannot delete {self.name} below {new_start}: not a segment base",
                                     offset=new_start)
        if doomed:
            with self._staging(self) as wb:
                wb.delete_range(self._keys.batch_prefix, self._keys.batch(new_start))
                wb.delete_range(self._keys.segment_prefix, self._keys.segment(new_start))
                wb.delete_range(self._keys.time_prefix, self._keys.time_segment(new_start))
                wb.put(self._keys.meta, keys.pack_meta(new_start))
                self._delete_files_after_flush(segments[:doomed])
                del segments[:doomed]
                self._start = new_start
        return doomed

    def reset(self, start_offset: int) -> None:
        """Replace the whole log by an empty one starting at `start_offset` (a Raft follower installing
        a snapshot: the records before it are gone on this replica, as after retention)."""
        self._check_open()
        with self._staging(self) as wb:
            for begin, end in ((self._keys.batch_prefix, self._keys.batch_end),
                               (self._keys.segment_prefix, self._keys.segment_end),
                               (self._keys.time_prefix, self._keys.time_end)):
                wb.delete_range(begin, end)
            wb.put(self._keys.meta, keys.pack_meta(start_offset))
            self._delete_files_after_flush(self._segments)
            self._segments.clear()
            self._unflushed.clear()
            self._start = self._end = self._durable_end = self._low_water = start_offset

    def _flush_mark(self) -> int:
        """Called by the store, under its staging lock, as it takes the pending batch to write."""
        self._low_water = self._end
        return self._end

    def _flush_done(self, flushed_end: int) -> None:
        """Called by the store, under its staging lock, once the batch taken at `_flush_mark` is synced."""
        durable = max(self._durable_end, min(flushed_end, self._low_water))
        self._durable_end = durable
        del self._unflushed[:bisect.bisect_left(self._unflushed, durable, key=lambda u: u.base)]

    def _detach(self) -> None:
        self._closed = True

    def _file_ids(self) -> list[int]:
        """The segment files of the log, staged segments included (for `LogStore.drop_log`)."""
        return [segment.file_id for segment in self._segments if segment.file_id != keys.INLINE]

    def _delete_files_after_flush(self, segments: list[_Segment]) -> None:
        for segment in segments:
            if segment.file_id != keys.INLINE:
                self._files.delete_after_flush(segment.file_id)

    def _out_of_range(self, offset: int) -> OffsetOutOfRangeError:
        return OffsetOutOfRangeError(f"offset {offset} is out of range: the log holds offsets {self._start} "
                                     f"(start) to {self._end} (end, exclusive)", offset=offset,
                                     start_offset=self._start, end_offset=self._end)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log {self.name} is closed or dropped")

    def _load(self) -> tuple[int, list[_Segment]]:
        meta = self._db.get(self._keys.meta)
        if meta is None:
            raise LogError(f"log {self.name} (id {self.log_id}) has no meta record")
        options = ReadOptions()
        options.set_iterate_upper_bound(self._keys.segment_end)
        segments = [_Segment(keys.offset_of(k), *keys.unpack_segment(v))
                    for k, v in keys.bytes_items(self._db.items(from_key=self._keys.segment_prefix, read_opt=options))]
        return keys.unpack_meta(meta), segments

    def _load_end(self) -> int:
        last = next(keys.bytes_items(self._db.items(backwards=True, from_key=self._keys.batch(keys.MAX_U64))), None)
        if last is None or not last[0].startswith(self._keys.batch_prefix):
            return self._start
        return keys.unpack_batch_pointer(last[1])[3]

    def _batch_key_at_or_before(self, offset: int) -> bytes:
        found = next(keys.bytes_keys(self._db.keys(backwards=True, from_key=self._keys.batch(offset))), None)
        if found is None or not found.startswith(self._keys.batch_prefix):
            raise LogError(f"log {self.name}: no batch at or before durable offset {offset}")
        return found

    def _max_timestamp_before(self, segment: _Segment, offset: int) -> int:
        """Largest max_timestamp of the segment's batches below `offset` (one exists)."""
        best = max((u.max_ts for u in self._unflushed if segment.base <= u.base < offset), default=_NO_TIMESTAMP)
        durable_below = min(offset, self._durable_end)
        if segment.base < durable_below:
            prefix = self._keys.time_segment(segment.base)
            newest_first = self._db.items(backwards=True, from_key=self._keys.time_segment(segment.base + 1))
            for key, value in keys.bytes_items(newest_first):
                if not key.startswith(prefix):
                    break
                if keys.offset_of(value) < durable_below:
                    best = max(best, keys.timestamp_of(key))
                    break
        return best

    def _bytes_between(self, begin: int, end: int) -> int:
        """Bytes of the batches whose base offset lies in [begin, end)."""
        total = sum(u.size for u in self._unflushed if begin <= u.base < end)
        durable_end = min(end, self._durable_end)
        if begin < durable_end:
            options = ReadOptions()
            options.set_iterate_upper_bound(self._keys.batch(durable_end))
            total += sum(keys.unpack_batch_pointer(v)[2]
                         for v in self._db.values(from_key=self._keys.batch(begin), read_opt=options))
        return total


def _add_span(spans: list[_Span | bytes], pointer: bytes, file_id: int, position: int, size: int) -> None:
    """Append a batch to `spans`: its inline bytes, or its place in its file, extending the last span
    when the batch follows it in the same file (one pread for both)."""
    if file_id == keys.INLINE:
        spans.append(pointer[keys.BATCH_POINTER_SIZE:])
        return
    if spans:
        last = spans[-1]
        if isinstance(last, _Span) and last.file_id == file_id and last.position + last.size == position:
            spans[-1] = _Span(file_id, last.position, last.size + size)
            return
    spans.append(_Span(file_id, position, size))
