"""The record-batch format: round trips, corruption and truncation detection, stamping, splitting."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftka.errors import BatchError, CorruptBatchError, InvalidBatchError
from raftka.wire.batch import (CRC_START, HEADER_SIZE, TERM_OFFSET, Compression, RecordInput,
                                    decode_batch, encode_batch, next_offset_after, read_header,
                                    split_batches, stamp_replicated)

T0 = 1_700_000_000_000

optional_bytes = st.none() | st.binary(max_size=64)
headers = st.lists(st.tuples(st.text(max_size=8), optional_bytes), max_size=3)
timestamps = st.integers(min_value=T0 - 2**29, max_value=T0 + 2**29)
records = st.lists(st.tuples(optional_bytes, optional_bytes, headers, timestamps), min_size=1, max_size=40)


def assert_round_trip(recs, batch, base_offset=0):
    decoded = decode_batch(batch)
    assert decoded.header.record_count == len(recs)
    assert decoded.header.base_offset == base_offset
    assert decoded.header.first_timestamp == recs[0][3]
    assert decoded.header.max_timestamp == max(r[3] for r in recs)
    for i, (record, (key, value, hdrs, ts)) in enumerate(zip(decoded.records, recs)):
        assert record.offset == base_offset + i
        assert (record.key, record.value, record.timestamp_ms) == (key, value, ts)
        assert list(record.headers) == [tuple(h) for h in hdrs]


@settings(max_examples=150, deadline=None)
@given(records, st.sampled_from(list(Compression)))
def test_round_trip_any_records(recs, compression):
    assert_round_trip(recs, encode_batch(recs, compression=compression))


@pytest.mark.parametrize("compression", list(Compression))
def test_round_trip_every_field_type(compression):
    recs = [
        RecordInput(None, None, (), T0),
        RecordInput(b"", b"", (), T0 - 5),
        RecordInput("ключ🔑".encode(), "значение✓".encode(), [("trace-id", b"\x00\xff"), ("ü", None)],
                    T0 + 9),
        RecordInput(b"k", b"v" * 10_000, [("", b"")], T0 + 2**31 - 1),
    ]
    batch = encode_batch(recs, compression=compression, producer_id=7, producer_epoch=3, base_sequence=11)
    header = read_header(batch)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 3, 11)
    assert header.compression is compression and header.term == 0 and header.batch_length == len(batch)
    assert_round_trip(recs, batch)


def test_compression_shrinks_repetitive_records():
    recs = [(None, b"abcdefgh" * 16, (), T0)] * 1000
    plain = encode_batch(recs)
    assert len(encode_batch(recs, compression=Compression.ZSTD)) < len(plain) // 10
    assert len(encode_batch(recs, compression=Compression.LZ4)) < len(plain) // 10


def test_empty_batch_and_out_of_range_timestamps_are_rejected():
    with pytest.raises(InvalidBatchError):
        encode_batch([])
    with pytest.raises(InvalidBatchError, match="timestamps"):
        encode_batch([(None, b"a", (), T0), (None, b"b", (), T0 + 2**31)])


@pytest.mark.parametrize("compression", list(Compression))
def test_flipping_any_covered_byte_is_detected(compression):
    batch = encode_batch([(b"key", b"value-%d" % i, [("h", b"x")], T0 + i) for i in range(5)],
                         compression=compression)
    stamped_fields = set(range(8)) | set(range(TERM_OFFSET, TERM_OFFSET + 8))
    for position in range(len(batch)):
        damaged = bytearray(batch)
        damaged[position] ^= 0x01
        if position in stamped_fields:
            read_header(damaged)
            continue
        with pytest.raises(BatchError):
            decode_batch(bytes(damaged))
        if position >= CRC_START - 4:
            with pytest.raises(CorruptBatchError):
                read_header(damaged)


def test_truncated_buffers_are_corrupt():
    batch = encode_batch([(None, b"x" * 100, (), T0)])
    for length in (0, 1, HEADER_SIZE - 1, HEADER_SIZE, len(batch) - 1):
        with pytest.raises(CorruptBatchError, match="truncated"):
            read_header(batch[:length])


def test_structurally_bad_headers_are_invalid():
    batch = bytearray(encode_batch([(None, b"x", (), T0)]))

    def patched(offset, fmt, value):
        copy = bytearray(batch)
        struct.pack_into(fmt, copy, offset, value)
        return _recrc(copy)

    with pytest.raises(InvalidBatchError, match="magic"):
        read_header(patched(20, ">B", 9))
    with pytest.raises(InvalidBatchError, match="less than"):
        read_header(patched(8, ">I", HEADER_SIZE - 1))
    with pytest.raises(InvalidBatchError, match="attribute"):
        read_header(patched(25, ">H", 3))
    with pytest.raises(InvalidBatchError, match="attribute"):
        read_header(patched(25, ">H", 0x100))
    with pytest.raises(InvalidBatchError, match="no records"):
        read_header(patched(27, ">I", 0))
    with pytest.raises(InvalidBatchError, match="max_timestamp"):
        read_header(patched(39, ">q", T0 - 1))
    with pytest.raises(InvalidBatchError):
        decode_batch(patched(27, ">I", 2))


def test_stamp_sets_base_offset_and_keeps_crc_valid():
    batch = encode_batch([(None, b"a", (), T0), (None, b"b", (), T0)])
    stamped = stamp_replicated(memoryview(batch), 2**40 + 3, 0)
    header = read_header(stamped)
    assert header.base_offset == 2**40 + 3 and header.last_offset == 2**40 + 4
    assert [r.offset for r in decode_batch(stamped).records] == [2**40 + 3, 2**40 + 4]
    assert stamped[8:] == batch[8:]


def test_split_batches_walks_concatenation_and_flags_leftovers():
    batches = [stamp_replicated(encode_batch([(None, b"v" * n, (), T0)] * (n + 1)), 10 * n, 0)
               for n in range(1, 4)]
    joined = b"".join(batches)
    spans = split_batches(joined)
    assert [joined[a:b] for a, b in spans] == batches
    assert split_batches(b"") == []
    with pytest.raises(CorruptBatchError, match=f"byte {len(joined)}"):
        split_batches(joined + b"\x00" * 5)
    with pytest.raises(CorruptBatchError, match="truncated"):
        split_batches(joined[:-1])
    damaged = bytearray(joined)
    damaged[spans[1][0] + 40] ^= 0xFF
    with pytest.raises(CorruptBatchError, match=f"byte {spans[1][0]}") as info:
        split_batches(damaged)
    assert info.value.position == spans[1][0]
    assert len(split_batches(damaged, verify_crc=False)) == 3


def test_next_offset_after_is_the_offset_after_the_last_batch():
    batches = [stamp_replicated(encode_batch([(None, b"v", (), T0)] * count), base, 0)
               for base, count in ((7, 3), (10, 1), (11, 5))]
    assert next_offset_after(b"".join(batches)) == 16
    assert next_offset_after(memoryview(batches[0])) == 10
    assert next_offset_after(b"") is None


def _recrc(buf: bytearray) -> bytes:
    struct.pack_into(">I", buf, 21, crc32c.crc32c(bytes(buf[CRC_START:])))
    return bytes(buf)
