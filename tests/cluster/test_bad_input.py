"""Bad requests get a precise status and error code; the broker keeps serving and loses nothing. The
stream calls (ProduceStream, FetchStream) are checked here too, message by message."""

from __future__ import annotations

import itertools
import queue
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftka.errors import METADATA_CODE, rpc_metadata
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import decode_batch, encode_batch, split_batches


def batch(*values: bytes) -> bytes:
    return encode_batch([(None, v, [], 1_700_000_000_000) for v in values])


def code_of(exc: grpc.RpcError) -> str:
    return rpc_metadata(exc)[METADATA_CODE]


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=10)
        if hasattr(result, "__iter__"):
            list(result)
    return info.value


@pytest.fixture
def topic(stubs) -> str:
    _, admin = stubs
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="orders", partitions=2), timeout=10)
    return "orders"


@pytest.mark.parametrize("name, fragment", [
    ("", "must not be empty"),
    ("a" * 250, "250 characters long; the limit is 249"),
    ("bad name", "contains ' '"),
    ("ünïcode", "contains"),
    ("..", "not allowed"),
    ("__consumer_offsets", "reserved"),
])
def test_invalid_topic_names_are_rejected_with_the_reason(stubs, name: str, fragment: str) -> None:
    _, admin = stubs
    error = rpc_error(admin.CreateTopic, api_pb2.CreateTopicRequest(name=name, partitions=1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(error) == "INVALID_TOPIC"
    assert fragment in (error.details() or "")


def test_topic_settings_are_validated(stubs) -> None:
    _, admin = stubs
    cases = [
        (api_pb2.CreateTopicRequest(name="t", partitions=-1), "INVALID_PARTITIONS"),
        (api_pb2.CreateTopicRequest(name="t", partitions=1, replication_factor=2), "INVALID_REPLICATION_FACTOR"),
        (api_pb2.CreateTopicRequest(name="t", partitions=1, config={"retention.msx": "1"}), "INVALID_CONFIG"),
        (api_pb2.CreateTopicRequest(name="t", partitions=1, config={"retention.ms": "soon"}), "INVALID_CONFIG"),
        (api_pb2.CreateTopicRequest(name="t", partitions=1, config={"segment.bytes": "10"}), "INVALID_CONFIG"),
    ]
    for request, code in cases:
        assert code_of(rpc_error(admin.CreateTopic, request)) == code
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="t", partitions=1), timeout=10)
    error = rpc_error(admin.CreateTopic, api_pb2.CreateTopicRequest(name="t", partitions=1))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and code_of(error) == "TOPIC_EXISTS"


def test_unknown_topic_and_partition(stubs, topic: str) -> None:
    broker, admin = stubs
    error = rpc_error(broker.Produce, api_pb2.ProduceRequest(topic="nope", partition=0, batches=batch(b"x")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and code_of(error) == "UNKNOWN_TOPIC"
    error = rpc_error(broker.Produce, api_pb2.ProduceRequest(topic=topic, partition=2, batches=batch(b"x")))
    assert code_of(error) == "UNKNOWN_PARTITION" and "partitions 0 to 1" in (error.details() or "")
    error = rpc_error(broker.Produce, api_pb2.ProduceRequest(topic=topic, partition=-1, batches=batch(b"x")))
    assert code_of(error) == "UNKNOWN_PARTITION"
    assert code_of(rpc_error(admin.DeleteTopic, api_pb2.DeleteTopicRequest(name="nope"))) == "UNKNOWN_TOPIC"
    assert code_of(rpc_error(admin.DescribeTopic, api_pb2.DescribeTopicRequest(name="nope"))) == "UNKNOWN_TOPIC"


def test_corrupt_empty_oversize_and_garbage_batches(stubs, topic: str) -> None:
    broker, admin = stubs
    good = batch(b"kept")
    broker.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=good), timeout=10)
    flipped = bytearray(batch(b"hello world"))
    flipped[-1] ^= 0xFF
    cases = [
        (bytes(flipped), grpc.StatusCode.DATA_LOSS, "CORRUPT_BATCH"),
        (good + bytes(flipped), grpc.StatusCode.DATA_LOSS, "CORRUPT_BATCH"),
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BATCH"),
        (b"\x00" * 7, grpc.StatusCode.DATA_LOSS, "CORRUPT_BATCH"),
        (b"not a record batch at all, just text" * 3, None, None),
        (good[:-3], grpc.StatusCode.DATA_LOSS, "CORRUPT_BATCH"),
    ]
    for data, status, code in cases:
        error = rpc_error(broker.Produce, api_pb2.ProduceRequest(topic=topic, partition=0, batches=data))
        if status is not None:
            assert (error.code(), code_of(error)) == (status, code), error.details()
        else:
            assert code_of(error) in ("INVALID_BATCH", "CORRUPT_BATCH"), error.details()
    admin.CreateTopic(api_pb2.CreateTopicRequest(name="small", partitions=1,
                                                 config={"max.message.bytes": "2048"}), timeout=10)
    error = rpc_error(broker.Produce, api_pb2.ProduceRequest(topic="small", partition=0, batches=batch(b"x" * 4096)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and code_of(error) == "BATCH_TOO_LARGE"
    assert "max.message.bytes=2048" in (error.details() or "")

    fetched = b"".join(r.batches for r in broker.Fetch(api_pb2.FetchRequest(
        partitions=[api_pb2.FetchPartition(topic=topic, partition=0, offset=0)]), timeout=10))
    assert len(split_batches(fetched)) == 1, "only the good batch was stored"
    assert [r.value for r in decode_batch(fetched).records] == [b"kept"]


def test_offsets_out_of_range_and_negative(stubs, topic: str) -> None:
    broker, _ = stubs
    broker.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(b"a", b"b")), timeout=10)
    error = rpc_error(broker.Fetch, api_pb2.FetchRequest(
        partitions=[api_pb2.FetchPartition(topic=topic, partition=0, offset=-1)]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "negative" in (error.details() or "")
    responses = list(broker.Fetch(api_pb2.FetchRequest(
        partitions=[api_pb2.FetchPartition(topic=topic, partition=0, offset=99)]), timeout=10))
    assert [r.error.code for r in responses] == [api_pb2.OFFSET_OUT_OF_RANGE]
    assert "99" in responses[0].error.message
    error = rpc_error(broker.Fetch, api_pb2.FetchRequest())
    assert code_of(error) == "INVALID_REQUEST"
    result = broker.ListOffsets(api_pb2.ListOffsetsRequest(queries=[
        api_pb2.OffsetQuery(topic=topic, partition=0),
        api_pb2.OffsetQuery(topic="nope", partition=0, spec=api_pb2.LATEST)]), timeout=10)
    assert [r.error.code for r in result.results] == [api_pb2.INVALID_REQUEST, api_pb2.UNKNOWN_TOPIC]


def test_malformed_protobuf_and_unknown_acks(broker, stubs, topic: str) -> None:
    broker_stub, _ = stubs
    with grpc.insecure_channel(broker.address) as channel:
        raw = channel.unary_unary("/raftka.v1.Broker/Produce")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff garbage", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(info.value) == "INVALID_REQUEST"
        assert "malformed raftka.v1.ProduceRequest" in (info.value.details() or "")
    error = rpc_error(broker_stub.Produce, api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(b"x"),
                                                                   acks=7))  # type: ignore[arg-type]  # no such acks
    assert code_of(error) == "INVALID_REQUEST"


def test_broker_keeps_serving_after_bad_input(broker, stubs, topic: str) -> None:
    broker_stub, _ = stubs
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            broker_stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=b"junk"), timeout=10)
    response = broker_stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(b"ok")), timeout=10)
    assert response.base_offset == 0 and response.last_offset == 0
    with grpc.insecure_channel(broker.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert broker.alive()


def test_stream_reports_bad_items_without_closing(stubs, topic: str) -> None:
    broker_stub, _ = stubs
    requests = [
        api_pb2.ProduceRequest(correlation_id=1, topic=topic, partition=0, batches=batch(b"a")),
        api_pb2.ProduceRequest(correlation_id=2, topic="nope", partition=0, batches=batch(b"b")),
        api_pb2.ProduceRequest(correlation_id=3, topic=topic, partition=0, batches=b"garbage"),
        api_pb2.ProduceRequest(correlation_id=4, topic=topic, partition=0, batches=batch(b"c", b"d")),
    ]
    responses = {r.correlation_id: r for r in broker_stub.ProduceStream(iter(requests), timeout=10)}
    assert responses[1].base_offset == 0 and responses[1].error.code == api_pb2.NONE
    assert responses[2].error.code == api_pb2.UNKNOWN_TOPIC
    assert responses[3].error.code in (api_pb2.INVALID_BATCH, api_pb2.CORRUPT_BATCH)
    assert (responses[4].base_offset, responses[4].last_offset) == (1, 2)


def test_fetch_stream_answers_in_order_and_a_newer_request_cuts_a_wait_short(stubs, topic: str) -> None:
    broker_stub, _ = stubs
    broker_stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(b"a", b"b")), timeout=10)
    at_end = api_pb2.FetchRequest(correlation_id=1, max_wait_ms=30_000, partitions=[
        api_pb2.FetchPartition(topic=topic, partition=0, offset=2)])
    requests = [
        at_end,
        api_pb2.FetchRequest(),
        api_pb2.FetchRequest(correlation_id=3, partitions=[
            api_pb2.FetchPartition(topic=topic, partition=0, offset=0),
            api_pb2.FetchPartition(topic="nope", partition=0, offset=0)]),
    ]
    responses = list(broker_stub.FetchStream(iter(requests), timeout=10))
    assert [r.correlation_id for r in responses] == [1, 0, 3]
    assert [p.batches for p in responses[0].partitions] == [b""], "answered at once, with nothing new"
    assert responses[1].partitions == []
    values = [r.value for r in decode_batch(responses[2].partitions[0].batches).records]
    assert values == [b"a", b"b"]
    assert responses[2].partitions[1].error.code == api_pb2.UNKNOWN_TOPIC


def test_fetch_stream_keeps_waiting_after_the_client_ends_its_requests(stubs, topic: str) -> None:
    """Half-closing is not a newer request: the waiting fetch still gets the record produced later."""
    broker_stub, _ = stubs
    request = api_pb2.FetchRequest(correlation_id=1, max_wait_ms=30_000, partitions=[
        api_pb2.FetchPartition(topic=topic, partition=1, offset=0)])
    producer = threading.Timer(0.5, lambda: broker_stub.Produce(
        api_pb2.ProduceRequest(topic=topic, partition=1, batches=batch(b"later")), timeout=10))
    producer.start()
    try:
        responses = list(broker_stub.FetchStream(iter([request]), timeout=20))
    finally:
        producer.join()
    assert [r.correlation_id for r in responses] == [1]
    assert [r.value for r in decode_batch(responses[0].partitions[0].batches).records] == [b"later"]


def values_of(answer: api_pb2.FetchStreamResponse) -> list[bytes | None]:
    return [r.value for p in answer.partitions for start, end in split_batches(p.batches)
            for r in decode_batch(p.batches[start:end]).records]


def followed(topic: str, offset: int, follow_bytes: int, correlation_id: int = 1) -> api_pb2.FetchRequest:
    return api_pb2.FetchRequest(correlation_id=correlation_id, max_wait_ms=30_000, follow_bytes=follow_bytes,
                                partitions=[api_pb2.FetchPartition(topic=topic, partition=0, offset=offset)])


def test_a_followed_fetch_is_answered_again_from_where_each_answer_ended(stubs, topic: str) -> None:
    broker_stub, _ = stubs

    def produce(*values: bytes) -> None:
        broker_stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(*values)), timeout=10)
    produce(b"a")
    requests: queue.SimpleQueue[api_pb2.FetchRequest | None] = queue.SimpleQueue()
    requests.put(followed(topic, 0, 1 << 20))
    call = broker_stub.FetchStream(iter(requests.get, None), timeout=20)
    try:
        first = next(call)
        assert (first.correlation_id, first.follows, values_of(first)) == (1, True, [b"a"])
        produce(b"b", b"c")
        second = next(call)
        assert (second.correlation_id, second.follows, values_of(second)) == (1, True, [b"b", b"c"])
        assert decode_batch(second.partitions[0].batches).header.base_offset == 1, "no batch sent twice"
        requests.put(api_pb2.FetchRequest(correlation_id=2, partitions=[
            api_pb2.FetchPartition(topic=topic, partition=0, offset=0)]))
        cut_short, newer = next(call), next(call)
    finally:
        call.cancel()
    assert (cut_short.correlation_id, cut_short.follows, values_of(cut_short)) == (1, False, [])
    assert (newer.correlation_id, newer.follows) == (2, False), "a request without follow_bytes is answered once"
    assert values_of(newer) == [b"a", b"b", b"c"]


def test_an_answer_that_follows_gets_one_more_even_if_a_newer_request_comes_while_it_is_written(
        broker, stubs, topic: str) -> None:
    """The client waits for the promised answer: a wake arriving while the broker is still writing a
    followed answer (held by flow control here) must not leave that correlation id unanswered."""
    broker_stub, _ = stubs
    for _ in range(8):
        broker_stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(*[b"x" * 10_000] * 40)),
                            timeout=10)
    with grpc.insecure_channel(broker.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        requests: queue.SimpleQueue[api_pb2.FetchRequest | None] = queue.SimpleQueue()
        call = api_pb2_grpc.BrokerStub(channel).FetchStream(iter(requests.get, None), timeout=20)
        requests.put(api_pb2.FetchRequest(correlation_id=1, max_wait_ms=30_000, follow_bytes=1 << 30, partitions=[
            api_pb2.FetchPartition(topic=topic, partition=0, offset=0, max_bytes=4 << 20)]))
        time.sleep(0.5)
        requests.put(api_pb2.FetchRequest())
        time.sleep(0.5)
        try:
            answers = [(a.correlation_id, a.follows) for a in itertools.islice(call, 3)]
        finally:
            call.cancel()
    assert answers == [(1, True), (1, False), (0, False)]


def test_following_ends_when_its_bytes_are_used_or_an_answer_carries_an_error(stubs, topic: str) -> None:
    broker_stub, _ = stubs
    broker_stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(b"a")), timeout=10)
    used_up, out_of_range = list(broker_stub.FetchStream(iter([
        followed(topic, 0, 1), followed(topic, 5, 1 << 20, correlation_id=2)]), timeout=10))
    assert (used_up.correlation_id, used_up.follows, values_of(used_up)) == (1, False, [b"a"])
    assert out_of_range.partitions[0].error.code == api_pb2.OFFSET_OUT_OF_RANGE
    assert (out_of_range.correlation_id, out_of_range.follows) == (2, False)


@pytest.mark.parametrize("request_bytes, fragment", [
    (api_pb2.FetchRequest(correlation_id=1, partitions=[
        api_pb2.FetchPartition(topic="orders", partition=0, offset=-5)]).SerializeToString(), "negative"),
    (b"\xff\xff\xff\xff garbage", "malformed raftka.v1.FetchRequest"),
])
def test_fetch_stream_ends_with_invalid_argument_on_a_bad_request(broker, stubs, topic: str,
                                                                  request_bytes: bytes, fragment: str) -> None:
    with grpc.insecure_channel(broker.address) as channel:
        stream = channel.stream_stream("/raftka.v1.Broker/FetchStream", request_serializer=lambda b: b,
                                       response_deserializer=api_pb2.FetchStreamResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([api_pb2.FetchRequest().SerializeToString(), request_bytes]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(info.value) == "INVALID_REQUEST" and fragment in (info.value.details() or "")
    broker_stub, _ = stubs
    assert broker_stub.Produce(api_pb2.ProduceRequest(topic=topic, partition=0, batches=batch(b"ok")),
                               timeout=10).base_offset == 0
