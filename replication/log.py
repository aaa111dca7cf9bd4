"""The node's view of its log: durable entries in Storage followed by not-yet-persisted ones.

``Unstable`` holds what the core has decided but the driver has not yet persisted: possibly an
incoming snapshot, then entries from ``offset``. ``RaftLog`` stitches Storage and Unstable into one
log and tracks the commit and applied indexes.

Invariants:
  * ``applied <= committed <= last_index()``.
  * Entries at or below ``committed`` are never truncated (RaftSafetyError if an input tries).
  * Unstable entries shadow stored entries from ``unstable.offset`` on.
"""

from __future__ import annotations

from raftka.replication.entries import Entry, limit_size
from raftka.replication.errors import CompactedError, RaftSafetyError, UnavailableError
from raftka.replication.state import Snapshot
from raftka.replication.storage import Storage


class Unstable:
    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        return self.snapshot.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.index if self.snapshot is not None else None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` are durable, unless they were replaced since (term differs)."""
        if self.maybe_term(index) != term or index < self.offset:
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            self.offset = first
            self.entries = list(entries)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.unstable = Unstable(storage.last_index() + 1)
        self.committed = storage.first_index() - 1
        self.applied = storage.first_index() - 1

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def stable_last_index(self) -> int:
        """Last index known durable: what the leader may count as its own acknowledgement."""
        return self.unstable.offset - 1 if self.unstable.entries else self.last_index()

    def term(self, index: int) -> int:
        """Term at ``index``; CompactedError before ``first_index()-1``, UnavailableError past the end."""
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        if index < self.first_index() - 1:
            raise CompactedError(f"index {index} is compacted (first index {self.first_index()})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self.storage.term(index)

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: is a log ending at (``last_index``, ``term``) at least as up to date as ours?"""
        ours = self.last_term()
        return term > ours or (term == ours and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` across storage and unstable; CompactedError if ``lo`` is compacted."""
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last index is {self.last_index()}")
        if lo >= hi:
            return []
        off = self.unstable.offset
        ents: list[Entry] = []
        if lo < off:
            ents = self.storage.entries(lo, min(hi, off), max_bytes)
            if len(ents) < min(hi, off) - lo:
                return ents
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return limit_size(ents, max_bytes)

    def entries_from(self, lo: int, max_bytes: int | None) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry that is new or disagrees with our log; 0 if all match."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest ``i <= index`` whose term is ``<= term``, with that term (fast back-off, §5.3).

        Every entry after it has a larger term than ``term`` and so cannot match a log whose
        entry at ``index`` has term ``term``: the leader may skip them all in one round trip.
        """
        index = min(index, self.last_index())
        while index > 0:
            try:
                t = self.term(index)
            except CompactedError:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, index: int, log_term: int, committed: int,
                     entries: list[Entry]) -> tuple[int, list[Entry]] | None:
        """Follower side of AppendEntries.

        If our log has (``index``, ``log_term``), keep every matching entry, overwrite from the first
        conflict, advance the commit index to ``min(committed, last new index)`` and return
        ``(last new index, entries actually written)``; otherwise return None (reject).
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        written: list[Entry] = []
        if conflict:
            if conflict <= self.committed:
                raise RaftSafetyError(f"entry {conflict} conflicts with the committed prefix (commit {self.committed})")
            written = entries[conflict - index - 1 :]
            self.append(written)
        self.commit_to(min(committed, last_new))
        return last_new, written

    def append(self, entries: list[Entry]) -> int:
        if entries:
            if entries[0].index <= self.committed:
                raise RaftSafetyError(f"append at {entries[0].index} would overwrite the committed prefix")
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def commit_to(self, index: int) -> bool:
        if index <= self.committed:
            return False
        if index > self.last_index():
            raise RaftSafetyError(f"commit {index} is beyond the last index {self.last_index()}")
        self.committed = index
        return True

    def applied_to(self, index: int) -> None:
        if index > self.committed or index < self.applied:
            raise RaftSafetyError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def next_committed_entries(self, max_bytes: int | None) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_bytes) if lo <= self.committed else []

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by ``snapshot`` (its entries all committed by definition)."""
        self.committed = snapshot.index
        self.unstable.restore(snapshot)
