"""The group coordinator: membership, cooperative assignment and committed offsets of consumer groups.

The coordinator of group G is the leader of partition `murmur2(G) mod N` of `__consumer_offsets`;
its state is that partition's `GroupLog` (every replica applies it, so a new leader has it all) plus
soft state only the leader keeps: when each member was last heard from.

Assignment is incremental and cooperative. On every heartbeat the coordinator recomputes the
group's target assignment (sticky by default, cluster/assignors.py) and grants the member the
partitions of its target that no other member *holds*. A member holds what it was granted and what
it still reports owning; it releases a partition by reporting, after applying an assignment without
it, that it no longer owns it. So a partition moves in two steps — revoke, then assign — and members
whose partitions do not move never stop consuming.

Invariants:
- no partition is held by two members, and a member owns only what it holds (a member takes only
  what it was granted; a grant is persisted before it is sent, so a new coordinator honours it);
- a member's holdings shrink only once it reports having applied its latest assignment
  (`member_epoch`), so a grant still in flight is never handed to someone else;
- a member commits offsets only for partitions it holds; without a member id (manual assignment,
  offset resets) only while the group has no members;
- a member not heard from for its session timeout is removed and its partitions freed; a static
  member (instance id) that leaves keeps its partitions reserved until then, so a restarting pod
  gets them back without a rebalance; a second live member with the same instance id is refused;
- member ids are chosen by the members, so a join retried after a lost response is the same member;
- a request acts only on the group object of the current term: objects of an earlier term, or of a
  deleted group, are retired (`dead`) and every request holding one fails with NOT_COORDINATOR.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from raftka.cluster.assignors import ASSIGNORS, MemberSpec, assign
from raftka.cluster.group_log import (OFFSETS_TOPIC, CommittedOffset, GroupLog, MemberRecord, delete_command,
                                      forget_command, members_command, offsets_command)
from raftka.cluster.metadata import MetadataState
from raftka.cluster.partitions import PartitionManager
from raftka.cluster.replica import RaftReplica
from raftka.cluster.state_machine import StateMachineStats
from raftka.errors import (GroupNotEmptyError, InvalidRequestError, NotCoordinatorError, NotPartitionOwnerError,
                           RaftkaError, UnknownGroupError, UnknownMemberIdError, UnknownPartitionError,
                           UnknownTopicError, UnreleasedInstanceIdError)
from raftka.proto import api_pb2
from raftka.replication.raft import Role
from raftka.wire.batch import encode_batch
from raftka.wire.partitioning import murmur2
from raftka.wire.structs import TopicPartition, as_group_partitions, from_group_partitions

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 45_000
MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 300_000
MAX_HEARTBEAT_INTERVAL_MS = 1_000
"""A member learns of a rebalance at its next heartbeat, so this bounds the first step of every move."""
RECONCILING_HEARTBEAT_INTERVAL_MS = 200
"""While partitions move, members heartbeat this often: each step of a move (revoke, release,
grant) is learnt at a heartbeat, and the coordinator cannot push."""
MAX_GROUP_ID_LENGTH = 255
MAX_COMMIT_METADATA = 4096
SWEEP_INTERVAL_S = 0.25
PURGE_EVERY_SWEEPS = 20
"""Offsets of deleted topics are removed within about this many sweeps (5 s)."""


def group_partition(group_id: str, partitions: int) -> int:
    return (murmur2(group_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class _Group:
    """A group this broker coordinates, as loaded in one leadership term of its partition."""

    group_id: str
    replica: RaftReplica
    term: int
    members: dict[str, MemberRecord]
    assignor: str
    epoch: int
    last_seen: dict[str, float] = field(default_factory=dict)
    persisted: bytes = b""
    targeted_for: object = None
    """The inputs (members, subscriptions, topics) the current targets were computed from."""
    dead: bool = False
    """Replaced (new term, deletion): a request still holding this object must not act on it."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state(self) -> str:
        if not self.members:
            return "empty"
        return "stable" if all(m.held == m.target for m in self.members.values()) else "reconciling"


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
        replica = self._partitions.find(OFFSETS_TOPIC, partition)
        return (None if replica is None else replica.leader_id), record.replicas[partition]

    async def heartbeat(self, request: api_pb2.GroupHeartbeatRequest) -> api_pb2.GroupHeartbeatResponse:
        group = await self._group(request.group_id)
        async with group.lock:
            self._check_term(group)
            now = time.monotonic()
            self._expire(group, now)
            member = self._member(group, request)
            group.last_seen[member.member_id] = now
            if request.leave:
                self._leave(group, member)
                await self._persist(group)
                return api_pb2.GroupHeartbeatResponse(member_id=member.member_id, group_epoch=group.epoch)
            if not group.assignor:
                group.assignor = request.assignor or "sticky"
            self._retarget(group)
            member = group.members[member.member_id]
            reported = from_group_partitions(request.owned) & member.held
            granted = self._grantable(group, member)
            reconciled = request.member_epoch == member.epoch
            held = granted | reported if reconciled else granted | member.held
            epoch = member.epoch + 1 if granted != member.granted else member.epoch
            group.members[member.member_id] = dataclasses.replace(member, held=frozenset(held), epoch=epoch,
                                                                  granted=frozenset(granted))
            await self._persist(group)
            interval_ms = min(MAX_HEARTBEAT_INTERVAL_MS, member.session_timeout_ms // 3)
            if group.state != "stable":
                interval_ms = min(interval_ms, RECONCILING_HEARTBEAT_INTERVAL_MS)
            return api_pb2.GroupHeartbeatResponse(
                member_id=member.member_id, assignment=as_group_partitions(granted), group_epoch=group.epoch,
                member_epoch=epoch, heartbeat_interval_ms=interval_ms)

    async def commit(self, request: api_pb2.CommitOffsetsRequest) -> api_pb2.CommitOffsetsResponse:
        group = await self._group(request.group_id)
        async with group.lock:
            self._check_term(group)
            member = None
            if request.member_id:
                member = group.members.get(request.member_id)
                if member is None:
                    raise UnknownMemberIdError(f"group {group.group_id!r} has no member {request.member_id!r}")
            elif group.members:
                raise GroupNotEmptyError(f"group {group.group_id!r} has {len(group.members)} member(s); only "
                                         "they may commit (stop them first to set offsets from outside)")
            now_ms = int(time.time() * 1000)
            answers, commits = [], []
            for item in request.offsets:
                answer = api_pb2.CommittedOffset(topic=item.topic, partition=item.partition, offset=item.offset,
                                                 metadata=item.metadata, commit_time_ms=now_ms)
                try:
                    topic_id = self._check_commit(item, member)
                    commits.append(((item.topic, item.partition),
                                    CommittedOffset(item.offset, item.metadata, now_ms, topic_id)))
                except RaftkaError as exc:
                    answer.error.CopyFrom(exc.to_proto())
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
            found = committed.get((topic, partition))
            answers.append(api_pb2.CommittedOffset(topic=topic, partition=partition, offset=-1) if found is None
                           else api_pb2.CommittedOffset(topic=topic, partition=partition, offset=found.offset,
                                                        metadata=found.metadata,
                                                        commit_time_ms=found.commit_time_ms))
        return api_pb2.FetchOffsetsResponse(offsets=answers)

    async def describe(self, group_id: str) -> api_pb2.DescribeGroupResponse:
        group = await self._group(group_id, cache=False)
        committed = self._committed(group)
        if not group.members and not committed and group_id not in self._log_of(group).groups:
            raise UnknownGroupError(f"unknown group {group_id!r}")
        members = [api_pb2.GroupMember(member_id=m.member_id, instance_id=m.instance_id, client_id=m.client_id,
                                       assignment=as_group_partitions(m.target), owned=as_group_partitions(m.held),
                                       topics=m.topics, pattern=m.pattern)
                   for m in sorted(group.members.values(), key=lambda m: m.member_id)]
        offsets = [api_pb2.CommittedOffset(topic=t, partition=p, offset=c.offset, metadata=c.metadata,
                                           commit_time_ms=c.commit_time_ms) for (t, p), c in sorted(committed.items())]
        return api_pb2.DescribeGroupResponse(summary=self._summary(group), assignor=group.assignor,
                                             group_epoch=group.epoch, members=members, offsets=offsets)

    async def delete(self, group_id: str) -> None:
        group = await self._group(group_id, cache=False)
        async with group.lock:
            self._check_term(group)
            self._expire(group, time.monotonic())
            if group.members:
                raise GroupNotEmptyError(f"group {group_id!r} has {len(group.members)} member(s)")
            if group_id not in self._log_of(group).groups:
                raise UnknownGroupError(f"unknown group {group_id!r}")
            await self._append(group, delete_command(group_id))
            self._forget(group)

    def list_groups(self) -> list[api_pb2.GroupSummary]:
        """Groups of the partitions this broker leads (each broker answers for its own)."""
        summaries = []
        for partition, group_log in sorted(self._logs.items()):
            replica = self._partitions.find(OFFSETS_TOPIC, partition)
            if replica is None or replica.node.role != Role.LEADER:
                continue
            for group_id in sorted(set(group_log.groups) | {g for g, a in self._groups.items()
                                                             if a.replica is replica}):
                active = self._groups.get(group_id)
                if active is not None and active.term == replica.node.term:
                    summaries.append(self._summary(active))
                elif (record := group_log.groups.get(group_id)) is not None:
                    summaries.append(api_pb2.GroupSummary(
                        group_id=group_id, state="empty" if not record.members else "stable",
                        members=len(record.members), coordinator_id=self._broker_id))
        return summaries

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
                node = group.replica.node
                if node.role != Role.LEADER or node.term != group.term:
                    self._forget(group)
                    continue
                if group.lock.locked() or not self._expired(group, now):
                    continue
                async with group.lock:
                    try:
                        self._check_term(group)
                        self._expire(group, now)
                        self._retarget(group)
                        await self._persist(group)
                    except RaftkaError as exc:
                        log.info("group sweep failed group=%s: %s", group_id, exc)

    async def _purge_deleted_topics(self) -> None:
        """Remove committed offsets of topics that no longer exist (or exist anew under another id)
        from the groups this broker coordinates; a group left with neither offsets nor members goes."""
        live = {t.name: t.topic_id for t in self._metadata.topics()}
        for partition, group_log in list(self._logs.items()):
            replica = self._partitions.find(OFFSETS_TOPIC, partition)
            if replica is None or replica.node.role != Role.LEADER:
                continue
            for group_id, record in list(group_log.groups.items()):
                stale = [(tp, c.topic_id) for tp, c in record.offsets.items() if live.get(tp[0]) != c.topic_id]
                if not stale:
                    continue
                try:
                    group = await self._group(group_id, cache=False)
                    async with group.lock:
                        self._check_term(group)
                        if group.members or len(stale) < len(record.offsets):
                            await self._append(group, forget_command(group_id, stale))
                        else:
                            await self._append(group, delete_command(group_id))
                            self._forget(group)
                    log.info("offsets of deleted topics removed group=%s partitions=%d", group_id, len(stale))
                except RaftkaError as exc:
                    log.info("offset clean-up deferred group=%s: %s", group_id, exc)

    async def _group(self, group_id: str, *, cache: bool = True) -> _Group:
        """The group as of this leadership term (loaded after a read barrier). Reads of groups not
        loaded yet (`cache=False`) do not keep the object, so asking about arbitrary ids cannot grow
        the cache."""
        validate_group_id(group_id)
        record = self._metadata.find(OFFSETS_TOPIC)
        if record is None:
            raise NotCoordinatorError(f"{OFFSETS_TOPIC} does not exist yet; find the coordinator first")
        partition = group_partition(group_id, record.partitions)
        replica = self._partitions.find(OFFSETS_TOPIC, partition)
        if replica is None or replica.node.role != Role.LEADER:
            leader = -1 if replica is None else replica.leader_id
            raise NotCoordinatorError(f"broker {self._broker_id} does not coordinate group {group_id!r}"
                                      + (f"; broker {leader} does" if leader > 0 else ""))
        group = self._groups.get(group_id)
        if group is not None and group.term == replica.node.term:
            return group
        term = replica.node.term
        await replica.read_barrier(self._timeout_s)
        if replica.node.role != Role.LEADER or replica.node.term != term:
            raise NotCoordinatorError(f"broker {self._broker_id} lost the coordination of group {group_id!r}")
        group = self._groups.get(group_id)
        if group is not None and group.term == term:
            return group
        saved = self._logs[partition].groups.get(group_id)
        now = time.monotonic()
        members = dict(saved.members) if saved is not None else {}
        group = _Group(group_id, replica, term, members, saved.assignor if saved is not None else "",
                       saved.epoch if saved is not None else 0, {m: now for m in members})
        group.persisted = self._members_blob(group)
        if cache:
            self._groups[group_id] = group
        log.info("group loaded group=%s term=%d members=%d", group_id, term, len(members))
        return group

    def _check_term(self, group: _Group) -> None:
        node = group.replica.node
        if group.dead or node.role != Role.LEADER or node.term != group.term:
            self._forget(group)
            raise NotCoordinatorError(f"broker {self._broker_id} no longer coordinates group {group.group_id!r}")

    def _forget(self, group: _Group) -> None:
        """Retire this object (only this one: a newer object of the same group may be cached)."""
        group.dead = True
        if self._groups.get(group.group_id) is group:
            del self._groups[group.group_id]

    def _member(self, group: _Group, request: api_pb2.GroupHeartbeatRequest) -> MemberRecord:
        """The member the heartbeat is from: a new one, a static one coming back, or a known one."""
        session = request.session_timeout_ms or DEFAULT_SESSION_TIMEOUT_MS
        if not MIN_SESSION_TIMEOUT_MS <= session <= MAX_SESSION_TIMEOUT_MS:
            raise InvalidRequestError(f"session_timeout_ms must be between {MIN_SESSION_TIMEOUT_MS} and "
                                      f"{MAX_SESSION_TIMEOUT_MS}, not {session}")
        if request.assignor and request.assignor not in ASSIGNORS:
            raise InvalidRequestError(f"assignor must be one of {', '.join(ASSIGNORS)}, not {request.assignor!r}")
        if request.pattern:
            try:
                re.compile(request.pattern)
            except re.error as exc:
                raise InvalidRequestError(f"subscription pattern {request.pattern!r} is invalid: {exc}") from None
        elif not request.topics and not request.leave:
            raise InvalidRequestError("a group member must subscribe to topics or a pattern")
        if len(request.member_id) > MAX_GROUP_ID_LENGTH:
            raise InvalidRequestError(f"member id is longer than {MAX_GROUP_ID_LENGTH} characters")
        member = group.members.get(request.member_id) if request.member_id else None
        if member is None:
            if request.member_id and request.member_epoch != 0:
                raise UnknownMemberIdError(f"group {group.group_id!r} has no member {request.member_id!r} "
                                           "(it expired or was replaced); rejoin")
            member = self._join(group, request, session)
        if request.leave:
            return member
        member = dataclasses.replace(member, topics=tuple(sorted(set(request.topics))), pattern=request.pattern,
                                     session_timeout_ms=session, client_id=request.client_id or member.client_id,
                                     left=False)
        group.members[member.member_id] = member
        return member

    def _join(self, group: _Group, request: api_pb2.GroupHeartbeatRequest, session: int) -> MemberRecord:
        """A new member, or a static member coming back for the partitions it left reserved."""
        member_id = request.member_id or uuid.uuid4().hex
        static = [m for m in group.members.values() if request.instance_id and m.instance_id == request.instance_id]
        if not static:
            log.info("member joined group=%s member=%s client=%s", group.group_id, member_id, request.client_id)
            return MemberRecord(member_id, request.instance_id, request.client_id, (), "", session,
                                frozenset(), frozenset(), frozenset())
        old = static[0]
        if not old.left:
            raise UnreleasedInstanceIdError(
                f"member {old.member_id} of group {group.group_id!r} still uses instance id "
                f"{request.instance_id!r}; retry once it has left or its session has expired")
        del group.members[old.member_id]
        group.last_seen.pop(old.member_id, None)
        log.info("static member rejoined group=%s instance=%s member=%s replaces=%s", group.group_id,
                 request.instance_id, member_id, old.member_id)
        return dataclasses.replace(old, member_id=member_id)

    def _leave(self, group: _Group, member: MemberRecord) -> None:
        if member.instance_id:
            group.members[member.member_id] = dataclasses.replace(member, left=True)
            log.info("static member left group=%s member=%s (partitions kept for its session)", group.group_id,
                     member.member_id)
        else:
            group.members.pop(member.member_id, None)
            group.last_seen.pop(member.member_id, None)
            log.info("member left group=%s member=%s", group.group_id, member.member_id)
        self._retarget(group)

    def _expired(self, group: _Group, now: float) -> list[str]:
        return [m.member_id for m in group.members.values()
                if now - group.last_seen.get(m.member_id, now) > m.session_timeout_ms / 1000]

    def _expire(self, group: _Group, now: float) -> None:
        for member_id in self._expired(group, now):
            del group.members[member_id]
            group.last_seen.pop(member_id, None)
            log.info("member expired group=%s member=%s", group.group_id, member_id)

    def _retarget(self, group: _Group) -> None:
        """Recompute the target assignment when its inputs changed; the group epoch moves when the
        targets do. (Heartbeats are frequent and large groups cost the assignor real time.)"""
        if not group.members:
            return
        topics = {t.name: t.partitions for t in self._metadata.topics() if not t.internal}
        inputs = (group.assignor, tuple(sorted((m.member_id, m.topics, m.pattern) for m in group.members.values())),
                  tuple(sorted(topics.items())))
        if inputs == group.targeted_for:
            return
        specs = [MemberSpec(m.member_id, frozenset(self._subscribed(m, topics)), m.target)
                 for m in group.members.values()]
        targets = assign(group.assignor or "sticky", specs, topics)
        group.targeted_for = inputs
        changed = False
        for member_id, target in targets.items():
            member = group.members[member_id]
            if member.target != target:
                group.members[member_id] = dataclasses.replace(member, target=target)
                changed = True
        if changed:
            group.epoch += 1
            log.info("group target changed group=%s epoch=%d members=%d", group.group_id, group.epoch,
                     len(group.members))

    @staticmethod
    def _subscribed(member: MemberRecord, topics: dict[str, int]) -> set[str]:
        if member.pattern:
            pattern = re.compile(member.pattern)
            return {t for t in topics if pattern.fullmatch(t)}
        return set(member.topics) & set(topics)

    @staticmethod
    def _grantable(group: _Group, member: MemberRecord) -> set[TopicPartition]:
        taken = set().union(*(m.held for m in group.members.values() if m.member_id != member.member_id))
        return set(member.target) - taken

    def _check_commit(self, item: api_pb2.CommittedOffset, member: MemberRecord | None) -> str:
        """The committed partition's topic id, or raise why the commit is refused."""
        record = self._metadata.find(item.topic)
        if record is None or record.internal:
            raise UnknownTopicError(f"unknown topic {item.topic!r}")
        if not 0 <= item.partition < record.partitions:
            raise UnknownPartitionError(f"topic {item.topic!r} has no partition {item.partition}")
        if item.offset < 0:
            raise InvalidRequestError(f"committed offset must be >= 0, not {item.offset}")
        if len(item.metadata) > MAX_COMMIT_METADATA:
            raise InvalidRequestError(f"commit metadata exceeds {MAX_COMMIT_METADATA} characters")
        if member is not None and (item.topic, item.partition) not in member.held:
            raise NotPartitionOwnerError(f"member {member.member_id} does not own {item.topic}/{item.partition}")
        return record.topic_id

    def _committed(self, group: _Group) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of topics that still exist (as the same topic: same id)."""
        saved = self._log_of(group).groups.get(group.group_id)
        if saved is None:
            return {}
        live = {t.name: t.topic_id for t in self._metadata.topics()}
        return {tp: c for tp, c in saved.offsets.items() if live.get(tp[0]) == c.topic_id}

    def _summary(self, group: _Group) -> api_pb2.GroupSummary:
        return api_pb2.GroupSummary(group_id=group.group_id, state=group.state, members=len(group.members),
                                    coordinator_id=self._broker_id)

    def _log_of(self, group: _Group) -> GroupLog:
        return self._logs[int(group.replica.group_id.rsplit("/", 1)[1])]

    @staticmethod
    def _members_blob(group: _Group) -> bytes:
        return members_command(group.group_id, group.epoch, group.assignor,
                               sorted(group.members.values(), key=lambda m: m.member_id))

    async def _persist(self, group: _Group) -> None:
        """Write the membership if it changed: grants must be durable before they are sent."""
        blob = self._members_blob(group)
        if blob != group.persisted:
            await self._append(group, blob)
            group.persisted = blob

    async def _append(self, group: _Group, command: bytes) -> None:
        batch = encode_batch([(group.group_id.encode(), command, (), int(time.time() * 1000))])
        await group.replica.append(batch, durable=True, timeout_s=self._timeout_s)


def validate_group_id(group_id: str) -> None:
    if not group_id or len(group_id) > MAX_GROUP_ID_LENGTH or not group_id.isprintable():
        raise InvalidRequestError(f"group id must be 1 to {MAX_GROUP_ID_LENGTH} printable characters, "
                                  f"not {group_id!r}")

