"""The group coordinator: serves a group's membership and committed offsets from the replica of its partition.

The coordinator of group G is the leader of partition `murmur2(G) mod N` of `__consumer_offsets`;
its state is that partition's `GroupLog` (every replica applies it, so a new leader has it all) plus
soft state only the leader keeps: when each member was last heard from. The membership rules — joins,
the cooperative revoke → release → grant protocol, leaves, expiry, commit ownership — are
`GroupRules` (cluster/group_rules.py, which states their invariants); this module is their
plumbing: it finds the group's partition and checks that this broker leads it, loads the group's
rules from the log in each leadership term, turns requests and answers to and from the API's
messages, and appends every change to the partition's log.

The coordinator sees Raft only through `GroupReplica`: whether this broker's replica of a partition
leads and in which term, a read barrier, and appending a command.

Invariants:
- a grant is persisted (committed to the partition's log) before it is sent, so a new coordinator
  honours it;
- a request acts only on the group object of the current term: objects of an earlier term, or of a
  deleted group, are retired (`dead`) and every request holding one fails with NOT_COORDINATOR;
- a group is loaded only after a read barrier in the term it is loaded for, so it holds every change
  the coordinators of earlier terms persisted;
- requests about one group are served one at a time (its lock), each from check to persist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from raftka.cluster.group_log import (OFFSETS_TOPIC, CommittedOffset, GroupLog, delete_command, forget_command,
                                      members_command, offsets_command)
from raftka.cluster.group_rules import MAX_GROUP_ID_LENGTH, GroupRules, Heartbeat, OffsetCommit, Topic
from raftka.cluster.metadata import MetadataState
from raftka.cluster.partitions import PartitionManager
from raftka.cluster.replica import RaftReplica
from raftka.cluster.state_machine import StateMachineStats
from raftka.errors import GroupNotEmptyError, InvalidRequestError, NotCoordinatorError, RaftkaError, UnknownGroupError
from raftka.proto import api_pb2
from raftka.replication.raft import Role
from raftka.wire.batch import encode_batch
from raftka.wire.partitioning import murmur2
from raftka.wire.structs import TopicPartition, as_group_partitions, from_group_partitions

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.25
PURGE_EVERY_SWEEPS = 20
"""Offsets of deleted topics are removed within about this many sweeps (5 s)."""


def group_partition(group_id: str, partitions: int) -> int:
    return (murmur2(group_id.encode()) & 0x7FFFFFFF) % partitions


class GroupReplica(Protocol):
    """This broker's replica of one `__consumer_offsets` partition: all the coordinator needs of Raft."""

    @property
    def leader_id(self) -> int:
        """The partition's leader as this replica knows it (-1: none right now)."""

    def leading_term(self) -> int | None:
        """The term in which this replica leads the partition, or None when it does not lead."""

    async def read_barrier(self, timeout_s: float) -> None:
        """Return once this replica has applied everything committed before the call."""

    async def append_command(self, key: str, command: bytes, timeout_s: float) -> None:
        """Append one command to the partition's log and return once it is committed."""


@dataclass(frozen=True)
class RaftGroupReplica:
    """`GroupReplica` over a partition replica of this broker."""

    replica: RaftReplica

    @property
    def leader_id(self) -> int:
        return self.replica.leader_id

    def leading_term(self) -> int | None:
        node = self.replica.node
        return node.term if node.role == Role.LEADER else None

    async def read_barrier(self, timeout_s: float) -> None:
        await self.replica.read_barrier(timeout_s)

    async def append_command(self, key: str, command: bytes, timeout_s: float) -> None:
        batch = encode_batch([(key.encode(), command, (), int(time.time() * 1000))])
        await self.replica.append(batch, durable=True, timeout_s=timeout_s)


@dataclass
class _Group:
    """A group this broker coordinates, as loaded in one leadership term of its partition."""

    group_id: str
    partition: int
    replica: GroupReplica
    term: int
    rules: GroupRules
    persisted: bytes = b""
    """The last membership record written (or loaded): a heartbeat that changes nothing writes nothing."""
    dead: bool = False
    """Replaced (new term, deletion): a request still holding this object must not act on it."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class GroupCoordinator:
    def __init__(self, broker_id: int, metadata: MetadataState, partitions: PartitionManager, *,
                 timeout_s: float = 30.0, stats: StateMachineStats | None = None) -> None:
        self._broker_id = broker_id
        self._stats = stats or StateMachineStats()
        self._metadata = metadata
        self._partitions = partitions
        self._timeout_s = timeout_s
        self._logs: dict[int, GroupLog] = {}
        self._groups: dict[str, _Group] = {}
        partitions.attach(OFFSETS_TOPIC, self._open_log)

    def _open_log(self, partition: int) -> GroupLog:
        group_log = self._logs[partition] = GroupLog(partition, self._stats)
        return group_log

    def coordinator_of(self, group_id: str) -> tuple[int | None, tuple[int, ...]]:
        """The group's partition: the leader this broker's replica knows (-1: none right now; None:
        this broker holds no replica, so it cannot know) and the partition's replicas."""
        validate_group_id(group_id)
        record = self._metadata.get(OFFSETS_TOPIC)
        partition = group_partition(group_id, record.partitions)
        replica = self._replica(partition)
        return (None if replica is None else replica.leader_id), record.replicas[partition]

    async def heartbeat(self, request: api_pb2.GroupHeartbeatRequest) -> api_pb2.GroupHeartbeatResponse:
        group = await self._group(request.group_id)
        async with group.lock:
            self._check_term(group)
            answer = group.rules.heartbeat(Heartbeat(
                member_id=request.member_id, member_epoch=request.member_epoch, instance_id=request.instance_id,
                client_id=request.client_id, topics=tuple(request.topics), pattern=request.pattern,
                session_timeout_ms=request.session_timeout_ms, assignor=request.assignor,
                owned=from_group_partitions(request.owned), leave=request.leave), self._topics(), time.monotonic())
            await self._persist(group)
            return api_pb2.GroupHeartbeatResponse(
                member_id=answer.member_id, assignment=as_group_partitions(answer.partitions),
                group_epoch=answer.group_epoch, member_epoch=answer.member_epoch,
                heartbeat_interval_ms=answer.heartbeat_interval_ms)

    async def commit(self, request: api_pb2.CommitOffsetsRequest) -> api_pb2.CommitOffsetsResponse:
        group = await self._group(request.group_id)
        async with group.lock:
            self._check_term(group)
            now_ms = int(time.time() * 1000)
            results = group.rules.commit(
                request.member_id, [OffsetCommit(item.topic, item.partition, item.offset, item.metadata)
                                    for item in request.offsets], self._topics(), now_ms)
            answers, commits = [], []
            for item, result in zip(request.offsets, results):
                answer = api_pb2.CommittedOffset(topic=item.topic, partition=item.partition, offset=item.offset,
                                                 metadata=item.metadata, commit_time_ms=now_ms)
                if isinstance(result, RaftkaError):
                    answer.error.CopyFrom(result.to_proto())
                else:
                    commits.append((TopicPartition(item.topic, item.partition), result))
                answers.append(answer)
            if commits:
                await self._append(group, offsets_command(group.group_id, commits))
            return api_pb2.CommitOffsetsResponse(offsets=answers)

    async def fetch_offsets(self, request: api_pb2.FetchOffsetsRequest) -> api_pb2.FetchOffsetsResponse:
        group = await self._group(request.group_id, cache=False)
        committed = self._committed(group)
        wanted = sorted(from_group_partitions(request.partitions)) if request.partitions else sorted(committed)
        answers = []
        for topic, partition in wanted:
            found = committed.get(TopicPartition(topic, partition))
            answers.append(api_pb2.CommittedOffset(topic=topic, partition=partition, offset=-1) if found is None
                           else api_pb2.CommittedOffset(topic=topic, partition=partition, offset=found.offset,
                                                        metadata=found.metadata,
                                                        commit_time_ms=found.commit_time_ms))
        return api_pb2.FetchOffsetsResponse(offsets=answers)

    async def describe(self, group_id: str) -> api_pb2.DescribeGroupResponse:
        group = await self._group(group_id, cache=False)
        committed = self._committed(group)
        rules = group.rules
        if not rules.members and not committed and group_id not in self._log_of(group).groups:
            raise UnknownGroupError(f"unknown group {group_id!r}")
        members = [api_pb2.GroupMember(member_id=m.member_id, instance_id=m.instance_id, client_id=m.client_id,
                                       assignment=as_group_partitions(m.target), owned=as_group_partitions(m.held),
                                       topics=m.topics, pattern=m.pattern)
                   for m in sorted(rules.members.values(), key=lambda m: m.member_id)]
        offsets = [api_pb2.CommittedOffset(topic=t, partition=p, offset=c.offset, metadata=c.metadata,
                                           commit_time_ms=c.commit_time_ms) for (t, p), c in sorted(committed.items())]
        return api_pb2.DescribeGroupResponse(summary=self._summary(group), assignor=rules.assignor,
                                             group_epoch=rules.epoch, members=members, offsets=offsets)

    async def delete(self, group_id: str) -> None:
        group = await self._group(group_id, cache=False)
        async with group.lock:
            self._check_term(group)
            group.rules.expire(time.monotonic())
            if group.rules.members:
                raise GroupNotEmptyError(f"group {group_id!r} has {len(group.rules.members)} member(s)")
            if group_id not in self._log_of(group).groups:
                raise UnknownGroupError(f"unknown group {group_id!r}")
            await self._append(group, delete_command(group_id))
            self._forget(group)

    def list_groups(self) -> list[api_pb2.GroupSummary]:
        """Groups of the partitions this broker leads (each broker answers for its own)."""
        summaries = []
        for partition, group_log in sorted(self._logs.items()):
            replica = self._replica(partition)
            term = None if replica is None else replica.leading_term()
            if term is None:
                continue
            for group_id in sorted(set(group_log.groups) | {g for g, a in self._groups.items()
                                                             if a.partition == partition}):
                active = self._groups.get(group_id)
                if active is not None and active.term == term:
                    summaries.append(self._summary(active))
                elif (record := group_log.groups.get(group_id)) is not None:
                    summaries.append(api_pb2.GroupSummary(
                        group_id=group_id, state="empty" if not record.members else "stable",
                        members=len(record.members), coordinator_id=self._broker_id))
        return summaries

    def committed_offsets(self) -> dict[str, dict[TopicPartition, int]]:
        """The committed offsets of every group this broker coordinates (of the partitions it leads),
        of topics that still exist: what its lag metrics are computed from."""
        live = {t.name: t.topic_id for t in self._metadata.topics()}
        offsets = {}
        for partition, group_log in self._logs.items():
            replica = self._replica(partition)
            if replica is None or replica.leading_term() is None:
                continue
            for group_id, record in group_log.groups.items():
                offsets[group_id] = {tp: c.offset for tp, c in record.offsets.items() if live.get(tp[0]) == c.topic_id}
        return offsets

    async def run(self) -> None:
        """Expire silent members, forget groups whose partition this broker no longer leads, and now
        and then clean up offsets of deleted topics."""
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            sweeps += 1
            if sweeps % PURGE_EVERY_SWEEPS == 0:
                await self._purge_deleted_topics()
            now = time.monotonic()
            for group_id, group in list(self._groups.items()):
                if group.replica.leading_term() != group.term:
                    self._forget(group)
                    continue
                if group.lock.locked() or not group.rules.expired(now):
                    continue
                async with group.lock:
                    try:
                        self._check_term(group)
                        group.rules.expire(now)
                        group.rules.retarget(self._topics())
                        await self._persist(group)
                    except RaftkaError as exc:
                        log.info("group sweep failed group=%s: %s", group_id, exc)

    async def _purge_deleted_topics(self) -> None:
        """Remove committed offsets of topics that no longer exist (or exist anew under another id)
        from the groups this broker coordinates; a group left with neither offsets nor members goes."""
        live = {t.name: t.topic_id for t in self._metadata.topics()}
        for partition, group_log in list(self._logs.items()):
            replica = self._replica(partition)
            if replica is None or replica.leading_term() is None:
                continue
            for group_id, record in list(group_log.groups.items()):
                stale = [(tp, c.topic_id) for tp, c in record.offsets.items() if live.get(tp[0]) != c.topic_id]
                if not stale:
                    continue
                try:
                    group = await self._group(group_id, cache=False)
                    async with group.lock:
                        self._check_term(group)
                        if group.rules.members or len(stale) < len(record.offsets):
                            await self._append(group, forget_command(group_id, stale))
                        else:
                            await self._append(group, delete_command(group_id))
                            self._forget(group)
                    log.info("offsets of deleted topics removed group=%s partitions=%d", group_id, len(stale))
                except RaftkaError as exc:
                    log.info("offset clean-up deferred group=%s: %s", group_id, exc)

    def _replica(self, partition: int) -> GroupReplica | None:
        """This broker's replica of `__consumer_offsets` partition `partition`, if it holds one."""
        replica = self._partitions.find(OFFSETS_TOPIC, partition)
        return None if replica is None else RaftGroupReplica(replica)

    def _topics(self) -> dict[str, Topic]:
        """The topics group members may read and commit: every existing topic but the internal ones."""
        return {t.name: Topic(t.partitions, t.topic_id) for t in self._metadata.topics() if not t.internal}

    async def _group(self, group_id: str, *, cache: bool = True) -> _Group:
        """The group as of this leadership term (loaded after a read barrier). Reads of groups not
        loaded yet (`cache=False`) do not keep the object, so asking about arbitrary ids cannot grow
        the cache."""
        validate_group_id(group_id)
        record = self._metadata.find(OFFSETS_TOPIC)
        if record is None:
            raise NotCoordinatorError(f"{OFFSETS_TOPIC} does not exist yet; find the coordinator first")
        partition = group_partition(group_id, record.partitions)
        replica = self._replica(partition)
        term = None if replica is None else replica.leading_term()
        if replica is None or term is None:
            leader = -1 if replica is None else replica.leader_id
            raise NotCoordinatorError(f"broker {self._broker_id} does not coordinate group {group_id!r}"
                                      + (f"; broker {leader} does" if leader > 0 else ""))
        group = self._groups.get(group_id)
        if group is not None and group.term == term:
            return group
        await replica.read_barrier(self._timeout_s)
        if replica.leading_term() != term:
            raise NotCoordinatorError(f"broker {self._broker_id} lost the coordination of group {group_id!r}")
        group = self._groups.get(group_id)
        if group is not None and group.term == term:
            return group
        rules = GroupRules.restore(group_id, self._logs[partition].groups.get(group_id), now=time.monotonic())
        group = _Group(group_id, partition, replica, term, rules)
        group.persisted = self._members_blob(group)
        if cache:
            self._groups[group_id] = group
        log.info("group loaded group=%s term=%d members=%d", group_id, term, len(rules.members))
        return group

    def _check_term(self, group: _Group) -> None:
        if group.dead or group.replica.leading_term() != group.term:
            self._forget(group)
            raise NotCoordinatorError(f"broker {self._broker_id} no longer coordinates group {group.group_id!r}")

    def _forget(self, group: _Group) -> None:
        """Retire this object (only this one: a newer object of the same group may be cached)."""
        group.dead = True
        if self._groups.get(group.group_id) is group:
            del self._groups[group.group_id]

    def _committed(self, group: _Group) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of topics that still exist (as the same topic: same id)."""
        saved = self._log_of(group).groups.get(group.group_id)
        if saved is None:
            return {}
        live = {t.name: t.topic_id for t in self._metadata.topics()}
        return {tp: c for tp, c in saved.offsets.items() if live.get(tp[0]) == c.topic_id}

    def _summary(self, group: _Group) -> api_pb2.GroupSummary:
        return api_pb2.GroupSummary(group_id=group.group_id, state=group.rules.state,
                                    members=len(group.rules.members), coordinator_id=self._broker_id)

    def _log_of(self, group: _Group) -> GroupLog:
        return self._logs[group.partition]

    @staticmethod
    def _members_blob(group: _Group) -> bytes:
        rules = group.rules
        return members_command(group.group_id, rules.epoch, rules.assignor,
                               sorted(rules.members.values(), key=lambda m: m.member_id))

    async def _persist(self, group: _Group) -> None:
        """Write the membership if it changed: grants must be durable before they are sent."""
        blob = self._members_blob(group)
        if blob != group.persisted:
            await self._append(group, blob)
            group.persisted = blob

    async def _append(self, group: _Group, command: bytes) -> None:
        await group.replica.append_command(group.group_id, command, self._timeout_s)


def validate_group_id(group_id: str) -> None:
    if not group_id or len(group_id) > MAX_GROUP_ID_LENGTH or not group_id.isprintable():
        raise InvalidRequestError(f"group id must be 1 to {MAX_GROUP_ID_LENGTH} printable characters, "
                                  f"not {group_id!r}")
