"""The membership rules of one consumer group: joins, cooperative reassignment, leaves, expiry, commits.

`GroupRules` is the state machine the group's coordinator (cluster/coordinator.py) runs for one
group in one leadership term. It takes plain values — a member's heartbeat, the existing topics, a
clock reading — and answers with the member's assignment, or raises the typed error that refuses
the request; it does no I/O and knows nothing of gRPC or Raft. The coordinator persists its
`members`, `epoch` and `assignor` (a `members` record of the group's log) before it sends an
answer, and a new coordinator rebuilds it from them (`restore`).

Assignment is incremental and cooperative. On every heartbeat the group's target assignment is
recomputed when its inputs changed (sticky by default, cluster/assignors.py), and the member is
granted the partitions of its target that no other member *holds*. A member holds what it was
granted and what it still reports owning; it releases a partition by reporting, after applying an
assignment without it, that it no longer owns it. So a partition moves in two steps — revoke, then
assign — and members whose partitions do not move never stop consuming.

Invariants:
- no partition is held by two members, and a member owns only what it holds (a member takes only
  what it was granted);
- a member's holdings shrink only once it reports having applied its latest assignment
  (`member_epoch`), so a grant still in flight is never handed to someone else;
- a member commits offsets only for partitions it holds; without a member id (manual assignment,
  offset resets) only while the group has no members;
- a member not heard from for its session timeout is removed and its partitions freed; a static
  member (instance id) that leaves keeps its partitions reserved until then, so a restarting pod
  gets them back without a rebalance; a second live member with the same instance id is refused;
- member ids are chosen by the members, so a join retried after a lost response is the same member;
- the group epoch moves exactly when some member's target changes; a member's epoch moves exactly
  when what it is granted changes;
- rebuilt from persisted state, every member's session starts afresh (the old coordinator's clock
  readings are not persisted), and every grant and holding is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

from raftka.cluster.assignors import ASSIGNORS, MemberSpec, assign
from raftka.cluster.group_log import CommittedOffset, GroupRecord, MemberRecord
from raftka.errors import (GroupNotEmptyError, InvalidRequestError, NotPartitionOwnerError, RaftkaError,
                           UnknownMemberIdError, UnknownPartitionError, UnknownTopicError,
                           UnreleasedInstanceIdError)
from raftka.wire.structs import TopicPartition

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
"""Also the longest member id."""
MAX_COMMIT_METADATA = 4096


@dataclass(frozen=True)
class Topic:
    """An existing topic members may read (internal topics are never given to the rules)."""

    partitions: int
    topic_id: str


@dataclass(frozen=True)
class Heartbeat:
    """What a member says at a heartbeat: who it is, what it subscribes to, what it owns."""

    member_id: str = ""
    """Empty on a first join: the coordinator chooses one."""
    member_epoch: int = 0
    """The epoch of the last assignment the member applied (0: it joins owning nothing)."""
    instance_id: str = ""
    client_id: str = ""
    topics: tuple[str, ...] = ()
    pattern: str = ""
    session_timeout_ms: int = 0
    """0: the default."""
    assignor: str = ""
    owned: frozenset[TopicPartition] = frozenset()
    leave: bool = False


@dataclass(frozen=True)
class Assignment:
    """The answer to a heartbeat: what the member may own now. A member that left gets only its id
    and the group epoch."""

    member_id: str
    group_epoch: int
    partitions: frozenset[TopicPartition] = frozenset()
    member_epoch: int = 0
    heartbeat_interval_ms: int = 0


@dataclass(frozen=True)
class OffsetCommit:
    topic: str
    partition: int
    offset: int
    metadata: str


class GroupRules:
    """The members of one group, their targets and holdings, and when each was last heard from."""

    def __init__(self, group_id: str, members: Mapping[str, MemberRecord], assignor: str, epoch: int, *,
                 now: float) -> None:
        """Every member's session starts at `now` (a monotonic clock reading, in seconds)."""
        self.group_id = group_id
        self.members = dict(members)
        self.assignor = assignor
        self.epoch = epoch
        self._last_seen = {member_id: now for member_id in self.members}
        self._targeted_for: object = None
        """The inputs (assignor, members and subscriptions, topics) the current targets were computed
        from; None once a member is removed, as the same id may join again with no target."""

    @classmethod
    def restore(cls, group_id: str, saved: GroupRecord | None, *, now: float) -> GroupRules:
        """The group as persisted (`saved`: None for a group never seen), its sessions starting at `now`."""
        if saved is None:
            return cls(group_id, {}, "", 0, now=now)
        return cls(group_id, saved.members, saved.assignor, saved.epoch, now=now)

    @property
    def state(self) -> str:
        if not self.members:
            return "empty"
        return "stable" if all(m.held == m.target for m in self.members.values()) else "reconciling"

    def heartbeat(self, request: Heartbeat, topics: Mapping[str, Topic], now: float) -> Assignment:
        """Join, stay or leave: expire silent members, admit the member, then (unless it leaves)
        retarget and grant it what of its target no other member holds. Raises InvalidRequestError,
        UnknownMemberIdError or UnreleasedInstanceIdError (members expired on the way stay expired)."""
        self.expire(now)
        member = self._member(request)
        self._last_seen[member.member_id] = now
        if request.leave:
            self._leave(member, topics)
            return Assignment(member.member_id, self.epoch)
        if not self.assignor:
            self.assignor = request.assignor or "sticky"
        self.retarget(topics)
        member = self.members[member.member_id]
        reported = request.owned & member.held
        granted = self._grantable(member)
        reconciled = request.member_epoch == member.epoch
        held = granted | reported if reconciled else granted | member.held
        epoch = member.epoch + 1 if granted != member.granted else member.epoch
        self.members[member.member_id] = dataclasses.replace(member, held=frozenset(held), epoch=epoch,
                                                             granted=frozenset(granted))
        interval_ms = min(MAX_HEARTBEAT_INTERVAL_MS, member.session_timeout_ms // 3)
        if self.state != "stable":
            interval_ms = min(interval_ms, RECONCILING_HEARTBEAT_INTERVAL_MS)
        return Assignment(member.member_id, self.epoch, frozenset(granted), epoch, interval_ms)

    def expired(self, now: float) -> list[str]:
        """Members not heard from for their session timeout."""
        return [m.member_id for m in self.members.values()
                if now - self._last_seen.get(m.member_id, now) > m.session_timeout_ms / 1000]

    def expire(self, now: float) -> None:
        """Remove the expired members, freeing what they held (targets move at the next `retarget`)."""
        for member_id in self.expired(now):
            self._remove(member_id)
            log.info("member expired group=%s member=%s", self.group_id, member_id)

    def retarget(self, topics: Mapping[str, Topic]) -> None:
        """Recompute the target assignment when its inputs changed; the group epoch moves when the
        targets do. (Heartbeats are frequent and large groups cost the assignor real time.)"""
        if not self.members:
            return
        counts = {name: topic.partitions for name, topic in topics.items()}
        inputs = (self.assignor, tuple(sorted((m.member_id, m.topics, m.pattern) for m in self.members.values())),
                  tuple(sorted(counts.items())))
        if inputs == self._targeted_for:
            return
        specs = [MemberSpec(m.member_id, frozenset(_subscribed(m, counts)), m.target) for m in self.members.values()]
        targets = assign(self.assignor or "sticky", specs, counts)
        self._targeted_for = inputs
        changed = False
        for member_id, target in targets.items():
            member = self.members[member_id]
            if member.target != target:
                self.members[member_id] = dataclasses.replace(member, target=target)
                changed = True
        if changed:
            self.epoch += 1
            log.info("group target changed group=%s epoch=%d members=%d", self.group_id, self.epoch,
                     len(self.members))

    def commit(self, member_id: str, items: Sequence[OffsetCommit], topics: Mapping[str, Topic],
               now_ms: int) -> list[CommittedOffset | RaftkaError]:
        """What to record for each item, or why it is refused (in the order of `items`). The request
        as a whole is refused (raises) when `member_id` is not a member, or is empty while the group
        has members."""
        member = None
        if member_id:
            member = self.members.get(member_id)
            if member is None:
                raise UnknownMemberIdError(f"group {self.group_id!r} has no member {member_id!r}")
        elif self.members:
            raise GroupNotEmptyError(f"group {self.group_id!r} has {len(self.members)} member(s); only "
                                     "they may commit (stop them first to set offsets from outside)")
        results: list[CommittedOffset | RaftkaError] = []
        for item in items:
            try:
                topic_id = _check_commit(item, member, topics)
                results.append(CommittedOffset(item.offset, item.metadata, now_ms, topic_id))
            except RaftkaError as exc:
                results.append(exc)
        return results

    def _member(self, request: Heartbeat) -> MemberRecord:
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
        member = self.members.get(request.member_id) if request.member_id else None
        if member is None:
            if request.member_id and request.member_epoch != 0:
                raise UnknownMemberIdError(f"group {self.group_id!r} has no member {request.member_id!r} "
                                           "(it expired or was replaced); rejoin")
            member = self._join(request, session)
        if request.leave:
            return member
        member = dataclasses.replace(member, topics=tuple(sorted(set(request.topics))), pattern=request.pattern,
                                     session_timeout_ms=session, client_id=request.client_id or member.client_id,
                                     left=False)
        self.members[member.member_id] = member
        return member

    def _join(self, request: Heartbeat, session: int) -> MemberRecord:
        """A new member, or a static member coming back for the partitions it left reserved."""
        member_id = request.member_id or uuid.uuid4().hex
        static = [m for m in self.members.values() if request.instance_id and m.instance_id == request.instance_id]
        if not static:
            log.info("member joined group=%s member=%s client=%s", self.group_id, member_id, request.client_id)
            return MemberRecord(member_id, request.instance_id, request.client_id, (), "", session,
                                frozenset(), frozenset(), frozenset())
        old = static[0]
        if not old.left:
            raise UnreleasedInstanceIdError(
                f"member {old.member_id} of group {self.group_id!r} still uses instance id "
                f"{request.instance_id!r}; retry once it has left or its session has expired")
        self._remove(old.member_id)
        log.info("static member rejoined group=%s instance=%s member=%s replaces=%s", self.group_id,
                 request.instance_id, member_id, old.member_id)
        return dataclasses.replace(old, member_id=member_id)

    def _leave(self, member: MemberRecord, topics: Mapping[str, Topic]) -> None:
        if member.instance_id:
            self.members[member.member_id] = dataclasses.replace(member, left=True)
            log.info("static member left group=%s member=%s (partitions kept for its session)", self.group_id,
                     member.member_id)
        else:
            self._remove(member.member_id)
            log.info("member left group=%s member=%s", self.group_id, member.member_id)
        self.retarget(topics)

    def _remove(self, member_id: str) -> None:
        """Drop the member. The targets must then be recomputed even if a member of the same id and
        subscription is back before the next `retarget` (a member that had applied no assignment
        rejoins under its id): its new record has no target, and what its old one had is no one's."""
        self.members.pop(member_id, None)
        self._last_seen.pop(member_id, None)
        self._targeted_for = None

    def _grantable(self, member: MemberRecord) -> set[TopicPartition]:
        taken = set().union(*(m.held for m in self.members.values() if m.member_id != member.member_id))
        return set(member.target) - taken


def _subscribed(member: MemberRecord, topics: Mapping[str, int]) -> set[str]:
    if member.pattern:
        pattern = re.compile(member.pattern)
        return {t for t in topics if pattern.fullmatch(t)}
    return set(member.topics) & set(topics)


def _check_commit(item: OffsetCommit, member: MemberRecord | None, topics: Mapping[str, Topic]) -> str:
    """The committed partition's topic id, or raise why the commit is refused."""
    topic = topics.get(item.topic)
    if topic is None:
        raise UnknownTopicError(f"unknown topic {item.topic!r}")
    if not 0 <= item.partition < topic.partitions:
        raise UnknownPartitionError(f"topic {item.topic!r} has no partition {item.partition}")
    if item.offset < 0:
        raise InvalidRequestError(f"committed offset must be >= 0, not {item.offset}")
    if len(item.metadata) > MAX_COMMIT_METADATA:
        raise InvalidRequestError(f"commit metadata exceeds {MAX_COMMIT_METADATA} characters")
    if member is not None and (item.topic, item.partition) not in member.held:
        raise NotPartitionOwnerError(f"member {member.member_id} does not own {item.topic}/{item.partition}")
    return topic.topic_id
