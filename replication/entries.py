"""Log entries: the unit the Raft log stores and replicates.

An entry's ``data`` is opaque bytes. Raftka stores one record batch per NORMAL entry; NOOP entries
are appended by every new leader (so it can commit by counting an entry of its own term) and
CONF_CHANGE entries carry an encoded :class:`~raftka.replication.membership.ConfChange`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable

ENTRY_OVERHEAD_BYTES = 24
"""Fixed per-entry cost counted by size limits, so empty entries still consume budget."""


class EntryType(IntEnum):
    NORMAL = 0
    NOOP = 1
    CONF_CHANGE = 2


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        return ENTRY_OVERHEAD_BYTES + len(self.data)


def entries_size(entries: Iterable[Entry]) -> int:
    return sum(e.size() for e in entries)


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Longest prefix within ``max_bytes``, but never empty: one oversized entry must still move."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for n, e in enumerate(entries):
        total += e.size()
        if total > max_bytes and n > 0:
            return entries[:n]
    return entries
