"""Protobuf records (`raftka.v1.Record`) to and from the batch format, for clients without a batch codec.

A produce request's records become ONE batch (`encode_records`): the conversion only builds the
encoder's input rows from the messages; columns, compression and the CRC32C are `encode_batch`'s
bulk work, so a protobuf-records produce costs the broker one attribute read per field per record on
top of what a batch produce costs. A fetch answered as records (`decode_records`) decodes each batch
with `decode_columns` and builds the messages straight from its columns.

Every record is checked before anything is encoded, so a bad one fails the whole request with its
own error (RecordTooLargeError, InvalidTimestampError) and nothing of it is written. The bounds come
from the batch format: a header name's length and a record's header count are u16, a timestamp is
stored as an i32 delta from the batch's first. The size bound is on the uncompressed record (key,
value, header names and values): no record that a topic's batches could not hold uncompressed is
accepted, so a consumer of decoded records never receives one larger than max.message.bytes.
"""

from __future__ import annotations

from itertools import islice
from operator import itemgetter
from typing import Iterable, Sequence

from raftka.errors import InvalidTimestampError, RecordTooLargeError
from raftka.proto import api_pb2
from raftka.wire.batch import Compression, decode_columns, encode_batch, split_batches

MAX_TIMESTAMP_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the end of google.protobuf.Timestamp's range."""
MAX_TIMESTAMP_SPAN_MS = 2**31 - 1
"""Records of one batch lie within this many ms of each other (timestamp deltas are i32)."""
MAX_HEADER_NAME_BYTES = 0xFFFF
MAX_HEADERS_PER_RECORD = 0xFFFF

_Header = tuple[str, bytes | None]
_Row = tuple[bytes | None, bytes | None, tuple[_Header, ...], int]


def encode_records(records: Sequence[api_pb2.Record], *, now_ms: int, max_record_bytes: int,
                   compression: Compression = Compression.NONE,
                   producer: api_pb2.ProducerSequence | None = None) -> bytes:
    """One batch of `records` in order (base offset 0); a timestamp of 0 becomes `now_ms`."""
    rows: list[_Row] = [(record.key if record.HasField("key") else None,
                         record.value if record.HasField("value") else None,
                         _headers(record.headers) if record.headers else (),
                         record.timestamp_ms or now_ms) for record in records]
    _check_timestamps([row[3] for row in rows])
    _check_sizes(rows, max_record_bytes)
    if producer is None:
        return encode_batch(rows, compression=compression)
    return encode_batch(rows, compression=compression, producer_id=producer.producer_id,
                        producer_epoch=producer.producer_epoch, base_sequence=producer.base_sequence)


def decode_records(batches: bytes, from_offset: int) -> list[api_pb2.Record]:
    """The records at and after `from_offset` in the whole, stored batches concatenated in `batches`
    (the first may start before it), read without checking CRCs: the broker checked them on append."""
    out: list[api_pb2.Record] = []
    view = memoryview(batches)
    Record, Header = api_pb2.Record, api_pb2.RecordHeader
    for start, end in split_batches(view, verify_crc=False):
        columns = decode_columns(view[start:end], verify_crc=False)
        skip = max(0, from_offset - columns.header.base_offset)
        rows: Iterable[tuple] = zip(columns.offsets, columns.timestamps, columns.keys, columns.values, columns.headers)
        if skip:
            rows = islice(rows, skip, None)
        out.extend(Record(offset=offset, timestamp_ms=timestamp, key=key, value=value,
                          headers=[Header(key=name, value=v) for name, v in headers] if headers else None)
                   for offset, timestamp, key, value, headers in rows)
    return out


def _headers(headers: Iterable[api_pb2.RecordHeader]) -> tuple[_Header, ...]:
    return tuple([(header.key, header.value if header.HasField("value") else None) for header in headers])


def _check_timestamps(timestamps: list[int]) -> None:
    low, high = min(timestamps), max(timestamps)
    if low < 0 or high > MAX_TIMESTAMP_MS:
        bad = low if low < 0 else high
        raise InvalidTimestampError(f"record timestamp_ms {bad} is out of range: it must lie between 0 and "
                                    f"{MAX_TIMESTAMP_MS} (9999-12-31)")
    first = timestamps[0]
    if high - first > MAX_TIMESTAMP_SPAN_MS or first - low > MAX_TIMESTAMP_SPAN_MS + 1:
        raise InvalidTimestampError(f"record timestamps {low} to {high} span {high - low} ms; the records of "
                                    f"one request share a batch and must lie within {MAX_TIMESTAMP_SPAN_MS} "
                                    "ms of the first")


def _check_sizes(rows: list[_Row], limit: int) -> None:
    """Raise RecordTooLargeError for the first record over a bound. The request's key and value bytes
    are summed first, in C: when they fit `limit` and no record has headers, no record can be over."""
    keys_and_values = (sum(map(len, filter(None, map(itemgetter(0), rows))))
                       + sum(map(len, filter(None, map(itemgetter(1), rows)))))
    if keys_and_values <= limit and not any(map(itemgetter(2), rows)):
        return
    for index, (key, value, headers, _) in enumerate(rows):
        if len(headers) > MAX_HEADERS_PER_RECORD:
            raise RecordTooLargeError(f"record {index} has {len(headers)} headers; the limit is "
                                      f"{MAX_HEADERS_PER_RECORD}")
        size = len(key or b"") + len(value or b"")
        for name, header_value in headers:
            name_bytes = len(name.encode())
            if name_bytes > MAX_HEADER_NAME_BYTES:
                raise RecordTooLargeError(f"record {index} has a header name of {name_bytes} bytes; the limit "
                                          f"is {MAX_HEADER_NAME_BYTES}")
            size += name_bytes + len(header_value or b"")
        if size > limit:
            raise RecordTooLargeError(f"record {index} holds {size} bytes of key, value and headers; the "
                                      f"topic's max.message.bytes is {limit}")
