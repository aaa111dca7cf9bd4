"""Typed errors of the partition layer (record-batch format, partition logs, the log store).

The partition layer knows nothing about gRPC, but every error names the gRPC status it should travel
as (`grpc_status`, a `grpc.StatusCode` member name) so the broker can map it without a table of its
own. The broker re-raises them as the API's errors (`raftka.errors`).
"""

from __future__ import annotations

from typing import ClassVar


class LogError(Exception):
    """Base class of every error raised by `raftka.partition`."""

    grpc_status: ClassVar[str] = "INTERNAL"


class BatchError(LogError):
    """A record batch cannot be accepted; `position` is its byte offset in the buffer examined."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class CorruptBatchError(BatchError):
    """The bytes are damaged: the CRC32C does not match, or the buffer ends inside the batch."""

    grpc_status = "DATA_LOSS"


class InvalidBatchError(BatchError):
    """The bytes are intact but do not form a batch this build accepts (bad magic, length, fields)."""


class OffsetOutOfRangeError(LogError):
    """`offset` lies outside [start_offset, end_offset] of the log."""

    grpc_status = "OUT_OF_RANGE"

    def __init__(self, offset: int, start_offset: int, end_offset: int) -> None:
        super().__init__(f"offset {offset} is out of range: the log holds offsets "
                         f"{start_offset} (start) to {end_offset} (end, exclusive)")
        self.offset = offset
        self.start_offset = start_offset
        self.end_offset = end_offset


class InvalidOffsetError(LogError):
    """`offset` is inside the log but not where the operation needs it (e.g. not a batch boundary)."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class EntryIndexError(LogError):
    """Raft entries [lo, hi) were asked for outside the [first, last] the operation allows."""

    grpc_status = "OUT_OF_RANGE"

    def __init__(self, lo: int, hi: int, first: int, last: int) -> None:
        super().__init__(f"raft entries [{lo}, {hi}) are outside [{first}, {last}]")
        self.lo, self.hi, self.first, self.last = lo, hi, first, last


class InvalidEntryError(LogError):
    """A Raft entry cannot be appended where it is: a record entry's batch is not stamped with the
    base offset and term of that place, or indexes are not consecutive (a leader or driver bug)."""

    grpc_status = "INTERNAL"


class LogClosedError(LogError):
    """The log was dropped, or its store closed; the object can no longer be used."""

    grpc_status = "FAILED_PRECONDITION"


class StorageFailedError(LogError):
    """A RocksDB write failed. The store refuses all further work: what was staged is in doubt."""

    grpc_status = "INTERNAL"
