"""The `raftka.v1.Broker` gRPC service: produce, fetch, offsets and metadata.

The service moves whole record batches between clients and partition replicas; it never decodes
records, except for clients that send or ask for protobuf records (`raftka.wire.proto_records`): the
records of a produce request become one batch before the replica sees them, and a fetch asking for
RECORD_FORMAT_RECORDS has the batches it read decoded. Every failure becomes a typed `RaftkaError`,
sent as a gRPC status with the error code in trailing metadata (unary calls) or as an `Error` message
(items of a stream), so a bad request is answered precisely and the broker keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import grpc

from raftka import __version__
from raftka.cluster.access import Access, caller, open_access
from raftka.cluster.brokers import BrokerDirectory
from raftka.cluster.config import BrokerConfig
from raftka.cluster.controller import Controller
from raftka.cluster.metadata import MetadataState, TopicRecord
from raftka.cluster.metrics import BrokerMetrics
from raftka.cluster.partitions import PartitionManager
from raftka.cluster.tls import PeerChannels
from raftka.cluster.quotas import FETCH, PRODUCE, throttle_ms
from raftka.cluster.topics import MAX_BATCH_BYTES_LIMIT
from raftka.errors import InternalError, InvalidRequestError, InvalidTopicError, RaftkaError
from raftka.proto import NO_LEADER, api_pb2, api_pb2_grpc
from raftka.wire.acl import DESCRIBE, TOPIC
from raftka.wire.batch import Compression, next_offset_after, offsets_spanned
from raftka.wire.proto_records import decode_records, encode_records

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_FETCH_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_PARTITION_FETCH_MAX_BYTES = 1024 * 1024
STREAM_FETCH_MAX_BYTES = MAX_BATCH_BYTES_LIMIT - (1 << 20)
"""One FetchStream response is one gRPC message: its cap, plus the one batch a read may return past
it, stays under the broker's message limit (twice the largest batch)."""
MAX_STREAM_IN_FLIGHT = 1024
"""Produce requests one stream may have unanswered; the stream stops reading beyond it (back-pressure)."""
MAX_FETCH_STREAM_QUEUED = 4
"""Fetch requests one FetchStream may have unanswered (a client needs one fetch and one wake)."""
METADATA_READ_TIMEOUT_S = 5.0


@dataclass
class BrokerState:
    """What the services share: who this broker is and what it hosts."""

    config: BrokerConfig
    metadata: MetadataState
    partitions: PartitionManager
    controller: Controller
    metrics: BrokerMetrics
    directory: BrokerDirectory
    incarnation: str
    """The id of this broker's data directory."""
    down_since: Callable[[int], float | None]
    """When the Raft transport last lost a broker (s since the epoch), or None while it reaches it."""
    channels: PeerChannels
    """gRPC channels to the other brokers (TLS with this broker's certificate when TLS is on)."""
    access: Access = field(default_factory=open_access)
    peer_metadata: tuple[tuple[str, str], ...] = ()
    """Sent with this broker's own calls to other brokers: its credentials (`--broker-token-file`)."""

    async def catch_up_metadata(self) -> None:
        """Apply every metadata change committed before this call (ReadIndex), so an answer given
        afterwards includes every topic change acknowledged by any broker before the request came.
        When no metadata leader answers in time, the local view is the best there is."""
        try:
            await self.controller.replica.read_barrier(METADATA_READ_TIMEOUT_S)
        except RaftkaError as exc:
            log.info("metadata read barrier failed; answering from the local view: %s", exc)

    def address_of(self, broker_id: int) -> str:
        return self.directory.address_of(broker_id)

    def broker_info(self, broker_id: int) -> api_pb2.BrokerInfo:
        registration = self.metadata.brokers().get(broker_id)
        return api_pb2.BrokerInfo(id=broker_id, address=self.directory.address_of(broker_id),
                                  rack=self.directory.rack_of(broker_id),
                                  incarnation=registration.incarnation if registration is not None else "")

    def topic_metadata(self, record: TopicRecord) -> api_pb2.TopicMetadata:
        """The topic as this broker sees it. A partition's leader is the one its local replica leads or
        follows, with that leader's term as its epoch; a broker without a replica, or whose replica
        knows no leader (a leader cut off from its peers steps down and knows none), answers NO_LEADER rather
        than guess, so clients ask another broker instead of retrying a deposed leader. Only a
        partition's leader knows which replicas are in sync; elsewhere that list is empty."""
        partitions = []
        for p, replicas in enumerate(record.replicas):
            replica = self.partitions.find(record.name, p)
            leader, epoch = replica.leadership() if replica is not None else (NO_LEADER, 0)
            partitions.append(api_pb2.PartitionMetadata(
                partition=p, leader_id=leader, leader_epoch=epoch, replicas=replicas,
                in_sync_replicas=replica.in_sync_replicas() if replica is not None else []))
        return api_pb2.TopicMetadata(name=record.name, replication_factor=record.replication_factor,
                                     config=record.config.as_strings(), internal=record.internal,
                                     partitions=partitions)


async def unary(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    """Run a unary handler, turning typed errors into a status with the error code as metadata."""
    try:
        return await call()
    except RaftkaError as exc:
        await context.abort(exc.status, exc.message, trailing_metadata=exc.trailing_metadata())
    except Exception as exc:
        log.exception("request failed unexpectedly")
        error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
        await context.abort(error.status, error.message, trailing_metadata=error.trailing_metadata())
    raise AssertionError("context.abort returned")


def as_error(exc: BaseException) -> api_pb2.Error:
    if isinstance(exc, RaftkaError):
        return exc.to_proto()
    log.error("stream item failed unexpectedly", exc_info=exc)
    return InternalError(f"internal error: {type(exc).__name__}: {exc}").to_proto()


def _continuation(request: api_pb2.FetchRequest, responses: Sequence[api_pb2.FetchResponse]
                  ) -> tuple[api_pb2.FetchRequest | None, str]:
    """The request that goes on from where `responses` left each partition of a followed `request`
    (FetchRequest.follow_bytes), or None and why following ends: "" when it was not asked for,
    "allowance" when the byte allowance is used up, "error" for an error the client must act on first."""
    if not request.follow_bytes or not request.partitions:
        return None, ""
    sent, starts = 0, {}
    for response in responses:
        if response.error.code != api_pb2.NONE:
            return None, "error"
        after, size = _answered(response)
        if after is not None:
            sent += size
            starts[response.topic, response.partition] = after
    if sent >= request.follow_bytes:
        return None, "allowance"
    follow = api_pb2.FetchRequest()
    follow.CopyFrom(request)
    follow.follow_bytes = request.follow_bytes - sent
    for item in follow.partitions:
        item.offset = starts.get((item.topic, item.partition), item.offset)
    return follow, ""


def _answered(response: api_pb2.FetchResponse) -> tuple[int | None, int]:
    """The offset after the data a fetch response carries (None without data), and its size: the bytes
    of its batches, or of its encoded records."""
    if response.records:
        return response.records[-1].offset + 1, response.ByteSize()
    return next_offset_after(response.batches), len(response.batches)


def request_batches(request: api_pb2.ProduceRequest, max_message_bytes: int) -> bytes:
    """The batches a produce request writes: its `batches`, or one batch built from its `records`."""
    if not request.records:
        if request.compression or request.HasField("producer"):
            raise InvalidRequestError("compression and producer apply to a request's records; a batch carries "
                                      "its own in its header")
        return request.batches
    if request.batches:
        raise InvalidRequestError("a produce request carries records or batches, not both")
    if request.compression not in Compression._value2member_map_:
        raise InvalidRequestError(f"unknown compression {request.compression}")
    return encode_records(request.records, now_ms=int(time.time() * 1000), max_record_bytes=max_message_bytes,
                          compression=Compression(request.compression),
                          producer=request.producer if request.HasField("producer") else None)


class BrokerService(api_pb2_grpc.BrokerServicer):
    def __init__(self, state: BrokerState) -> None:
        self._state = state
        self._metrics = state.metrics

    async def Produce(self, request: api_pb2.ProduceRequest, context: grpc.aio.ServicerContext
                      ) -> api_pb2.ProduceResponse:
        started = time.perf_counter()
        try:
            return await unary(context, lambda: self._produce(request))
        finally:
            self._metrics.produce_latency.observe(time.perf_counter() - started)

    async def ProduceStream(self, request_iterator: AsyncIterator[api_pb2.ProduceRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.ProduceResponse]:
        """Answer pipelined produce requests as they are acknowledged.

        Each request's batches are staged, in arrival order, before the next request is read, so a
        partition's offsets follow the stream's order; its responses follow too, because group-commit
        rounds complete in order and wake their waiters in order.
        """
        out: asyncio.Queue[api_pb2.ProduceResponse | RaftkaError | None] = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_STREAM_IN_FLIGHT)
        answering: set[asyncio.Task[None]] = set()

        async def answer(request: api_pb2.ProduceRequest) -> None:
            started = time.perf_counter()
            try:
                response = await self._produce(request)
            except Exception as exc:  # noqa: BLE001 - every request gets an answer
                response = api_pb2.ProduceResponse(correlation_id=request.correlation_id, topic=request.topic,
                                                   partition=request.partition, error=as_error(exc))
            finally:
                slots.release()
            self._metrics.produce_latency.observe(time.perf_counter() - started)
            out.put_nowait(response)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(answer(request))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
            except RaftkaError as exc:
                out.put_nowait(exc)
                return
            while answering:
                await asyncio.wait(set(answering))
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                if isinstance(response, RaftkaError):
                    await context.abort(response.status, response.message,
                                        trailing_metadata=response.trailing_metadata())
                yield response
        finally:
            reader.cancel()

    async def _produce(self, request: api_pb2.ProduceRequest) -> api_pb2.ProduceResponse:
        try:
            if request.acks not in (api_pb2.ACKS_ALL, api_pb2.ACKS_LEADER):
                raise InvalidRequestError(f"unknown acks value {request.acks}")
            record = self._state.metadata.find(request.topic)
            if record is not None and record.internal:
                raise InvalidTopicError(f"topic {request.topic!r} is internal; only the brokers write to it")
            replica = self._state.partitions.replica(request.topic, request.partition)
            batches = request_batches(request, replica.max_message_bytes)
            timeout_ms = request.timeout_ms or self._state.config.request_timeout_ms
            outcome = await replica.append(batches, durable=request.acks == api_pb2.ACKS_ALL,
                                           timeout_s=timeout_ms / 1000)
        except RaftkaError as exc:
            self._metrics.produce_requests.labels(api_pb2.ErrorCode.Name(exc.code)).inc()
            raise
        self._metrics.produce_requests.labels("ok").inc()
        self._metrics.produced(request.topic, outcome.last_offset - outcome.base_offset + 1, len(batches))
        return api_pb2.ProduceResponse(correlation_id=request.correlation_id, topic=request.topic,
                                       partition=request.partition, base_offset=outcome.base_offset,
                                       last_offset=outcome.last_offset,
                                       log_append_time_ms=outcome.append_time_ms,
                                       throttle_time_ms=self._charge(PRODUCE, len(batches)))

    def _charge(self, kind: str, size: int) -> int:
        """Count `size` bytes against the caller's quota; the time its next request will be held (ms)."""
        quotas = self._state.access.quotas
        who = caller()
        quotas.charge(who, kind, size)
        return throttle_ms(quotas.hold_s(who))

    async def Fetch(self, request: api_pb2.FetchRequest, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[api_pb2.FetchResponse]:
        """Long-poll: wait until min_bytes are readable or max_wait_ms passes, then stream batches.

        One response per partition with data or an error; the stream ends after the last.
        """
        started = time.perf_counter()
        await self._check_fetch(request, context)
        responses = await self._long_poll(request, request.max_bytes or DEFAULT_FETCH_MAX_BYTES, None, started)
        throttle = self._charge(FETCH, sum(_answered(response)[1] for response in responses))
        for response in responses:
            response.throttle_time_ms = throttle
            yield response

    async def FetchStream(self, requests: AsyncIterator[api_pb2.FetchRequest], context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[api_pb2.FetchStreamResponse]:
        """Fetch, one request after another on one stream; a newer request cuts the current wait short.

        A reader task queues requests as they arrive and resolves `newer`, the future the current
        long-poll also waits on, so the waiting request is answered at once with what it has. The
        end of the client's requests does not cut a wait short: it only ends the stream after the
        last answer. At most MAX_FETCH_STREAM_QUEUED requests wait unanswered; beyond that the
        reader stops reading (a client that does not read its answers cannot grow the queue).

        A request with `follow_bytes` is answered again and again, each time from where the previous
        answer left its partitions (`_continuation`), until an answer carries an error, the answers
        have carried `follow_bytes` bytes, or a newer request arrives: a consumer that keeps up then
        costs one message per answer instead of two. An answer that says `follows` is always
        followed by one more for its correlation id: a newer request that arrives after it makes
        that one come at once, cut short and not followed, before the newer request is served.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[api_pb2.FetchRequest | RaftkaError | None] = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_FETCH_STREAM_QUEUED)
        newer: asyncio.Future[None] = loop.create_future()

        def arrived(item: api_pb2.FetchRequest | RaftkaError) -> None:
            queue.put_nowait(item)
            if not newer.done():
                newer.set_result(None)

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()
                    arrived(request)
            except RaftkaError as exc:
                arrived(exc)
                return
            queue.put_nowait(None)

        reader = asyncio.create_task(read())
        follow: api_pb2.FetchRequest | None = None
        try:
            while True:
                if follow is not None:
                    await self._state.access.quotas.hold(caller())
                    request, asked = follow, False
                else:
                    item = await queue.get()
                    if item is None:
                        break
                    if isinstance(item, RaftkaError):
                        await context.abort(item.status, item.message, trailing_metadata=item.trailing_metadata())
                    request, asked = item, True
                started = time.perf_counter()
                newer = loop.create_future()
                if not queue.empty():
                    newer.set_result(None)
                responses: list[api_pb2.FetchResponse] = []
                if request.partitions:
                    if asked:
                        await self._check_fetch(request, context)
                    total_max = min(request.max_bytes or DEFAULT_FETCH_MAX_BYTES, STREAM_FETCH_MAX_BYTES)
                    responses = await self._long_poll(request, total_max, newer, started)
                follow, ended = _continuation(request, responses)
                if follow is not None and not queue.empty():
                    follow, ended = None, "newer"
                if ended:
                    self._metrics.fetch_follows_ended.labels(ended).inc()
                yield api_pb2.FetchStreamResponse(
                    correlation_id=request.correlation_id, partitions=responses, follows=follow is not None,
                    throttle_time_ms=self._charge(FETCH, sum(_answered(response)[1] for response in responses)))
                if asked:
                    slots.release()
        finally:
            reader.cancel()

    async def _check_fetch(self, request: api_pb2.FetchRequest, context: grpc.aio.ServicerContext) -> None:
        """End the call with INVALID_ARGUMENT if the request cannot be served as a whole."""
        try:
            if not request.partitions:
                raise InvalidRequestError("fetch request names no partition")
            if request.record_format not in api_pb2.RecordFormat.values():
                raise InvalidRequestError(f"unknown record_format {request.record_format}")
            for item in request.partitions:
                if item.offset < 0:
                    raise InvalidRequestError(
                        f"fetch offset {item.offset} for {item.topic}/{item.partition} is negative")
        except RaftkaError as exc:
            self._metrics.fetch_requests.labels(api_pb2.ErrorCode.Name(exc.code)).inc()
            await context.abort(exc.status, exc.message, trailing_metadata=exc.trailing_metadata())

    async def _long_poll(self, request: api_pb2.FetchRequest, total_max: int, interrupt: asyncio.Future[None] | None,
                         started: float) -> list[api_pb2.FetchResponse]:
        """Read until min_bytes are readable, max_wait_ms passes or `interrupt` resolves."""
        max_wait_s = min(request.max_wait_ms, self._state.config.max_fetch_wait_ms) / 1000
        deadline = time.monotonic() + max_wait_s
        while True:
            responses, size, waits = self._read_all(request, total_max)
            remaining = deadline - time.monotonic()
            if size >= max(request.min_bytes, 1) or remaining <= 0 or not waits or (interrupt and interrupt.done()):
                break
            await asyncio.wait([*waits, interrupt] if interrupt else waits, timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
        self._metrics.fetch_requests.labels("ok").inc()
        for response in responses:
            if response.batches:
                self._metrics.fetched(response.topic, offsets_spanned(response.batches), len(response.batches))
            elif response.records:
                self._metrics.fetched(response.topic, len(response.records), _answered(response)[1])
        self._metrics.fetch_latency.observe(time.perf_counter() - started)
        return responses

    def _read_all(self, request: api_pb2.FetchRequest, total_max: int
                  ) -> tuple[list[api_pb2.FetchResponse], int, list[asyncio.Future[None]]]:
        """Read every partition once: the responses, their total bytes, and futures for empty ones."""
        responses: list[api_pb2.FetchResponse] = []
        waits: list[asyncio.Future[None]] = []
        size = 0
        as_records = request.record_format == api_pb2.RECORD_FORMAT_RECORDS
        for item in request.partitions:
            try:
                replica = self._state.partitions.replica(item.topic, item.partition)
                budget = min(item.max_bytes or DEFAULT_PARTITION_FETCH_MAX_BYTES, max(total_max - size, 1))
                result = replica.read(item.offset, budget) if size < total_max else None
            except RaftkaError as exc:
                responses.append(api_pb2.FetchResponse(topic=item.topic, partition=item.partition,
                                                       error=exc.to_proto()))
                continue
            if result is None:
                continue
            if result.batches:
                response = api_pb2.FetchResponse(topic=item.topic, partition=item.partition,
                                                 high_watermark=result.high_watermark,
                                                 log_start_offset=result.log_start_offset)
                if as_records:
                    response.records.extend(decode_records(result.batches, item.offset))
                else:
                    response.batches = result.batches
                size += _answered(response)[1]
                responses.append(response)
            else:
                waits.append(replica.data_after(item.offset))
                responses.append(api_pb2.FetchResponse(
                    topic=item.topic, partition=item.partition, high_watermark=result.high_watermark,
                    log_start_offset=result.log_start_offset))
        return responses, size, waits

    async def ListOffsets(self, request: api_pb2.ListOffsetsRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.ListOffsetsResponse:
        return await unary(context, lambda: self._list_offsets(request))

    async def _list_offsets(self, request: api_pb2.ListOffsetsRequest) -> api_pb2.ListOffsetsResponse:
        results = []
        for query in request.queries:
            result = api_pb2.OffsetResult(topic=query.topic, partition=query.partition)
            try:
                replica = self._state.partitions.replica(query.topic, query.partition)
                replica.require_leader()
                if query.spec == api_pb2.EARLIEST:
                    result.offset = replica.log_start_offset
                elif query.spec == api_pb2.LATEST:
                    result.offset = replica.high_watermark
                elif query.spec == api_pb2.TIMESTAMP:
                    found = replica.offset_for_timestamp(query.timestamp_ms)
                    result.offset = found if found is not None and found < replica.high_watermark else -1
                else:
                    raise InvalidRequestError(
                        f"offset query for {query.topic}/{query.partition} has no spec "
                        "(EARLIEST, LATEST or TIMESTAMP)")
            except RaftkaError as exc:
                result.error.CopyFrom(exc.to_proto())
            results.append(result)
        return api_pb2.ListOffsetsResponse(results=results)

    async def Metadata(self, request: api_pb2.MetadataRequest, context: grpc.aio.ServicerContext
                       ) -> api_pb2.MetadataResponse:
        return await unary(context, lambda: self._metadata(request))

    async def _metadata(self, request: api_pb2.MetadataRequest) -> api_pb2.MetadataResponse:
        """Topics the caller may not describe are left out, or reported unknown when named, as if
        they did not exist."""
        state = self._state
        response = api_pb2.MetadataResponse(
            cluster_id=state.config.cluster_id, controller_id=state.controller.leader_id, broker_version=__version__,
            brokers=[state.broker_info(broker) for broker in state.directory.ids()])
        if request.topics:
            if any(state.metadata.find(name) is None for name in request.topics):
                await state.catch_up_metadata()
            for name in request.topics:
                record = state.metadata.find(name)
                if record is None or not state.access.may(TOPIC, name, DESCRIBE):
                    response.unknown_topics.append(name)
                else:
                    response.topics.append(state.topic_metadata(record))
        else:
            response.topics.extend(state.topic_metadata(record) for record in state.metadata.topics()
                                   if state.access.may(TOPIC, record.name, DESCRIBE))
        return response

