#!/usr/bin/env node
'use strict';
// A Raftka client in Node.js, with nothing but @grpc/grpc-js, @grpc/proto-loader and proto/api.proto:
// create a topic, produce records with headers as protobuf records, read them back as decoded records
// from a given offset, and read them as record batches decoded with batch.js (written from
// proto/BATCH_FORMAT.md). With --vectors it also checks proto/batch-vectors.json with that decoder.
//
//   node raftka-demo.js --bootstrap 127.0.0.1:9092 --topic demo [--from-offset 1] [--vectors FILE]
//
// Output: one JSON object per line ({"step": ...}); a failure exits 1 with {"step":"error"}.

const path = require('path');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { decodeBatch, decodeBatches } = require('./batch');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'api.proto');
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, longs: String, enums: String, bytes: Buffer, defaults: false, oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).raftka.v1;

function args() {
  const out = { 'from-offset': '1' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!out.bootstrap || !out.topic) throw new Error('usage: raftka-demo.js --bootstrap HOST:PORT --topic NAME');
  return out;
}

function print(step, fields) {
  console.log(JSON.stringify({ step, ...fields }, (_, value) => (typeof value === 'bigint' ? value.toString() : value)));
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 15000 }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function fetchAll(client, request) {
  return new Promise((resolve, reject) => {
    const responses = [];
    const stream = client.Fetch(request, { deadline: Date.now() + 15000 });
    stream.on('data', (response) => responses.push(response));
    stream.on('error', reject);
    stream.on('end', () => resolve(responses));
  });
}

// A protobuf Record (proto-loader object: absent optional fields are undefined) as printable JSON.
function shown(record) {
  const text = (bytes) => (bytes === undefined || bytes === null ? null : Buffer.from(bytes).toString('utf8'));
  return {
    offset: String(record.offset ?? '0'),
    timestamp_ms: String(record.timestamp_ms ?? '0'),
    key: text(record.key),
    value: text(record.value),
    headers: (record.headers || []).map((h) => [h.key ?? '', text(h.value)]),
  };
}

async function leaderClient(bootstrap, topic) {
  const any = new v1.Broker(bootstrap, grpc.credentials.createInsecure());
  const deadline = Date.now() + 20000;
  for (;;) {
    const metadata = await call(any, 'Metadata', { topics: [topic] });
    const partition = (metadata.topics[0]?.partitions || []).find((p) => (p.partition ?? 0) === 0);
    const leader = metadata.brokers.find((b) => partition && (b.id ?? 0) === partition.leader_id);
    if (leader) return new v1.Broker(leader.address, grpc.credentials.createInsecure());
    if (Date.now() > deadline) throw new Error(`no leader for ${topic}/0`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function checkVectors(file) {
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  const hex = (b) => (b === null ? null : Buffer.from(b).toString('hex'));
  for (const vector of doc.vectors) {
    const { header, codec, records } = decodeBatch(Buffer.from(vector.hex, 'hex'));
    const headerOk = Object.entries(vector.header).every(([name, value]) => String(header[name]) === String(value));
    let recordsOk = null;
    if (records !== null) {
      const got = records.map((r) => ({
        offset: Number(r.offset), timestamp_ms: Number(r.timestamp_ms), key_hex: hex(r.key), value_hex: hex(r.value),
        headers: r.headers.map((h) => ({ key: h.key, value_hex: hex(h.value) })),
      }));
      recordsOk = JSON.stringify(got) === JSON.stringify(vector.records);
    }
    print('vector', { name: vector.name, codec, header_ok: headerOk, records_ok: recordsOk });
  }
  for (const vector of doc.invalid) {
    let raised = null;
    try {
      decodeBatch(Buffer.from(vector.hex, 'hex'));
    } catch (error) {
      raised = error.kind || error.message;
    }
    print('invalid-vector', { name: vector.name, expected: vector.error, raised });
  }
}

async function main() {
  const options = args();
  const topic = options.topic;
  const admin = new v1.Admin(options.bootstrap, grpc.credentials.createInsecure());
  const created = await call(admin, 'CreateTopic', { name: topic, partitions: 1 });
  print('created', { topic: created.topic.name, partitions: created.topic.partitions.length });

  const broker = await leaderClient(options.bootstrap, topic);
  const now = Date.now();
  const records = [
    { key: Buffer.from('user-1'), value: Buffer.from('signed up'), timestamp_ms: String(now),
      headers: [{ key: 'trace-id', value: Buffer.from('t-001') }, { key: 'source', value: Buffer.from('node') }] },
    { value: Buffer.from('no key here'), timestamp_ms: String(now + 1),
      headers: [{ key: 'flag' }] },
    { key: Buffer.from('user-2'), value: Buffer.from('logged in'), timestamp_ms: String(now + 2) },
  ];
  const produced = await call(broker, 'Produce', { topic, partition: 0, records });
  print('produced', { base_offset: produced.base_offset ?? '0', last_offset: produced.last_offset });

  const from = options['from-offset'];
  const partitions = [{ topic, partition: 0, offset: from }];
  const decoded = await fetchAll(broker, { partitions, max_wait_ms: 1000, record_format: 'RECORD_FORMAT_RECORDS' });
  for (const record of decoded.flatMap((r) => r.records || [])) print('record', shown(record));

  const raw = await fetchAll(broker, { partitions: [{ topic, partition: 0, offset: '0' }], max_wait_ms: 1000 });
  for (const batch of decodeBatches(Buffer.concat(raw.map((r) => r.batches || Buffer.alloc(0))))) {
    for (const record of batch.records) print('batch-record', shown(record));
  }
  if (options.vectors) checkVectors(options.vectors);
  print('done', {});
}

main().then(() => process.exit(0), (error) => {
  print('error', { message: error.message, code: error.code ?? null });
  process.exit(1);
});
