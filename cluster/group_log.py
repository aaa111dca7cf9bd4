"""Consumer-group state as a replicated state machine over one partition of `__consumer_offsets`.

Each record of the partition is one JSON command about one group:
- `offsets`: committed offsets of some of its partitions (a commit request is one record, so it is
  applied whole or not at all); each carries the topic id, so the offsets of a deleted topic never
  apply to a new topic of the same name;
- `members`: the group's whole membership after a change — per member its subscription, its target
  assignment and the partitions it *holds* (may own: granted to it or still reported by it) — so a
  new coordinator knows which partitions are still taken after a failover;
- `forget`: offsets of topics that were deleted (each with the topic id it was committed for, so a
  commit for a new topic of the same name is kept);
- `delete`: the group is gone (offsets and members).

Every replica applies the committed records in log order (`apply`), so any replica that becomes the
partition's leader already has every group's state. The state is snapshotted into the partition's
Raft snapshot (`snapshot`/`restore`: per group, its offsets and membership, i.e. the latest value of
every key), behind which the log is truncated; so the partition's size depends on the number of groups
and partitions, not on the number of commits (the equivalent of Kafka's key compaction of
`__consumer_offsets`), and a restart restores the snapshot and replays only the records after it.

Invariants: `apply` is deterministic and total (a malformed record changes nothing and is reported
and skipped the same way as in the metadata log: `raftka.cluster.state_machine`), and a group's
state is a function of the log prefix applied, whether replayed or restored from a snapshot of it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from raftka.cluster.state_machine import (MalformedRecordError, SnapshotFormatError, StateMachineStats, apply_records,
                                          field_of, items_of, parse_json)
from raftka.wire.structs import TopicPartition

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"


@dataclass(frozen=True)
class CommittedOffset:
    offset: int
    metadata: str
    commit_time_ms: int
    topic_id: str


@dataclass(frozen=True)
class MemberRecord:
    member_id: str
    instance_id: str
    client_id: str
    topics: tuple[str, ...]
    pattern: str
    session_timeout_ms: int
    target: frozenset[TopicPartition]
    """What the assignor gives the member (the goal)."""
    granted: frozenset[TopicPartition]
    """The assignment last sent to it: the part of its target no other member held then."""
    held: frozenset[TopicPartition]
    """What the member may own right now: granted to it, or still reported by it. No partition is
    held by two members."""
    epoch: int = 0
    """The member epoch of the last assignment sent to it."""
    left: bool = False
    """A static member that left: its partitions stay reserved until its session expires."""

    def to_json(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "instance_id": self.instance_id, "client_id": self.client_id,
                "topics": list(self.topics), "pattern": self.pattern,
                "session_timeout_ms": self.session_timeout_ms, "target": sorted(map(list, self.target)),
                "granted": sorted(map(list, self.granted)), "held": sorted(map(list, self.held)),
                "epoch": self.epoch, "left": self.left}

    @classmethod
    def from_json(cls, raw: Any) -> MemberRecord:
        """Raises MalformedRecordError unless `raw` is what `to_json` writes."""
        topics = field_of(raw, "topics", list)
        if not all(isinstance(topic, str) for topic in topics):
            raise MalformedRecordError(f"member topics {topics!r} are not names")
        return cls(field_of(raw, "member_id", str), field_of(raw, "instance_id", str),
                   field_of(raw, "client_id", str), tuple(topics), field_of(raw, "pattern", str),
                   field_of(raw, "session_timeout_ms", int), _tps(raw, "target"), _tps(raw, "granted"),
                   _tps(raw, "held"), field_of(raw, "epoch", int), field_of(raw, "left", bool))


def _tps(raw: Any, name: str) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, partition) for topic, partition in items_of(raw, name, 2, (str, int)))


@dataclass
class GroupRecord:
    group_id: str
    offsets: dict[TopicPartition, CommittedOffset] = field(default_factory=dict)
    members: dict[str, MemberRecord] = field(default_factory=dict)
    assignor: str = ""
    epoch: int = 0


def offsets_command(group_id: str, commits: Iterable[tuple[TopicPartition, CommittedOffset]]) -> bytes:
    return json.dumps({"op": "offsets", "group": group_id, "offsets": [
        [topic, partition, c.offset, c.metadata, c.commit_time_ms, c.topic_id]
        for (topic, partition), c in commits]}).encode()


def members_command(group_id: str, epoch: int, assignor: str, members: Iterable[MemberRecord]) -> bytes:
    return json.dumps({"op": "members", "group": group_id, "epoch": epoch, "assignor": assignor,
                       "members": [m.to_json() for m in members]}).encode()


def forget_command(group_id: str, offsets: Iterable[tuple[TopicPartition, str]]) -> bytes:
    return json.dumps({"op": "forget", "group": group_id,
                       "offsets": [[topic, partition, topic_id] for (topic, partition), topic_id in offsets]}).encode()


def delete_command(group_id: str) -> bytes:
    return json.dumps({"op": "delete", "group": group_id}).encode()


class GroupLog:
    """The groups of one `__consumer_offsets` partition, as applied from its committed records."""

    kind = "groups"

    def __init__(self, partition: int, stats: StateMachineStats | None = None) -> None:
        self.partition = partition
        self.stats = stats or StateMachineStats()
        self.groups: dict[str, GroupRecord] = {}
        self._name = f"{OFFSETS_TOPIC}/{partition}"

    def apply(self, base_offset: int, batch: bytes) -> None:
        apply_records(self, self._name, base_offset, batch, self._apply)

    def snapshot(self) -> bytes:
        """Every group's latest offsets and membership (what the log's records would be compacted to)."""
        return json.dumps({"format": 1, "groups": [
            {"group": g.group_id, "epoch": g.epoch, "assignor": g.assignor,
             "members": [m.to_json() for m in g.members.values()],
             "offsets": [[t, p, c.offset, c.metadata, c.commit_time_ms, c.topic_id]
                         for (t, p), c in g.offsets.items()]}
            for g in self.groups.values()]}).encode()

    def restore(self, data: bytes) -> None:
        try:
            raw = parse_json(data)
            if field_of(raw, "format", int) != 1:
                raise MalformedRecordError(f"unknown format {raw['format']}")
            groups = {}
            for item in field_of(raw, "groups", list):
                group = GroupRecord(field_of(item, "group", str), _offsets(item), _members(item),
                                    field_of(item, "assignor", str), field_of(item, "epoch", int))
                groups[group.group_id] = group
        except MalformedRecordError as exc:
            raise SnapshotFormatError(f"group snapshot of {self._name} does not decode: {exc}") from None
        self.groups = groups

    def _apply(self, offset: int, value: bytes) -> None:
        """Parse the whole record before changing anything, so a malformed one changes nothing."""
        raw = parse_json(value)
        op, group_id = field_of(raw, "op", str), field_of(raw, "group", str)
        if op == "delete":
            self.groups.pop(group_id, None)
        elif op == "offsets":
            self._group(group_id).offsets.update(_offsets(raw))
        elif op == "forget":
            forgotten = items_of(raw, "offsets", 3, (str, int, str))
            group = self._group(group_id)
            for topic, partition, topic_id in forgotten:
                tp = TopicPartition(topic, partition)
                committed = group.offsets.get(tp)
                if committed is not None and committed.topic_id == topic_id:
                    del group.offsets[tp]
        elif op == "members":
            members, epoch, assignor = _members(raw), field_of(raw, "epoch", int), field_of(raw, "assignor", str)
            group = self._group(group_id)
            group.members, group.epoch, group.assignor = members, epoch, assignor
        else:
            raise MalformedRecordError(f"unknown group record op {op!r}")

    def _group(self, group_id: str) -> GroupRecord:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = GroupRecord(group_id)
        return group


def _offsets(raw: Any) -> dict[TopicPartition, CommittedOffset]:
    return {TopicPartition(topic, partition): CommittedOffset(offset, metadata, commit_time_ms, topic_id)
            for topic, partition, offset, metadata, commit_time_ms, topic_id
            in items_of(raw, "offsets", 6, (str, int, int, str, int, str))}


def _members(raw: Any) -> dict[str, MemberRecord]:
    return {m.member_id: m for m in map(MemberRecord.from_json, field_of(raw, "members", list))}
