"""`Admin`: topics (create, delete, list, describe, settings, more partitions, deleting records,
leader elections), consumer groups (list, describe with lag, delete, reset offsets), the cluster's
brokers, and partition moves (reassign, status, cancel)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence, TypeVar

import grpc

from raftka.client.connection import ClusterConnection
from raftka.client.credentials import TokenProvider, token_source
from raftka.client.membership import GroupCoordinatorClient
from raftka.errors import (GroupNotEmptyError, InvalidPartitionsError, OffsetOutOfRangeError,
                           TopicExistsError, UnknownTopicError, from_rpc_error)
from raftka.wire.acl import from_binding, to_binding
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.structs import TopicPartition, from_group_partitions
from raftka.wire.tls import ClientTls

T = TypeVar("T")


@dataclass(frozen=True)
class PartitionInfo:
    """A partition as `Admin.describe_topic` reports it; `leader` is `raftka.proto.NO_LEADER` (-1)
    when the broker reporting it knows no leader."""

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


@dataclass(frozen=True)
class GroupMemberInfo:
    member_id: str
    instance_id: str
    client_id: str
    assignment: frozenset[TopicPartition]
    """The member's target assignment."""
    owned: frozenset[TopicPartition]
    """What it holds now (differs from the target while partitions move)."""
    topics: tuple[str, ...]
    pattern: str


@dataclass(frozen=True)
class PartitionLag:
    tp: TopicPartition
    committed: int | None
    log_end_offset: int
    owner: str | None
    """The member id holding the partition, if any."""

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.log_end_offset - self.committed)


@dataclass(frozen=True)
class GroupInfo:
    group_id: str
    state: str
    coordinator: int
    assignor: str
    members: tuple[GroupMemberInfo, ...]
    partitions: tuple[PartitionLag, ...]


@dataclass(frozen=True)
class BrokerStatusInfo:
    broker_id: int
    address: str
    rack: str
    role: str
    """"voter" or "learner" of the metadata log, or "" (neither)."""
    draining: bool
    reachable: bool
    """As the metadata leader sees it (or the broker that answered, when no leader did)."""
    unreachable_since_ms: int
    replicas: int
    leaders: int | None
    """Partitions it leads, as it reports itself (None when it did not answer)."""


class ConfigEntry(NamedTuple):
    name: str
    value: str
    is_default: bool
    """The value is the broker's default for the key."""


@dataclass(frozen=True)
class ClusterInfo:
    """`Admin.describe_cluster_info`: the cluster id, the metadata leader (the controller, None while
    none is known) with its Raft term, the controllers (voters of the metadata log) and learners, and
    every broker as `Admin.describe_cluster` reports it."""

    cluster_id: str
    controller_id: int | None
    controller_epoch: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    brokers: tuple[BrokerStatusInfo, ...]


ROLES = {api_pb2.VOTER: "voter", api_pb2.LEARNER: "learner", api_pb2.NOT_A_CONTROLLER: ""}

RESET_SPECS = ("earliest", "latest", "offset", "datetime", "shift")


class OffsetReset(NamedTuple):
    """One partition's line of a reset plan: the committed offset now, the offset asked for, and the
    offset the plan commits (the request clamped to the partition's log start and end)."""

    current: int | None
    requested: int
    new: int

    @property
    def clamped(self) -> bool:
        return self.new != self.requested


PHASES = {api_pb2.MOVE_PHASE_UNKNOWN: "unknown", api_pb2.CATCHING_UP: "catching-up",
          api_pb2.TRANSFERRING_LEADERSHIP: "transferring-leadership", api_pb2.REMOVING: "removing",
          api_pb2.COMPLETING: "completing", api_pb2.QUEUED: "queued"}


@dataclass(frozen=True)
class ReassignmentInfo:
    """One partition's move; the progress fields are its leader's (None when no leader answered)."""

    topic: str
    partition: int
    original: tuple[int, ...]
    target: tuple[int, ...]
    cancelled: bool
    throttle_bytes_per_s: int
    started_ms: int
    leader: int | None
    phase: str
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    entries_behind: dict[int, int]
    bytes_behind: dict[int, int]
    stalled_on: tuple[int, ...]
    """New replicas whose brokers did not answer the leader lately: the move waits for them (or a cancel)."""
    partition_bytes: int
    write_bytes_per_s: int

    @classmethod
    def from_proto(cls, status: api_pb2.ReassignmentStatus) -> ReassignmentInfo:
        return cls(status.topic, status.partition, tuple(status.original), tuple(status.target), status.cancelled,
                   status.throttle_bytes_per_s, status.started_ms, status.leader_id if status.leader_id >= 0 else None,
                   PHASES.get(status.phase, "unknown"), tuple(status.voters), tuple(status.learners),
                   {p.broker_id: p.entries_behind for p in status.learner_progress},
                   {p.broker_id: p.bytes_behind for p in status.learner_progress},
                   tuple(p.broker_id for p in status.learner_progress if not p.active), status.partition_bytes,
                   status.write_bytes_per_s)

    @property
    def throttle_too_low(self) -> bool:
        """Writes arrive faster than the throttle lets the new replicas copy: the move cannot finish."""
        return 0 < self.throttle_bytes_per_s < self.write_bytes_per_s


class BalancePlan(NamedTuple):
    moves: dict[TopicPartition, list[int]]
    """The partitions whose replicas change, with their new replicas (the first is the preferred leader)."""
    placement_offset: int
    replicas_moved: int
    bytes_moved: int
    brokers: dict[int, tuple[int, int, int, int]]
    """Per broker: replicas before, after; preferred leaderships before, after."""


class Reassignments(NamedTuple):
    placement_offset: int
    """Pass it with a plan made now, so the plan is refused if placement changes meanwhile."""
    moves: list[ReassignmentInfo]


@dataclass(frozen=True)
class AclEntry:
    """An ACL as the broker stores it, in the CLI's words: `resource` topic, group or cluster; `pattern`
    literal or prefixed; `operation` read, write, create, delete, alter, describe, cluster-admin or
    all; `permission` allow or deny. `principal` is "User:<name>" or "*"."""

    principal: str
    resource: str
    name: str
    operation: str
    permission: str = "allow"
    pattern: str = "literal"

    def to_proto(self) -> api_pb2.AclBinding:
        try:
            return to_binding(self.principal, self.resource, self.name, self.pattern, self.operation, self.permission)
        except ValueError as exc:
            raise ValueError(f"bad ACL {self}: {exc}") from None

    @classmethod
    def from_proto(cls, binding: api_pb2.AclBinding) -> AclEntry:
        principal, resource, name, pattern, operation, permission = from_binding(binding)
        return cls(principal, resource, name, operation, permission, pattern)


class Admin:
    """Topic administration. Errors are the typed `raftka.errors` classes (TopicExistsError, ...)."""

    def __init__(self, bootstrap: str | Sequence[str], *, request_timeout_ms: int = 30_000,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, tls_server_name: str | None = None, token: str | None = None,
                 token_file: str | Path | None = None, token_provider: TokenProvider | None = None,
                 client_id: str = "") -> None:
        """`tls_ca` (a PEM bundle) turns TLS on and verifies the brokers; `tls_cert` and `tls_key` present
        a client certificate (brokers require one by default); `tls_server_name` is the name to verify
        instead of the address's host. `token`, `token_file` or `token_provider`: the bearer token calls
        carry (`raftka.client.credentials`). `client_id`: the client id every call carries (quotas may
        be set per client id). Producer and Consumer take the same eight."""
        self._conn = ClusterConnection(bootstrap, request_timeout_s=request_timeout_ms / 1000,
                                       tls=ClientTls.of(tls_ca, tls_cert, tls_key, tls_server_name),
                                       token=token_source(token, token_file, token_provider), client_id=client_id)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int | None = None,
                     config: Mapping[str, str | int] | None = None, *, exist_ok: bool = False) -> TopicInfo:
        """Create a topic. `replication_factor` None means the cluster default, min(3, brokers);
        counts below 1 are refused. With `exist_ok`, a topic of that name that already exists is
        described and returned as it is (its partitions and settings are not compared)."""
        if partitions < 1:
            raise ValueError(f"a topic needs at least 1 partition, not {partitions}")
        if replication_factor is not None and replication_factor < 1:
            raise ValueError(f"replication factor must be at least 1 (or None for the cluster default), "
                             f"not {replication_factor}")
        request = api_pb2.CreateTopicRequest(name=name, partitions=partitions,
                                             replication_factor=replication_factor or 0,
                                             config={k: str(v) for k, v in (config or {}).items()})
        try:
            response = self._admin(lambda stub: stub.CreateTopic(request, timeout=self._conn.request_timeout_s))
        except TopicExistsError:
            if not exist_ok:
                raise
            return self.describe_topic(name)
        return TopicInfo.from_proto(response.topic)

    def delete_topic(self, name: str) -> None:
        request = api_pb2.DeleteTopicRequest(name=name)
        self._admin(lambda stub: stub.DeleteTopic(request, timeout=self._conn.request_timeout_s))

    def list_topics(self, *, include_internal: bool = False) -> list[TopicInfo]:
        """Every topic, each as `describe_topic` tells it (leaders, in-sync replicas and offsets as
        each partition's leader sees them), so a listing never calls a healthy partition
        under-replicated. A topic deleted while the listing runs is left out."""
        request = api_pb2.ListTopicsRequest(include_internal=include_internal)
        response = self._admin(lambda stub: stub.ListTopics(request, timeout=self._conn.request_timeout_s))
        topics = []
        for topic in response.topics:
            try:
                topics.append(self.describe_topic(topic.name))
            except UnknownTopicError:
                continue
        return topics

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

    def alter_topic_config(self, name: str, changes: Mapping[str, str | int] | None = None,
                           reset: Sequence[str] = ()) -> list[ConfigEntry]:
        """Set the `changes` keys and return the `reset` keys to their defaults, all or none (an
        unknown key or a bad value raises InvalidConfigError and changes nothing); every replica
        applies retention and segment settings at once. Returns every setting after the change."""
        request = api_pb2.AlterTopicConfigRequest(name=name, set={k: str(v) for k, v in (changes or {}).items()},
                                                  reset=list(reset))
        response = self._admin(lambda stub: stub.AlterTopicConfig(request, timeout=self._conn.request_timeout_s))
        return [ConfigEntry(e.name, e.value, e.is_default) for e in response.config]

    def describe_topic_config(self, name: str) -> list[ConfigEntry]:
        request = api_pb2.DescribeTopicConfigRequest(name=name)
        response = self._admin(lambda stub: stub.DescribeTopicConfig(request, timeout=self._conn.request_timeout_s))
        return [ConfigEntry(e.name, e.value, e.is_default) for e in response.config]

    def create_partitions(self, name: str, partitions: int) -> TopicInfo:
        """Raise the topic's partition count to `partitions` (InvalidPartitionsError unless that is more
        than it has). Producers see the new count when they next refresh the topic's metadata
        (`Producer(metadata_max_age_ms=...)`); from then on a key may map to another partition
        (murmur2(key) mod the count, as in Kafka), so per-key order holds only among records written
        under one count. When a retry follows a lost answer and finds the count already raised to
        `partitions`, the call succeeded: it returns the topic."""
        request = api_pb2.CreatePartitionsRequest(name=name, partitions=partitions)
        retried = False

        def attempt(stub: api_pb2_grpc.AdminStub) -> api_pb2.CreatePartitionsResponse:
            nonlocal retried
            try:
                return stub.CreatePartitions(request, timeout=self._conn.request_timeout_s)
            except grpc.RpcError as exc:
                retried = retried or from_rpc_error(exc).retriable
                raise
        try:
            self._admin(attempt)
        except InvalidPartitionsError:
            if not retried or len(self.describe_topic(name).partitions) != partitions:
                raise
        self._conn.topic(name, refresh=True)
        return self.describe_topic(name)

    def delete_records(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """Delete each partition's records below its offset (at most its high watermark: else
        OffsetOutOfRangeError, and negative offsets InvalidRequestError); returns each partition's log
        start offset after it. A consumer whose position is below it gets OFFSET_OUT_OF_RANGE and
        applies its auto_offset_reset. Partitions are done one by one: an error leaves the ones before
        it done."""
        def delete(partition: int, offset: int) -> int:
            request = api_pb2.DeleteRecordsRequest(topic=topic, partition=partition, offset=offset)
            return self._admin(lambda stub: stub.DeleteRecords(request, timeout=self._conn.request_timeout_s)
                               ).low_watermark

        return {partition: delete(partition, offset) for partition, offset in sorted(offsets.items())}

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

    def list_groups(self) -> list[api_pb2.GroupSummary]:
        """Every group with members or committed offsets (each broker reports the groups it coordinates)."""
        groups: dict[str, api_pb2.GroupSummary] = {}
        for broker in self._conn.refresh([]).brokers:
            try:
                answer = api_pb2_grpc.GroupsStub(self._conn.channel(broker.address)).ListGroups(
                    api_pb2.ListGroupsRequest(), timeout=min(5.0, self._conn.request_timeout_s))
            except grpc.RpcError as exc:
                if not from_rpc_error(exc).retriable:
                    raise from_rpc_error(exc) from None
                continue
            groups.update((g.group_id, g) for g in answer.groups)
        return [groups[g] for g in sorted(groups)]

    def describe_group(self, group_id: str) -> GroupInfo:
        """Members and their assignments, and per partition the committed offset, the log end offset
        and the lag (partitions of subscribed topics, and any with a committed offset)."""
        response = GroupCoordinatorClient(self._conn, group_id).call(
            lambda stub: stub.DescribeGroup, api_pb2.DescribeGroupRequest(group_id=group_id))
        members = tuple(GroupMemberInfo(m.member_id, m.instance_id, m.client_id, from_group_partitions(m.assignment),
                                        from_group_partitions(m.owned), tuple(m.topics), m.pattern)
                        for m in response.members)
        committed = {TopicPartition(o.topic, o.partition): o.offset for o in response.offsets}
        owners = {tp: m.member_id for m in members for tp in m.owned}
        tps = set(committed) | set(owners) | {tp for m in members for tp in m.assignment}
        partitions = tuple(PartitionLag(tp, committed.get(tp), self._conn.list_offset(tp.topic, tp.partition,
                                                                                        api_pb2.LATEST),
                                        owners.get(tp)) for tp in sorted(tps))
        summary = response.summary
        return GroupInfo(group_id, summary.state, summary.coordinator_id, response.assignor, members, partitions)

    def delete_group(self, group_id: str) -> None:
        """Delete a group's offsets; refused (GroupNotEmptyError) while it has members."""
        GroupCoordinatorClient(self._conn, group_id).call(
            lambda stub: stub.DeleteGroup, api_pb2.DeleteGroupRequest(group_id=group_id))

    def reset_offsets(self, group_id: str, topic: str, spec: str, value: int | None = None, *,
                      execute: bool = False) -> dict[TopicPartition, OffsetReset]:
        """Plan (and with `execute`, commit) new committed offsets for every partition of `topic`:
        `spec` is earliest, latest, offset (value = the offset), datetime (value = ms since the
        epoch; the first offset at or after it) or shift (value = records to move, + or -). Targets
        are clamped to each partition's range (`OffsetReset.clamped` says where). Executing is refused
        while the group has members, as in Kafka."""
        if spec not in RESET_SPECS:
            raise ValueError(f"reset spec must be one of {', '.join(RESET_SPECS)}, not {spec!r}")
        if spec in ("offset", "datetime", "shift") and value is None:
            raise ValueError(f"reset to {spec} needs a value")
        coordinator = GroupCoordinatorClient(self._conn, group_id)
        tps = [TopicPartition(topic, p) for p in range(self._conn.partition_count(topic))]
        current = {tp: o.offset for tp, o in coordinator.committed(tps).items()}
        plan: dict[TopicPartition, OffsetReset] = {}
        for tp in tps:
            earliest = self._conn.list_offset(topic, tp.partition, api_pb2.EARLIEST)
            latest = self._conn.list_offset(topic, tp.partition, api_pb2.LATEST)
            if spec == "earliest":
                target = earliest
            elif spec == "latest":
                target = latest
            elif spec == "offset":
                target = value  # type: ignore[assignment]  # an int: checked above for spec offset
            elif spec == "datetime":
                found = self._conn.list_offset(topic, tp.partition, api_pb2.TIMESTAMP, value or 0)
                target = latest if found < 0 else found
            else:
                base = current.get(tp)
                if base is None:
                    raise OffsetOutOfRangeError(f"{tp} has no committed offset to shift")
                target = base + (value or 0)
            plan[tp] = OffsetReset(current.get(tp), target, min(max(target, earliest), latest))
        if execute:
            try:
                coordinator.commit({tp: (reset.new, "") for tp, reset in plan.items()})
            except GroupNotEmptyError as exc:
                raise GroupNotEmptyError(f"cannot reset offsets of group {group_id!r}: {exc.message}; stop its "
                                         "consumers first") from None
        return plan

    def describe_cluster(self) -> list[BrokerStatusInfo]:
        """Every broker: address, rack, role in the metadata log, draining, reachability (as the
        metadata leader sees it), replicas placed on it and partitions it leads (its own report:
        every broker is asked)."""
        return list(self.describe_cluster_info().brokers)

    def describe_cluster_info(self) -> ClusterInfo:
        """The cluster id, controller (metadata leader), controllers and learners, and every broker
        (`describe_cluster`), as the metadata leader answers (the first broker that answered when the
        leader did not)."""
        request = api_pb2.DescribeClusterRequest()
        answers: dict[int, api_pb2.DescribeClusterResponse] = {}
        first = self._admin(lambda stub: stub.DescribeCluster(request, timeout=self._conn.request_timeout_s))
        answers[first.answered_by] = first
        for broker in first.brokers:
            if broker.broker.id in answers or not broker.broker.address:
                continue
            try:
                answer = api_pb2_grpc.AdminStub(self._conn.channel(broker.broker.address)).DescribeCluster(
                    request, timeout=min(5.0, self._conn.request_timeout_s))
            except grpc.RpcError:
                continue
            answers[answer.answered_by] = answer
        view = answers.get(first.controller_id, first)
        own = {b: next((s.leaders for s in a.brokers if s.broker.id == b), -1) for b, a in answers.items()}
        brokers = tuple(BrokerStatusInfo(s.broker.id, s.broker.address, s.broker.rack, ROLES[s.role], s.draining,
                                         s.reachable, s.unreachable_since_ms, s.replicas,
                                         own[s.broker.id] if own.get(s.broker.id, -1) >= 0 else None)
                        for s in view.brokers)
        return ClusterInfo(view.cluster_id, view.controller_id if view.controller_id > 0 else None,
                           view.controller_epoch, tuple(view.controller_voters), tuple(view.controller_learners),
                           brokers)

    def add_controller(self, broker_id: int) -> tuple[list[int], list[int]]:
        """Make a caught-up learner of the metadata log a voter; returns (voters, learners)."""
        return self._change_controllers(api_pb2.ChangeControllersRequest(add=broker_id))

    def remove_controller(self, broker_id: int) -> tuple[list[int], list[int]]:
        """Make a voter of the metadata log a learner (its leadership moved away first)."""
        return self._change_controllers(api_pb2.ChangeControllersRequest(remove=broker_id))

    def _change_controllers(self, request: api_pb2.ChangeControllersRequest) -> tuple[list[int], list[int]]:
        response = self._admin(lambda stub: stub.ChangeControllers(request, timeout=self._conn.request_timeout_s))
        return list(response.voters), list(response.learners)

    def decommission_broker(self, broker_id: int, *, draining: bool = True,
                            throttle_bytes_per_s: int = 0) -> dict[TopicPartition, list[int]]:
        """Decommission a broker: no new replicas go to it, its replicas move to the others (the moves
        returned; follow them with `list_reassignments`), and once it holds nothing it leaves the
        cluster (`describe_cluster` no longer lists it). Refused up front, with nothing moved, when
        the others cannot hold every partition, or it is a controller. `draining=False`
        recommissions it (moves already made stay)."""
        request = api_pb2.DrainBrokerRequest(broker_id=broker_id, draining=draining,
                                             throttle_bytes_per_s=throttle_bytes_per_s)
        response = self._admin(lambda stub: stub.DrainBroker(request, timeout=self._conn.request_timeout_s))
        return {TopicPartition(m.topic, m.partition): list(m.replicas) for m in response.moves}

    def reassign_partitions(self, moves: Mapping[TopicPartition, Sequence[int]], *, throttle_bytes_per_s: int = 0,
                            expected_placement_offset: int | None = None) -> int:
        """Start moving each partition to its new replicas (the first is the preferred leader): all of
        them, or none (a partition moving already, an unregistered broker, a stale plan: a typed
        error). The partitions' leaders carry the moves out; `list_reassignments` follows them.
        Returns the metadata's placement offset after the moves were recorded."""
        request = api_pb2.ReassignPartitionsRequest(
            partitions=[api_pb2.PartitionReplicas(topic=tp.topic, partition=tp.partition, replicas=list(replicas))
                        for tp, replicas in moves.items()],
            throttle_bytes_per_s=throttle_bytes_per_s,
            has_expected_placement_offset=expected_placement_offset is not None,
            expected_placement_offset=expected_placement_offset or 0)
        return self._admin(lambda stub: stub.ReassignPartitions(
            request, timeout=self._conn.request_timeout_s)).placement_offset

    def cancel_reassignments(self, partitions: Sequence[TopicPartition] = ()) -> list[TopicPartition]:
        """Cancel the unfinished moves of `partitions` (all when empty): each goes back to its original
        replicas. Returns the partitions whose moves were cancelled."""
        request = api_pb2.CancelReassignmentsRequest(partitions=[
            api_pb2.PartitionReplicas(topic=tp.topic, partition=tp.partition) for tp in partitions])
        response = self._admin(lambda stub: stub.CancelReassignments(request, timeout=self._conn.request_timeout_s))
        return [TopicPartition(item.topic, item.partition) for item in response.cancelled]

    def list_reassignments(self) -> Reassignments:
        """The moves in progress, each with the progress its partition's leader reports (every broker
        is asked; a partition whose leader did not answer has `leader_id` -1)."""
        request = api_pb2.ListReassignmentsRequest()
        first = self._admin(lambda stub: stub.ListReassignments(request, timeout=self._conn.request_timeout_s))
        found = {(r.topic, r.partition): r for r in first.reassignments}
        if found:
            for broker in self._conn.refresh().brokers:
                if broker.id == first.answered_by or not broker.address:
                    continue
                try:
                    answer = api_pb2_grpc.AdminStub(self._conn.channel(broker.address)).ListReassignments(
                        request, timeout=min(5.0, self._conn.request_timeout_s))
                except grpc.RpcError:
                    continue
                for status in answer.reassignments:
                    key = (status.topic, status.partition)
                    if key in found and status.leader_id >= 0:
                        found[key] = status
        return Reassignments(first.placement_offset, [ReassignmentInfo.from_proto(r) for _, r in sorted(found.items())])

    def plan_balance(self) -> BalancePlan:
        """A plan balancing replicas and preferred leaders over the registered brokers (draining ones
        end with nothing), made by a broker from its metadata; nothing moves until it is executed
        with `reassign_partitions(plan.moves, expected_placement_offset=plan.placement_offset)`."""
        response = self._admin(lambda stub: stub.PlanBalance(api_pb2.PlanBalanceRequest(),
                                                              timeout=self._conn.request_timeout_s))
        return BalancePlan({TopicPartition(p.topic, p.partition): list(p.replicas) for p in response.partitions},
                           response.placement_offset, response.replicas_moved, response.bytes_moved,
                           {b.broker_id: (b.replicas_before, b.replicas_after, b.leaders_before, b.leaders_after)
                            for b in response.brokers})

    def add_acls(self, acls: Sequence[AclEntry]) -> None:
        """Record ACLs in the metadata log (those that exist already change nothing)."""
        request = api_pb2.CreateAclsRequest(acls=[acl.to_proto() for acl in acls])
        self._admin(lambda stub: stub.CreateAcls(request, timeout=self._conn.request_timeout_s))

    def list_acls(self, principal: str = "") -> list[AclEntry]:
        """Every ACL, or those of `principal` exactly."""
        request = api_pb2.ListAclsRequest(principal=principal)
        response = self._admin(lambda stub: stub.ListAcls(request, timeout=self._conn.request_timeout_s))
        return [AclEntry.from_proto(binding) for binding in response.acls]

    def remove_acls(self, acls: Sequence[AclEntry]) -> list[AclEntry]:
        """Remove ACLs; returns those that existed."""
        request = api_pb2.DeleteAclsRequest(acls=[acl.to_proto() for acl in acls])
        response = self._admin(lambda stub: stub.DeleteAcls(request, timeout=self._conn.request_timeout_s))
        return [AclEntry.from_proto(binding) for binding in response.deleted]

    def set_quota(self, principal: str = "", *, client_id: str = "", produce_bytes_per_s: int = 0,
                  fetch_bytes_per_s: int = 0, requests_per_s: int = 0) -> None:
        """Set the quota of an entity: a principal (`User:NAME`, or "*": the default of principals
        without one), a client id (a name, or "*": the default of client ids without one), or both
        (api.proto's Quota says which applies to a caller). A rate of 0 is not limited by this entity."""
        request = api_pb2.SetQuotaRequest(quota=api_pb2.Quota(
            principal=principal, client_id=client_id, produce_bytes_per_s=produce_bytes_per_s,
            fetch_bytes_per_s=fetch_bytes_per_s, requests_per_s=requests_per_s))
        self._admin(lambda stub: stub.SetQuota(request, timeout=self._conn.request_timeout_s))

    def list_quotas(self) -> list[api_pb2.Quota]:
        """Every quota, by entity (principal, then client id; "" where the entity has none)."""
        request = api_pb2.ListQuotasRequest()
        return list(self._admin(lambda stub: stub.ListQuotas(request, timeout=self._conn.request_timeout_s)).quotas)

    def remove_quota(self, principal: str = "", *, client_id: str = "") -> None:
        """Remove the quota of exactly this entity (as given to `set_quota`)."""
        request = api_pb2.RemoveQuotaRequest(principal=principal, client_id=client_id)
        self._admin(lambda stub: stub.RemoveQuota(request, timeout=self._conn.request_timeout_s))

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

