"""The two sides of a group's durable log, and an in-memory implementation of both.

The core only *reads* its log: ``Storage`` is exactly what ``RaftNode`` calls (``initial_state``,
``entries``, ``term``, ``first_index``, ``last_index``, ``snapshot``, ``config_entries``), as
etcd-raft's Storage interface is. The driver *writes* it while handling a Ready: ``LogWriter`` adds
``apply_snapshot``, ``append`` and ``set_hard_state``, and ``MultiRaft`` takes a storage with both.
Taking snapshots of a state machine and compacting behind them are the owner's business, on the
concrete classes (``MemoryStorage.create_snapshot``/``compact``, ``PartitionStorage``'s retention and
``snapshot_and_truncate``), not part of either seam.

Everything in a Storage is, by definition, durable: the core treats entries it finds there as
persisted, and a crash keeps exactly what storage holds.

Index conventions (as in etcd): the log holds entries ``first_index() .. last_index()``; the
snapshot covers everything up to ``first_index() - 1``, whose term ``term()`` still answers.

Error contract of the reads: ``entries`` raises CompactedError below ``first_index()`` and
UnavailableError past ``last_index() + 1``; ``term`` answers from ``first_index() - 1`` to
``last_index()`` and raises the same errors outside. The core handles both (a compacted range makes a
leader send its snapshot). Any other exception is a storage failure: the driver stops the group (see
``driver.py``, "Failure contract").
"""

from __future__ import annotations

from typing import Protocol

from raftka.replication.entries import Entry, EntryType, limit_size
from raftka.replication.errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from raftka.replication.state import ConfState, HardState, Snapshot, SnapshotMetadata


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, SnapshotMetadata]:
        """The persisted hard state and the metadata (index, term, configuration) of the latest
        snapshot: the restarted state machine resumes from that snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, at least one if ``lo < hi``, at most ``max_bytes`` beyond the first.

        Raises CompactedError if ``lo < first_index()``, UnavailableError if ``hi > last_index()+1``.
        """
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index()-1 <= index <= last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot, which the leader ships to followers behind the compacted log."""
        ...

    def config_entries(self, lo: int, hi: int) -> list[Entry]:
        """The CONF_CHANGE entries in ``[lo, hi)``; a restarting core rebuilds its membership from them.

        A disk-backed log should index these (they are rare) rather than scan.
        """
        ...


class LogWriter(Storage, Protocol):
    """What the driver writes while handling a Ready (step 1 of its contract, ``ready.py``)."""

    def append(self, entries: list[Entry]) -> None:
        """Write ``entries``, replacing any stored entries from ``entries[0].index`` on."""
        ...

    def set_hard_state(self, hard_state: HardState) -> None: ...

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower that fell behind installs it)."""
        ...


def bootstrap_snapshot(conf_state: ConfState, data: bytes = b"") -> Snapshot:
    """The snapshot every founding member of a group starts from: index 1, term 1, the initial
    configuration. The configuration is never an entry of the log, so a node that joins later has
    an empty log and catches up by InstallSnapshot (index 1 is compacted everywhere) or from a
    later snapshot; it never has to guess the founding configuration. Founding members also persist
    HardState(term=1, commit=1)."""
    return Snapshot(SnapshotMetadata(1, 1, conf_state), data)


class MemoryStorage:
    """Storage held in memory: the simulator's "disk" and the reference implementation.

    Invariant: ``_ents[0]`` is a sentinel at the snapshot's index and term; real entries follow.
    """

    def __init__(self) -> None:
        """An empty storage: a node joining an existing group (it learns the group from the leader)."""
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(0, 0)]

    @classmethod
    def bootstrap(cls, conf_state: ConfState, data: bytes = b"") -> MemoryStorage:
        """Storage of a founding member of a new group (see :func:`bootstrap_snapshot`)."""
        storage = cls()
        snapshot = bootstrap_snapshot(conf_state, data)
        storage.apply_snapshot(snapshot)
        storage.set_hard_state(HardState(term=snapshot.term, commit=snapshot.index))
        return storage

    def initial_state(self) -> tuple[HardState, SnapshotMetadata]:
        return self._hard_state, self._snapshot.metadata

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (first index {offset + 1})")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last index is {self.last_index()}")
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def config_entries(self, lo: int, hi: int) -> list[Entry]:
        return [e for e in self.entries(lo, hi) if e.type == EntryType.CONF_CHANGE] if lo < hi else []

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        start = entries[0].index
        if start > self.last_index() + 1:
            raise UnavailableError(f"append at {start} leaves a gap after {self.last_index()}")
        del self._ents[start - self._ents[0].index :]
        self._ents.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.index <= self._snapshot.index:
            raise SnapshotOutOfDateError(f"snapshot {snapshot.index} is not newer than {self._snapshot.index}")
        self._snapshot = snapshot
        self._ents = [Entry(snapshot.index, snapshot.term)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        if index <= self._snapshot.index:
            raise SnapshotOutOfDateError(f"snapshot {index} is not newer than {self._snapshot.index}")
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is beyond the last index {self.last_index()}")
        self._snapshot = Snapshot(SnapshotMetadata(index, self.term(index), conf_state), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(f"index {index} is already compacted")
        if index > self._snapshot.index:
            raise UnavailableError(f"cannot compact past the snapshot ({self._snapshot.index})")
        del self._ents[: index - offset]
        self._ents[0] = Entry(index, self._ents[0].term)
