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
partition's leader already has every group's state; after a restart the replica replays its log.

Invariants: `apply` is deterministic and total (a malformed record is logged and skipped, never
raised), and a group's state is a function of the log prefix applied.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from raftka.cluster.assignors import TopicPartition
from raftka.partition.batch import decode_batch

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
                "granted": sorted(map(list, self.granted)), "held": sorted(map(list, self.held)), "epoch": self.epoch, "left": self.left}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MemberRecord:
        return cls(raw["member_id"], raw["instance_id"], raw["client_id"], tuple(raw["topics"]), raw["pattern"],
                   raw["session_timeout_ms"], _tps(raw["target"]), _tps(raw["granted"]), _tps(raw["held"]),
                   raw["epoch"], raw["left"])


def _tps(raw: list[list[Any]]) -> frozenset[TopicPartition]:
    return frozenset((topic, partition) for topic, partition in raw)


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

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.groups: dict[str, GroupRecord] = {}

    def apply(self, base_offset: int, batch: bytes) -> None:
        for record in decode_batch(batch, verify_crc=False).records:
            try:
                self._apply(json.loads(record.value or b"{}"))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("skipping malformed group record partition=%d offset=%d: %s", self.partition,
                          record.offset, exc)

    def _apply(self, raw: dict[str, Any]) -> None:
        op, group_id = raw["op"], raw["group"]
        if op == "delete":
            self.groups.pop(group_id, None)
            return
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = GroupRecord(group_id)
        if op == "offsets":
            for topic, partition, offset, metadata, commit_time_ms, topic_id in raw["offsets"]:
                group.offsets[(topic, partition)] = CommittedOffset(offset, metadata, commit_time_ms, topic_id)
        elif op == "forget":
            for topic, partition, topic_id in raw["offsets"]:
                committed = group.offsets.get((topic, partition))
                if committed is not None and committed.topic_id == topic_id:
                    del group.offsets[(topic, partition)]
        elif op == "members":
            group.members = {m["member_id"]: MemberRecord.from_json(m) for m in raw["members"]}
            group.epoch, group.assignor = raw["epoch"], raw["assignor"]
        else:
            log.error("unknown group record op=%r partition=%d", op, self.partition)
