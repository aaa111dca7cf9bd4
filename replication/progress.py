"""The leader's view of one follower: how far it matches and how to send it more (flow control).

States (as in etcd): PROBE sends one append at a time and waits (after a rejection, or when the
follower's position is unknown); REPLICATE pipelines appends optimistically, bounded by
:class:`Inflights` in count and bytes; SNAPSHOT waits for an InstallSnapshot to land.

Invariants: ``match < next``; in REPLICATE every in-flight append is recorded in ``inflights``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Appends sent but not yet acknowledged, as (last index, bytes), bounded by count and bytes."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._items: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, last_index: int, size: int) -> None:
        self._items.append((last_index, size))
        self._bytes += size

    def free_le(self, index: int) -> None:
        while self._items and self._items[0][0] <= index:
            self._bytes -= self._items.popleft()[1]

    def free_first_one(self) -> None:
        if self._items:
            self._bytes -= self._items.popleft()[1]

    def full(self) -> bool:
        return len(self._items) >= self.max_count or (self.max_bytes > 0 and self._bytes >= self.max_bytes)

    def reset(self) -> None:
        self._items.clear()
        self._bytes = 0


class Progress:
    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.recent_active = False
        self.held = False
        """The driver's throttle holds appends to this member back (``RaftNode.throttle``)."""
        self.inflights = Inflights(max_inflight, max_inflight_bytes)

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT and self.pending_snapshot:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def forget(self) -> None:
        """The follower lost its durable state (design note 14 in ``raft.py``): its log is no
        longer what it acknowledged, and a rejection below ``match`` would look stale forever, so
        probe it from the start of the log."""
        self.match = 0
        self._reset(ProgressState.PROBE)
        self.next = 1

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged a log matching ours up to ``index``."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append whose previous index was ``rejected``; False if stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, count: int, size: int, last_index: int) -> None:
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.held:
            return True
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def view(self) -> ProgressView:
        return ProgressView(self.match, self.next, self.state, self.recent_active)


@dataclass(frozen=True, slots=True)
class ProgressView:
    """A read-only copy of a follower's progress for the driver (match index = ISR membership)."""

    match: int
    next: int
    state: ProgressState
    recent_active: bool
