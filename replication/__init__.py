"""The pure Raft core (``raft.py``) and what it is made of.

The multi-Raft driver needs: :class:`RaftNode`, :class:`RaftConfig`, :class:`Ready`, the message
and entry types, the errors, and a group's log in two seams, :class:`Storage` (what the core reads)
and :class:`LogWriter` (what the driver writes), both implemented by the partition log.
"""

from raftka.replication.entries import Entry, EntryType
from raftka.replication.errors import (
    CompactedError,
    ConfChangeError,
    ConfChangeInProgressError,
    DuplicateReadContextError,
    GroupFailedError,
    LeadershipTransferError,
    NotRaftLeaderError,
    ProposalDroppedError,
    RaftError,
    RaftSafetyError,
    ReadyContractError,
    SnapshotOutOfDateError,
    UnavailableError,
)
from raftka.replication.membership import ConfChange, ConfChangeOp
from raftka.replication.messages import Message, MessageType
from raftka.replication.progress import ProgressState, ProgressView
from raftka.replication.raft import RaftConfig, RaftNode, Role
from raftka.replication.readindex import ReadState
from raftka.replication.ready import Ready
from raftka.replication.state import ConfState, HardState, Snapshot, SnapshotMetadata
from raftka.replication.storage import LogWriter, MemoryStorage, Storage, bootstrap_snapshot

__all__ = [
    "CompactedError",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeInProgressError",
    "ConfChangeOp",
    "ConfState",
    "DuplicateReadContextError",
    "GroupFailedError",
    "Entry",
    "EntryType",
    "HardState",
    "LeadershipTransferError",
    "LogWriter",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotRaftLeaderError",
    "ProgressState",
    "ProgressView",
    "ProposalDroppedError",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "RaftSafetyError",
    "ReadState",
    "Ready",
    "ReadyContractError",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDateError",
    "Storage",
    "bootstrap_snapshot",
    "UnavailableError",
]
