"""Protobuf records against a real broker: produced as `records`, written as one batch, read back both
as decoded records and as batches; idempotent on this path too; bad records refused with their own
status and error code, with nothing written."""

from __future__ import annotations

import itertools
import queue
import time
from typing import Any, Iterator, cast

import grpc
import pytest

from raftka.client import Admin
from raftka.client.local import LocalBroker, free_port, plan
from raftka.errors import METADATA_CODE, rpc_metadata
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import Compression, decode_batch, encode_batch, split_batches
from raftka.wire.proto_records import MAX_TIMESTAMP_MS

Record, Header = api_pb2.Record, api_pb2.RecordHeader
T0 = 1_700_000_000_000

RECORDS = [
    Record(key=b"k0", value=b"v0", timestamp_ms=T0,
           headers=[Header(key="trace-id", value=b"abc"), Header(key="ünïcödé"), Header(key="empty", value=b"")]),
    Record(value=b"no key", timestamp_ms=T0 + 5),
    Record(key=b"", timestamp_ms=T0 - 3),
    Record(key=b"k3", value=bytes(range(256)) * 40, timestamp_ms=T0 + 1),
]
"""A null key and an empty one, a null value, a null header value and an empty one, a non-ASCII header
name, timestamps out of order, a compressible value."""


def as_tuple(record: api_pb2.Record) -> tuple:
    return (record.key if record.HasField("key") else None, record.value if record.HasField("value") else None,
            tuple((h.key, h.value if h.HasField("value") else None) for h in record.headers), record.timestamp_ms)


def produce(broker: api_pb2_grpc.BrokerStub, topic: str, records: list[api_pb2.Record],
            **fields) -> api_pb2.ProduceResponse:
    return broker.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, records=records, **fields), timeout=10)


def fetch_records(broker: api_pb2_grpc.BrokerStub, topic: str, offset: int) -> list[api_pb2.Record]:
    request = api_pb2.FetchRequest(partitions=[api_pb2.FetchPartition(topic=topic, partition=0, offset=offset)],
                                   max_wait_ms=0, record_format=api_pb2.RECORD_FORMAT_RECORDS)
    [response] = broker.Fetch(request, timeout=10)
    assert not response.batches
    return list(response.records)


def fetch_batches(broker: api_pb2_grpc.BrokerStub, topic: str) -> bytes:
    request = api_pb2.FetchPartition(topic=topic, partition=0, offset=0)
    [response] = broker.Fetch(api_pb2.FetchRequest(partitions=[request], max_wait_ms=0), timeout=10)
    assert not response.records
    return response.batches


def high_watermark(admin: api_pb2_grpc.AdminStub, topic: str) -> int:
    return admin.DescribeTopic(api_pb2.DescribeTopicRequest(name=topic), timeout=10).offsets[0].high_watermark


def test_records_are_written_as_one_batch_per_request_and_read_back_either_way(stubs, broker, consume_all) -> None:
    stub, admin = stubs
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="events", partitions=1), timeout=10)
    offsets = []
    for compression in (api_pb2.COMPRESSION_NONE, api_pb2.COMPRESSION_ZSTD, api_pb2.COMPRESSION_LZ4):
        response = produce(stub, "events", RECORDS, compression=compression)
        offsets.append((response.base_offset, response.last_offset))
    assert offsets == [(0, 3), (4, 7), (8, 11)]

    batches = fetch_batches(stub, "events")
    decoded = [decode_batch(batches[start:end]) for start, end in split_batches(batches)]
    assert [batch.header.compression for batch in decoded] == [Compression.NONE, Compression.ZSTD, Compression.LZ4]
    expected = [as_tuple(record) for record in RECORDS]
    for batch in decoded:
        assert [(r.key, r.value, r.headers, r.timestamp_ms) for r in batch.records] == expected

    served = broker.metric_total('raftka_fetch_records_total{topic="events"}')
    from_middle = fetch_records(stub, "events", 6)
    assert [r.offset for r in from_middle] == list(range(6, 12))
    assert broker.metric_total('raftka_fetch_records_total{topic="events"}') - served == 6
    assert [as_tuple(r) for r in from_middle] == expected[2:] + expected

    consumed = consume_all(broker.address, "events", 1)[0]
    assert [(r.key, r.value, r.headers, r.timestamp) for r in consumed] == expected * 3


def test_an_unset_timestamp_is_the_leaders_clock(stubs) -> None:
    stub, admin = stubs
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="clock", partitions=1), timeout=10)
    before = int(time.time() * 1000)
    produce(stub, "clock", [Record(value=b"a"), Record(value=b"b", timestamp_ms=before - 60_000)])
    after = int(time.time() * 1000)
    first, second = fetch_records(stub, "clock", 0)
    assert before <= first.timestamp_ms <= after and second.timestamp_ms == before - 60_000


def test_fetch_stream_follows_in_records_format(stubs) -> None:
    stub, admin = stubs
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="followed", partitions=1), timeout=10)
    produce(stub, "followed", [Record(value=b"first")])
    request = api_pb2.FetchRequest(partitions=[api_pb2.FetchPartition(topic="followed", partition=0, offset=0)],
                                   max_wait_ms=5000, correlation_id=7, follow_bytes=1 << 20,
                                   record_format=api_pb2.RECORD_FORMAT_RECORDS)
    requests: queue.SimpleQueue[api_pb2.FetchRequest | None] = queue.SimpleQueue()
    requests.put(request)
    call = stub.FetchStream(iter(requests.get, None), timeout=30)
    try:
        first = next(call)
        assert [(r.offset, r.value) for r in first.partitions[0].records] == [(0, b"first")] and first.follows
        produce(stub, "followed", [Record(value=b"second"), Record(value=b"third")])
        second = next(call)
    finally:
        call.cancel()
    assert (second.correlation_id, second.follows) == (7, True)
    assert [(r.offset, r.value) for r in second.partitions[0].records] == [(1, b"second"), (2, b"third")]


def test_idempotent_records_are_written_once_and_gaps_refused(stubs) -> None:
    stub, admin = stubs
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="once", partitions=1), timeout=10)
    ids = admin.InitProducerId(api_pb2.InitProducerIdRequest(), timeout=10)

    def sequence(base: int) -> api_pb2.ProducerSequence:
        return api_pb2.ProducerSequence(producer_id=ids.producer_id, producer_epoch=ids.producer_epoch,
                                        base_sequence=base)

    first = produce(stub, "once", [Record(value=b"a"), Record(value=b"b")], producer=sequence(0))
    retry = produce(stub, "once", [Record(value=b"a"), Record(value=b"b")], producer=sequence(0))
    assert (retry.base_offset, retry.last_offset) == (first.base_offset, first.last_offset) == (0, 1)
    with pytest.raises(grpc.RpcError) as gap:
        produce(stub, "once", [Record(value=b"d")], producer=sequence(3))
    assert rpc_metadata(gap.value)[METADATA_CODE] == "OUT_OF_ORDER_SEQUENCE"
    produce(stub, "once", [Record(value=b"c")], producer=sequence(2))
    batches = fetch_batches(stub, "once")
    headers = [decode_batch(batches[start:end]).header for start, end in split_batches(batches)]
    assert [(h.producer_id, h.producer_epoch, h.base_sequence) for h in headers] == [
        (ids.producer_id, ids.producer_epoch, 0), (ids.producer_id, ids.producer_epoch, 2)]
    assert [r.value for r in fetch_records(stub, "once", 0)] == [b"a", b"b", b"c"]


LIMIT = 4096
BIG = b"x" * (LIMIT + 1)
_topics = itertools.count()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory) -> Iterator[LocalBroker]:
    """One broker for the bad-input cases: each writes to a topic of its own."""
    [broker] = plan(1, tmp_path_factory.mktemp("bad-records"), [free_port()], metrics_ports=[free_port()])
    broker.spawn()
    broker.wait()
    yield broker
    assert broker.stop() == 0, broker.log()[-3000:]


@pytest.mark.parametrize("fields, status, code, fragment", [
    ({"records": [Record(key=BIG)]}, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE",
     f"record 0 holds {LIMIT + 1} bytes"),
    ({"records": [Record(value=b"ok"), Record(value=BIG)]}, grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE",
     "record 1 holds"),
    ({"records": [Record(value=b"v" * 4000, headers=[Header(key="h", value=b"y" * 100)])]},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "RECORD_TOO_LARGE", "record 0 holds 4101 bytes"),
    ({"records": [Record(headers=[Header(key="n" * 65536)])]}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "RECORD_TOO_LARGE", "header name of 65536 bytes"),
    ({"records": [Record(headers=[Header(key="")] * 65536)]}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "RECORD_TOO_LARGE", "65536 headers"),
    ({"records": [Record(value=b"a" * 3000)] * 2}, grpc.StatusCode.RESOURCE_EXHAUSTED, "BATCH_TOO_LARGE",
     "exceeds max.message.bytes=4096"),
    ({"records": [Record(value=b"a")], "batches": encode_batch([(None, b"b", [], T0)])},
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "records or batches, not both"),
    ({"batches": encode_batch([(None, b"b", [], T0)]), "compression": api_pb2.COMPRESSION_ZSTD},
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "compression and producer apply to a request's records"),
    ({"batches": encode_batch([(None, b"b", [], T0)]), "producer": api_pb2.ProducerSequence(producer_id=1)},
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "compression and producer apply to a request's records"),
    ({"records": [Record(value=b"a")], "compression": 7}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST",
     "unknown compression 7"),
    ({"records": [Record(value=b"a", timestamp_ms=-5)]}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIMESTAMP",
     "timestamp_ms -5 is out of range"),
    ({"records": [Record(value=b"a", timestamp_ms=MAX_TIMESTAMP_MS + 1)]}, grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_TIMESTAMP", f"timestamp_ms {MAX_TIMESTAMP_MS + 1} is out of range"),
    ({"records": [Record(value=b"a", timestamp_ms=T0), Record(value=b"b", timestamp_ms=T0 + 2**31)]},
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIMESTAMP", "must lie within 2147483647 ms of the first"),
    ({"records": [Record(value=b"a", timestamp_ms=T0), Record(value=b"b", timestamp_ms=T0 - 2**31 - 1)]},
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIMESTAMP", "must lie within 2147483647 ms of the first"),
])
def test_bad_records_are_refused_precisely_and_nothing_is_written(shared_broker, fields, status, code,
                                                                  fragment) -> None:
    topic = f"strict-{next(_topics)}"
    with grpc.insecure_channel(shared_broker.address) as channel:
        stub, admin = api_pb2_grpc.BrokerStub(channel), api_pb2_grpc.AdminStub(channel)
        admin.CreateTopic(api_pb2.CreateTopicRequest(name=topic, partitions=1,
                                                     config={"max.message.bytes": str(LIMIT)}), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, **fields), timeout=10)
        assert (info.value.code(), rpc_metadata(info.value)[METADATA_CODE]) == (status, code)
        assert fragment in (info.value.details() or "")
        assert high_watermark(admin, topic) == 0
        assert produce(stub, topic, [Record(value=b"fine")]).base_offset == 0


def test_header_names_that_are_not_utf8_fail_to_parse_and_nothing_is_written(stubs, broker) -> None:
    """Header names are proto `string`s: every protobuf runtime refuses to parse invalid UTF-8 there,
    so the broker answers as for any malformed message."""
    stub, admin = stubs
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="utf8", partitions=1), timeout=10)
    wire = api_pb2.ProduceRequest(topic="utf8", partition=0,
                                  records=[Record(value=b"v", headers=[Header(key="NAME")])]).SerializeToString()
    assert wire.count(b"NAME") == 1
    with grpc.insecure_channel(broker.address) as channel:
        raw = channel.unary_unary("/raftka.v1.Broker/Produce", request_serializer=None,
                                  response_deserializer=api_pb2.ProduceResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            raw(wire.replace(b"NAME", b"N\xffME"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rpc_metadata(info.value)[METADATA_CODE] == "INVALID_REQUEST"
        assert "malformed raftka.v1.ProduceRequest" in (info.value.details() or "")
        assert raw(wire, timeout=10).base_offset == 0
    assert high_watermark(admin, "utf8") == 1


def test_an_unknown_record_format_is_refused(stubs) -> None:
    stub, admin = stubs
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="formats", partitions=1), timeout=10)
    request = api_pb2.FetchRequest(partitions=[api_pb2.FetchPartition(topic="formats", partition=0)],
                                   record_format=cast(Any, 9))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Fetch(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown record_format 9" in (info.value.details() or "")


def test_records_count_against_byte_quotas_like_batches(start_broker, tmp_path) -> None:
    """A protobuf-records produce and a records-format fetch are charged the bytes they write and
    serve: over its quota, the caller is told to wait (throttle_time_ms)."""
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-token User:admin\nslow-token User:slow\n")
    broker = start_broker("--auth-token-file", str(tokens))
    with Admin(broker.address, token="admin-token") as admin:
        admin.create_topic("metered")
        admin.set_quota("User:slow", produce_bytes_per_s=1000, fetch_bytes_per_s=1000)
    slow = (("authorization", "Bearer slow-token"),)
    with grpc.insecure_channel(broker.address) as channel:
        stub = api_pb2_grpc.BrokerStub(channel)
        produced = stub.Produce(api_pb2.ProduceRequest(topic="metered", partition=0,
                                                       records=[Record(value=b"v" * 5000)]),
                                timeout=10, metadata=slow)
        assert produced.throttle_time_ms > 0
        request = api_pb2.FetchRequest(partitions=[api_pb2.FetchPartition(topic="metered", partition=0, offset=0)],
                                       max_wait_ms=0, record_format=api_pb2.RECORD_FORMAT_RECORDS)
        [fetched] = stub.Fetch(request, timeout=10, metadata=slow)
        assert len(fetched.records) == 1 and fetched.throttle_time_ms > 0
