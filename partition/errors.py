"""Typed errors of the partition layer's own failures (partition logs, Raft entry logs, the log store).

What the API has an error code for is raised as that class, not a twin of it: a bad record batch is
`raftka.errors.CorruptBatchError` or `InvalidBatchError` (from `raftka.wire.batch`), and a read outside
a log is `raftka.errors.OffsetOutOfRangeError`. The errors here mean something no client is told
directly: a caller's misuse or bug (`InvalidOffsetError`, `EntryIndexError`, `InvalidEntryError`), a
log used after it was closed, a store whose writes failed. The broker treats them as failures, not as
bad requests: in a Raft group's round they stop that group on this broker (`raftka.replication.driver`,
"Failure contract"), and a failed store write stops the broker.
"""

from __future__ import annotations


class LogError(Exception):
    """Base class of every error `raftka.partition` raises of its own."""


class InvalidOffsetError(LogError):
    """`offset` is inside the log but not where the operation needs it (e.g. not a batch boundary)."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class EntryIndexError(LogError):
    """Raft entries [lo, hi) were asked for outside the [first, last] the operation allows."""

    def __init__(self, lo: int, hi: int, first: int, last: int) -> None:
        super().__init__(f"raft entries [{lo}, {hi}) are outside [{first}, {last}]")
        self.lo, self.hi, self.first, self.last = lo, hi, first, last


class InvalidEntryError(LogError):
    """A Raft entry cannot be appended where it is: a record entry's batch is not stamped with the
    base offset and term of that place, or indexes are not consecutive (a leader or driver bug)."""


class LogClosedError(LogError):
    """The log was dropped, or its store closed; the object can no longer be used."""


class StorageFailedError(LogError):
    """A RocksDB write failed. The store refuses all further work: what was staged is in doubt."""
