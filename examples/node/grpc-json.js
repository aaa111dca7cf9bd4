#!/usr/bin/env node
'use strict';
// A grpcurl-like JSON client for Raftka, for machines without grpcurl:
//
//   node grpc-json.js -d '{"name": "demo"}' 127.0.0.1:9092 raftka.v1.Admin/CreateTopic
//
// The request is the proto3 JSON form of the request message (field names as in proto/api.proto,
// bytes as base64, 64-bit integers as strings, enums by name); each response message is printed as
// JSON, one per line (a streaming method prints several). Unset fields are left out, as grpcurl does.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'api.proto');
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, longs: String, enums: String, bytes: String, defaults: false, oneofs: false,
});

function main() {
  const argv = process.argv.slice(2);
  let data = '{}';
  if (argv[0] === '-d') data = argv.splice(0, 2)[1];
  const [address, method] = argv;
  const [service, name] = (method || '').split('/');
  const methods = definition[service];
  if (!address || !methods || !methods[name]) {
    console.error('usage: grpc-json.js [-d JSON] HOST:PORT raftka.v1.Service/Method');
    process.exit(2);
  }
  const spec = methods[name];
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const request = JSON.parse(data);
  const show = (response) => console.log(JSON.stringify(response));
  const failed = (error) => {
    console.error(`ERROR:\n  Code: ${grpc.status[error.code]}\n  Message: ${error.details}`);
    process.exit(1);
  };
  const deadline = Date.now() + 30000;
  if (spec.responseStream) {
    const stream = client.makeServerStreamRequest(spec.path, spec.requestSerialize, spec.responseDeserialize,
      request, { deadline });
    stream.on('data', show);
    stream.on('error', failed);
    stream.on('end', () => process.exit(0));
  } else {
    client.makeUnaryRequest(spec.path, spec.requestSerialize, spec.responseDeserialize, request, { deadline },
      (error, response) => (error ? failed(error) : (show(response), process.exit(0))));
  }
}

main();
