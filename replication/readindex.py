"""ReadIndex (Raft thesis §6.4): linearizable reads without writing to the log.

The leader records its commit index for each read, then proves it is still the leader by a
heartbeat round acknowledged by a majority; once acknowledged, the read may be served as soon as
the state machine has applied that index. Reads are released in request order, and acknowledging
a later round releases every earlier read too (a later heartbeat proves leadership at least as late).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReadState:
    """A released read: serve it once the state machine has applied ``index``."""

    index: int
    context: bytes


@dataclass(slots=True)
class PendingRead:
    index: int
    requester: int
    context: bytes
    acks: set[int] = field(default_factory=set)


class ReadIndexQueue:
    def __init__(self) -> None:
        self._reads: OrderedDict[bytes, PendingRead] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._reads)

    def __contains__(self, context: bytes) -> bool:
        return context in self._reads

    def add(self, read: PendingRead) -> None:
        self._reads[read.context] = read

    def ack(self, context: bytes, voter: int) -> set[int] | None:
        read = self._reads.get(context)
        if read is None:
            return None
        read.acks.add(voter)
        return read.acks

    def release_through(self, context: bytes) -> list[PendingRead]:
        released: list[PendingRead] = []
        while self._reads:
            ctx, read = self._reads.popitem(last=False)
            released.append(read)
            if ctx == context:
                break
        return released

    def last_context(self) -> bytes:
        return next(reversed(self._reads)) if self._reads else b""

    def clear(self) -> None:
        self._reads.clear()
