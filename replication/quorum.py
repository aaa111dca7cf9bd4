"""Majority arithmetic over a voter set. Learners never appear here."""

from __future__ import annotations

from enum import Enum
from typing import Callable, Collection, Mapping


class VoteResult(Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(voters: Collection[int], match_of: Callable[[int], int]) -> int:
    """The largest index that a majority of ``voters`` have durably matched."""
    if not voters:
        return 0
    matches = sorted((match_of(v) for v in voters), reverse=True)
    return matches[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


def has_majority(voters: Collection[int], acked: Collection[int]) -> bool:
    return bool(voters) and sum(1 for v in voters if v in acked) >= majority(len(voters))
