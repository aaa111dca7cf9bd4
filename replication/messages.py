"""Messages exchanged between the Raft cores of one group.

Plain dataclasses with simple fields (ints, bytes, lists of entries) so the multi-Raft driver can
serialise them however it likes; the group id is the driver's business and is not in the message.
The core never mutates a message it receives, so a driver (or the simulator) may deliver one object
more than once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from raftka.replication.entries import Entry
from raftka.replication.state import Snapshot


class MessageType(IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESP = 12


@dataclass(slots=True)
class Message:
    """One Raft RPC or response.

    Field use by type:
      PRE_VOTE/VOTE: ``index``/``log_term`` = candidate's last log position; ``force`` = sent on
        a leadership transfer (bypasses the receivers' leader lease).
      *_VOTE_RESP: ``reject``.
      APPEND: ``index``/``log_term`` = position preceding ``entries``; ``commit`` = leader commit.
      APPEND_RESP: ``index`` = last index now matching the leader (accept) or the rejected
        ``index`` (reject) with ``reject_hint``/``log_term`` = the follower's guess of the
        conflict point for fast back-off.
      HEARTBEAT: ``commit`` = min(leader commit, follower match); ``context`` = a ReadIndex round;
        ``quiesce`` = the leader is going idle.
      HEARTBEAT_RESP: ``context`` echoed.
      SNAPSHOT: ``snapshot``.
      READ_INDEX: ``context`` (follower -> leader); READ_INDEX_RESP: ``index`` and ``context``.
        Without a context they ask for and grant a rejoining node's barrier (``raft.py``, design
        note 14): READ_INDEX ``index`` = the node's nonce; READ_INDEX_RESP ``index`` = the barrier,
        ``commit`` = the nonce echoed.
    """

    type: MessageType
    src: int
    dst: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    force: bool = False
    quiesce: bool = False

    def describe(self) -> str:
        """A one-line, deterministic rendering used by traces and scenario files."""
        t = self.type
        head = f"{self.src}->{self.dst} {t.name} term={self.term}"
        if t in (MessageType.PRE_VOTE, MessageType.VOTE):
            return f"{head} last={self.index}/{self.log_term}" + (" force" if self.force else "")
        if t in (MessageType.PRE_VOTE_RESP, MessageType.VOTE_RESP):
            return f"{head} {'reject' if self.reject else 'grant'}"
        if t == MessageType.APPEND:
            ents = " ".join(f"{e.index}/{e.term}" for e in self.entries)
            return f"{head} prev={self.index}/{self.log_term} commit={self.commit} entries=[{ents}]"
        if t == MessageType.APPEND_RESP:
            if self.reject:
                return f"{head} reject index={self.index} hint={self.reject_hint}/{self.log_term}"
            return f"{head} index={self.index}"
        if t == MessageType.HEARTBEAT:
            extra = (f" ctx={self.context.decode(errors='replace')}" if self.context else "") + (
                " quiesce" if self.quiesce else ""
            )
            return f"{head} commit={self.commit}{extra}"
        if t == MessageType.SNAPSHOT:
            assert self.snapshot is not None
            return f"{head} snapshot={self.snapshot.index}/{self.snapshot.term}"
        if t in (MessageType.HEARTBEAT_RESP, MessageType.READ_INDEX):
            return head + (f" ctx={self.context.decode(errors='replace')}" if self.context else "")
        if t == MessageType.READ_INDEX_RESP:
            return f"{head} index={self.index} ctx={self.context.decode(errors='replace')}"
        return head
