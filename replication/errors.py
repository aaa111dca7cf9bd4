"""Typed errors raised by the Raft core and its storage.

Callers distinguish "try elsewhere" (:class:`NotRaftLeaderError`), "try later"
(:class:`ProposalDroppedError`, :class:`ConfChangeInProgressError`), "this group is stopped here"
(:class:`GroupFailedError`), storage range errors the core
handles itself (:class:`CompactedError`, :class:`UnavailableError`) and contract breaches that mean
a bug in the driver or the core (:class:`ReadyContractError`, :class:`RaftSafetyError`).
"""


class RaftError(Exception):
    """Base class of every error raised by ``raftka.replication``."""


class NotRaftLeaderError(RaftError):
    """The operation needs the group's Raft leader and this node is not it; ``leader_id`` is the best
    known leader (0 if unknown: the core's "no node"). Not the API's ``raftka.errors.NotLeaderError``,
    which the broker answers a client with, naming the leader's broker and address."""

    def __init__(self, node_id: int, leader_id: int) -> None:
        super().__init__(f"node {node_id} is not the leader (leader hint: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(RaftError):
    """The leader refused a proposal for now (e.g. a leadership transfer is in progress)."""


class ConfChangeError(RaftError):
    """A configuration change is invalid against the current configuration."""


class ConfChangeInProgressError(ConfChangeError):
    """Only one configuration change may be pending, and only after the leader committed in its term."""


class LeadershipTransferError(RaftError):
    """The transfer target cannot become leader (unknown id or not a voter)."""


class DuplicateReadContextError(RaftError):
    """A ReadIndex context must be unique among outstanding reads of the group."""


class CompactedError(RaftError):
    """The requested index lies before the first index retained by the log (it is in a snapshot)."""


class UnavailableError(RaftError):
    """The requested index lies after the last index of the log."""


class SnapshotOutOfDateError(RaftError):
    """A snapshot older than the storage's current snapshot was offered."""


class GroupFailedError(RaftError):
    """The group's storage, state machine or core failed on this node: the group is stopped here
    until the driver reopens it from its durable state (see ``driver.py``, "Failure contract")."""


class ReadyContractError(RaftError):
    """The driver broke the ready/advance contract (two outstanding Readys, or a foreign Ready)."""


class RaftSafetyError(RaftError):
    """An input would violate a Raft safety invariant (e.g. overwrite a committed entry)."""
