"""The record-batch format: the unit a producer builds, the broker stores and a consumer decodes.

A batch is built once by the producer (`encode_batch`), checked and stamped with its base offset and
Raft term by the partition leader (`split_batches`, `stamp_replicated`), stored and served whole, and
decoded by the consumer (`decode_columns`). The broker never looks past the header: per-record work
is client work, except in the broker's own internal logs (`decode_batch`). Both sides speak this
format, so it lives in `raftka.wire`; a bad batch raises `raftka.errors.CorruptBatchError` or
`InvalidBatchError` wherever it is found. The format is specified for implementers in other
languages in proto/BATCH_FORMAT.md, with test vectors (proto/batch-vectors.json); a change here is a
change there.

Header (61 bytes, every integer big-endian, fixed width)::

    off size field            notes
      0   8  base_offset      u64  offset of record 0; stamped by the broker      -- not in CRC
      8   4  batch_length     u32  bytes of the whole batch, header included       -- not in CRC
     12   8  term             u64  Raft term of the leader that appended the batch
                                   (0 until replication stamps it)                 -- not in CRC
     20   1  magic            u8   format version, currently 1                     -- not in CRC
     21   4  crc              u32  CRC32C (Castagnoli) of bytes [25, batch_length)
     25   2  attributes       u16  bits 0-2 compression (0 none, 1 zstd, 2 lz4),
                                   bit 3 records carry headers; other bits must be 0
     27   4  record_count     u32  >= 1; record i has offset base_offset + i
     31   8  first_timestamp  i64  ms since the epoch of record 0
     39   8  max_timestamp    i64  largest record timestamp (feeds the time index)
     47   8  producer_id      i64  -1 = none (not idempotent)
     55   2  producer_epoch   i16  -1 = none
     57   4  base_sequence    i32  -1 = none; else the sequence of record 0 among the producer's
                                   records on this partition (dense, from 0)

The CRC covers everything after itself, so the fields the broker writes (base_offset, term) can be
patched in O(1) without recomputing it, and a consumer can still verify the producer's bytes end to
end, as in Kafka. batch_length and magic are outside it because they are needed to find the bytes to
check; a damaged batch_length shows up as a bounds error or a CRC mismatch.

Records section (bytes [61, batch_length)), compressed as one block when the attributes say so
(zstd frame or LZ4 frame, each carrying its content size). Uncompressed, with n = record_count, it is
laid out in columns so that encoding and decoding are a few C-level passes rather than a Python loop
per field::

    n x i32  timestamp delta      record timestamp - first_timestamp (so a batch spans < ~24.8 days)
    n x i32  key length           -1 = null key
    n x i32  value length         -1 = null value
    keys                          the non-null keys, concatenated in record order
    values                        the non-null values, concatenated in record order
    headers (only if attribute bit 3 is set):
      n x u16  header count of each record
      then for every header, in record order: u16 key length, i32 value length (-1 = null value),
      key (UTF-8), value

A batch is valid when the records section is consumed exactly; anything else is InvalidBatchError.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, chain, repeat
from struct import Struct
from struct import error as StructError
from typing import Any, NamedTuple, Sequence, cast

import crc32c
import lz4.frame
import zstandard

from raftka.errors import CorruptBatchError, InvalidBatchError

MAGIC = 1
HEADER_SIZE = 61
CRC_START = 25
TERM_OFFSET = 12

IDEMPOTENCE_WINDOW = 16
"""Batches of each producer a partition leader remembers to recognise retries; an idempotent
producer keeps at most this many batches per partition in flight."""

_HEADER = Struct(">QIQBIHIqqqhi")
_PREFIX = Struct(">QIQBI")
_REST = Struct(">HIqqqhi")
_U64 = Struct(">Q")
_U32 = Struct(">I")
_BASE_AND_LENGTH = Struct(">QI")
_RECORD_COUNT_AT = 27
_new_tuple = tuple.__new__
_HEADER_ENTRY = Struct(">Hi")
assert _HEADER.size == HEADER_SIZE and _PREFIX.size == CRC_START

_COMPRESSION_MASK = 0x0007
_HAS_HEADERS = 0x0008
_KNOWN_ATTRIBUTES = _COMPRESSION_MASK | _HAS_HEADERS


class Compression(enum.IntEnum):
    NONE = 0
    ZSTD = 1
    LZ4 = 2


class RecordInput(NamedTuple):
    """What a producer hands to `encode_batch`; any 4-sequence in this order works too."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    timestamp_ms: int


class BatchRecord(NamedTuple):
    """A record as its batch holds it, with its absolute offset (`decode_batch`). A consumer's
    `raftka.client.Record` adds the topic and partition the batch does not know. A NamedTuple rather
    than a dataclass: decoding builds one per record."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    term: int
    magic: int
    crc: int
    attributes: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count

    @property
    def compression(self) -> Compression:
        return Compression(self.attributes & _COMPRESSION_MASK)


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    header: BatchHeader
    records: list[BatchRecord]


def encode_batch(records: Sequence[Sequence[Any]], *, compression: Compression = Compression.NONE,
                 producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    """One batch holding `records`, each (key, value, headers, timestamp_ms); base_offset is 0."""
    count = len(records)
    if count == 0:
        raise InvalidBatchError("a record batch needs at least one record")
    keys, values, headers, timestamps = zip(*records)
    first = timestamps[0]
    attributes = int(compression)
    try:
        columns = _int32s(3 * count).pack(*[t - first for t in timestamps], *_lengths(keys), *_lengths(values))
    except StructError:
        raise InvalidBatchError("record timestamps in one batch must lie within 2**31 ms of the first, "
                                "and keys and values must be shorter than 2 GiB") from None
    parts = [columns, _concat(keys), _concat(values)]
    if any(headers):
        attributes |= _HAS_HEADERS
        parts.extend(_encode_headers(headers))
    payload = b"".join(parts)
    if compression is not Compression.NONE:
        payload = _compress(compression, payload)
    rest = _REST.pack(attributes, count, first, max(timestamps), producer_id, producer_epoch, base_sequence)
    crc = crc32c.crc32c(payload, crc32c.crc32c(rest))
    return b"".join((_PREFIX.pack(0, HEADER_SIZE + len(payload), 0, MAGIC, crc), rest, payload))


def read_header(buf: bytes | bytearray | memoryview, offset: int = 0, *, verify_crc: bool = True) -> BatchHeader:
    """The header of the batch at `offset` in `buf`, after checking magic, bounds, CRC and fields."""
    available = len(buf) - offset
    if available < HEADER_SIZE:
        raise CorruptBatchError(f"truncated batch at byte {offset}: {available} bytes left, "
                                f"a header needs {HEADER_SIZE}", position=offset)
    header = BatchHeader(*_HEADER.unpack_from(buf, offset))
    if header.magic != MAGIC:
        raise InvalidBatchError(f"batch at byte {offset} has magic {header.magic}; this build reads "
                                f"magic {MAGIC}", position=offset)
    length = header.batch_length
    if length < HEADER_SIZE:
        raise InvalidBatchError(f"batch at byte {offset} claims {length} bytes, less than its "
                                f"{HEADER_SIZE}-byte header", position=offset)
    if length > available:
        raise CorruptBatchError(f"truncated batch at byte {offset}: it claims {length} bytes but only "
                                f"{available} remain", position=offset)
    if verify_crc:
        actual = crc32c.crc32c(memoryview(buf)[offset + CRC_START:offset + length])
        if actual != header.crc:
            raise CorruptBatchError(f"CRC32C mismatch in batch at byte {offset}: stored {header.crc:#010x}, "
                                    f"computed {actual:#010x}", position=offset)
    if header.attributes & ~_KNOWN_ATTRIBUTES or header.attributes & _COMPRESSION_MASK > max(Compression):
        raise InvalidBatchError(f"batch at byte {offset} has unknown attribute bits "
                                f"{header.attributes:#06x}", position=offset)
    if header.record_count == 0:
        raise InvalidBatchError(f"batch at byte {offset} holds no records", position=offset)
    if header.max_timestamp < header.first_timestamp:
        raise InvalidBatchError(f"batch at byte {offset} has max_timestamp {header.max_timestamp} below "
                                f"first_timestamp {header.first_timestamp}", position=offset)
    return header


def split_batches(buf: bytes | bytearray | memoryview, *, verify_crc: bool = True) -> list[tuple[int, int]]:
    """The (start, end) byte spans of the whole batches concatenated in `buf`.

    Every batch is checked with `read_header`; bytes after the last whole batch (trailing garbage or
    a cut-off batch) raise, naming their position, because the log only ever serves whole batches.
    """
    spans = []
    position, size = 0, len(buf)
    while position < size:
        end = position + read_header(buf, position, verify_crc=verify_crc).batch_length
        spans.append((position, end))
        position = end
    return spans


def batch_next_offset(buf: bytes | bytearray | memoryview, position: int = 0) -> int:
    """The offset after the batch at `position` in `buf` (its base offset plus its record count), read
    without checks: for batches the log stored after `read_header` checked them."""
    return _U64.unpack_from(buf, position)[0] + _U32.unpack_from(buf, position + _RECORD_COUNT_AT)[0]


def next_offset_after(buf: bytes | bytearray | memoryview) -> int | None:
    """The offset after the last of the whole, stored batches concatenated in `buf` (None when it is
    empty), found by stepping over their lengths: the broker continues a fetch from there."""
    position, size, last = 0, len(buf), -1
    while position < size:
        last = position
        position += _BASE_AND_LENGTH.unpack_from(buf, position)[1]
    return batch_next_offset(buf, last) if last >= 0 else None


def offsets_spanned(buf: bytes | bytearray | memoryview) -> int:
    """How many offsets the whole, stored batches concatenated in `buf` cover (0 when it is empty): the
    records a fetch answer carries, counted from batch headers alone."""
    after = next_offset_after(buf)
    return 0 if after is None else after - _U64.unpack_from(buf, 0)[0]


def stamp_replicated(buf: bytes | bytearray | memoryview, base_offset: int, term: int) -> bytes:
    """A copy of the batch with its base offset and Raft term set, as the leader proposes it; the CRC
    stays valid (neither field is covered)."""
    view = memoryview(buf)
    return b"".join((_U64.pack(base_offset), view[8:TERM_OFFSET], _U64.pack(term), view[TERM_OFFSET + 8:]))


class DecodedColumns(NamedTuple):
    """A batch's records as columns (record i is item i of each): the cheapest form to decode into,
    because each column is built by a few C-level passes, with no Python call per record."""

    header: BatchHeader
    timestamps: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    headers: list[tuple[tuple[str, bytes | None], ...]]

    @property
    def offsets(self) -> range:
        return range(self.header.base_offset, self.header.next_offset)


def decode_columns(buf: bytes | bytearray | memoryview, *, verify_crc: bool = True) -> DecodedColumns:
    """The header and record columns of the one batch that `buf` starts with."""
    header = read_header(buf, verify_crc=verify_crc)
    payload = bytes(memoryview(buf)[HEADER_SIZE:header.batch_length])
    if header.attributes & _COMPRESSION_MASK:
        payload = _decompress(header.compression, payload)
    count = header.record_count
    try:
        columns = _int32s(3 * count).unpack_from(payload)
    except StructError:
        raise InvalidBatchError(f"records section of {len(payload)} bytes is too short for "
                                f"{count} records") from None
    position = 12 * count
    keys, position = _slice_column(payload, position, columns[count:2 * count])
    values, position = _slice_column(payload, position, columns[2 * count:])
    if header.attributes & _HAS_HEADERS:
        headers, position = _decode_headers(payload, position, count)
    else:
        headers = [()] * count
    if position != len(payload):
        raise InvalidBatchError(f"records section has {len(payload) - position} bytes left over after "
                                f"{count} records")
    first = header.first_timestamp
    deltas = columns[:count]
    timestamps = [first + d for d in deltas] if any(deltas) else [first] * count
    return DecodedColumns(header, timestamps, keys, values, headers)


def decode_batch(buf: bytes | bytearray | memoryview, *, verify_crc: bool = True) -> DecodedBatch:
    """Header and records of the one batch that `buf` starts with, records with absolute offsets."""
    columns = decode_columns(buf, verify_crc=verify_crc)
    records = list(map(_new_tuple, repeat(BatchRecord), zip(columns.offsets, columns.timestamps, columns.keys,
                                                               columns.values, columns.headers)))
    return DecodedBatch(columns.header, records)


@lru_cache(maxsize=256)
def _int32s(count: int) -> Struct:
    return Struct(f">{count}i")


def _lengths(items: Sequence[bytes | None]) -> list[int]:
    return [-1 if item is None else len(item) for item in items]


def _concat(items: Sequence[bytes | None]) -> bytes:
    if None in items:
        return b"".join([item for item in items if item is not None])
    return b"".join(cast(Sequence[bytes], items))


def _slice_column(payload: bytes, position: int, lengths: Sequence[int]) -> tuple[list[bytes | None], int]:
    """The byte strings a length column describes, read from `position`, and the position after them."""
    count = len(lengths)
    nulls = lengths.count(-1)
    if nulls == count:
        return [None] * count, position
    if min(lengths) < -1:
        raise InvalidBatchError(f"negative length {min(lengths)} in records section")
    ends = list(accumulate((n if n > 0 else 0 for n in lengths) if nulls else lengths, initial=position))
    if ends[-1] > len(payload):
        raise InvalidBatchError(f"records section of {len(payload)} bytes is too short: its lengths "
                                f"need {ends[-1]}")
    items: list[bytes | None] = list(map(payload.__getitem__, map(slice, ends, ends[1:])))
    if nulls:
        items = [None if n < 0 else item for n, item in zip(lengths, items)]
    return items, ends[-1]


def _encode_headers(headers: Sequence[Sequence[tuple[str, bytes | None]]]) -> list[bytes]:
    parts = [_uint16s(len(headers)).pack(*map(len, headers))]
    for key, value in chain.from_iterable(headers):
        name = key.encode()
        parts.append(_HEADER_ENTRY.pack(len(name), -1 if value is None else len(value)))
        parts.append(name)
        if value is not None:
            parts.append(value)
    return parts


def _decode_headers(payload: bytes, position: int, count: int) -> tuple[list[tuple], int]:
    try:
        counts = _uint16s(count).unpack_from(payload, position)
        position += 2 * count
        result = []
        for n in counts:
            record_headers = []
            for _ in range(n):
                key_length, value_length = _HEADER_ENTRY.unpack_from(payload, position)
                position += 6
                key = payload[position:position + key_length].decode()
                position += key_length
                value = None if value_length < 0 else payload[position:position + value_length]
                position += max(value_length, 0)
                record_headers.append((key, value))
            result.append(tuple(record_headers))
    except (StructError, UnicodeDecodeError) as exc:
        raise InvalidBatchError(f"malformed record headers: {exc}") from None
    if position > len(payload):
        raise InvalidBatchError("record headers run past the end of the records section")
    return result, position


@lru_cache(maxsize=256)
def _uint16s(count: int) -> Struct:
    return Struct(f">{count}H")


_codecs = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """Per-thread zstd contexts: they are costly to create and not safe to share between threads."""
    pair = getattr(_codecs, "zstd", None)
    if pair is None:
        pair = _codecs.zstd = (zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor())
    return pair


def _compress(compression: Compression, payload: bytes) -> bytes:
    if compression is Compression.ZSTD:
        return _zstd()[0].compress(payload)
    if compression is Compression.LZ4:
        return lz4.frame.compress(payload, store_size=True)
    raise InvalidBatchError(f"unknown compression {compression!r}")


def _decompress(compression: Compression, payload: bytes) -> bytes:
    try:
        if compression is Compression.ZSTD:
            return _zstd()[1].decompress(payload)
        return lz4.frame.decompress(payload)
    except (zstandard.ZstdError, RuntimeError) as exc:
        raise InvalidBatchError(f"cannot decompress {compression.name} records section: {exc}") from None
