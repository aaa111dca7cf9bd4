"""Random and mutated protobuf messages against every RPC of a live broker: each call ends with an
answer or a status (never UNKNOWN or INTERNAL — a handler's unexpected exception —, never a hang), and
the broker keeps serving."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from google.protobuf.message_factory import GetMessageClass

from raftka.proto import api_pb2, api_pb2_grpc

METHODS = [(service.full_name, method) for name in ("Broker", "Admin", "Groups")
           for service in [api_pb2.DESCRIPTOR.services_by_name[name]] for method in service.methods]
CALL_TIMEOUT_S = 40.0
"""Above the longest fetch long-poll a request may ask for (the broker caps it at 30 s)."""


def sample(method) -> bytes:
    """A valid request with every scalar field set, to mutate."""
    message = GetMessageClass(method.input_type)()
    for field in method.input_type.fields:
        if field.is_repeated or field.message_type is not None:
            continue
        value = {field.TYPE_STRING: "fuzz", field.TYPE_BYTES: b"\x00\x01", field.TYPE_BOOL: True}.get(field.type, 1)
        setattr(message, field.name, value)
    return message.SerializeToString()


@st.composite
def inputs(draw):
    service, method = draw(st.sampled_from(METHODS))
    if draw(st.booleans()):
        payload = draw(st.binary(max_size=256))
    else:
        data = bytearray(sample(method))
        for _ in range(draw(st.integers(1, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        payload = bytes(data) + draw(st.binary(max_size=16))
    return service, method, payload


def invoke(channel, service, method, payload) -> None:
    path = f"/{service}/{method.name}"
    identity = {"request_serializer": None, "response_deserializer": None}
    if method.client_streaming:
        responses = channel.stream_stream(path, **identity)(iter([payload, payload]), timeout=CALL_TIMEOUT_S)
        list(responses)
    elif method.server_streaming:
        list(channel.unary_stream(path, **identity)(payload, timeout=CALL_TIMEOUT_S))
    else:
        channel.unary_unary(path, **identity)(payload, timeout=CALL_TIMEOUT_S)


def fuzz(address: str, examples: int) -> int:
    tried = []
    with grpc.insecure_channel(address) as channel:
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(inputs())
        def one(case) -> None:
            service, method, payload = case
            tried.append(method.name)
            try:
                invoke(channel, service, method, payload)
            except grpc.RpcError as exc:
                assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                                          grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), (
                    method.name, payload, exc)

        one()
        api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=10)
    print(f"fuzz: {len(tried)} inputs over {len(set(tried))} of {len(METHODS)} methods")
    return len(tried)


def test_fuzzed_requests_get_a_status_and_the_broker_keeps_serving(broker) -> None:
    assert fuzz(broker.address, 300) >= 300


@pytest.mark.slow
def test_fuzzed_requests_long_run(broker) -> None:
    assert fuzz(broker.address, 5000) >= 5000
