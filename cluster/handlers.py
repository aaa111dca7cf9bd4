"""Registering servicers so that undecodable requests get INVALID_ARGUMENT, not gRPC's UNKNOWN.

The generated `add_*Servicer_to_server` functions let a protobuf DecodeError escape from gRPC's own
deserialisation, which answers UNKNOWN with a Python exception name. Here a request that fails to
decode becomes a `MalformedRequest` that is answered with INVALID_ARGUMENT and the error code
INVALID_REQUEST before the servicer method runs. In a request stream, the malformed item ends the
call with that status (there is no correlation id to answer it by).

The same wrapper applies access control (`raftka.cluster.access`) to every call: it authenticates the
caller and checks its client id before the servicer method runs, and authorizes and (under a quota)
holds each request — each item of a request stream — before the method sees it. A refusal is a
status (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT for a bad client id) that ends the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from raftka.cluster.access import Access
from raftka.cluster.authentication import ANONYMOUS
from raftka.cluster.quotas import Caller
from raftka.errors import InvalidRequestError, RaftkaError


@dataclass(frozen=True)
class MalformedRequest:
    error: InvalidRequestError


def _tolerant(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(InvalidRequestError(
                f"malformed {message_class.DESCRIPTOR.full_name} message: {exc}"))
    return parse


async def _abort(context: grpc.aio.ServicerContext, error: RaftkaError) -> None:
    await context.abort(error.status, error.message, trailing_metadata=error.trailing_metadata())


async def checked_stream(requests: AsyncIterator[Any], admit: Callable[[Any], Awaitable[None]]
                         ) -> AsyncIterator[Any]:
    """Yield a request stream's items once admitted, raising InvalidRequestError at the first
    malformed one (and the access error at the first refused one)."""
    async for request in requests:
        if isinstance(request, MalformedRequest):
            raise request.error
        await admit(request)
        yield request


def _wrap(behavior: Callable[..., Any], method: str, access: Access | None, client_streaming: bool,
          server_streaming: bool) -> Callable[..., Any]:
    async def enter(request: Any, context: grpc.aio.ServicerContext) -> Caller:
        """Aborts the call unless its request decoded and is admitted."""
        try:
            if isinstance(request, MalformedRequest):
                raise request.error
            if access is None:
                return Caller(ANONYMOUS)
            who = access.enter(context)
            if request is not None:
                await access.admit(method, request, who)
            return who
        except RaftkaError as exc:
            await _abort(context, exc)
            raise

    if client_streaming and server_streaming:
        async def bidi(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            who = await enter(None, context)
            async for response in behavior(checked_stream(requests, lambda request: (
                    access.admit(method, request, who) if access is not None else _admitted())), context):
                yield response
        return bidi
    if server_streaming:
        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await enter(request, context)
            async for response in behavior(request, context):
                yield response
        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await enter(request, context)
        return await behavior(request, context)
    return unary


async def _admitted() -> None:
    return None


def add_servicer(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object,
                 access: Access | None) -> None:
    """Register every method of `service` on `servicer` with tolerant request decoding and `access`
    control (`access.REQUIRED` must name every method); None only for the inter-broker
    RaftTransport service, which answers brokers that have no client credentials."""
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for method in service.methods:
        kind = (method.client_streaming, method.server_streaming)
        if kind not in factories:
            raise NotImplementedError(f"{method.full_name}: client-streaming methods are not supported")
        handlers[method.name] = factories[kind](
            _wrap(getattr(servicer, method.name), f"{service.name}.{method.name}", access, *kind),
            request_deserializer=_tolerant(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
