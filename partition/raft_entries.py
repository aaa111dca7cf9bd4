"""The Raft view of a partition log: the partition's record log IS its Raft log (one write per byte).

A Raft entry is (index, term, type, data). A RECORDS entry carries exactly one record batch that
the leader stamped with its base offset and term; the batch is stored once, in the log's segment
file, like any appended batch (read back through `PartitionLog`), and a small pointer record per
index maps the entry to its offsets. NOOP and CONF_CHANGE entries have no offsets: their (small,
rare) data lives inline in the pointer, and configuration changes are also indexed so that a
restart finds them without a scan.
The hard state and the snapshot metadata are per-log records. Key layout: `raftka.partition.keys`.

Invariants (`i` ranges over the pointers, which exist for exactly [first_index - 1, last_index]):
  * the pointer at first_index - 1 is the sentinel of the compaction point: only its term and
    next_offset are used (they answer for the last compacted entry or the snapshot);
  * offsets are dense: base_offset(i) == next_offset(i - 1) for i >= first_index, next > base for
    RECORDS entries, next == base otherwise, and next_offset(last_index) == the log's end offset;
  * first_index - 1 <= snapshot index <= last_index (the snapshot may run ahead of compaction);
  * every mutation is staged in ONE staging block (nested stagings of the record log included), so
    a flush never splits it and a crash loses whole operations only.

Staged-but-unflushed pointers are also kept in a small cache, so every read sees the staged state, as
the in-memory first/last index do; the cache always covers a contiguous suffix of the pointers, so
reads go to RocksDB below it and to the cache from it on. Once synced, an entry stays cached while it
is among the newest `RETAINED_ENTRIES` within `RETAINED_BYTES` (the next round reads the term of the
entry before a leader's next append: a RocksDB read of each cost the leader about a tenth of its
event loop's busy time at 200 sync writes/s, measured on the development machine), or while it is
above the commit index of the previous flush and within the newest `UNAPPLIED_ENTRIES` and
`UNAPPLIED_BYTES`: it is yet to be applied. The driver applies committed entries right after the
flush that persists their commit index, so those are exactly the entries a leader applies once its
followers acknowledge them and a follower once the leader says they are committed; reading them
back from the segment files cost about 6% of a broker's event loop at sustained 1 KiB ingest
(256 KiB batches, measured). The flush thread may drop cache entries while the loop thread reads (it
does so only after their write returned): a read that misses the cache finds the entry in RocksDB.

Retention drives compaction: `apply_retention` deletes whole segments, but only records of entries
at or below the caller's `max_index` (the applied index); the entries whose records are all gone are
compacted in the same staged write, behind a snapshot taken at the last of them when needed. So
every entry in [first_index, last_index] still has its batch, and a follower that needs one that
is gone gets a snapshot, which resets its record log to start at the snapshot's offset (its older
records are gone too, as on the leader). Compaction alone (`compact`) drops pointers and keeps the
batches, which consumers still read through the PartitionLog.

A log whose state lives in its snapshots (an internal state machine's) is truncated by
`snapshot_and_truncate` instead of retention: the snapshot carries the state, so the entries it
covers and the segments holding only their records go at once.

Validation happens before anything is staged: an exception inside a staging block poisons the
store, and a leader bug (a badly stamped batch) must be an error, not a dead broker.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Sequence

from rocksdict import ReadOptions, Rdict, WriteBatch

from raftka.partition import keys
from raftka.partition.errors import EntryIndexError, InvalidEntryError, LogError
from raftka.partition.log import PartitionLog, Staging
from raftka.wire.batch import read_header

log = logging.getLogger(__name__)

RECORDS = 0
NOOP = 1
CONF_CHANGE = 2

_NO_CACHE = 1 << 64
RETAINED_ENTRIES = 8
RETAINED_BYTES = 64 * 1024
UNAPPLIED_ENTRIES = 1024
UNAPPLIED_BYTES = 8 << 20


class StoredEntry(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index(), which nothing calls on an entry
    term: int
    type: int
    data: bytes


class HardStateRecord(NamedTuple):
    term: int = 0
    vote: int = 0
    commit: int = 0
    rejoining: bool = False


class SnapshotRecord(NamedTuple):
    """The latest snapshot: `offset` is the end offset of the records of the entries it covers;
    `conf` and `data` are opaque to this layer. Index 0 means no snapshot yet."""

    index: int  # type: ignore[assignment]  # shadows tuple.index(), which nothing calls on a snapshot
    term: int
    offset: int
    conf: bytes = b""
    data: bytes = b""


class _Pointer(NamedTuple):
    type: int
    term: int
    base: int
    next: int
    size: int
    inline: bytes


class _Cached(NamedTuple):
    pointer: _Pointer
    data: bytes
    seq: int


class RaftEntryLog:
    """The Raft entries of one partition log. Obtain it from `LogStore.open_raft_log`; same threading
    rules as PartitionLog (one thread mutates and reads; the store flushes on another). The `_stage_*`
    helpers run inside a staging block and take its write batch."""

    def __init__(self, partition_log: PartitionLog, *, db: Rdict, staging: Staging) -> None:
        self.log = partition_log
        self.name = partition_log.name
        self._db = db
        self._staging = staging
        self._keys = keys.LogKeys(partition_log.log_id)
        self._cache: dict[int, _Cached] = {}
        self._cache_from = _NO_CACHE
        self._seq = 0
        self._commit_flushed = 0
        raw = db.get(self._keys.hard_state)
        self._hard_state = HardStateRecord(*keys.unpack_hard_state(raw)) if raw else HardStateRecord()
        first = next(keys.bytes_keys(db.keys(from_key=self._keys.entry_prefix)), None)
        if first is None or not first.startswith(self._keys.entry_prefix):
            self._first, self._last = 1, 0
            with self._staging(self) as wb:
                end = partition_log.end_offset
                self._stage_pointer(wb, 0, _Pointer(NOOP, 0, end, end, 0, b""))
        else:
            last = next(keys.bytes_keys(db.keys(backwards=True, from_key=self._keys.entry(keys.MAX_U64))))
            self._first, self._last = keys.offset_of(first) + 1, keys.offset_of(last)
        raw = db.get(self._keys.snapshot)
        self._snapshot = (SnapshotRecord(*keys.unpack_snapshot(raw)) if raw
                          else SnapshotRecord(0, 0, self.end_offset_at(0)))
        if self.end_offset_at(self._last) != partition_log.end_offset:
            raise LogError(f"raft log {self.name}: entries end at offset {self.end_offset_at(self._last)} but "
                           f"the record log ends at {partition_log.end_offset}")
        log.debug("raft log opened name=%s first=%d last=%d snapshot=%d", self.name, self._first, self._last,
                  self._snapshot.index)

    def __repr__(self) -> str:
        return (f"RaftEntryLog({self.name!r}, first={self._first}, last={self._last}, "
                f"snapshot={self._snapshot.index}, end_offset={self.log.end_offset})")

    @property
    def first_index(self) -> int:
        return self._first

    @property
    def last_index(self) -> int:
        return self._last

    @property
    def hard_state(self) -> HardStateRecord:
        return self._hard_state

    @property
    def snapshot(self) -> SnapshotRecord:
        return self._snapshot

    @property
    def end_offset(self) -> int:
        """The record log's end offset: where the leader stamps the next batch after the last entry."""
        return self.log.end_offset

    def term(self, index: int) -> int:
        """Term of the entry at `index`, for first_index - 1 <= index <= last_index."""
        self._check_index(index)
        return self._pointer(index).term

    def end_offset_at(self, index: int) -> int:
        """The offset after the last record of the entries <= `index` (first_index - 1 <= index <=
        last_index): the high watermark when `index` is the commit index. One point lookup."""
        self._check_index(index)
        return self._pointer(index).next

    def entries(self, lo: int, hi: int, max_bytes: int | None = None, *, entry_overhead: int = 0) -> list[StoredEntry]:
        """Entries [lo, hi) (first_index <= lo, hi <= last_index + 1): at least one if lo < hi, and no
        more than `max_bytes` in all, counting `entry_overhead` plus the data of each entry."""
        self.log._check_open()
        if lo < self._first or hi > self._last + 1:
            raise EntryIndexError(lo, hi, self._first, self._last)
        budget = float("inf") if max_bytes is None else max_bytes
        total = 0
        pointers: list[tuple[int, _Pointer]] = []
        durable_hi = min(hi, self._cache_from)
        if lo < durable_hi:
            options = ReadOptions()
            options.set_iterate_upper_bound(self._keys.entry(durable_hi))
            for key, value in keys.bytes_items(self._db.items(from_key=self._keys.entry(lo), read_opt=options)):
                pointer = _unpack(value)
                total += entry_overhead + pointer.size
                if total > budget and pointers:
                    return self._with_batches(pointers)
                pointers.append((keys.offset_of(key), pointer))
            if len(pointers) != durable_hi - lo:
                raise LogError(f"raft log {self.name}: entry pointers missing in [{lo}, {durable_hi})")
        out = self._with_batches(pointers)
        for index in range(max(lo, durable_hi), hi):
            cached = self._cache.get(index)
            if cached is None:
                entry = self._with_batches([(index, self._pointer(index))])[0]
            else:
                entry = StoredEntry(index, cached.pointer.term, cached.pointer.type, cached.data)
            total += entry_overhead + len(entry.data)
            if total > budget and out:
                break
            out.append(entry)
        return out

    def config_entries(self, lo: int, hi: int) -> list[StoredEntry]:
        """The CONF_CHANGE entries in [lo, hi), from their index rather than a scan of the log."""
        self.log._check_open()
        if lo >= hi:
            return []
        if lo < self._first or hi > self._last + 1:
            raise EntryIndexError(lo, hi, self._first, self._last)
        options = ReadOptions()
        options.set_iterate_upper_bound(self._keys.conf_entry(min(hi, self._cache_from)))
        conf_keys = keys.bytes_keys(self._db.keys(from_key=self._keys.conf_entry(lo), read_opt=options))
        indexes = [keys.offset_of(k) for k in conf_keys]
        indexes += [i for i in range(max(lo, self._cache_from), hi) if self._pointer(i).type == CONF_CHANGE]
        return [StoredEntry(i, p.term, p.type, p.inline) for i, p in ((i, self._pointer(i)) for i in indexes)]

    def append(self, entries: Sequence[tuple[int, int, int, bytes]]) -> None:
        """Stage `entries` (index, term, type, data), replacing the stored entries from the first one's
        index on (first_index, snapshot index < that index <= last_index + 1; indexes consecutive:
        what a snapshot covers is never truncated). Truncating
        entries truncates their records too. A RECORDS entry's data must be one batch stamped with
        the entry's term and the base offset where it lands, else InvalidEntryError (nothing staged)."""
        self.log._check_open()
        if not entries:
            return
        start = entries[0][0]
        if start < max(self._first, self._snapshot.index + 1) or start > self._last + 1:
            raise EntryIndexError(start, start + len(entries), max(self._first, self._snapshot.index + 1),
                                  self._last + 1)
        offset = self.end_offset_at(start - 1)
        pointers = []
        for n, (index, term, kind, data) in enumerate(entries):
            if index != start + n:
                raise InvalidEntryError(f"raft log {self.name}: entry {index} follows {start + n - 1}")
            if kind == RECORDS:
                header = read_header(data)
                if header.batch_length != len(data) or header.base_offset != offset or header.term != term:
                    raise InvalidEntryError(
                        f"raft log {self.name}: entry {index} (term {term}) must be one batch stamped with base "
                        f"offset {offset} and term {term}; got {len(data)} bytes, batch length "
                        f"{header.batch_length}, base offset {header.base_offset}, term {header.term}")
                pointers.append(_Pointer(kind, term, offset, header.next_offset, len(data), b""))
                offset = header.next_offset
            else:
                pointers.append(_Pointer(kind, term, offset, offset, len(data), data))
        with self._staging(self) as wb:
            if start <= self._last:
                self._stage_truncate(wb, start)
            for (index, _, kind, data), pointer in zip(entries, pointers):
                if kind == RECORDS:
                    self.log.append_stamped(data, crc_verified=True)
                self._stage_pointer(wb, index, pointer, data)
            self._last = entries[-1][0]

    def set_hard_state(self, term: int, vote: int, commit: int, rejoining: bool = False) -> None:
        self.log._check_open()
        with self._staging(self) as wb:
            wb.put(self._keys.hard_state, keys.pack_hard_state(term, vote, commit, rejoining))
            self._hard_state = HardStateRecord(term, vote, commit, rejoining)

    def create_snapshot(self, index: int, conf: bytes, data: bytes) -> SnapshotRecord:
        """Record a snapshot at `index` (snapshot index < index <= last_index, first_index - 1 <= index);
        its offset is end_offset_at(index). Compacts nothing."""
        self.log._check_open()
        if index <= self._snapshot.index:
            raise EntryIndexError(index, index + 1, self._snapshot.index + 1, self._last)
        self._check_index(index)
        pointer = self._pointer(index)
        with self._staging(self) as wb:
            self._stage_snapshot(wb, SnapshotRecord(index, pointer.term, pointer.next, conf, data))
        return self._snapshot

    def snapshot_and_truncate(self, index: int, conf: bytes, data: bytes) -> SnapshotRecord:
        """Record a snapshot at `index` as `create_snapshot` does, compact the entries up to `index`,
        delete the segments that end at or before the snapshot's offset and roll the active one (so the
        next call can delete it). The records of the entries it covers are therefore gone, except
        those sharing the active segment with later ones. One staged write."""
        self.log._check_open()
        if index <= self._snapshot.index:
            raise EntryIndexError(index, index + 1, self._snapshot.index + 1, self._last)
        self._check_index(index)
        pointer = self._pointer(index)
        new_start = self.log.segment_base_at(pointer.next)
        with self._staging(self) as wb:
            self._stage_snapshot(wb, SnapshotRecord(index, pointer.term, pointer.next, conf, data))
            if index >= self._first:
                self._stage_compact(wb, index)
            deleted = self.log.delete_segments_before(new_start)
            self.log.roll()
        log.info("raft log %s: snapshot index=%d offset=%d bytes=%d, deleted %d segments, log starts at "
                 "offset %d, entries at %d", self.name, index, pointer.next, len(data), deleted,
                 self.log.start_offset, self._first)
        return self._snapshot

    def apply_snapshot(self, snapshot: SnapshotRecord) -> None:
        """Replace the whole log, entries and records, by `snapshot` (newer than the current one): the
        record log restarts empty at snapshot.offset."""
        self.log._check_open()
        if snapshot.index <= self._snapshot.index:
            raise EntryIndexError(snapshot.index, snapshot.index + 1, self._snapshot.index + 1, keys.MAX_U64)
        with self._staging(self) as wb:
            wb.delete_range(self._keys.entry_prefix, self._keys.entry_end)
            wb.delete_range(self._keys.conf_prefix, self._keys.conf_end)
            self._cache.clear()
            self._cache_from = _NO_CACHE
            self.log.reset(snapshot.offset)
            self._stage_pointer(wb, snapshot.index,
                                _Pointer(NOOP, snapshot.term, snapshot.offset, snapshot.offset, 0, b""))
            self._stage_snapshot(wb, snapshot)
            self._first, self._last = snapshot.index + 1, snapshot.index
        log.info("raft log %s: installed snapshot index=%d term=%d offset=%d", self.name, snapshot.index,
                 snapshot.term, snapshot.offset)

    def compact(self, index: int) -> None:
        """Drop the entries up to and including `index` (first_index <= index <= snapshot index); their
        records stay (retention deletes records: `apply_retention`)."""
        self.log._check_open()
        if index < self._first or index > self._snapshot.index:
            raise EntryIndexError(index, index + 1, self._first, self._snapshot.index)
        with self._staging(self) as wb:
            self._stage_compact(wb, index)

    def apply_retention(self, now_ms: int, max_index: int, conf_at: Callable[[int], bytes], *,
                        deleted_before: int = 0) -> int:
        """Apply the log's retention (and `deleted_before`: `PartitionLog.retention_start`) to records of
        entries <= `max_index` (pass the applied index), and
        compact the entries whose records it deletes, snapshotting the last of them (its
        configuration from `conf_at(index)`) if the current snapshot is older. Returns the number of
        segments deleted; everything is staged in one write."""
        self.log._check_open()
        anchor = max(self._first - 1, min(max_index, self._last))
        new_start = self.log.retention_start(now_ms, limit=self.end_offset_at(anchor), deleted_before=deleted_before)
        if new_start == self.log.start_offset:
            return 0
        cut = min(self._first_ending_after(new_start) - 1, anchor)
        snapshot = None
        if cut > self._snapshot.index:
            pointer = self._pointer(cut)
            snapshot = SnapshotRecord(cut, pointer.term, pointer.next, conf_at(cut), b"")
        with self._staging(self) as wb:
            deleted = self.log.delete_segments_before(new_start)
            if snapshot is not None:
                self._stage_snapshot(wb, snapshot)
            if cut >= self._first:
                self._stage_compact(wb, cut)
        log.info("raft log %s: retention deleted %d segments, log starts at offset %d, entries at %d", self.name,
                 deleted, new_start, self._first)
        return deleted

    def _flush_mark(self) -> int:
        return self._seq

    def _flush_done(self, mark: int) -> None:
        """The cache's insertion order is its staging order (`_stage_pointer` reinserts a restaged
        index), so the synced entries are its first ones."""
        flushed = []
        for index, cached in self._cache.items():
            if cached.seq > mark:
                break
            flushed.append(index)
        commit_before, self._commit_flushed = self._commit_flushed, self._hard_state.commit
        budget, kept = RETAINED_BYTES, 0
        for index in reversed(flushed[-RETAINED_ENTRIES:]):
            budget -= len(self._cache[index].data)
            if budget < 0:
                break
            kept += 1
        budget, unapplied = UNAPPLIED_BYTES, 0
        for index in reversed(flushed[-UNAPPLIED_ENTRIES:]):
            budget -= len(self._cache[index].data)
            if index <= commit_before or budget < 0:
                break
            unapplied += 1
        kept = max(kept, unapplied)
        for index in flushed[:len(flushed) - kept]:
            del self._cache[index]
        self._cache_from = min(self._cache, default=_NO_CACHE)

    def _check_index(self, index: int) -> None:
        self.log._check_open()
        if index < self._first - 1 or index > self._last:
            raise EntryIndexError(index, index + 1, self._first - 1, self._last)

    def _pointer(self, index: int) -> _Pointer:
        cached = self._cache.get(index)
        if cached is not None:
            return cached.pointer
        raw = self._db.get(self._keys.entry(index))
        if raw is None:
            raise LogError(f"raft log {self.name}: no pointer for entry {index}")
        return _unpack(raw)

    def _with_batches(self, pointers: list[tuple[int, _Pointer]]) -> list[StoredEntry]:
        bases = [p.base for _, p in pointers if p.type == RECORDS]
        batches = iter(self.log._read_batches(bases) if bases else ())
        out = []
        for index, p in pointers:
            data = next(batches) if p.type == RECORDS else p.inline
            if data is None:
                raise LogError(f"raft log {self.name}: the batch of entry {index} (offset {p.base}) is missing")
            out.append(StoredEntry(index, p.term, p.type, data))
        return out

    def _first_ending_after(self, offset: int) -> int:
        """The smallest index in [first_index - 1, last_index] whose next_offset exceeds `offset`
        (offset < the log's end offset): a binary search over the dense, monotonic pointers."""
        lo, hi = self._first - 1, self._last
        while lo < hi:
            mid = (lo + hi) // 2
            if self._pointer(mid).next > offset:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _stage_pointer(self, wb: WriteBatch, index: int, pointer: _Pointer, data: bytes = b"") -> None:
        wb.put(self._keys.entry(index), keys.pack_pointer(*pointer))
        if pointer.type == CONF_CHANGE:
            wb.put(self._keys.conf_entry(index), b"")
        self._seq += 1
        self._cache.pop(index, None)
        self._cache[index] = _Cached(pointer, data if pointer.type == RECORDS else pointer.inline, self._seq)
        self._cache_from = min(self._cache_from, index)

    def _stage_truncate(self, wb: WriteBatch, index: int) -> None:
        """Drop the entries from `index` (> first_index - 1) and their records."""
        self.log.truncate_suffix(self.end_offset_at(index - 1))
        wb.delete_range(self._keys.entry(index), self._keys.entry_end)
        wb.delete_range(self._keys.conf_entry(index), self._keys.conf_end)
        for doomed in [i for i in self._cache if i >= index]:
            del self._cache[doomed]
        self._cache_from = min(self._cache, default=_NO_CACHE)
        self._last = index - 1

    def _stage_compact(self, wb: WriteBatch, index: int) -> None:
        wb.delete_range(self._keys.entry_prefix, self._keys.entry(index))
        wb.delete_range(self._keys.conf_prefix, self._keys.conf_entry(index + 1))
        for doomed in [i for i in self._cache if i < index]:
            del self._cache[doomed]
        self._cache_from = min(self._cache, default=_NO_CACHE)
        self._first = index + 1

    def _stage_snapshot(self, wb: WriteBatch, snapshot: SnapshotRecord) -> None:
        wb.put(self._keys.snapshot, keys.pack_snapshot(*snapshot))
        self._snapshot = snapshot


def _unpack(value: bytes) -> _Pointer:
    return _Pointer(*keys.unpack_pointer(value), value[keys.POINTER_SIZE:])
