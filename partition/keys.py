"""The key layout of a broker's log store: every partition log in ONE RocksDB key space.

Why key prefixes and not column families: a column family carries its own memtable and is costly to
create and drop (measured on the development machine: ~17 ms and ~11 ms), so 1,000 partitions would
cost seconds to create and real memory at rest. A prefix costs next to nothing: creating a log is two
small puts, dropping it is one `delete_range` tombstone (~0.07 ms there), and all logs share one
WAL, so one fsync commits many partitions' appends (group commit).

Each log gets a numeric id, persisted in the catalog, so keys stay short and a name can be reused
after a drop without meeting old data (ids only grow while the store is open; after a restart the
next id is one past the largest live id, whose key range is empty once its drop was flushed).

All integers are big-endian, so byte order is numeric order::

    key                                                  value
    00000000 00                                          store format version, u16
    00000000 01 <name, UTF-8>                            catalog: log id, u32
    <id u32> 00                                          log meta: start_offset u64
    <id u32> 01 <segment base_offset u64>                segment: size u64, max_timestamp i64,
                                                           created_ms i64, file id u64, file end u64
    <id u32> 02 <segment base u64> <max_ts u64 biased>   time index: batch base_offset u64
    <id u32> 03 <batch base_offset u64>                  where the batch is: file id u64, position u64,
                                                           size u32, next_offset u64, then the batch
                                                           itself if the file id is 0 (inline)
    <id u32> 04 <raft index u64>                         Raft entry pointer: type u8, term u64,
                                                           base_offset u64, next_offset u64,
                                                           size u32, then the data of raft-only
                                                           entries (record entries' batches are in
                                                           segment files, found through 03)
    <id u32> 05 <raft index u64>                         (empty) the entry is a configuration change
    <id u32> 06 00                                       Raft hard state: term, vote, commit (u64s)
    <id u32> 06 01                                       Raft snapshot: index u64, term u64,
                                                           offset u64, conf length u32, conf, data
    <id u32> 07..ff                                      free

The batches themselves live in segment files beside RocksDB (`raftka.partition.segments`): one file
per segment, named by a store-wide file id (never by base offset: a truncated segment's base can be
reused by a new segment while the old file still awaits its unlink). A segment's `file end` is where
its next batch goes; positions only grow, so truncated bytes stay as dead space until the segment
goes, and bytes a durable pointer references are never overwritten. A small batch (up to the store's
`inline_max_bytes`) is kept inline in its pointer instead, under file id 0, and a segment that has no
file batch yet has file id 0 (`raftka.partition.log` says why). Version 1 stores kept each batch
as the value of its 03 key; `raftka.partition.store` upgrades them in place on open.

The 04..06 records exist only for logs opened as Raft logs (`raftka.partition.raft_entries`). The
pointer with the smallest index is the sentinel at the compaction point: its term and next_offset
answer for the last compacted entry, as MemoryStorage's `_ents[0]` does.

The time index holds, per segment, one entry where the running max timestamp of the segment rises,
keyed by that max (biased by 2**63 so that negative timestamps sort first). Entries are therefore
increasing in both timestamp and offset within a segment, which makes "first batch whose
max_timestamp >= t" one seek, and lets truncation and retention drop them with range deletes.
"""

from __future__ import annotations

from collections.abc import Iterator
from struct import Struct
from typing import Any, cast

STORE_VERSION = 2
V1_STORE_VERSION = 1

_ID = Struct(">I")
_U64 = Struct(">Q")
_SEGMENT = Struct(">QqqQQ")
_V1_SEGMENT = Struct(">Qqq")
_BATCH_POINTER = Struct(">QQIQ")
_TS_BIAS = 1 << 63
MAX_U64 = (1 << 64) - 1
_POINTER = Struct(">BQQQI")
_HARD_STATE = Struct(">QQQ")
_SNAPSHOT = Struct(">QQQI")
POINTER_SIZE = _POINTER.size
BATCH_POINTER_SIZE = _BATCH_POINTER.size

STORE_META = 0
CATALOG = 1
META = 0
SEGMENT = 1
TIME = 2
BATCH = 3
ENTRY = 4
CONF_ENTRY = 5
RAFT_META = 6

STORE_PREFIX = _ID.pack(0)
STORE_VERSION_KEY = STORE_PREFIX + bytes([STORE_META])
CATALOG_PREFIX = STORE_PREFIX + bytes([CATALOG])
CATALOG_END = STORE_PREFIX + bytes([CATALOG + 1])


def bytes_keys(iterator: Iterator[Any]) -> Iterator[bytes]:
    """A RocksDB key iterator of this store, typed as what it yields: rocksdict types keys as any
    picklable value, but every key this layout writes is bytes."""
    return cast(Iterator[bytes], iterator)


def bytes_items(iterator: Iterator[Any]) -> Iterator[tuple[bytes, bytes]]:
    """A RocksDB (key, value) iterator of this store: both are always bytes here (see bytes_keys)."""
    return cast(Iterator[tuple[bytes, bytes]], iterator)


def catalog_key(name: str) -> bytes:
    return CATALOG_PREFIX + name.encode()


def pack_id(log_id: int) -> bytes:
    return _ID.pack(log_id)


def unpack_id(value: bytes) -> int:
    return _ID.unpack(value)[0]


def log_range(log_id: int) -> tuple[bytes, bytes]:
    """[begin, end) of every key of the log."""
    return _ID.pack(log_id), _ID.pack(log_id + 1)


class LogKeys:
    """Key builders of one log; the prefixes are computed once because appends use them every time."""

    __slots__ = ("meta", "segment_prefix", "segment_end", "time_prefix", "time_end", "batch_prefix",
                 "batch_end", "entry_prefix", "entry_end", "conf_prefix", "conf_end", "hard_state",
                 "snapshot")

    def __init__(self, log_id: int) -> None:
        prefix = _ID.pack(log_id)
        self.meta = prefix + bytes([META])
        self.segment_prefix = prefix + bytes([SEGMENT])
        self.segment_end = prefix + bytes([SEGMENT + 1])
        self.time_prefix = prefix + bytes([TIME])
        self.time_end = prefix + bytes([TIME + 1])
        self.batch_prefix = prefix + bytes([BATCH])
        self.batch_end = prefix + bytes([BATCH + 1])
        self.entry_prefix = prefix + bytes([ENTRY])
        self.entry_end = prefix + bytes([ENTRY + 1])
        self.conf_prefix = prefix + bytes([CONF_ENTRY])
        self.conf_end = prefix + bytes([CONF_ENTRY + 1])
        self.hard_state = prefix + bytes([RAFT_META, 0])
        self.snapshot = prefix + bytes([RAFT_META, 1])

    def segment(self, base_offset: int) -> bytes:
        return self.segment_prefix + _U64.pack(base_offset)

    def time_segment(self, segment_base: int) -> bytes:
        """Prefix of one segment's time-index entries."""
        return self.time_prefix + _U64.pack(segment_base)

    def time(self, segment_base: int, max_timestamp: int) -> bytes:
        return self.time_prefix + _U64.pack(segment_base) + _U64.pack(max_timestamp + _TS_BIAS)

    def batch(self, base_offset: int) -> bytes:
        return self.batch_prefix + _U64.pack(base_offset)

    def entry(self, index: int) -> bytes:
        return self.entry_prefix + _U64.pack(index)

    def conf_entry(self, index: int) -> bytes:
        return self.conf_prefix + _U64.pack(index)


def offset_of(key: bytes) -> int:
    """The u64 that ends a segment or batch key, or the value of a time-index entry."""
    return _U64.unpack_from(key, len(key) - 8)[0]


def timestamp_of(time_key: bytes) -> int:
    return _U64.unpack_from(time_key, len(time_key) - 8)[0] - _TS_BIAS


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def pack_segment(size_bytes: int, max_timestamp: int, created_ms: int, file_id: int, file_end: int) -> bytes:
    return _SEGMENT.pack(size_bytes, max_timestamp, created_ms, file_id, file_end)


def unpack_segment(value: bytes) -> tuple[int, int, int, int, int]:
    """(size, max_timestamp, created_ms, file_id, file_end)."""
    return _SEGMENT.unpack(value)


def unpack_v1_segment(value: bytes) -> tuple[int, int, int]:
    """(size, max_timestamp, created_ms) of a version-1 segment record (no file: batches in RocksDB)."""
    return _V1_SEGMENT.unpack(value)


INLINE = 0
"""The file id of a batch kept inline in its pointer, and of a segment without a file."""


def pack_batch_pointer(file_id: int, position: int, size: int, next_offset: int,
                       inline: bytes | bytearray | memoryview = b"") -> bytes:
    return _BATCH_POINTER.pack(file_id, position, size, next_offset) + inline


def unpack_batch_pointer(value: bytes) -> tuple[int, int, int, int]:
    """(file_id, position, size, next_offset) of a batch in its segment file; an inline batch (file id
    INLINE) follows at BATCH_POINTER_SIZE."""
    return _BATCH_POINTER.unpack_from(value)


def pack_meta(start_offset: int) -> bytes:
    return _U64.pack(start_offset)


def unpack_meta(value: bytes) -> int:
    return _U64.unpack(value)[0]


def pack_pointer(kind: int, term: int, base_offset: int, next_offset: int, size: int, inline: bytes) -> bytes:
    return _POINTER.pack(kind, term, base_offset, next_offset, size) + inline


def unpack_pointer(value: bytes) -> tuple[int, int, int, int, int]:
    """(type, term, base_offset, next_offset, size); inline data follows at POINTER_SIZE."""
    return _POINTER.unpack_from(value)


_HARD_STATE_REJOINING = 1
"""Flag bit of the optional byte after a hard state's three u64s: the replica lost its durable
state and is still catching up (``HardState.rejoining``, design note 14 in replication/raft.py).
The byte is written only when a flag is set, so a hard state without flags is the original 24
bytes and hard states written before the flag existed read as not rejoining."""


def pack_hard_state(term: int, vote: int, commit: int, rejoining: bool = False) -> bytes:
    packed = _HARD_STATE.pack(term, vote, commit)
    return packed + bytes([_HARD_STATE_REJOINING]) if rejoining else packed


def unpack_hard_state(value: bytes) -> tuple[int, int, int, bool]:
    """(term, vote, commit, rejoining); see ``_HARD_STATE_REJOINING`` for the optional flags byte."""
    term, vote, commit = _HARD_STATE.unpack_from(value)
    flags = value[_HARD_STATE.size] if len(value) > _HARD_STATE.size else 0
    return term, vote, commit, bool(flags & _HARD_STATE_REJOINING)


def pack_snapshot(index: int, term: int, offset: int, conf: bytes, data: bytes) -> bytes:
    return b"".join((_SNAPSHOT.pack(index, term, offset, len(conf)), conf, data))


def unpack_snapshot(value: bytes) -> tuple[int, int, int, bytes, bytes]:
    index, term, offset, conf_length = _SNAPSHOT.unpack_from(value)
    conf_end = _SNAPSHOT.size + conf_length
    return index, term, offset, value[_SNAPSHOT.size:conf_end], value[conf_end:]
