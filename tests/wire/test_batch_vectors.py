"""proto/batch-vectors.json, the batch format's test vectors, against this implementation: every valid
vector decodes to its header and records, the uncompressed ones are re-encoded byte for byte, the
compressed ones hold exactly the uncompressed records section, and every invalid one raises its error.
The Node example checks the same file with a decoder written from proto/BATCH_FORMAT.md."""

from __future__ import annotations

import json
from pathlib import Path

import lz4.frame
import pytest
import zstandard

from raftka.errors import CorruptBatchError, InvalidBatchError
from raftka.wire.batch import HEADER_SIZE, Compression, decode_batch, encode_batch, stamp_replicated

VECTORS = json.loads((Path(__file__).parents[2] / "proto" / "batch-vectors.json").read_text())


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


def expected_records(vector: dict) -> list[tuple]:
    return [(r["offset"], r["timestamp_ms"], _bytes(r["key_hex"]), _bytes(r["value_hex"]),
             tuple((h["key"], _bytes(h["value_hex"])) for h in r["headers"])) for r in vector["records"]]


def reencoded(vector: dict, compression: Compression) -> bytes:
    header = vector["header"]
    rows = [(key, value, headers, timestamp) for _, timestamp, key, value, headers in expected_records(vector)]
    batch = encode_batch(rows, compression=compression, producer_id=header["producer_id"],
                         producer_epoch=header["producer_epoch"], base_sequence=header["base_sequence"])
    return stamp_replicated(batch, header["base_offset"], header["term"])


def test_the_vectors_cover_every_codec_headers_nulls_and_idempotence() -> None:
    codecs = {decode_batch(bytes.fromhex(v["hex"])).header.compression for v in VECTORS["vectors"]}
    assert codecs == set(Compression)
    records = [r for v in VECTORS["vectors"] for r in v["records"]]
    assert any(r["key_hex"] is None for r in records) and any(r["value_hex"] is None for r in records)
    assert any(h["value_hex"] is None for r in records for h in r["headers"])
    assert any(v["header"]["producer_id"] >= 0 for v in VECTORS["vectors"])


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_each_vector_decodes_to_its_header_and_records(vector: dict) -> None:
    batch = decode_batch(bytes.fromhex(vector["hex"]))
    assert {name: getattr(batch.header, name) for name in vector["header"]} == vector["header"]
    assert [tuple(record) for record in batch.records] == expected_records(vector)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_encoding_the_records_gives_the_vector(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    compression = decode_batch(data).header.compression
    if compression is Compression.NONE:
        assert reencoded(vector, compression) == data
    else:
        plain = reencoded(vector, Compression.NONE)
        zstd = compression is Compression.ZSTD
        decompress = zstandard.ZstdDecompressor().decompress if zstd else lz4.frame.decompress
        assert decompress(data[HEADER_SIZE:]) == plain[HEADER_SIZE:]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_each_invalid_vector_raises_its_error(vector: dict) -> None:
    error = {"corrupt": CorruptBatchError, "invalid": InvalidBatchError}[vector["error"]]
    with pytest.raises(error):
        decode_batch(bytes.fromhex(vector["hex"]))
