"""The inter-broker transport of the multi-Raft driver: one gRPC stream per ordered broker pair.

A broker's driver calls :meth:`RaftTransport.send` for every message of every group it hosts; the
transport routes by ``message.dst`` (Raft node ids are broker ids) and, per peer, keeps one channel
and one ``Exchange`` stream that it opens itself (replies come back on the peer's own stream to us).
Incoming streams are served by :attr:`RaftTransport.servicer`, registered on the broker's server.

Invariants:

* Batching: ``send`` never writes; it queues and wakes the peer's writer task, which can only run
  in a later loop iteration, and then takes everything queued (up to ``max_batch_bytes``, at least
  one message) into one ``MessageBatch``. So every message queued in one loop iteration, for every
  group, leaves in one batch unless the byte cap splits it, and heartbeats are coalesced per pair.
* Order: per peer there is one writer and one stream at a time, and the receiver delivers a
  stream's batches in order, so messages of one group from one sender arrive in send order. Loss is
  possible (Raft tolerates it); a message is never delivered twice by the transport.
* Memory: a peer's queue holds at most ``max_queued_bytes`` (estimated); past that, *new* messages
  are dropped, which keeps what is queued a contiguous prefix of each group's stream. While a peer
  is down (between a failure and the next connection attempt) its messages are dropped at once.
* Nothing is delivered from a stream before its first batch names this cluster and this broker.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, NoReturn

import grpc

from raftka.errors import InvalidRequestError
from raftka.proto import raft_pb2
from raftka.replication.codec import CodecError, decode_batch, encode_batch, message_size
from raftka.replication.errors import RaftError
from raftka.replication.messages import Message

log = logging.getLogger(__name__)

EXCHANGE_METHOD = "/raftka.raft.v1.RaftTransport/Exchange"
REFUSAL_METADATA = "raftka-raft-refusal"

OnReceive = Callable[[int, list[tuple[str, Message]]], None]
PeerHook = Callable[[int], None]


class TransportError(RaftError):
    """Base class of the transport's errors."""


class MessageTooLargeError(TransportError):
    """One message is larger than a gRPC message may be; it can never be delivered."""


class TransportClosedError(TransportError):
    """``send`` was called after ``close``."""


class StreamEndedError(TransportError):
    """A peer ended, refused or failed our stream; ``refusal`` is its refusal reason, if any."""

    def __init__(self, peer_id: int, code: grpc.StatusCode, details: str, refusal: str | None) -> None:
        super().__init__(f"stream to broker {peer_id} ended: {code.name} {details}"
                         + (f" (refused: {refusal})" if refusal else ""))
        self.code = code
        self.refusal = refusal


class Refusal(enum.Enum):
    """Why a receiver refused a stream, and the status it answers with."""

    CLUSTER_MISMATCH = grpc.StatusCode.PERMISSION_DENIED
    BROKER_MISMATCH = grpc.StatusCode.FAILED_PRECONDITION
    MALFORMED = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class TransportOptions:
    max_batch_bytes: int = 1 << 20
    """Messages are merged into one MessageBatch up to this estimated size (one bigger message
    travels alone)."""
    max_queued_bytes: int = 32 << 20
    """Per peer; past it new messages are dropped."""
    max_message_bytes: int = 64 << 20
    """gRPC send/receive limit; the broker's server must allow at least as much."""
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    connect_timeout_s: float = 5.0
    keepalive_time_ms: int = 10_000
    """Pings detect a silently dead peer (no RST) within keepalive time + timeout, even on a quiet
    stream. gRPC servers accept them without extra options while the stream is open (checked with
    grpcio 1.85 at 200 ms)."""
    keepalive_timeout_ms: int = 5_000

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.use_local_subchannel_pool", 1),
        ]


@dataclass
class TransportStats:
    """Counters since start. Bytes sent/received are serialized MessageBatch sizes; dropped bytes
    are the estimate used for queue limits."""

    sent_messages: int = 0
    sent_batches: int = 0
    sent_bytes: int = 0
    received_messages: int = 0
    received_batches: int = 0
    received_bytes: int = 0
    dropped_messages: int = 0
    dropped_bytes: int = 0
    refused_streams: int = 0
    """Incoming streams this broker refused (wrong cluster or broker, malformed)."""


class PeerState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


@dataclass(eq=False)
class _Peer:
    id: int
    address: str
    state: PeerState = PeerState.IDLE
    queue: deque[tuple[str, Message, int]] = field(default_factory=deque)
    queued_bytes: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    failures: int = 0
    reported_up: bool | None = None


class RaftTransport:
    """Sends and receives Raft messages of many groups between this broker and its peers.

    All methods run on the event loop of the driver; hooks and ``on_receive`` are called on it too
    and must not block or raise. ``on_peer_down(peer)`` fires when a peer turns unreachable (the
    driver calls ``RaftNode.report_unreachable`` for its groups), ``on_peer_up(peer)`` when a stream
    to it is accepted again (the driver may ``wake`` quiesced groups); each fires once per transition.
    """

    def __init__(self, broker_id: int, cluster_id: str, peers: dict[int, str], on_receive: OnReceive, *,
                 on_peer_down: PeerHook | None = None, on_peer_up: PeerHook | None = None,
                 options: TransportOptions = TransportOptions()) -> None:
        self.broker_id = broker_id
        self.cluster_id = cluster_id
        self.options = options
        self.stats = TransportStats()
        self.servicer = RaftTransportServicer(broker_id, cluster_id, on_receive, self.stats)
        self._on_peer_down = on_peer_down
        self._on_peer_up = on_peer_up
        self._peers: dict[int, _Peer] = {}
        self._unknown_warned: set[int] = set()
        self._closed = False
        for peer_id, address in peers.items():
            self.add_peer(peer_id, address)

    def send(self, group: str, message: Message) -> None:
        """Queue ``message`` of ``group`` for broker ``message.dst``; never blocks, may drop."""
        if self._closed:
            raise TransportClosedError("the transport is closed")
        size = message_size(message) + len(group)
        if size > self.options.max_message_bytes:
            raise MessageTooLargeError(f"{message.type.name} for group {group!r} is ~{size} bytes, over the "
                                       f"{self.options.max_message_bytes}-byte message limit")
        peer = self._peers.get(message.dst)
        if peer is None:
            if message.dst not in self._unknown_warned:
                self._unknown_warned.add(message.dst)
                log.warning("dropping messages to broker %d: no address known", message.dst)
            self._drop(1, size)
            return
        if peer.state is PeerState.DOWN or (peer.queue and peer.queued_bytes + size > self.options.max_queued_bytes):
            self._drop(1, size)
            return
        peer.queue.append((group, message, size))
        peer.queued_bytes += size
        peer.wakeup.set()
        if peer.task is None:
            peer.task = asyncio.get_running_loop().create_task(self._run(peer), name=f"raft-transport-{peer.id}")

    def add_peer(self, peer_id: int, address: str) -> None:
        """Add a peer, or change its address (which drops its queue and reconnects lazily)."""
        current = self._peers.get(peer_id)
        if current is not None:
            if current.address == address:
                return
            self._stop_peer(current)
        self._unknown_warned.discard(peer_id)
        self._peers[peer_id] = _Peer(peer_id, address)

    def remove_peer(self, peer_id: int) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is not None:
            self._stop_peer(peer)

    def peer_state(self, peer_id: int) -> PeerState | None:
        peer = self._peers.get(peer_id)
        return None if peer is None else peer.state

    async def close(self) -> None:
        """Stop every outgoing stream (queued messages are dropped). Incoming streams end with the server."""
        self._closed = True
        tasks = [peer.task for peer in self._peers.values() if peer.task is not None]
        for peer in list(self._peers.values()):
            self._stop_peer(peer)
        self._peers.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _stop_peer(self, peer: _Peer) -> None:
        if peer.task is not None:
            peer.task.cancel()
            peer.task = None
        self._drop_queue(peer)

    def _drop(self, messages: int, size: int) -> None:
        self.stats.dropped_messages += messages
        self.stats.dropped_bytes += size

    def _drop_queue(self, peer: _Peer) -> None:
        self._drop(len(peer.queue), peer.queued_bytes)
        peer.queue.clear()
        peer.queued_bytes = 0

    def _report(self, peer: _Peer, up: bool) -> None:
        if peer.reported_up is up:
            return
        peer.reported_up = up
        hook = self._on_peer_up if up else self._on_peer_down
        if hook is not None:
            hook(peer.id)

    async def _run(self, peer: _Peer) -> None:
        """Connect, pump, and after a failure drop, report and retry with capped, jittered backoff."""
        while True:
            peer.state = PeerState.CONNECTING
            refused = False
            try:
                await self._session(peer)
            except StreamEndedError as exc:
                refused = exc.refusal is not None
                (log.error if refused else log.warning)("raft transport: %s", exc)
            except TimeoutError:
                log.warning("raft transport: broker %d at %s did not accept a stream within %.1f s", peer.id,
                            peer.address, self.options.connect_timeout_s)
            except Exception:  # noqa: BLE001 - a dead peer task would cut this broker pair off for good
                log.exception("raft transport: stream to broker %d failed unexpectedly", peer.id)
            peer.state = PeerState.DOWN
            self._drop_queue(peer)
            self._report(peer, False)
            ceiling = self.options.backoff_max_s if refused else min(
                self.options.backoff_max_s, self.options.backoff_initial_s * 2 ** peer.failures)
            peer.failures += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _session(self, peer: _Peer) -> None:
        """One channel and one stream to ``peer`` until either fails (always ends by raising)."""
        async with grpc.aio.insecure_channel(peer.address, options=self.options.channel_options()) as channel:
            call = channel.stream_stream(EXCHANGE_METHOD, request_serializer=raft_pb2.MessageBatch.SerializeToString,
                                         response_deserializer=raft_pb2.Ack.FromString)()
            try:
                await call.write(encode_batch(self.cluster_id, self.broker_id, peer.id, ()))
                async with asyncio.timeout(self.options.connect_timeout_s):
                    ack = await call.read()
                if ack is grpc.aio.EOF:
                    raise await _ended(peer.id, call)
                peer.state = PeerState.UP
                peer.failures = 0
                log.info("raft transport: stream to broker %d at %s accepted", peer.id, peer.address)
                self._report(peer, True)
                watcher = asyncio.create_task(_watch(call, peer))
                try:
                    await self._pump(peer, call, watcher)
                finally:
                    watcher.cancel()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                raise await _ended(peer.id, call) from None

    async def _pump(self, peer: _Peer, call: grpc.aio.StreamStreamCall, watcher: asyncio.Task[None]) -> None:
        cap = self.options.max_batch_bytes
        while True:
            while not peer.queue and not watcher.done():
                peer.wakeup.clear()
                await peer.wakeup.wait()
            if watcher.done():
                raise await _ended(peer.id, call)
            items, size = [], 0
            while peer.queue and (not items or size + peer.queue[0][2] <= cap):
                group, message, n = peer.queue.popleft()
                items.append((group, message))
                size += n
            peer.queued_bytes -= size
            batch = encode_batch(self.cluster_id, self.broker_id, peer.id, items)
            try:
                await call.write(batch)
            except BaseException:
                self._drop(len(items), size)
                raise
            self.stats.sent_messages += len(items)
            self.stats.sent_batches += 1
            self.stats.sent_bytes += batch.ByteSize()


async def _watch(call: grpc.aio.StreamStreamCall, peer: _Peer) -> None:
    """Return when the receiver ends the stream (it sends nothing after its Ack), waking the writer."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError:
        pass
    finally:
        peer.wakeup.set()


async def _ended(peer_id: int, call: grpc.aio.StreamStreamCall) -> StreamEndedError:
    code = await call.code()
    refusal = dict(await call.trailing_metadata() or ()).get(REFUSAL_METADATA)
    return StreamEndedError(peer_id, code, await call.details() or "", refusal)


class RaftTransportServicer:
    """The receiving side of ``raftka.raft.v1.RaftTransport``.

    Register it with ``raftka.cluster.handlers.add_servicer``: an undecodable batch then surfaces as
    ``InvalidRequestError`` from the request stream and is answered INVALID_ARGUMENT.
    """

    def __init__(self, broker_id: int, cluster_id: str, on_receive: OnReceive, stats: TransportStats) -> None:
        self._broker_id = broker_id
        self._cluster_id = cluster_id
        self._on_receive = on_receive
        self._stats = stats

    async def Exchange(self, requests: AsyncIterator[raft_pb2.MessageBatch],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[raft_pb2.Ack]:
        sender: int | None = None
        try:
            async for batch in requests:
                if batch.cluster_id != self._cluster_id:
                    await self._refuse(context, Refusal.CLUSTER_MISMATCH,
                                       f"batch from broker {batch.from_broker} is for cluster {batch.cluster_id!r}, "
                                       f"this is {self._cluster_id!r}")
                if batch.to_broker != self._broker_id:
                    await self._refuse(context, Refusal.BROKER_MISMATCH,
                                       f"batch from broker {batch.from_broker} is for broker {batch.to_broker}, "
                                       f"this is broker {self._broker_id}")
                if sender is not None and batch.from_broker != sender:
                    await self._refuse(context, Refusal.MALFORMED,
                                       f"stream of broker {sender} carries a batch from broker {batch.from_broker}")
                try:
                    messages = decode_batch(batch)
                except CodecError as exc:
                    await self._refuse(context, Refusal.MALFORMED, f"batch from broker {batch.from_broker}: {exc}")
                if sender is None:
                    sender = batch.from_broker
                    yield raft_pb2.Ack(broker_id=self._broker_id)
                if messages:
                    self._stats.received_messages += len(messages)
                    self._stats.received_batches += 1
                    self._stats.received_bytes += batch.ByteSize()
                    self._on_receive(sender, messages)
        except InvalidRequestError as exc:
            await self._refuse(context, Refusal.MALFORMED, exc.message)

    async def _refuse(self, context: grpc.aio.ServicerContext, refusal: Refusal, message: str) -> NoReturn:
        self._stats.refused_streams += 1
        log.error("raft transport: refused stream from %s: %s: %s", context.peer(), refusal.name, message)
        await context.abort(refusal.value, message, trailing_metadata=((REFUSAL_METADATA, refusal.name),))
