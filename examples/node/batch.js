'use strict';
// A decoder of Raftka's record batch format, written from proto/BATCH_FORMAT.md (not from the Python
// code). Node's zlib has neither zstd (before Node 22.15) nor the LZ4 frame format, so batches with a
// compressed records section are checked (header, CRC32C) but their records are not decoded:
// decodeBatch returns records: null and codec set. Everything else is decoded in full.

const HEADER_SIZE = 61;
const CRC_START = 25;
const CODECS = ['none', 'zstd', 'lz4'];

class BatchError extends Error {
  // kind: 'corrupt' (CORRUPT_BATCH: damaged bytes) or 'invalid' (INVALID_BATCH: not a valid batch).
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

// CRC-32C (Castagnoli), as the spec's CRC section defines it.
function crc32c(buf) {
  let crc = 0xffffffff;
  for (let i = 0; i < buf.length; i++) crc = CRC_TABLE[(crc ^ buf[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// The 61-byte header of the batch at `position` in `buf`, checked as the spec's last section says.
function readHeader(buf, position = 0) {
  const left = buf.length - position;
  if (left < HEADER_SIZE) throw new BatchError('corrupt', `truncated batch at byte ${position}: ${left} bytes left`);
  const h = {
    base_offset: buf.readBigUInt64BE(position),
    batch_length: buf.readUInt32BE(position + 8),
    term: buf.readBigUInt64BE(position + 12),
    magic: buf.readUInt8(position + 20),
    crc: buf.readUInt32BE(position + 21),
    attributes: buf.readUInt16BE(position + 25),
    record_count: buf.readUInt32BE(position + 27),
    first_timestamp: buf.readBigInt64BE(position + 31),
    max_timestamp: buf.readBigInt64BE(position + 39),
    producer_id: buf.readBigInt64BE(position + 47),
    producer_epoch: buf.readInt16BE(position + 55),
    base_sequence: buf.readInt32BE(position + 57),
  };
  if (h.magic !== 1) throw new BatchError('invalid', `batch at byte ${position} has magic ${h.magic}`);
  if (h.batch_length < HEADER_SIZE) throw new BatchError('invalid', `batch_length ${h.batch_length} < ${HEADER_SIZE}`);
  if (h.batch_length > left) throw new BatchError('corrupt', `batch claims ${h.batch_length} bytes, ${left} remain`);
  const actual = crc32c(buf.subarray(position + CRC_START, position + h.batch_length));
  if (actual !== h.crc) throw new BatchError('corrupt', `CRC32C mismatch: stored ${h.crc}, computed ${actual}`);
  if (h.attributes & ~0x000f || (h.attributes & 0x7) > 2) {
    throw new BatchError('invalid', `unknown attribute bits ${h.attributes}`);
  }
  if (h.record_count === 0) throw new BatchError('invalid', 'batch holds no records');
  if (h.max_timestamp < h.first_timestamp) throw new BatchError('invalid', 'max_timestamp below first_timestamp');
  return h;
}

// The columnar records section of an uncompressed batch, as records with absolute offsets.
function decodeRecords(h, section) {
  const n = h.record_count;
  let at = 0;
  const ints = () => {
    if (at + 4 * n > section.length) throw new BatchError('invalid', 'records section too short');
    const out = [];
    for (let i = 0; i < n; i++, at += 4) out.push(section.readInt32BE(at));
    return out;
  };
  const deltas = ints();
  const keyLengths = ints();
  const valueLengths = ints();
  const take = (length) => {
    if (length < -1) throw new BatchError('invalid', `negative length ${length}`);
    if (length === -1) return null;
    if (at + length > section.length) throw new BatchError('invalid', 'a length runs past the records section');
    const bytes = section.subarray(at, at + length);
    at += length;
    return bytes;
  };
  const keys = keyLengths.map(take);
  const values = valueLengths.map(take);
  const headers = [];
  if (h.attributes & 0x8) {
    const counts = [];
    for (let i = 0; i < n; i++, at += 2) counts.push(section.readUInt16BE(at));
    for (const count of counts) {
      const list = [];
      for (let j = 0; j < count; j++) {
        const keyLength = section.readUInt16BE(at);
        const valueLength = section.readInt32BE(at + 2);
        at += 6;
        const name = new TextDecoder('utf-8', { fatal: true }).decode(take(keyLength));
        list.push({ key: name, value: take(valueLength) });
      }
      headers.push(list);
    }
  } else {
    for (let i = 0; i < n; i++) headers.push([]);
  }
  if (at !== section.length) throw new BatchError('invalid', `${section.length - at} bytes left in records section`);
  return keys.map((key, i) => ({
    offset: h.base_offset + BigInt(i),
    timestamp_ms: h.first_timestamp + BigInt(deltas[i]),
    key,
    value: values[i],
    headers: headers[i],
  }));
}

// The header and records of the batch starting at `position`; records is null for a compressed one.
function decodeBatch(buf, position = 0) {
  const header = readHeader(buf, position);
  const codec = CODECS[header.attributes & 0x7];
  const section = buf.subarray(position + HEADER_SIZE, position + header.batch_length);
  const records = codec === 'none' ? decodeRecords(header, section) : null;
  return { header, codec, records };
}

// Every batch concatenated in `buf` (a FetchResponse's `batches`).
function decodeBatches(buf) {
  const out = [];
  for (let at = 0; at < buf.length;) {
    const batch = decodeBatch(buf, at);
    out.push(batch);
    at += batch.header.batch_length;
  }
  return out;
}

module.exports = { BatchError, crc32c, decodeBatch, decodeBatches, readHeader, HEADER_SIZE };
