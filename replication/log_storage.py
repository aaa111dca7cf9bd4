"""The Raft core's `Storage`, implemented by a partition log in the broker's RocksDB log store.

A partition's Raft log and its record log are ONE log (`raftka.partition.raft_entries` has the
layout and invariants): a NORMAL entry's data is one record batch, stamped by the leader with its
base offset and term, and stored once, where consumers read it. This module only translates between
the core's types and that log, and maps its range errors to CompactedError/UnavailableError exactly
as `MemoryStorage` (the reference) raises them.

Writes are STAGED in the log store's pending write batch: the driver handling a Ready calls
`apply_snapshot`, `append`, `set_hard_state` on every group it serves, then `LogStore.flush()` once
(one fsync for all of them: the group commit), and only then sends messages and calls `advance`.
Reads see the staged state, so between the two the storage answers as if the write were durable,
which is what the core assumes of everything in a Storage.

Snapshots: the state machine of a partition IS the log, so a snapshot is its metadata plus
``data = offset u64 || application data``, where `offset` is the end offset of the records of the
entries it covers: a follower installing it restarts its record log, empty, at that offset.
``create_snapshot(index, conf, data)`` prepends the offset to the caller's `data` (`snapshot_payload`
gives it back): empty for an ordinary partition, whose retention drives compaction (see
`apply_retention`); the serialised state for an internal state machine's partition, which
`snapshot_and_truncate` compacts and truncates behind each snapshot.
"""

from __future__ import annotations

import logging
from struct import Struct
from typing import Callable

from raftka.partition import raft_entries
from raftka.partition.raft_entries import RaftEntryLog, SnapshotRecord
from raftka.replication import failpoints
from raftka.replication.entries import ENTRY_OVERHEAD_BYTES, Entry, EntryType
from raftka.replication.errors import (CompactedError, RaftError, RaftSafetyError, SnapshotOutOfDateError,
                                       UnavailableError)
from raftka.replication.state import ConfState, HardState, Snapshot, SnapshotMetadata
from raftka.replication.storage import bootstrap_snapshot

log = logging.getLogger(__name__)

_U64 = Struct(">Q")
_CONF_COUNTS = Struct(">HH")
_TYPES = tuple(EntryType)
assert (raft_entries.RECORDS, raft_entries.NOOP, raft_entries.CONF_CHANGE) == (
    EntryType.NORMAL, EntryType.NOOP, EntryType.CONF_CHANGE)


class SnapshotDataError(RaftError):
    """A snapshot offered to a partition storage does not start with its 8-byte record offset."""


def encode_conf_state(conf: ConfState) -> bytes:
    ids = conf.voters + conf.learners
    return _CONF_COUNTS.pack(len(conf.voters), len(conf.learners)) + b"".join(map(_U64.pack, ids))


def decode_conf_state(data: bytes) -> ConfState:
    if not data:
        return ConfState()
    voters, learners = _CONF_COUNTS.unpack_from(data)
    ids = [_U64.unpack_from(data, _CONF_COUNTS.size + 8 * n)[0] for n in range(voters + learners)]
    return ConfState(tuple(ids[:voters]), tuple(ids[voters:]))


def snapshot_offset(snapshot: Snapshot) -> int:
    """The record offset a partition snapshot ends at (where the installing replica's log restarts)."""
    if len(snapshot.data) < _U64.size:
        raise SnapshotDataError(f"snapshot {snapshot.index} carries {len(snapshot.data)} bytes of data; "
                                f"a partition snapshot starts with its u64 record offset")
    return _U64.unpack_from(snapshot.data)[0]


def snapshot_payload(snapshot: Snapshot) -> bytes:
    """The application data of a partition snapshot (after its record offset)."""
    snapshot_offset(snapshot)
    return snapshot.data[_U64.size:]


class PartitionStorage:
    """`Storage` over a `RaftEntryLog` (get it from `LogStore.open_raft_log`)."""

    def __init__(self, entry_log: RaftEntryLog) -> None:
        self.entry_log = entry_log
        self._snapshot_record: SnapshotRecord | None = None
        self._snapshot = Snapshot()

    @classmethod
    def bootstrap(cls, entry_log: RaftEntryLog, conf_state: ConfState) -> PartitionStorage:
        """Storage of a founding member: the snapshot of `bootstrap_snapshot` (index 1, term 1) at the
        log's current end offset, and HardState(term=1, commit=1); staged like every write."""
        storage = cls(entry_log)
        storage.apply_snapshot(bootstrap_snapshot(conf_state, _U64.pack(entry_log.end_offset)))
        storage.set_hard_state(HardState(term=1, commit=1))
        return storage

    def initial_state(self) -> tuple[HardState, SnapshotMetadata]:
        return HardState(*self.entry_log.hard_state), self.snapshot().metadata

    def first_index(self) -> int:
        return self.entry_log.first_index

    def last_index(self) -> int:
        return self.entry_log.last_index

    def term(self, index: int) -> int:
        self._check_term_index(index)
        return self.entry_log.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        self._check_range(lo, hi)
        if lo >= hi:
            return []
        return [Entry(i, t, _TYPES[k], d)
                for i, t, k, d in self.entry_log.entries(lo, hi, max_bytes, entry_overhead=ENTRY_OVERHEAD_BYTES)]

    def config_entries(self, lo: int, hi: int) -> list[Entry]:
        if lo >= hi:
            return []
        self._check_range(lo, hi)
        return [Entry(i, t, EntryType.CONF_CHANGE, d) for i, t, _, d in self.entry_log.config_entries(lo, hi)]

    def snapshot(self) -> Snapshot:
        record = self.entry_log.snapshot
        if record is not self._snapshot_record:
            self._snapshot_record = record
            self._snapshot = Snapshot() if record.index == 0 else Snapshot(
                SnapshotMetadata(record.index, record.term, decode_conf_state(record.conf)),
                _U64.pack(record.offset) + record.data)
        return self._snapshot

    def append(self, entries: list[Entry]) -> None:
        """Stage `entries`, replacing the stored suffix from entries[0].index (records included).

        A NORMAL entry must be one batch stamped with its term and with base offset equal to the log
        end offset where it lands; otherwise `InvalidEntryError` and nothing is staged. Entries the
        snapshot covers are never replaced (RaftSafetyError; MemoryStorage does not check this)."""
        if failpoints.armed("partition-append") and any(e.type == EntryType.NORMAL for e in entries):
            failpoints.hit("partition-append", self.entry_log.name)
        first = self.first_index()
        if not entries or entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index:]
        if entries[0].index > self.last_index() + 1:
            raise UnavailableError(f"append at {entries[0].index} leaves a gap after {self.last_index()}")
        if entries[0].index <= self.entry_log.snapshot.index:
            raise RaftSafetyError(f"append at {entries[0].index} would truncate entries covered by the snapshot "
                                  f"at {self.entry_log.snapshot.index}")
        self.entry_log.append([(e.index, e.term, e.type, e.data) for e in entries])

    def set_hard_state(self, hard_state: HardState) -> None:
        hs = hard_state
        self.entry_log.set_hard_state(hs.term, hs.vote, hs.commit, hs.rejoining)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log, records included, by `snapshot`: the record log restarts empty at the
        offset the snapshot's data starts with."""
        current = self.entry_log.snapshot.index
        if snapshot.index <= current:
            raise SnapshotOutOfDateError(f"snapshot {snapshot.index} is not newer than {current}")
        offset = snapshot_offset(snapshot)
        self.entry_log.apply_snapshot(SnapshotRecord(snapshot.index, snapshot.term, offset,
                                                     encode_conf_state(snapshot.metadata.conf_state),
                                                     snapshot.data[_U64.size:]))

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes = b"") -> Snapshot:
        """Record a snapshot at `index` whose data is its record offset followed by `data`."""
        self._check_snapshot_index(index)
        self.entry_log.create_snapshot(index, encode_conf_state(conf_state), data)
        return self.snapshot()

    def snapshot_and_truncate(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot at `index` (as `create_snapshot`) and drop what it covers: its entries and
        the record segments behind its offset (`RaftEntryLog.snapshot_and_truncate`). For partitions
        whose state lives in `data`: their older records are no longer anyone's concern."""
        self._check_snapshot_index(index)
        self.entry_log.snapshot_and_truncate(index, encode_conf_state(conf_state), data)
        return self.snapshot()

    def compact(self, index: int) -> None:
        """Drop the entries up to `index` (covered by the snapshot); their records stay readable."""
        if index < self.first_index():
            raise CompactedError(f"index {index} is already compacted")
        if index > self.entry_log.snapshot.index:
            raise UnavailableError(f"cannot compact past the snapshot ({self.entry_log.snapshot.index})")
        self.entry_log.compact(index)

    @property
    def end_offset(self) -> int:
        """The record log's end offset (staged appends included): a leader stamps the next batch it
        proposes with this plus the records of its proposals not yet appended here."""
        return self.entry_log.end_offset

    def end_offset_at(self, index: int) -> int:
        """The offset after the records of the entries <= `index`: the high watermark when `index` is
        the commit index. For first_index() - 1 <= index <= last_index(); one point lookup."""
        self._check_term_index(index)
        return self.entry_log.end_offset_at(index)

    def apply_retention(self, now_ms: int, applied: int, conf_state_at: Callable[[int], ConfState], *,
                        deleted_before: int = 0) -> int:
        """Delete the segments the log's retention expires (and those wholly below `deleted_before`, the
        partition's DeleteRecords offset), among the records of entries <= `applied`,
        and compact the entries whose records went (snapshotting the last of them, with configuration
        `conf_state_at(index)`, e.g. `RaftNode.conf_state_at`). Returns the segments deleted."""
        return self.entry_log.apply_retention(now_ms, applied, lambda i: encode_conf_state(conf_state_at(i)),
                                              deleted_before=deleted_before)

    def _check_snapshot_index(self, index: int) -> None:
        current = self.entry_log.snapshot.index
        if index <= current:
            raise SnapshotOutOfDateError(f"snapshot {index} is not newer than {current}")
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is beyond the last index {self.last_index()}")
        self._check_term_index(index)

    def _check_term_index(self, index: int) -> None:
        if index < self.first_index() - 1:
            raise CompactedError(f"index {index} is compacted (first index {self.first_index()})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")

    def _check_range(self, lo: int, hi: int) -> None:
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last index is {self.last_index()}")
