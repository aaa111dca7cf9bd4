"""Group membership: configuration changes and the per-index history of configurations.

Raftka changes voters **one server at a time** (Raft thesis §4.1) and a configuration takes effect
on every node as soon as its entry is *appended* to that node's log, committed or not (as in the
paper; etcd instead switches on apply). Consequences the core relies on:

* Any two majorities of consecutive configurations overlap, because they differ by one voter.
* Only one change may be in the log uncommitted at a time, and the leader proposes one only after
  it has committed an entry of its own term (the thesis' fix for the single-server-change bug).
* Because an uncommitted configuration can be truncated away with the entries that carry it, the
  node keeps a short history of ``(index, ConfState)`` and falls back to the previous one.

Learners receive the log but never vote, campaign or count towards a quorum; they are how a new
replica catches up before it is promoted. Each change alters the voter set by at most one member.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Collection, Iterable, Sequence

from raftka.replication.entries import Entry, EntryType
from raftka.replication.errors import ConfChangeError
from raftka.replication.state import ConfState

_CC_FORMAT = ">BQ"


class ConfChangeOp(IntEnum):
    ADD_VOTER = 1
    """Add a new voter, or promote a learner to voter."""
    ADD_LEARNER = 2
    """Add a new learner, or demote a voter to learner."""
    REMOVE = 3
    """Remove a voter or a learner from the group."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ConfChangeOp
    node_id: int

    def encode(self) -> bytes:
        return struct.pack(_CC_FORMAT, self.op, self.node_id)

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        op, node_id = struct.unpack(_CC_FORMAT, data)
        return cls(ConfChangeOp(op), node_id)

    def __str__(self) -> str:
        return f"{self.op.name.lower().replace('_', '-')} {self.node_id}"


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``; raises :class:`ConfChangeError` if it is a no-op or invalid."""
    voters, learners, nid = set(conf.voters), set(conf.learners), change.node_id
    if nid <= 0:
        raise ConfChangeError(f"invalid node id {nid}")
    if change.op == ConfChangeOp.ADD_VOTER:
        if nid in voters:
            raise ConfChangeError(f"{nid} is already a voter")
        learners.discard(nid)
        voters.add(nid)
    elif change.op == ConfChangeOp.ADD_LEARNER:
        if nid in learners:
            raise ConfChangeError(f"{nid} is already a learner")
        voters.discard(nid)
        learners.add(nid)
    else:
        if nid not in voters and nid not in learners:
            raise ConfChangeError(f"{nid} is not a member")
        voters.discard(nid)
        learners.discard(nid)
    if not voters:
        raise ConfChangeError("a group needs at least one voter")
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


class Membership:
    """The configuration in force at every index from ``base_index`` to the end of the log.

    Invariant: ``_changes`` holds the configuration entries after ``base_index`` in index order;
    ``current`` is the configuration of the latest one (or the base).
    """

    def __init__(self, base: ConfState, base_index: int) -> None:
        self.reset(base, base_index)

    def reset(self, base: ConfState, base_index: int) -> None:
        self._base = base
        self._base_index = base_index
        self._changes: list[tuple[int, ConfState]] = []

    @property
    def current(self) -> ConfState:
        return self._changes[-1][1] if self._changes else self._base

    @property
    def latest_index(self) -> int:
        """Index of the entry that established ``current`` (the base index if none did)."""
        return self._changes[-1][0] if self._changes else self._base_index

    def append(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                self._changes.append((e.index, self._apply_entry(e)))

    def _apply_entry(self, e: Entry) -> ConfState:
        """Entries in a log were validated by the leader that proposed them against the same
        prefix, so a change that no longer applies can only come from a corrupt log."""
        try:
            return apply_conf_change(self.current, ConfChange.decode(e.data))
        except (ConfChangeError, ValueError, struct.error) as exc:
            raise ConfChangeError(f"configuration entry {e.index}/{e.term} does not apply: {exc}") from exc

    def truncate_from(self, index: int) -> None:
        """Forget configurations carried by entries at ``index`` or later (they were overwritten)."""
        while self._changes and self._changes[-1][0] >= index:
            self._changes.pop()

    def at(self, index: int) -> ConfState:
        """The configuration in force at ``index`` (``index`` >= ``base_index``)."""
        if index < self._base_index:
            raise ConfChangeError(f"configuration at {index} precedes the retained history ({self._base_index})")
        conf = self._base
        for i, c in self._changes:
            if i > index:
                break
            conf = c
        return conf

    def compact_to(self, index: int) -> None:
        """Fold changes at or below ``index`` into the base; they can no longer be truncated."""
        while self._changes and self._changes[0][0] <= index:
            self._base_index, self._base = self._changes.pop(0)
        self._base_index = max(self._base_index, index)


def next_move_step(me: int, target: Sequence[int], voters: set[int], learners: set[int],
                   in_sync: Collection[int]) -> ConfChange | int | None:
    """The leader's (`me`) next step in moving its group to the voter set `target`: a membership
    change, the voter to hand leadership to, or None (wait for a learner to catch up, or done).

    Order: add each missing target member as a learner; promote learners in `in_sync` (they hold
    every committed entry); hand leadership to an in-sync target voter if the leader is not in the
    target; then remove the members outside the target, learners first. Adding before removing
    keeps at least min(len(original), len(target)) voters throughout; the leader never removes
    itself. A caller proposes at most one change at a time (the latest must have committed).
    """
    wanted = set(target)
    for broker in target:
        if broker not in voters and broker not in learners:
            return ConfChange(ConfChangeOp.ADD_LEARNER, broker)
    for broker in target:
        if broker in learners and broker in in_sync:
            return ConfChange(ConfChangeOp.ADD_VOTER, broker)
    if learners & wanted:
        return None
    if me not in wanted:
        heirs = [broker for broker in target if broker in voters and broker in in_sync]
        return heirs[0] if heirs else None
    for broker in sorted(learners - wanted) + sorted(voters - wanted):
        return ConfChange(ConfChangeOp.REMOVE, broker)
    return None
