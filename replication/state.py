"""Durable state records: hard state, configuration state and snapshots.

These are what the driver persists (with the entries) before it sends the messages of a Ready.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HardState:
    """The state that must survive a crash: the current term, the vote cast in it, the commit index,
    and whether the node is still catching up after losing its durable state (``rejoining``: the
    rule of design note 14 in ``raft.py``, which a restart must not lift).

    Invariant: a node never sends a message that depends on ``term``, ``vote`` or ``rejoining``
    before the HardState carrying them is durable (the Ready contract enforces the order).
    """

    term: int = 0
    vote: int = 0
    commit: int = 0
    rejoining: bool = False


@dataclass(frozen=True, slots=True)
class ConfState:
    """A group configuration: voting members and non-voting learners (disjoint, sorted)."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if set(self.voters) & set(self.learners):
            raise ValueError(f"voters and learners overlap: {self}")

    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))

    def __str__(self) -> str:
        return f"voters={list(self.voters)} learners={list(self.learners)}"


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    """The log position a snapshot replaces (``index``/``term``) and the configuration in force there."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


@dataclass(frozen=True, slots=True)
class Snapshot:
    metadata: SnapshotMetadata = SnapshotMetadata()
    data: bytes = b""

    @property
    def index(self) -> int:
        return self.metadata.index

    @property
    def term(self) -> int:
        return self.metadata.term
