"""A bandwidth limit on what a group's leader sends to some of its members (the learners of a move).

Partition moves copy a whole log to a new replica; unthrottled, that copy competes with the
producers' traffic for the disk and the network (Kafka's replication throttle, KIP-73). The limit
applies only to the members named (learners catching up): voters are never delayed, so the
acknowledgements of writes are not slowed.

A throttled APPEND or SNAPSHOT message waits in a queue until the token bucket holds its size; the
bucket fills at `bytes_per_s` and holds at most one second of it. While a message waits, the driver
holds the member's appends back in the Raft core (`RaftNode.throttle`), and the core pipelines at
most a second's worth to it, so the leader reads from its log no more than the throttle lets
through and the queue stays small; beyond `MAX_QUEUED_S` seconds of traffic a new message is
dropped instead (Raft resends what a member never acknowledged). Invariant: over any window of T
seconds a throttled member is sent at most `bytes_per_s * (T + 1)` bytes, plus one message larger
than the bucket (a message is never split).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from raftka.replication.messages import Message, MessageType

MAX_QUEUED_S = 2.0
_THROTTLED = frozenset({MessageType.APPEND, MessageType.SNAPSHOT})


def message_bytes(message: Message) -> int:
    """What a message costs against the throttle: its entries' data, or its snapshot's."""
    if message.snapshot is not None:
        return len(message.snapshot.data)
    return sum(len(entry.data) for entry in message.entries)


class Throttle:
    def __init__(self, bytes_per_s: int, members: tuple[int, ...], now: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.members = frozenset(members)
        self._tokens = float(bytes_per_s)
        self._stamp = now
        self._queue: deque[tuple[Message, int]] = deque()
        self._queued_bytes = 0
        self.dropped = 0
        self.holding = False
        """Whether the driver holds the members' appends back in the core (a message is waiting)."""

    @property
    def waiting(self) -> bool:
        return bool(self._queue)

    def applies_to(self, message: Message) -> bool:
        return message.dst in self.members and message.type in _THROTTLED

    def offer(self, message: Message, now: float, send: Callable[[Message], None]) -> None:
        size = message_bytes(message)
        if self._queued_bytes + size > self.bytes_per_s * MAX_QUEUED_S and self._queue:
            self.dropped += 1
            return
        self._queue.append((message, size))
        self._queued_bytes += size
        self.flush(now, send)

    def flush(self, now: float, send: Callable[[Message], None]) -> None:
        """Send the queued messages the bucket allows now, in order."""
        self._tokens = min(float(self.bytes_per_s), self._tokens + (now - self._stamp) * self.bytes_per_s)
        self._stamp = now
        while self._queue and (self._tokens >= self._queue[0][1] or self._tokens >= self.bytes_per_s):
            message, size = self._queue.popleft()
            self._queued_bytes -= size
            self._tokens -= size
            send(message)

    def release(self, send: Callable[[Message], None]) -> None:
        """The throttle is lifted: send what waits."""
        while self._queue:
            send(self._queue.popleft()[0])
        self._queued_bytes = 0
