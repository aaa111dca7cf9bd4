"""The inter-broker transport of the multi-Raft driver: one framed TCP connection per ordered broker pair.

A broker's driver calls :meth:`RaftTransport.send` for every message of every group it hosts; the
transport routes by ``message.dst`` (Raft node ids are broker ids) and, per peer, keeps one
connection that it opens itself (replies come back on the peer's own connection to us). Peers are
known by their gRPC address; before each connection attempt the transport asks the peer's
``RaftTransport.Endpoint`` where its Raft listener is (see proto/raft.proto for the wire protocol).

Why not a gRPC stream: a write is acknowledged after two crossings of this transport, and a gRPC aio
stream message costs several times the CPU and latency of a framed socket write (measured on the
development machine: 41-74 us of CPU against about 17 us, and a loopback round trip of 268 us
against 108-124 us).

Invariants:

* Batching: ``send`` never writes; it queues and wakes the peer's writer task, which can only run
  in a later loop iteration, and then takes everything queued (up to ``max_batch_bytes``, at least
  one message) into one ``MessageBatch``. So every message queued in one loop iteration, for every
  group, leaves in one batch unless the byte cap splits it, and heartbeats are coalesced per pair.
* Order: per peer there is one writer and one connection at a time, and the receiver delivers a
  connection's batches in order, so messages of one group from one sender arrive in send order.
  Loss is possible (Raft tolerates it); a message is never delivered twice by the transport.
* Memory: a peer's queue holds at most ``max_queued_bytes`` (estimated); past that, *new* messages
  are dropped, which keeps what is queued a contiguous prefix of each group's stream. While a peer
  is down (between a failure and the next connection attempt) its messages are dropped at once.
* Nothing is delivered from a connection before its first batch names this cluster and this broker.
* With TLS (``tls``), both ends present a certificate of the cluster CA and each checks that the
  other's names the broker it is talking to (SAN URI ``raftka://broker/<id>``, `raftka.wire.tls`):
  the dialler, that it reached the broker it meant to; the receiver, that the first batch's sender
  is the broker the certificate names. So no broker can speak as another, whatever it claims.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, NoReturn, Protocol, cast

import grpc
from google.protobuf.message import DecodeError

from raftka.proto import raft_pb2
from raftka.replication.codec import CodecError, decode_message_batch, encode_message_batch, message_size
from raftka.replication.errors import RaftError
from raftka.replication.messages import Message
from raftka.wire.settings import parse_host_port
from raftka.wire.tls import ANY_BROKER, broker_id_of, certifies

log = logging.getLogger(__name__)

ENDPOINT_METHOD = "/raftka.raft.v1.RaftTransport/Endpoint"
REFUSAL_METADATA = "raftka-raft-refusal"
FRAME_HEADER = struct.Struct(">I")
"""Every frame is this big-endian length, then that many bytes of one protobuf message."""
MAX_ACK_BYTES = 4096
MAX_HELLO_BYTES = 4096
"""A connection's first batch is a sender's empty hello; anything bigger is refused."""

OnReceive = Callable[[int, list[tuple[str, Message]]], None]
PeerHook = Callable[[int], None]
Resolve = Callable[[int, str], Awaitable[str]]
"""(peer id, peer's gRPC address) -> HOST:PORT of the peer's Raft listener."""


class TransportError(RaftError):
    """Base class of the transport's errors."""


class MessageTooLargeError(TransportError):
    """One message is larger than a frame may be; it can never be delivered."""


class FrameTooLargeError(TransportError):
    """A frame's length header is over the limit (a peer that is broken, or not a Raftka broker)."""


class TransportClosedError(TransportError):
    """``send`` was called after ``close``."""


class StreamEndedError(TransportError):
    """A peer refused, closed or broke our connection; ``refusal`` is its refusal reason, if any."""

    def __init__(self, peer_id: int, reason: str, refusal: str | None = None) -> None:
        super().__init__(f"connection to broker {peer_id} ended: {reason}"
                         + (f" (refused: {refusal})" if refusal else ""))
        self.refusal = refusal


class Refusal(enum.Enum):
    """Why a receiver refused a connection, and the gRPC status ``Endpoint`` answers with."""

    CLUSTER_MISMATCH = grpc.StatusCode.PERMISSION_DENIED
    BROKER_MISMATCH = grpc.StatusCode.FAILED_PRECONDITION
    MALFORMED = grpc.StatusCode.INVALID_ARGUMENT
    CERTIFICATE_MISMATCH = grpc.StatusCode.UNAUTHENTICATED
    """The peer's certificate names another broker than the one it claims (or none)."""


class _Refused(Exception):
    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.refusal = refusal
        self.detail = detail


class TransportTls(Protocol):
    """The TLS material of a broker, current at each call (certificates rotate)."""

    def server_context(self) -> ssl.SSLContext:
        """For connections we accept: requires the peer's certificate, of the cluster CA."""

    def client_context(self) -> ssl.SSLContext:
        """For connections we open: verifies the peer's certificate, presents ours."""

    def channel(self, address: str) -> grpc.aio.Channel:
        """A TLS gRPC channel to a broker (for its Endpoint)."""


def _certified_broker(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> int | None:
    """The broker id the verified certificate of the connection's peer names, if any."""
    cert = writer.get_extra_info("peercert") or {}
    return broker_id_of(value for kind, value in cert.get("subjectAltName", ()) if kind == "URI")


def _named(broker: int | None) -> str:
    return "no broker" if broker is None else "any broker" if broker == ANY_BROKER else f"broker {broker}"


@dataclass(frozen=True)
class TransportOptions:
    max_batch_bytes: int = 1 << 20
    """Messages are merged into one MessageBatch up to this estimated size (one bigger message
    travels alone)."""
    max_queued_bytes: int = 32 << 20
    """Per peer; past it new messages are dropped."""
    max_message_bytes: int = 64 << 20
    """Largest frame sent or accepted."""
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    """Reconnection attempts back off from the first to at most this (refused ones wait the most):
    after a network partition heals, the next attempt is never more than about a second away."""
    connect_timeout_s: float = 1.0
    """An attempt whose connection (or its Endpoint question) is not answered within this is given
    up and retried after the backoff. Short, because a SYN lost to a partition is retransmitted by
    the kernel only after 1, 3, 7 s: a fresh attempt after a heal connects sooner than an old one."""
    ping_interval_s: float = 1.0
    """A connection quiet this long (nothing heard from the receiver) carries a ping: an empty
    batch the receiver answers with an Ack. Its kernel would answer TCP keepalives even while the
    broker process is frozen, so only an answer from the process itself proves it is alive. A ping
    a second costs a few bytes per broker pair."""
    ping_timeout_s: float = 2.0
    """A ping unanswered this long after it reached the kernel, or a writer that could hand the
    kernel nothing for this long, ends the connection: the peer is reported down, which wakes the
    quiesced groups it leads so that their followers elect a new leader, and the connection is
    replaced. A connection whose packets a partition dropped is thus replaced within about 3 s,
    instead of waiting out TCP's retransmission backoff (seconds, doubling) once the network heals."""
    tcp_keepalive_s: int = 10
    """TCP keepalive (idle time, then 3 probes 2 s apart) and TCP_USER_TIMEOUT (3x this) on both
    ends, so a connection to a host that vanished without a RST is closed on the receiving side too."""


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
    """Incoming connections (and Endpoint calls) this broker refused: wrong cluster or broker, malformed."""
    refused_by_peers: int = 0
    """Our connections (and Endpoint calls) a peer refused."""


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
    down_since: float = 0.0


class RaftTransport:
    """Sends and receives Raft messages of many groups between this broker and its peers.

    All methods run on the event loop of the driver; hooks and ``on_receive`` are called on it too
    and must not block or raise. ``on_peer_down(peer)`` fires when a peer turns unreachable (the
    driver calls ``RaftNode.report_unreachable`` for its groups), ``on_peer_up(peer)`` when a
    connection to it is accepted again (the driver may ``wake`` quiesced groups); each fires once
    per transition. Incoming connections are accepted once :meth:`listen` has been awaited, and
    :attr:`servicer` (registered on the broker's gRPC server) tells peers where that is.
    ``resolve`` replaces the Endpoint call (tests that run no gRPC server). ``tls`` turns on mutual
    TLS for every connection, both ways (see the module's invariants).
    """

    def __init__(self, broker_id: int, cluster_id: str, peers: dict[int, str], on_receive: OnReceive, *,
                 on_peer_down: PeerHook | None = None, on_peer_up: PeerHook | None = None,
                 options: TransportOptions = TransportOptions(), resolve: Resolve | None = None,
                 tls: TransportTls | None = None) -> None:
        self.broker_id = broker_id
        self.tls = tls
        self.cluster_id = cluster_id
        self.options = options
        self.stats = TransportStats()
        self.address = ""
        """HOST:PORT peers are told to connect to, once listening."""
        self.servicer = RaftEndpointServicer(self)
        self._on_receive = on_receive
        self._on_peer_down = on_peer_down
        self._on_peer_up = on_peer_up
        self._resolve = resolve or self._ask_endpoint
        self._peers: dict[int, _Peer] = {}
        self._unknown_warned: set[int] = set()
        self._server: asyncio.Server | None = None
        self._incoming: set[asyncio.Task[None]] = set()
        """The tasks serving accepted connections (`_accept`)."""
        self._handshakes: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        """With TLS: the listening socket, whose connections are accepted bare and handed to the TLS
        handshake before anything reads them (`_accept_tls`)."""
        self._acceptor: asyncio.Task[None] | None = None
        self._closed = False
        for peer_id, address in peers.items():
            self.add_peer(peer_id, address)

    async def listen(self, host: str, port: int = 0, *, advertise_host: str = "") -> str:
        """Accept peers' connections on ``host:port`` (0: any free port); returns the address
        peers are told, with ``advertise_host`` in place of ``host`` when given."""
        if self.tls is None:
            self._server = await asyncio.get_running_loop().create_server(self._receiver, host, port)
            bound = self._server.sockets[0].getsockname()[1]
        else:
            self._listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else
                                                  socket.AF_INET)
            self._listener.setblocking(False)
            self._acceptor = asyncio.get_running_loop().create_task(self._accept_tls_loop(self._listener))
            bound = self._listener.getsockname()[1]
        self.address = f"{advertise_host or host}:{bound}"
        log.info("raft transport: listening on %s:%d, advertised as %s", host, bound, self.address)
        return self.address

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

    def reported_down(self, peer_id: int) -> bool:
        """Whether the last word on the peer was "down": a connection failed and none has been
        accepted since. Unlike ``peer_state``, a reconnection attempt (CONNECTING, which lasts up to
        ``connect_timeout_s`` against a frozen broker) does not make a failed peer look alive."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.reported_up is False

    def down_since(self, peer_id: int) -> float | None:
        """Wall-clock time (s since the epoch) the peer was last reported down, or None while it is not."""
        peer = self._peers.get(peer_id)
        return peer.down_since if peer is not None and peer.reported_up is False else None

    async def close(self) -> None:
        """Stop listening and end every connection, both ways (queued messages are dropped)."""
        self._closed = True
        tasks = [peer.task for peer in self._peers.values() if peer.task is not None]
        for peer in list(self._peers.values()):
            self._stop_peer(peer)
        self._peers.clear()
        if self._server is not None:
            self._server.close()
        for task in [*self._incoming, *self._handshakes, *([self._acceptor] if self._acceptor is not None else [])]:
            task.cancel()
        if self._listener is not None:
            self._listener.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

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
        if not up:
            peer.down_since = time.time()
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
                self.stats.refused_by_peers += refused
                (log.error if refused else log.warning)("raft transport: %s", exc)
            except (OSError, asyncio.IncompleteReadError, DecodeError, FrameTooLargeError) as exc:
                log.warning("raft transport: connection to broker %d failed: %s: %s", peer.id,
                            type(exc).__name__, exc)
            except Exception:
                log.exception("raft transport: connection to broker %d failed unexpectedly", peer.id)
            peer.state = PeerState.DOWN
            self._drop_queue(peer)
            self._report(peer, False)
            ceiling = self.options.backoff_max_s if refused else min(
                self.options.backoff_max_s, self.options.backoff_initial_s * 2 ** peer.failures)
            peer.failures += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _session(self, peer: _Peer) -> None:
        """One connection to ``peer`` until it fails (always ends by raising)."""
        timeout = self.options.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                host, port = parse_host_port(await self._resolve(peer.id, peer.address))
                if self.tls is None:
                    reader, writer = await asyncio.open_connection(host, port)
                else:
                    reader, writer = await asyncio.open_connection(host, port, ssl=self.tls.client_context(),
                                                                   server_hostname=host)
        except TimeoutError:
            raise StreamEndedError(peer.id,
                                   f"{peer.address} did not accept a connection within {timeout:.1f} s") from None
        except ssl.SSLError as exc:
            raise StreamEndedError(peer.id, f"TLS handshake with {host}:{port} failed: {exc}",
                                   Refusal.CERTIFICATE_MISMATCH.name) from None
        try:
            if self.tls is not None and not certifies(_certified_broker(writer), peer.id):
                raise StreamEndedError(peer.id, f"the certificate at {host}:{port} is that of "
                                                f"{_named(_certified_broker(writer))}",
                                       Refusal.CERTIFICATE_MISMATCH.name)
            self._tune(writer)
            link = _Link(writer)
            link.write(encode_message_batch(self.cluster_id, self.broker_id, peer.id, ()).SerializeToString())
            try:
                async with asyncio.timeout(timeout):
                    ack = raft_pb2.Ack.FromString(await _read_frame(reader, MAX_ACK_BYTES))
            except TimeoutError:
                raise StreamEndedError(peer.id, f"no answer to the first batch within {timeout:.1f} s") from None
            if ack.refusal:
                raise StreamEndedError(peer.id, ack.detail, ack.refusal)
            peer.state = PeerState.UP
            peer.failures = 0
            log.info("raft transport: connection to broker %d at %s:%d accepted", peer.id, host, port)
            self._report(peer, True)
            watcher = asyncio.create_task(self._watch(reader, link, peer))
            try:
                await self._pump(peer, link, watcher)
            finally:
                watcher.cancel()
        finally:
            writer.close()

    async def _pump(self, peer: _Peer, link: _Link, watcher: asyncio.Task[str]) -> NoReturn:
        cap = self.options.max_batch_bytes
        while True:
            while not peer.queue and not watcher.done():
                peer.wakeup.clear()
                await peer.wakeup.wait()
            if watcher.done():
                raise StreamEndedError(peer.id, watcher.result())
            items: list[tuple[str, Message]] = []
            size = 0
            while peer.queue and (not items or size + peer.queue[0][2] <= cap):
                group, message, n = peer.queue.popleft()
                items.append((group, message))
                size += n
            peer.queued_bytes -= size
            payload = encode_message_batch(self.cluster_id, self.broker_id, peer.id, items).SerializeToString()
            try:
                link.write(payload)
                await link.writer.drain()
            except BaseException as exc:
                self._drop(len(items), size)
                if isinstance(exc, OSError) and watcher.done() and not watcher.cancelled():
                    raise StreamEndedError(peer.id, watcher.result()) from None
                raise
            self.stats.sent_messages += len(items)
            self.stats.sent_batches += 1
            self.stats.sent_bytes += len(payload)

    async def _ask_endpoint(self, peer_id: int, address: str) -> str:
        request = raft_pb2.EndpointRequest(cluster_id=self.cluster_id, from_broker=self.broker_id, to_broker=peer_id)
        async with (grpc.aio.insecure_channel(address) if self.tls is None else self.tls.channel(address)) as channel:
            endpoint = channel.unary_unary(ENDPOINT_METHOD,
                                           request_serializer=raft_pb2.EndpointRequest.SerializeToString,
                                           response_deserializer=raft_pb2.EndpointResponse.FromString)
            try:
                response = await endpoint(request)
            except grpc.aio.AioRpcError as exc:
                refusal = dict(exc.trailing_metadata() or ()).get(REFUSAL_METADATA)
                raise StreamEndedError(peer_id, f"Endpoint at {address}: {exc.code().name} {exc.details()}",
                                       refusal) from None
        return response.address

    async def _watch(self, reader: asyncio.StreamReader, link: _Link, peer: _Peer) -> str:
        """Beside the writer: ping a quiet receiver and return why the connection is over (the
        receiver closed or refused it, or stopped taking bytes and answering), waking the writer.

        The receiver sends nothing but Acks, one per ping, or a refusal. One task reads them for the
        life of the connection and is never cancelled mid-frame, so a late answer cannot
        desynchronise the framing. A condemned connection is aborted, which also frees a writer
        stuck in ``drain`` and discards what the peer never read (nothing of it is delivered later).
        """
        loop = asyncio.get_running_loop()
        ping = encode_message_batch(self.cluster_id, self.broker_id, peer.id, ()).SerializeToString()
        interval = self.options.ping_interval_s
        link.heard = loop.time()

        async def read_acks() -> NoReturn:
            while True:
                ack = raft_pb2.Ack.FromString(await _read_frame(reader, MAX_ACK_BYTES))
                if ack.refusal:
                    raise StreamEndedError(peer.id, ack.detail, ack.refusal)
                link.heard = loop.time()

        acks = asyncio.create_task(read_acks())
        reason = ""
        try:
            while not reason:
                ready, _ = await asyncio.wait({acks}, timeout=max(0.0, link.heard + interval - loop.time()))
                done = bool(ready)
                if not done and loop.time() - link.heard >= interval:
                    done, reason = await self._await_answer(acks, link, ping)
                if done:
                    exc = acks.exception()
                    if isinstance(exc, StreamEndedError):
                        raise exc
                    reason = f"the peer closed the connection ({type(exc).__name__})"
            return reason
        finally:
            acks.cancel()
            link.writer.transport.abort()
            peer.wakeup.set()

    async def _await_answer(self, acks: asyncio.Task[NoReturn], link: _Link, ping: bytes) -> tuple[bool, str]:
        """Send a ping and wait for its answer: (the reader ended, why the connection is condemned).

        The answer is due ``ping_timeout_s`` after the ping reached the kernel. Until then it waits
        behind our backlog, which may be a large snapshot on a slow link, as long as the kernel keeps
        taking our bytes; a writer that stalls for ``ping_timeout_s`` with the ping still queued
        condemns the connection too (the peer stopped reading: its buffers and ours are full).
        A frozen process's kernel keeps taking bytes until its buffers fill, so progress alone
        never proves the peer alive: the clock starts once the ping is through.
        """
        loop = asyncio.get_running_loop()
        timeout = self.options.ping_timeout_s
        pinged = loop.time()
        link.write(ping)
        ping_end = link.written
        taken, moved, reached = link.taken(), pinged, None
        while link.heard < pinged:
            done, _ = await asyncio.wait({acks}, timeout=timeout / 5)
            if done:
                return True, ""
            now = loop.time()
            if link.taken() != taken:
                taken, moved = link.taken(), now
            if reached is None and taken >= ping_end:
                reached = now
            if reached is not None and now - reached >= timeout:
                return False, f"no answer to a ping within {timeout:.1f} s"
            if reached is None and now - moved >= timeout:
                return False, f"the peer took none of our bytes for {timeout:.1f} s"
        return False, ""

    def _tune(self, writer: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
        sock = writer.get_extra_info("socket")
        idle = self.options.tcp_keepalive_s
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3),
                            ("TCP_USER_TIMEOUT", 3 * idle * 1000)):
            if hasattr(socket, name):  # Linux has them all; other systems some
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)

    def _receiver(self) -> _FrameReceiver:
        return _FrameReceiver(MAX_HELLO_BYTES, self._serve)

    def _serve(self, receiver: _FrameReceiver) -> None:
        task = asyncio.get_running_loop().create_task(self._accept(receiver))
        self._incoming.add(task)
        task.add_done_callback(self._incoming.discard)

    async def _accept(self, receiver: _FrameReceiver) -> None:
        """Serve one peer's connection: validate, acknowledge, then deliver its batches in order.

        Until its first batch is accepted a connection is a stranger's: that batch must come within
        ``connect_timeout_s`` and be at most ``MAX_HELLO_BYTES`` (our senders' first batch is empty).
        """
        writer = receiver.transport
        assert writer is not None
        peer = writer.get_extra_info("peername")
        sender: int | None = None
        try:
            self._tune(writer)
            certified = _certified_broker(writer) if self.tls is not None else None
            try:
                async with asyncio.timeout(self.options.connect_timeout_s):
                    payload = await receiver.read_frame()
            except TimeoutError:
                raise _Refused(Refusal.MALFORMED,
                               f"no first batch within {self.options.connect_timeout_s:.1f} s") from None
            except FrameTooLargeError as exc:
                raise _Refused(Refusal.MALFORMED, f"first batch: {exc}") from None
            sender, messages = self._check(sender, payload, writer, certified)
            receiver.trust(self.options.max_message_bytes)
            while True:
                self._deliver(sender, messages, payload)
                try:
                    payload = await receiver.read_frame()
                except FrameTooLargeError as exc:
                    raise _Refused(Refusal.MALFORMED, str(exc)) from None
                sender, messages = self._check(sender, payload, writer, certified)
        except _Refused as refused:
            self.stats.refused_streams += 1
            log.error("raft transport: refused connection from %s: %s: %s", peer, refused.refusal.name, refused.detail)
            _write_frame(writer, raft_pb2.Ack(broker_id=self.broker_id, refusal=refused.refusal.name,
                                              detail=refused.detail).SerializeToString())
            await self._linger(receiver)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                log.info("raft transport: connection from broker %s (%s) ended inside a frame", sender, peer)
        except OSError as exc:
            log.info("raft transport: connection from broker %s (%s) ended: %s", sender, peer, exc)
        finally:
            writer.close()

    async def _accept_tls_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: the listener stays; try again shortly
                log.warning("raft transport: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._accept_tls(connection))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _accept_tls(self, connection: socket.socket) -> None:
        """TLS on an accepted connection (the current certificate; the peer's required), then serve it.
        A failed handshake is a refusal, logged and counted."""
        assert self.tls is not None
        loop = asyncio.get_running_loop()
        peer = connection.getpeername()
        receiver = _FrameReceiver(MAX_HELLO_BYTES, lambda _: None)
        try:
            await loop.connect_accepted_socket(lambda: receiver, connection, ssl=self.tls.server_context(),
                                               ssl_handshake_timeout=self.options.connect_timeout_s)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.stats.refused_streams += 1
            log.error("raft transport: refused connection from %s: TLS: %s: %s", peer, type(exc).__name__, exc)
            connection.close()
            return
        await self._accept(receiver)

    def _deliver(self, sender: int, messages: list[tuple[str, Message]], payload: bytes | bytearray) -> None:
        if messages:
            self.stats.received_messages += len(messages)
            self.stats.received_batches += 1
            self.stats.received_bytes += len(payload)
            self._on_receive(sender, messages)

    async def _linger(self, receiver: _FrameReceiver) -> None:
        """After a refusal: end our side, then discard what the peer still sends until it closes
        (bounded), because closing with unread bytes resets the connection and loses the refusal."""
        writer = receiver.transport
        assert writer is not None
        try:
            if writer.can_write_eof():  # TLS cannot half-close
                writer.write_eof()
            async with asyncio.timeout(self.options.connect_timeout_s):
                await receiver.discard_until_eof()
        except (OSError, TimeoutError):
            pass

    def _check(self, sender: int | None, payload: bytes | bytearray, writer: asyncio.WriteTransport,
               certified: int | None) -> tuple[int, list[tuple[str, Message]]]:
        """Validate one batch (`certified`: the broker id the peer's TLS certificate names). The first
        one, and every empty one after it (a ping), is answered with an Ack."""
        try:
            batch = raft_pb2.MessageBatch.FromString(payload)  # type: ignore[arg-type]  # any bytes-like parses
        except DecodeError as exc:
            raise _Refused(Refusal.MALFORMED, f"undecodable batch: {exc}") from None
        if batch.cluster_id != self.cluster_id:
            raise _Refused(Refusal.CLUSTER_MISMATCH, f"batch from broker {batch.from_broker} is for cluster "
                                                     f"{batch.cluster_id!r}, this is {self.cluster_id!r}")
        if batch.to_broker != self.broker_id:
            raise _Refused(Refusal.BROKER_MISMATCH, f"batch from broker {batch.from_broker} is for broker "
                                                    f"{batch.to_broker}, this is broker {self.broker_id}")
        if self.tls is not None and not certifies(certified, batch.from_broker):
            raise _Refused(Refusal.CERTIFICATE_MISMATCH, f"batch from broker {batch.from_broker} comes with the "
                                                         f"certificate of {_named(certified)}")
        if sender is not None and batch.from_broker != sender:
            raise _Refused(Refusal.MALFORMED, f"connection of broker {sender} carries a batch from broker "
                                              f"{batch.from_broker}")
        try:
            messages = decode_message_batch(batch)
        except CodecError as exc:
            raise _Refused(Refusal.MALFORMED, f"batch from broker {batch.from_broker}: {exc}") from None
        if sender is None or not messages:
            _write_frame(writer, raft_pb2.Ack(broker_id=self.broker_id).SerializeToString())
        return batch.from_broker, messages


class _Link:
    """Our end of one connection: writes whole frames, knows how many bytes the kernel took and
    when the receiver last answered."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.written = 0
        """Bytes written so far."""
        self.heard = 0.0
        """Event-loop time of the receiver's last Ack."""

    def write(self, payload: bytes) -> None:
        _write_frame(self.writer, payload)
        self.written += FRAME_HEADER.size + len(payload)

    def taken(self) -> int:
        """Bytes written so far that left asyncio's buffer for the kernel's."""
        return self.written - self.writer.transport.get_write_buffer_size()


class RaftEndpointServicer:
    """``raftka.raft.v1.RaftTransport`` on the broker's gRPC server: where to connect for Raft."""

    def __init__(self, transport: RaftTransport) -> None:
        self._transport = transport

    async def Endpoint(self, request: raft_pb2.EndpointRequest,
                       context: grpc.aio.ServicerContext) -> raft_pb2.EndpointResponse:
        transport = self._transport
        if request.cluster_id != transport.cluster_id:
            await self._refuse(context, Refusal.CLUSTER_MISMATCH,
                               f"broker {request.from_broker} is of cluster {request.cluster_id!r}, "
                               f"this is {transport.cluster_id!r}")
        if request.to_broker != transport.broker_id:
            await self._refuse(context, Refusal.BROKER_MISMATCH,
                               f"broker {request.from_broker} asked for broker {request.to_broker}, "
                               f"this is broker {transport.broker_id}")
        if not transport.address:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the Raft listener is not up yet")
        return raft_pb2.EndpointResponse(address=transport.address)

    async def _refuse(self, context: grpc.aio.ServicerContext, refusal: Refusal, message: str) -> NoReturn:
        self._transport.stats.refused_streams += 1
        log.error("raft transport: refused Endpoint call from %s: %s: %s", context.peer(), refusal.name, message)
        await context.abort(refusal.value, message, trailing_metadata=((REFUSAL_METADATA, refusal.name),))


STAGE_BYTES = 1 << 16
QUEUED_FRAME_BYTES = 1 << 20


class _FrameReceiver(asyncio.BufferedProtocol):
    """The accepting end of a peer's connection: frames, read from the kernel straight into their own
    buffers, queued for `RaftTransport._accept`.

    Why not a StreamReader: it copied each byte of a large frame three times on its way in (into a
    bytes per read, into its buffer, out of it), with reallocations as the buffer grew; a 256 KiB
    frame cost 175-213 us of CPU that way against 33-35 us, sender and receiver together (measured
    on the development machine). Small frames land in a staging buffer, several per read; a frame
    larger than what is staged gets a buffer of its size, and the kernel fills the rest of it directly.

    Invariants: at most `STAGE_BYTES` are staged, and reading pauses while whole frames of more than
    `QUEUED_FRAME_BYTES` wait for the consumer, or while the stage is full. Until the consumer calls
    `trust` (it has validated the first frame), frames are limited to `limit` bytes and nothing past
    the first frame is parsed, so a stranger can make this end hold at most the stage and one small
    frame. A length over the limit fails the connection with FrameTooLargeError; EOF or a broken
    connection ends it as a StreamReader would (IncompleteReadError, the transport's OSError)."""

    def __init__(self, limit: int, on_connected: Callable[[_FrameReceiver], None]) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._trusted = False
        self._stage = bytearray(STAGE_BYTES)
        self._staged = 0
        self._body: bytearray | None = None
        self._filled = 0
        self._frames: deque[bytes | bytearray] = deque()
        self._queued = 0
        self._ended: BaseException | None = None
        """What `read_frame` raises once the queue is empty: the connection ended or failed."""
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._discarding = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is none of asyncio's classes
        self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return memoryview(self._body)[self._filled:]
        if self._discarding:
            return memoryview(self._stage)
        return memoryview(self._stage)[self._staged:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._discarding:
            return
        if self._body is not None:
            self._filled += nbytes
            if self._filled == len(self._body):
                body, self._body = self._body, None
                self._push(body)
                self._parse()
        else:
            self._staged += nbytes
            self._parse()
        self._pause_if_full()

    def eof_received(self) -> bool:
        self._closed = True
        self._end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._end(exc)
        self._wake()

    def trust(self, limit: int) -> None:
        """The first frame was valid: accept frames up to `limit` bytes from now on."""
        self._trusted, self.limit = True, limit
        self._parse()
        self._pause_if_full()

    async def read_frame(self) -> bytes | bytearray:
        while not self._frames:
            if self._ended is not None:
                raise self._ended
            await self._news()
        frame = self._frames.popleft()
        self._queued -= len(frame)
        self._pause_if_full()
        return frame

    async def discard_until_eof(self) -> None:
        """Drop everything queued and everything still coming until the peer closes."""
        self._discarding, self._body = True, None
        self._frames.clear()
        self._queued = 0
        self._pause_if_full()
        while not self._closed:
            await self._news()

    async def _news(self) -> None:
        """Wait until a frame is queued or the connection ends (`_wake`)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _parse(self) -> None:
        """Queue every whole frame staged; move a started large frame into its own buffer."""
        stage, at = self._stage, 0
        while self._body is None and self._staged - at >= FRAME_HEADER.size and self._ended is None:
            if self._frames and not self._trusted:
                break
            (size,) = FRAME_HEADER.unpack_from(stage, at)
            if size > self.limit:
                self._end(_too_large(size, self.limit))
                break
            start = at + FRAME_HEADER.size
            available = self._staged - start
            if available >= size:
                self._push(bytes(stage[start:start + size]))
                at = start + size
            else:
                body = bytearray(size)
                body[:available] = stage[start:self._staged]
                self._body, self._filled = body, available
                at = self._staged
        if at:
            rest = self._staged - at
            stage[:rest] = stage[at:self._staged]
            self._staged = rest

    def _push(self, frame: bytes | bytearray) -> None:
        self._frames.append(frame)
        self._queued += len(frame)
        self._wake()

    def _end(self, exc: BaseException | None) -> None:
        if self._ended is not None:
            return
        if exc is None:
            partial = self._staged or self._body is not None
            exc = asyncio.IncompleteReadError(b"\0" if partial else b"", None)
        self._ended = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause_if_full(self) -> None:
        """Pause reading while the consumer is behind or the stage is full; resume otherwise."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        full = not self._discarding and (
            self._ended is not None or self._queued > QUEUED_FRAME_BYTES
            or (self._body is None and self._staged == STAGE_BYTES) or (not self._trusted and bool(self._frames)))
        if full and not self._paused:
            transport.pause_reading()
            self._paused = True
        elif not full and self._paused:
            transport.resume_reading()
            self._paused = False


def _write_frame(writer: asyncio.StreamWriter | asyncio.WriteTransport, payload: bytes) -> None:
    """The header and the payload as two buffers of one write: uvloop hands both to the kernel without
    joining them, where `header + payload` copied every byte once more (a 256 KiB frame cost 236 us
    of CPU that way against 94 us, sender and receiver together, measured on the development machine)."""
    writer.writelines((FRAME_HEADER.pack(len(payload)), payload))


def _too_large(size: int, limit: int) -> FrameTooLargeError:
    return FrameTooLargeError(f"a {size}-byte frame is over the {limit}-byte limit")


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    if size > limit:
        raise _too_large(size, limit)
    return await reader.readexactly(size)
