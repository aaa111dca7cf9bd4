"""`Admin`: create, delete, list and describe topics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, TypeVar

import grpc

from raftka.client.connection import ClusterConnection
from raftka.errors import from_rpc_error
from raftka.proto import api_pb2, api_pb2_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    in_sync_replicas: tuple[int, ...]
    log_start_offset: int | None = None
    high_watermark: int | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class TopicInfo:
    name: str
    replication_factor: int
    partitions: tuple[PartitionInfo, ...]
    config: dict[str, str] = field(default_factory=dict)
    internal: bool = False

    @classmethod
    def from_proto(cls, topic: api_pb2.TopicMetadata,
                   offsets: Sequence[api_pb2.PartitionOffsets] = ()) -> TopicInfo:
        by_partition = {o.partition: o for o in offsets}
        partitions = []
        for p in topic.partitions:
            o = by_partition.get(p.partition)
            partitions.append(PartitionInfo(
                p.partition, p.leader_id, tuple(p.replicas), tuple(p.in_sync_replicas),
                o.log_start_offset if o else None, o.high_watermark if o else None, o.size_bytes if o else None))
        return cls(topic.name, topic.replication_factor, tuple(partitions), dict(topic.config), topic.internal)


class Admin:
    """Topic administration. Errors are the typed `raftka.errors` classes (TopicExistsError, ...)."""

    def __init__(self, bootstrap: str | Sequence[str], *, request_timeout_ms: int = 30_000) -> None:
        self._conn = ClusterConnection(bootstrap, request_timeout_s=request_timeout_ms / 1000)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 0,
                     config: Mapping[str, str | int] | None = None) -> TopicInfo:
        """Create a topic; replication_factor 0 means the cluster default, min(3, brokers)."""
        request = api_pb2.CreateTopicRequest(name=name, partitions=partitions,
                                             replication_factor=replication_factor,
                                             config={k: str(v) for k, v in (config or {}).items()})
        response = self._admin(lambda stub: stub.CreateTopic(request, timeout=self._conn.request_timeout_s))
        return TopicInfo.from_proto(response.topic)

    def delete_topic(self, name: str) -> None:
        request = api_pb2.DeleteTopicRequest(name=name)
        self._admin(lambda stub: stub.DeleteTopic(request, timeout=self._conn.request_timeout_s))

    def list_topics(self, *, include_internal: bool = False) -> list[TopicInfo]:
        request = api_pb2.ListTopicsRequest(include_internal=include_internal)
        response = self._admin(lambda stub: stub.ListTopics(request, timeout=self._conn.request_timeout_s))
        return [TopicInfo.from_proto(t) for t in response.topics]

    def describe_topic(self, name: str) -> TopicInfo:
        """The topic with its partitions' leaders, replicas, in-sync replicas and offsets.

        Only a partition's leader knows which replicas are in sync and the exact high watermark, so
        every broker is asked and each partition is reported as its own leader sees it; a partition
        whose leader did not answer is reported as the first answering broker sees it.
        """
        request = api_pb2.DescribeTopicRequest(name=name)
        response = self._admin(lambda stub: stub.DescribeTopic(request, timeout=self._conn.request_timeout_s))
        partitions = {p.partition: p for p in response.topic.partitions}
        offsets = {o.partition: o for o in response.offsets}
        for broker in self._conn.refresh([name]).brokers:
            try:
                answer = api_pb2_grpc.AdminStub(self._conn.channel(broker.address)).DescribeTopic(
                    request, timeout=min(5.0, self._conn.request_timeout_s))
            except grpc.RpcError:
                continue
            own = {o.partition: o for o in answer.offsets}
            for p in answer.topic.partitions:
                if p.leader_id == broker.id and p.in_sync_replicas:
                    partitions[p.partition] = p
                    if p.partition in own:
                        offsets[p.partition] = own[p.partition]
        topic = api_pb2.TopicMetadata()
        topic.CopyFrom(response.topic)
        del topic.partitions[:]
        topic.partitions.extend(partitions[p] for p in sorted(partitions))
        return TopicInfo.from_proto(topic, list(offsets.values()))

    def elect_preferred_leaders(self, topic: str = "") -> list[api_pb2.LeaderMove]:
        """Hand leadership back to in-sync preferred leaders (of `topic`, or all); every broker is
        asked, since each moves the partitions it leads. Returns the transfers started."""
        request = api_pb2.ElectPreferredLeadersRequest(topic=topic)
        moves: list[api_pb2.LeaderMove] = []
        for broker in self._conn.refresh([]).brokers:
            try:
                moves.extend(api_pb2_grpc.AdminStub(self._conn.channel(broker.address)).ElectPreferredLeaders(
                    request, timeout=min(5.0, self._conn.request_timeout_s)).moves)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if not error.retriable:
                    raise error from None
        return moves

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _admin(self, fn: Callable[[api_pb2_grpc.AdminStub], T]) -> T:
        """Call any broker; retry retriable errors (no metadata leader yet, a broker restarting)."""
        return self._conn.retrying(
            lambda: self._conn.any_broker(lambda channel: fn(api_pb2_grpc.AdminStub(channel))),
            deadline_s=time.monotonic() + self._conn.request_timeout_s)

