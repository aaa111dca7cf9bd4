"""Channels to the brokers and a cached view of the cluster's metadata.

Clients start from a bootstrap list, learn the brokers and partition leaders from a Metadata call, and
keep one gRPC channel per broker. Metadata is refreshed when a caller reports it stale (an unknown
partition, NOT_LEADER, a broker that stopped answering). Failed calls surface as the typed errors of
`raftka.errors`, never as raw `grpc.RpcError`.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import grpc

from raftka.client.credentials import TokenProvider, checked_client_id, identified
from raftka.errors import (BrokerUnavailableError, NotLeaderError, RaftkaError, RequestTimedOutError,
                           UnknownPartitionError, UnknownTopicError, from_proto, from_rpc_error)
from raftka.proto import NO_LEADER, api_pb2, api_pb2_grpc
from raftka.wire.settings import parse_bootstrap
from raftka.wire.tls import ClientTls, open_channel

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
"""Retries are ours (typed, metadata-aware); reconnects back off from 100 ms to at most 1 s, as Kafka's
reconnect.backoff.ms does, instead of gRPC's default 1 s to 120 s, so a restarted or newly elected
broker is reached within about a second. A frozen broker (a stopped process, a stalled VM) keeps its
connections open and answers nothing: a ping unanswered for 5 s ends the connection, and a quiet
one is pinged after 10 s. The ping timeout matters most: while any ping (HTTP/2 flow control sends
its own) awaits its answer, gRPC skips the keepalive ping and waits the default minute for that one."""


LEADER_QUERY_TIMEOUT_S = 2.0
"""How long a refresh waits for each further broker it asks about leaderless partitions."""


def _leaderless(response: api_pb2.MetadataResponse) -> bool:
    return any(p.leader_id == NO_LEADER for t in response.topics for p in t.partitions)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter (the AWS architecture blog's recommendation)."""

    initial_s: float = 0.05
    max_s: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_s, self.initial_s * (2 ** attempt)))


class ClusterConnection:
    """Thread-safe: the producer's sender, its response readers and user threads share one."""

    def __init__(self, bootstrap: str | Sequence[str], *, request_timeout_s: float = 30.0,
                 tls: ClientTls | None = None, token: TokenProvider | None = None, client_id: str = "") -> None:
        """`tls`: TLS for every channel (None: plaintext; its files are read as each channel is opened).
        `token`: the bearer token every call carries (`raftka.client.credentials`), if any; `client_id`:
        the client id every call carries ("": none; ValueError for a bad one)."""
        self.bootstrap = parse_bootstrap(bootstrap)
        self.client_id = checked_client_id(client_id)
        self.tls = tls
        self._token = token
        self.request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._metadata: api_pb2.MetadataResponse | None = None
        self._brokers: dict[int, str] = {}
        self._topics: dict[str, api_pb2.TopicMetadata] = {}
        self.answered = False
        """Whether any broker has answered this connection yet (see `retrying`)."""
        self._suspects: dict[str, float] = {}
        """Brokers that lately timed out or were unreachable, with when: `any_broker` asks them last."""

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = identified(open_channel(address, self.tls, CHANNEL_OPTIONS), self._token, self.client_id)
                self._channels[address] = channel
            return channel

    def broker(self, address: str) -> api_pb2_grpc.BrokerStub:
        return api_pb2_grpc.BrokerStub(self.channel(address))

    def call(self, address: str, method: Callable[[api_pb2_grpc.BrokerStub], Callable[..., T]],
             request: object, *, timeout_s: float | None = None) -> T:
        """Call a unary Broker method on one broker, raising typed errors."""
        try:
            result = method(self.broker(address))(request, timeout=timeout_s or self.request_timeout_s)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        self.answered = True
        return result

    def any_broker(self, fn: Callable[[grpc.Channel], T], *, idempotent: bool = False) -> T:
        """Run `fn` against the known brokers in turn until one answers.

        An unreachable broker is skipped; one that times out is skipped too when `fn` is
        `idempotent` (a timed-out call may still take effect). Either way it is suspected and asked
        last from then on, until it answers again: a frozen broker keeps accepting connections, and
        asking it first every time stalled every metadata refresh for as long as it stayed frozen.
        """
        with self._lock:
            addresses = sorted(dict.fromkeys([*self._brokers.values(), *self.bootstrap]),
                               key=lambda address: self._suspects.get(address, 0.0))
        last: RaftkaError | None = None
        for address in addresses:
            try:
                result = fn(self.channel(address))
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if isinstance(error, (BrokerUnavailableError, RequestTimedOutError)):
                    self.suspect(address)
                if not (isinstance(error, BrokerUnavailableError)
                        or idempotent and isinstance(error, RequestTimedOutError)):
                    raise error from None
                last = error
                continue
            with self._lock:
                self._suspects.pop(address, None)
            self.answered = True
            return result
        raise BrokerUnavailableError(f"no broker answered (tried {', '.join(addresses)}): {last}")

    def suspect(self, address: str) -> None:
        """`address` timed out or could not be reached: ask other brokers first for a while."""
        with self._lock:
            self._suspects[address] = time.monotonic()

    def refresh(self, topics: Sequence[str] = ()) -> api_pb2.MetadataResponse:
        """Fetch metadata (for `topics`, or all when empty) and update the cache.

        A broker names only a leader it has heard from, so an answer may leave a partition without
        one (a leader cut off from its peers steps down and knows no successor). When `topics` are
        named, the other brokers are then asked too, each briefly (`LEADER_QUERY_TIMEOUT_S`), and of
        two answers the leader with the higher epoch wins: a client is not sent back, again and
        again, to a deposed leader while the rest of the cluster has elected a new one."""
        request = api_pb2.MetadataRequest(topics=list(topics))
        response = self.any_broker(
            lambda ch: api_pb2_grpc.BrokerStub(ch).Metadata(request, timeout=self.request_timeout_s), idempotent=True)
        if topics and _leaderless(response):
            self._ask_others_for_leaders(request, response)
        with self._lock:
            self._metadata = response
            self._brokers = {b.id: b.address for b in response.brokers}
            if not topics:
                self._topics = {}
            for name in response.unknown_topics:
                self._topics.pop(name, None)
            self._topics.update({t.name: t for t in response.topics})
        return response

    def _ask_others_for_leaders(self, request: api_pb2.MetadataRequest, response: api_pb2.MetadataResponse) -> None:
        """Fill `response`'s leaderless partitions from other brokers' answers, newest epoch first."""
        with self._lock:
            addresses = sorted(dict.fromkeys([*(b.address for b in response.brokers), *self.bootstrap]),
                               key=lambda address: self._suspects.get(address, 0.0))
        timeout = min(LEADER_QUERY_TIMEOUT_S, self.request_timeout_s)
        for address in addresses:
            try:
                answer = api_pb2_grpc.BrokerStub(self.channel(address)).Metadata(request, timeout=timeout)
            except grpc.RpcError:
                self.suspect(address)
                continue
            known = {(t.name, p.partition): p for t in answer.topics for p in t.partitions if p.leader_id != NO_LEADER}
            for topic in response.topics:
                for partition in topic.partitions:
                    other = known.get((topic.name, partition.partition))
                    if other is not None and (partition.leader_id == NO_LEADER
                                              or other.leader_epoch > partition.leader_epoch):
                        partition.leader_id, partition.leader_epoch = other.leader_id, other.leader_epoch
            if not _leaderless(response):
                return

    def topic(self, name: str, *, refresh: bool = False) -> api_pb2.TopicMetadata:
        with self._lock:
            topic = None if refresh else self._topics.get(name)
        if topic is None:
            self.refresh([name])
            with self._lock:
                topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return topic

    def partition_count(self, topic: str) -> int:
        return len(self.topic(topic).partitions)

    def leader(self, topic: str, partition: int, *, refresh: bool = False) -> str:
        """The address of the partition's leader; raises NotLeaderError when it has none right now
        (and forgets the topic, so that the caller's retry asks the brokers again)."""
        metadata = self.topic(topic, refresh=refresh)
        if not 0 <= partition < len(metadata.partitions):
            raise UnknownPartitionError(
                f"topic {topic!r} has partitions 0 to {len(metadata.partitions) - 1}; "
                f"there is no partition {partition}")
        leader_id = metadata.partitions[partition].leader_id
        with self._lock:
            address = self._brokers.get(leader_id)
            if address is None:
                self._topics.pop(topic, None)
        if address is None:
            raise NotLeaderError(f"{topic}/{partition} has no leader right now")
        return address

    def learned(self, topic: str, partition: int, error: RaftkaError) -> None:
        """Update the cache after a failed call on a partition: a NOT_LEADER hint names the new leader;
        any other retriable error marks the topic stale, so the next lookup asks a broker again."""
        with self._lock:
            metadata = self._topics.get(topic)
            if isinstance(error, NotLeaderError) and error.leader_id != NO_LEADER and metadata is not None \
                    and 0 <= partition < len(metadata.partitions):
                metadata.partitions[partition].leader_id = error.leader_id
                if error.leader_address:
                    self._brokers[error.leader_id] = error.leader_address
            else:
                self._topics.pop(topic, None)

    def retrying(self, fn: Callable[[], T], *, deadline_s: float, backoff: Backoff = Backoff()) -> T:
        """Run `fn`, retrying retriable errors with backoff until `deadline_s` (monotonic) passes.

        While no broker has ever answered this connection, an unreachable cluster is not retried: a
        wrong or unresolvable bootstrap address, or nothing running there, fails at once with the
        reason, instead of after the whole request timeout without a word."""
        attempt = 0
        while True:
            try:
                return fn()
            except RaftkaError as exc:
                if not exc.retriable or time.monotonic() >= deadline_s:
                    raise
                if isinstance(exc, BrokerUnavailableError) and not self.answered:
                    raise
                log.debug("retrying after %s: %s", type(exc).__name__, exc)
                time.sleep(min(backoff.delay(attempt), max(0.0, deadline_s - time.monotonic())))
                attempt += 1

    def list_offset(self, topic: str, partition: int, spec: api_pb2.OffsetSpec, timestamp_ms: int = 0) -> int:
        """EARLIEST, LATEST or TIMESTAMP offset of a partition, from its leader (retried, following
        leadership); -1 for a timestamp after every record."""
        request = api_pb2.ListOffsetsRequest(queries=[api_pb2.OffsetQuery(
            topic=topic, partition=partition, spec=spec, timestamp_ms=timestamp_ms)])

        def attempt() -> int:
            leader = self.leader(topic, partition)
            try:
                result = self.call(leader, lambda stub: stub.ListOffsets, request).results[0]
                error = from_proto(result.error)
                if error is not None:
                    raise error
            except RaftkaError as exc:
                self.learned(topic, partition, exc)
                raise
            return result.offset

        return self.retrying(attempt, deadline_s=time.monotonic() + self.request_timeout_s)

    def init_producer_id(self) -> int:
        """A new producer id from the cluster (any broker forwards to the metadata leader). A call
        that timed out is retried on another broker: at worst an id is allocated and never used."""
        request = api_pb2.InitProducerIdRequest()
        response = self.retrying(
            lambda: self.any_broker(lambda ch: api_pb2_grpc.AdminStub(ch).InitProducerId(
                request, timeout=self.request_timeout_s), idempotent=True),
            deadline_s=time.monotonic() + self.request_timeout_s)
        return response.producer_id

    def close(self) -> None:
        """Close every channel, then collect the calls they leave behind.

        A failed or cancelled streaming call is its own exception, so its traceback keeps it alive in
        a reference cycle until the garbage collector runs. If that first happens at interpreter exit,
        its `__del__` waits for a lock that gRPC's daemon threads, stopped mid-event by the exit, may
        hold forever: the process hangs after its work is done. Collecting here, while those threads
        still run, lets every such call finish while it can."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
        gc.collect()
