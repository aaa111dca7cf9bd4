"""The Raft state machine: a pure, deterministic core in the style of etcd-io/raft.

Inputs are :meth:`RaftNode.tick`, :meth:`RaftNode.step` (a message from a peer),
:meth:`RaftNode.propose`, :meth:`RaftNode.propose_conf_change`, :meth:`RaftNode.read_index`,
:meth:`RaftNode.transfer_leadership` and :meth:`RaftNode.campaign`. Outputs are collected into a
:class:`~raftka.replication.ready.Ready` that the driver persists, sends, applies and acknowledges
with :meth:`RaftNode.advance` (the contract is in ``ready.py``). The core does no I/O, owns no
thread and reads no clock: time is the number of ``tick()`` calls, randomness comes from the
``random.Random`` the driver passes in, so a seeded simulator replays any run exactly.

Design note: where Raftka departs from the Raft paper (Ongaro & Ousterhout, 2014) and why
-----------------------------------------------------------------------------------------
1. **PreVote** (thesis §9.6). An election timeout first runs a pre-election at ``term + 1`` that
   changes no durable state; only a node that could win starts a real election. A node that was
   partitioned away therefore does not inflate its term and depose a healthy leader on rejoin.
2. **CheckQuorum and a leader lease on votes** (thesis §6.2, §4.2.3). A leader that has not heard
   from a majority of voters within an election timeout steps down. A node that heard from a
   leader within the election timeout ignores (pre-)vote requests with a higher term (unless they
   come from a leadership transfer), so removed or rejoining nodes cannot disrupt the group. A node
   answers an AppendEntries/heartbeat with a stale term so that a deposed leader learns the new
   term (with PreVote, nothing else would tell it).
3. **Persisted commit index.** HardState carries ``commit`` (the paper keeps it volatile) so a
   restart does not replay the whole log to find it; losing it is harmless, so commit-only changes
   do not need an fsync (``Ready.must_sync``).
4. **The leader counts itself only once its entries are durable** (on ``advance``), so "a majority
   has the entry on disk" is literally what commit means; followers acknowledge only after their
   Ready is persisted. So a leader's appends may leave before its own write of them is durable
   (thesis §10.2.1, ``Ready.early_messages``): its fsync overlaps its followers'.
5. **Heartbeats are their own message**, not empty AppendEntries: they carry
   ``min(commit, follower match)`` so they never need a log-matching check, and they carry the
   ReadIndex context.
6. **Flow control** (the paper is silent): per-follower probe / replicate / snapshot states,
   pipelined appends bounded by count and bytes, batching of all proposals made since the previous
   Ready into one message per follower, and the etcd fast back-off (a rejection carries the
   follower's last index whose term is <= the leader's, so one round trip skips a whole term).
7. **Snapshots are sent whole** in one message (no chunking). If no acknowledgement arrives within
   an election timeout the leader falls back to probing and resends; the driver may report the
   outcome sooner with :meth:`RaftNode.report_snapshot`.
8. **Membership** is changed one voter at a time, effective on append (thesis ch. 4, see
   ``membership.py``), with the thesis' fix: one change in flight and only after the leader
   committed an entry of its term. **Learners** (not in the paper) replicate without voting. A
   leader removed by a change keeps leading until the change commits, without counting itself,
   then steps down. Nodes vote for candidates outside their configuration (thesis §4.2.3).
9. **Leadership transfer** (thesis §3.10): proposals are refused while a transfer runs; it is
   abandoned after an election timeout; the target campaigns at once, skipping PreVote.
10. **ReadIndex** (thesis §6.4), also for followers (forwarded to the leader). Reads wait until the
    leader has committed an entry of its term; reads outstanding when leadership is lost are
    dropped and the driver retries them.
11. **Quiescence** (not in the paper): an idle leader may tell its followers to stop their timers
    (:meth:`RaftNode.quiesce`); any real traffic wakes them. A quiesced group cannot notice a dead
    leader by itself, so the multi-Raft driver must call :meth:`RaftNode.wake` on the group's
    members when its failure detector reports a broker down.
12. **Followers do not forward proposals**; :class:`NotRaftLeaderError` carries the leader hint and the
    driver routes (Kafka clients already produce to the partition leader).
13. Election timeouts are randomized in ``[election_ticks, 2 * election_ticks)`` ticks.
14. **A node that lost its durable state rejoins as an observer until a barrier commits** (the paper
    assumes durable state is never lost). A broker whose data directory was deleted comes back under
    the same id with an empty log (``RaftConfig.rejoining``). Its lost state held promises Raft's
    safety rests on: the votes it cast, the terms it had seen, the entries it acknowledged. If
    leader A committed entry e with B, B is wiped, A dies and C (which never got e) asks B for its
    vote, B's empty log is "less up to date" than C's: B grants and C leads without e. So until it
    has caught up such a node grants no vote or pre-vote and never campaigns (not on TimeoutNow
    either), acknowledges appends only up to its own commit index and echoes no ReadIndex context:
    nothing it says counts towards an election, a commit or a read. It has caught up when its commit
    index reaches a **barrier**: a no-op that the leader of its current term appended after receiving
    its request (a READ_INDEX without context carrying a random nonce drawn at start; the answer,
    a READ_INDEX_RESP without context, carries the barrier's index and echoes the nonce; a new
    term needs a new barrier). Then it votes again, its vote in that term set to that leader.
    ``HardState.rejoining`` holds the rule and is durable before any message: a crash while catching
    up keeps it. A leader that led before the loss still holds the lost state's match for the node:
    so a rejoining node takes its commit index only from appends (which check log matching), never
    from a heartbeat's ``min(commit, match)``, and a leader that gets a barrier request with a new
    nonce forgets the node's progress and replicates to it from scratch (else it would ignore the
    empty log's rejections as stale, below that match, forever).
    Why a fresh barrier and not "the commit index the first leader it meets tells it": that commit
    index may lag what was committed (a new leader has not yet committed an entry of its term, so it
    does not yet count A's e), and that leader may be stale, of a term below one the lost state had
    voted in: catching up from it and then acknowledging its appends would let it commit over an
    entry that a newer leader committed with the lost acknowledgement. The argument: the barrier b,
    of term t, is appended after the node restarted, so after every promise of the lost state, and
    commits with a majority Q without the node (its acknowledgements never pass its commit index,
    which only ever holds entries a majority without it stored). Take a candidate X that the lost
    state voted for, or a leader it acknowledged, in a term T > t. Any majority electing X meets Q
    in a node V other than this one; V cannot have voted for X before acknowledging b (its term
    would then exceed t) nor after (X's log was fixed before the restart, so its last entry is of a
    term below t, or of term t and older than b: V's log, holding b, is more up to date). So no
    term above t has a leader that the lost state helped elect or commit, and every entry committed
    with its help is of a term <= t, appended before the restart, hence at or below b in the log it
    now holds. In terms below t it never votes again (its term is t); in t it has voted for t's
    leader, which no other candidate of t can beat. Its state is now as strong as the state it lost.
    A group in which a majority of voters lost their state has lost data whatever any rule does:
    it stays unavailable (no barrier can commit, no candidate can win) rather than electing a leader
    without it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from enum import Enum

from raftka.replication.entries import Entry, EntryType, entries_size
from raftka.replication.errors import (
    CompactedError,
    ConfChangeInProgressError,
    DuplicateReadContextError,
    LeadershipTransferError,
    NotRaftLeaderError,
    ProposalDroppedError,
    ReadyContractError,
)
from raftka.replication.log import RaftLog
from raftka.replication.membership import ConfChange, Membership, apply_conf_change
from raftka.replication.messages import Message, MessageType
from raftka.replication.progress import Progress, ProgressState, ProgressView
from raftka.replication.quorum import VoteResult, committed_index, has_majority, vote_result
from raftka.replication.readindex import PendingRead, ReadIndexQueue, ReadState
from raftka.replication.ready import Ready
from raftka.replication.state import ConfState, HardState
from raftka.replication.storage import Storage

logger = logging.getLogger(__name__)

MT = MessageType

_WAKING_MESSAGES = frozenset({MT.APPEND, MT.SNAPSHOT, MT.VOTE, MT.TIMEOUT_NOW, MT.READ_INDEX})
"""Messages that end quiescence (a non-quiescing HEARTBEAT does too). PreVotes do not: answering
one needs no timer, and a lagging node's pre-campaign must not wake a healthy idle group. A PreVote
from the leader a node follows does wake it, and is not refused for the leader's lease: the leader
campaigning means it lost its leadership (its group failed and was rebuilt from storage, or it
restarted), and followers of a quiescent group would otherwise stay in its lease, timers stopped,
with no one left to elect a leader."""


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class _Campaign(Enum):
    PRE_ELECTION = 1
    ELECTION = 2
    TRANSFER = 3


@dataclass(frozen=True)
class RaftConfig:
    """Static parameters of one node in one group.

    ``applied`` lets a driver whose state machine is durable resume applying after that index
    instead of after the snapshot.
    """

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    max_apply_bytes: int = 64 << 20
    applied: int = 0
    broadcast_commit: bool = True
    """Tell followers at once when the commit index moves (an empty append each). When False they
    learn it from the next append or heartbeat, up to ``heartbeat_ticks`` later: under a steady load
    it rides on the appends anyway, and a lone write saves a message and a reply per follower. Turn
    it off only for groups whose followers need not apply promptly (a partition's followers serve
    no reads; the metadata log's do)."""
    rejoining: bool = False
    """This node lost its durable state (its data directory was deleted) and comes back under its old
    id: it rejoins as an observer until it has caught up (design note 14). It applies only to an
    empty storage (no hard state, entry or snapshot); a storage with state follows its HardState, so
    a driver may pass the flag again on every reopen. The core persists the rule in
    ``HardState.rejoining`` with its first Ready, so a restart keeps it without this flag; a driver
    that crashes before that Ready is durable finds its storage still empty and passes it again."""

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be positive")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if self.max_inflight_msgs <= 0 or self.max_msg_bytes <= 0:
            raise ValueError("max_inflight_msgs and max_msg_bytes must be positive")


class RaftNode:
    """One replica of one Raft group. Not thread-safe: the driver calls it from one loop."""

    def __init__(self, config: RaftConfig, storage: Storage, rng: random.Random) -> None:
        self.id = config.id
        self._cfg = config
        self._rng = rng
        self._log = RaftLog(storage)
        hs, snap = storage.initial_state()
        self._membership = Membership(snap.conf_state, snap.index)
        self._membership.append(storage.config_entries(snap.index + 1, storage.last_index() + 1))
        self._log.commit_to(max(hs.commit, snap.index))
        self._log.applied_to(max(snap.index, config.applied, self._log.applied))
        self._term = hs.term
        self._vote = hs.vote
        self._hard_state = hs
        empty = hs == HardState() and snap.index == 0 and storage.last_index() == 0
        self._rejoining = hs.rejoining or (config.rejoining and empty)
        self._nonce = rng.getrandbits(63) + 1 if self._rejoining else 0
        self._barrier = 0
        self._barrier_leader = 0
        self._barrier_asked = False
        self._barriers: dict[int, tuple[int, int]] = {}
        self._lead = 0
        self._role = Role.FOLLOWER
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._outstanding: Ready | None = None
        self._progress: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._reads = ReadIndexQueue()
        self._reads_awaiting_commit: list[tuple[bytes, int]] = []
        self._lead_transferee = 0
        self._transfer_campaign = False
        self._term_start_index = 0
        self._needs_append: set[int] = set()
        self._throttled: dict[int, tuple[int, bool]] = {}
        self._quiescent = False
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = config.election_ticks
        self._become_follower(self._term, 0)

    # ------------------------------------------------------------------ status for the driver

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> int:
        """The leader this node currently follows (itself if leader), 0 if unknown."""
        return self._lead

    @property
    def commit_index(self) -> int:
        """The highest index known committed: the partition's high watermark."""
        return self._log.committed

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def conf_state(self) -> ConfState:
        """The configuration in force (the latest one in the log, committed or not)."""
        return self._membership.current

    def conf_state_at(self, index: int) -> ConfState:
        """The configuration in force at ``index`` (any index still in the log): pass it to
        ``Storage.create_snapshot`` when snapshotting the state machine at ``index``."""
        return self._membership.at(index)

    def progress(self) -> dict[int, ProgressView]:
        """Per-member replication progress (leader only; empty otherwise). Match indexes give the
        in-sync replica set; the leader's own entry is its durable last index."""
        return {i: pr.view() for i, pr in self._progress.items()}

    @property
    def elected_by_transfer(self) -> bool:
        """Whether this node's latest campaign was a leadership transfer's (TimeoutNow), not an election
        timeout's: tells a leader how it came to lead, for the driver's statistics."""
        return self._transfer_campaign

    @property
    def is_quiescent(self) -> bool:
        return self._quiescent

    @property
    def rejoining(self) -> bool:
        """Whether this node is catching up after losing its durable state (design note 14)."""
        return self._rejoining

    def term_of(self, index: int) -> int:
        """Term of the entry at ``index`` in this node's log (raises CompactedError/UnavailableError)."""
        return self._log.term(index)

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance logical time by one tick (the driver's heartbeat interval unit)."""
        if self._quiescent:
            return
        if self._role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start a (pre-)election now, as if the election timeout had fired."""
        self._quiescent = False
        if self._role != Role.LEADER:
            self._campaign(_Campaign.PRE_ELECTION)

    def defer_election(self, ticks: int) -> None:
        """Let ``ticks`` more pass before this node's next election timeout. A replica of a new group that
        is not its preferred leader defers, so that the preferred one, whose first vote request may have
        come before this node hosted the group, wins the next round. Only delays a timer: safety is
        unaffected, and any message from a leader resets the timer as usual."""
        if self._role != Role.LEADER:
            self._election_elapsed -= ticks

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a new entry on the leader; returns its index (committed later).

        Every proposal made before the next :meth:`ready` travels in the same append message.
        """
        self._require_leader()
        if self._lead_transferee:
            raise ProposalDroppedError(f"leadership transfer to {self._lead_transferee} in progress")
        self._quiescent = False
        return self._append_entries([(EntryType.NORMAL, data)])

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a single-server configuration change; returns its index.

        Raises ConfChangeInProgressError while the previous change is uncommitted or before the
        leader has committed an entry of its own term, and ConfChangeError if invalid.
        """
        self._require_leader()
        if self._lead_transferee:
            raise ProposalDroppedError(f"leadership transfer to {self._lead_transferee} in progress")
        if self._membership.latest_index > self._log.committed:
            raise ConfChangeInProgressError(f"configuration change at {self._membership.latest_index} is not committed")
        if self._log.committed < self._term_start_index:
            raise ConfChangeInProgressError("the leader has not yet committed an entry of its term")
        apply_conf_change(self._membership.current, change)
        self._quiescent = False
        return self._append_entries([(EntryType.CONF_CHANGE, change.encode())])

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; a ReadState with this ``context`` appears in a later Ready.

        ``context`` must be non-empty and unique among the group's outstanding reads. Reads are
        dropped silently if leadership changes meanwhile; the driver retries after a timeout.
        """
        if not context:
            raise ValueError("a read context must be non-empty")
        self._quiescent = False
        if self._role == Role.LEADER:
            if context in self._reads or any(c == context for c, _ in self._reads_awaiting_commit):
                raise DuplicateReadContextError(f"read context {context!r} is already outstanding")
            self._leader_read(context, self.id)
        elif self._lead:
            self._send(Message(MT.READ_INDEX, self.id, self._lead, self._term, context=context))
        else:
            raise NotRaftLeaderError(self.id, 0)

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to voter ``target`` once it has caught up (TimeoutNow)."""
        self._require_leader()
        if target == self.id:
            return
        if target not in self._membership.current.voters:
            raise LeadershipTransferError(f"{target} is not a voter")
        if self._lead_transferee == target:
            return
        logger.debug("node %d: transferring leadership to %d at term %d", self.id, target, self._term)
        self._lead_transferee = target
        self._election_elapsed = 0
        self._quiescent = False
        if self._progress[target].match == self._log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, self.id, target, self._term))

    def quiesce(self) -> bool:
        """Leader only: if the group is idle and fully replicated, tell followers to stop their
        timers and stop ticking; returns whether the group is now quiescent."""
        if self._role != Role.LEADER:
            return False
        if self._quiescent:
            return True
        last = self._log.last_index()
        if (
            self._lead_transferee
            or self._reads
            or self._reads_awaiting_commit
            or self._log.committed != last
            or self._log.term(last) != self._term
        ):
            return False
        for i, pr in self._progress.items():
            if pr.match != last or (i != self.id and (pr.state != ProgressState.REPLICATE or len(pr.inflights))):
                return False
        self._quiescent = True
        for i in self._progress:
            if i != self.id:
                self._send(Message(MT.HEARTBEAT, self.id, i, self._term, commit=self._log.committed, quiesce=True))
        return True

    def wake(self) -> None:
        """End quiescence (the driver's failure detector suspects the leader, or new work came)."""
        self._quiescent = False

    def throttle(self, peer: int, max_inflight_bytes: int, paused: bool) -> None:
        """Flow control for a member the driver sends at a limited rate (a catching-up learner):
        pipeline at most ``max_inflight_bytes`` of unacknowledged appends to it (at least one
        message; 0 restores ``RaftConfig.max_inflight_bytes``), and while ``paused`` send it no
        append at all (the driver pauses it while its bandwidth is used up, so neither heartbeat
        responses nor probes make the leader read and send more than the limit lets through).
        What is sent, and when entries commit, is unchanged: learners never count towards a quorum."""
        if max_inflight_bytes or paused:
            self._throttled[peer] = (max_inflight_bytes, paused)
        else:
            self._throttled.pop(peer, None)
        pr = self._progress.get(peer)
        if pr is not None:
            pr.inflights.max_bytes = max_inflight_bytes or self._cfg.max_inflight_bytes
            pr.held = paused

    def report_unreachable(self, peer: int) -> None:
        """The transport could not deliver to ``peer``: stop pipelining to it until it answers."""
        pr = self._progress.get(peer)
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: int, success: bool) -> None:
        """The transport finished (or failed) streaming a snapshot to ``peer``."""
        pr = self._progress.get(peer)
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not success:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True

    def step(self, m: Message) -> None:
        """Process one message from a peer."""
        if m.dst != self.id:
            raise ValueError(f"message for {m.dst} delivered to {self.id}")
        from_leader = m.src == self._lead
        if m.type in _WAKING_MESSAGES or (m.type == MT.HEARTBEAT and not m.quiesce) or (
                m.type == MT.PRE_VOTE and from_leader):
            self._quiescent = False
        if m.term > self._term:
            if m.type in (MT.PRE_VOTE, MT.VOTE) and not m.force and self._in_lease() and not from_leader:
                return
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
                pass
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self._term:
            if m.type in (MT.APPEND, MT.HEARTBEAT):
                self._send(Message(MT.APPEND_RESP, self.id, m.src, self._term))
            elif m.type == MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, self.id, m.src, self._term, reject=True))
            return

        if m.type in (MT.PRE_VOTE, MT.VOTE):
            self._handle_vote_request(m)
        elif self._role == Role.LEADER:
            self._step_leader(m)
        elif self._role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # ------------------------------------------------------------------ ready / advance

    def ready(self) -> Ready | None:
        """Collect the work for the driver, or None if there is none. See ``ready.py``."""
        if self._outstanding is not None:
            raise ReadyContractError("the previous Ready has not been advanced")
        if self._role == Role.LEADER:
            self._flush_appends()
        hs = HardState(self._term, self._vote, self._log.committed, self._rejoining)
        hs_changed = hs != self._hard_state
        entries = tuple(self._log.unstable.entries)
        snapshot = self._log.unstable.snapshot
        committed = tuple(self._log.next_committed_entries(self._cfg.max_apply_bytes))
        if not (hs_changed or entries or snapshot or committed or self._msgs or self._read_states):
            return None
        must_sync = (
            bool(entries)
            or snapshot is not None
            or hs.term != self._hard_state.term
            or hs.vote != self._hard_state.vote
            or hs.rejoining != self._hard_state.rejoining
        )
        early, late = _split_early(self._msgs, self._hard_state.term)
        rd = Ready(
            hard_state=hs if hs_changed else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=committed,
            messages=late,
            early_messages=early,
            read_states=tuple(self._read_states),
            must_sync=must_sync,
        )
        self._msgs = []
        self._read_states = []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd`` (steps 1-3 of the contract)."""
        if rd is not self._outstanding:
            raise ReadyContractError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        if rd.hard_state is not None:
            self._hard_state = rd.hard_state
        if rd.snapshot is not None:
            self._log.unstable.stable_snap_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self._log.unstable.stable_to(last.index, last.term)
            if self._role == Role.LEADER and self._progress[self.id].maybe_update(self._log.stable_last_index()):
                self._maybe_commit()
        applied = max(
            rd.snapshot.index if rd.snapshot is not None else 0,
            rd.committed_entries[-1].index if rd.committed_entries else 0,
        )
        if applied > self._log.applied:
            self._log.applied_to(applied)
            self._membership.compact_to(min(applied, self._log.first_index() - 1))

    # ------------------------------------------------------------------ role transitions

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = 0
            self._barrier = 0
            self._barrier_leader = 0
            self._barrier_asked = False
        self._lead = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self._cfg.election_ticks + self._rng.randrange(self._cfg.election_ticks)
        self._votes = {}
        self._progress = {}
        self._reads.clear()
        self._reads_awaiting_commit = []
        self._lead_transferee = 0
        self._needs_append = set()
        self._barriers = {}
        self._quiescent = False

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._lead = lead
        logger.debug("node %d: follower at term %d (leader %d)", self.id, term, lead)

    def _become_pre_candidate(self) -> None:
        self._role = Role.PRE_CANDIDATE
        self._lead = 0
        self._votes = {}
        self._quiescent = False

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self.id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role = Role.LEADER
        self._lead = self.id
        last = self._log.last_index()
        self._sync_progress()
        own = self._progress[self.id]
        own.match = self._log.stable_last_index()
        own.become_replicate()
        self._term_start_index = last + 1
        self._append_entries([(EntryType.NOOP, b"")])
        logger.debug("node %d: leader at term %d", self.id, self._term)

    def _promotable(self) -> bool:
        return self.id in self._membership.current.voters and not self._rejoining

    def _in_lease(self) -> bool:
        return self._lead != 0 and self._election_elapsed < self._cfg.election_ticks

    def _require_leader(self) -> None:
        if self._role != Role.LEADER:
            raise NotRaftLeaderError(self.id, self._lead)

    # ------------------------------------------------------------------ elections

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._rejoining and self._election_elapsed % self._cfg.election_ticks == 0:
            self._ask_barrier()
        if self._promotable() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self._campaign(_Campaign.PRE_ELECTION)

    def _campaign(self, kind: _Campaign) -> None:
        if not self._promotable():
            logger.debug("node %d: not a voter or rejoining, not campaigning", self.id)
            return
        if kind == _Campaign.PRE_ELECTION:
            self._become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self._term + 1
        else:
            self._become_candidate()
            self._transfer_campaign = kind == _Campaign.TRANSFER
            vote_type, term = MT.VOTE, self._term
        self._votes[self.id] = True
        if self._tally() == VoteResult.WON:
            self._on_election_won()
            return
        last, last_term = self._log.last_index(), self._log.last_term()
        force = kind == _Campaign.TRANSFER
        for v in self._membership.current.voters:
            if v != self.id:
                self._send(Message(vote_type, self.id, v, term, log_term=last_term, index=last, force=force))

    def _tally(self) -> VoteResult:
        return vote_result(self._membership.current.voters, self._votes)

    def _on_election_won(self) -> None:
        if self._role == Role.PRE_CANDIDATE:
            self._campaign(_Campaign.ELECTION)
        else:
            self._become_leader()

    def _handle_vote_request(self, m: Message) -> None:
        resp = MT.PRE_VOTE_RESP if m.type == MT.PRE_VOTE else MT.VOTE_RESP
        can_vote = not self._rejoining and (
            self._vote == m.src
            or (self._vote == 0 and self._lead == 0)
            or (m.type == MT.PRE_VOTE and m.term > self._term)
        )
        if can_vote and self._log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, self.id, m.src, m.term))
            if m.type == MT.VOTE:
                self._election_elapsed = 0
                self._vote = m.src
        else:
            self._send(Message(resp, self.id, m.src, self._term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self._become_follower(m.term, m.src)
            self._step_follower(m)
            return
        expected = MT.PRE_VOTE_RESP if self._role == Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type != expected:
            return
        self._votes[m.src] = not m.reject
        result = self._tally()
        if result == VoteResult.WON:
            self._on_election_won()
        elif result == VoteResult.LOST:
            self._become_follower(self._term, 0)

    # ------------------------------------------------------------------ follower

    def _step_follower(self, m: Message) -> None:
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self._election_elapsed = 0
            self._lead = m.src
            if m.type == MT.APPEND:
                self._handle_append(m)
            elif m.type == MT.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
            if self._rejoining and not self._barrier and (m.type == MT.HEARTBEAT or not self._barrier_asked):
                self._ask_barrier()
            self._maybe_rejoin()
        elif m.type == MT.TIMEOUT_NOW:
            self._campaign(_Campaign.TRANSFER)
        elif m.type == MT.READ_INDEX_RESP:
            if m.context:
                self._read_states.append(ReadState(m.index, m.context))
            elif self._rejoining and m.commit == self._nonce:
                self._barrier, self._barrier_leader = m.index, m.src
                self._maybe_rejoin()

    def _ask_barrier(self) -> None:
        """Rejoining: ask the leader of this term for a barrier (design note 14); the leader answers
        every request, so asking again after a lost message is harmless."""
        if self._lead:
            self._barrier_asked = True
            self._send(Message(MT.READ_INDEX, self.id, self._lead, self._term, index=self._nonce))

    def _maybe_rejoin(self) -> None:
        """Lift the rejoin rule once the commit index reaches the barrier of this term."""
        if not self._rejoining or not self._barrier or self._log.committed < self._barrier:
            return
        self._rejoining = False
        if self._vote == 0:
            self._vote = self._barrier_leader
        logger.info("node %d: caught up after losing its state (barrier %d, term %d, leader %d); voting again",
                    self.id, self._barrier, self._term, self._barrier_leader)

    def _handle_append(self, m: Message) -> None:
        if m.index < self._log.committed:
            self._send(Message(MT.APPEND_RESP, self.id, m.src, self._term, index=self._log.committed))
            return
        result = self._log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if result is not None:
            last_new, written = result
            if written:
                self._membership.truncate_from(written[0].index)
                self._membership.append(written)
            if self._rejoining:
                last_new = min(last_new, self._log.committed)
            self._send(Message(MT.APPEND_RESP, self.id, m.src, self._term, index=last_new))
            return
        hint_index, hint_term = self._log.find_conflict_by_term(min(m.index, self._log.last_index()), m.log_term)
        self._send(
            Message(
                MT.APPEND_RESP,
                self.id,
                m.src,
                self._term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        """A rejoining node takes no commit index from a heartbeat, neither confirms a ReadIndex
        round nor stops its timer (it may still have a barrier to ask for). The commit index: a
        heartbeat carries ``min(commit, match)`` without a log-matching check, and the leader's
        match for this node may be what the lost state acknowledged, past this log's end or over
        entries this log holds differently; an append, which checks log matching, carries it."""
        if not self._rejoining:
            self._log.commit_to(m.commit)
        context = b"" if self._rejoining else m.context
        self._send(Message(MT.HEARTBEAT_RESP, self.id, m.src, self._term, context=context))
        if m.quiesce and not self._rejoining and self._log.committed == m.commit == self._log.last_index():
            self._quiescent = True

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        if snap.index > self._log.committed and not self._log.match_term(snap.index, snap.term):
            logger.debug("node %d: restoring snapshot %d/%d", self.id, snap.index, snap.term)
            self._log.restore(snap)
            self._membership.reset(snap.metadata.conf_state, snap.index)
            self._send(Message(MT.APPEND_RESP, self.id, m.src, self._term, index=self._log.last_index()))
            return
        if snap.index > self._log.committed:
            self._log.commit_to(snap.index)
        self._send(Message(MT.APPEND_RESP, self.id, m.src, self._term, index=self._log.committed))

    # ------------------------------------------------------------------ leader

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._cfg.election_ticks:
            self._election_elapsed = 0
            if not self._quorum_recently_active():
                logger.debug("node %d: lost its quorum at term %d, stepping down", self.id, self._term)
                self._become_follower(self._term, 0)
                return
            self._lead_transferee = 0
        for pr in self._progress.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= self._cfg.election_ticks:
                    pr.pending_snapshot = 0
                    pr.become_probe()
        if self._heartbeat_elapsed >= self._cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._reads.last_context())

    def _quorum_recently_active(self) -> bool:
        active = {self.id}
        for i, pr in self._progress.items():
            if i != self.id and pr.recent_active:
                active.add(i)
                pr.recent_active = False
        return has_majority(self._membership.current.voters, active)

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for i, pr in self._progress.items():
            if i != self.id:
                commit = min(pr.match, self._log.committed)
                self._send(Message(MT.HEARTBEAT, self.id, i, self._term, commit=commit, context=context))

    def _append_entries(self, items: list[tuple[EntryType, bytes]]) -> int:
        last = self._log.last_index()
        entries = [Entry(last + 1 + n, self._term, t, data) for n, (t, data) in enumerate(items)]
        self._log.append(entries)
        if any(e.type == EntryType.CONF_CHANGE for e in entries):
            self._membership.append(entries)
            self._sync_progress()
            self._maybe_commit()
        return entries[-1].index

    def _sync_progress(self) -> None:
        """Track exactly the current members (and the leader itself)."""
        members = set(self._membership.current.members()) | {self.id}
        for i in members:
            if i not in self._progress:
                max_bytes, held = self._throttled.get(i, (0, False))
                pr = Progress(self._log.last_index() + 1, self._cfg.max_inflight_msgs,
                              max_bytes or self._cfg.max_inflight_bytes)
                pr.held = held
                pr.recent_active = True
                self._progress[i] = pr
        for i in [i for i in self._progress if i not in members]:
            del self._progress[i]
        if self._lead_transferee and self._lead_transferee not in self._membership.current.voters:
            self._lead_transferee = 0

    def _step_leader(self, m: Message) -> None:
        if m.type == MT.READ_INDEX:
            if not m.context:
                self._answer_barrier(m.src, m.index)
            elif m.context not in self._reads:
                self._leader_read(m.context, m.src)
            return
        pr = self._progress.get(m.src)
        if pr is None:
            return
        if m.type == MT.APPEND_RESP:
            self._handle_append_resp(m, pr)
        elif m.type == MT.HEARTBEAT_RESP:
            self._handle_heartbeat_resp(m, pr)

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self._log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint) and pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            return
        updated = pr.maybe_update(m.index)
        if updated or (pr.match == m.index and pr.state == ProgressState.PROBE):
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self._log.first_index():
                pr.become_probe()
                pr.become_replicate()
            elif pr.state == ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if updated:
                self._maybe_commit()
        if self._role == Role.LEADER and m.src == self._lead_transferee and pr.match == self._log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, self.id, m.src, self._term))

    def _handle_heartbeat_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self._log.last_index():
            self._needs_append.add(m.src)
        if m.context:
            acks = self._reads.ack(m.context, m.src)
            if acks is not None and has_majority(self._membership.current.voters, acks):
                for read in self._reads.release_through(m.context):
                    self._respond_read(read)

    def _maybe_commit(self) -> None:
        """Raft §5.4.2: advance the commit index only by counting replicas of a current-term entry."""
        match = self._progress
        idx = committed_index(self._membership.current.voters, lambda v: match[v].match if v in match else 0)
        if idx <= self._log.committed or self._log.term(idx) != self._term:
            return
        self._log.commit_to(idx)
        if self._cfg.broadcast_commit:
            self._needs_append.update(i for i in self._progress if i != self.id)
        if self._reads_awaiting_commit:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for context, requester in waiting:
                self._leader_read(context, requester)
        if self.id not in self._membership.current.voters and self._log.committed >= self._membership.latest_index:
            logger.debug("node %d: removed from the voters, stepping down", self.id)
            self._become_follower(self._term, 0)

    def _flush_appends(self) -> None:
        """Send every follower what it lacks: pipelined while in REPLICATE, one probe in PROBE.

        Called once per Ready, so all proposals since the previous Ready share messages.
        """
        for i in self._progress:
            if i == self.id:
                continue
            sent = False
            while self._send_append(i, send_if_empty=False):
                sent = True
            if not sent and i in self._needs_append:
                self._send_append(i, send_if_empty=True)
        self._needs_append.clear()

    def _send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self._progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        try:
            prev_term = self._log.term(prev)
            entries = self._log.entries_from(pr.next, self._cfg.max_msg_bytes)
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                MT.APPEND,
                self.id,
                to,
                self._term,
                log_term=prev_term,
                index=prev,
                entries=entries,
                commit=self._log.committed,
            )
        )
        pr.sent_entries(len(entries), entries_size(entries), entries[-1].index if entries else prev)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        snapshot = self._log.storage.snapshot()
        pr.become_snapshot(snapshot.index)
        logger.debug("node %d: sending snapshot %d/%d to %d", self.id, snapshot.index, snapshot.term, to)
        self._send(Message(MT.SNAPSHOT, self.id, to, self._term, snapshot=snapshot))
        return True

    def _answer_barrier(self, requester: int, nonce: int) -> None:
        """A rejoining member asks for a barrier (design note 14): a no-op appended after its
        request arrived. One per (member, nonce): a repeated request gets the same index. A new
        nonce also means the member's log is not what it acknowledged (its progress may still hold
        the lost state's match): replicate to it from scratch."""
        pr = self._progress.get(requester)
        if pr is None or not nonce:
            return
        known_nonce, index = self._barriers.get(requester, (0, 0))
        if known_nonce != nonce:
            pr.forget()
            index = self._append_entries([(EntryType.NOOP, b"")])
            self._barriers[requester] = (nonce, index)
        self._send(Message(MT.READ_INDEX_RESP, self.id, requester, self._term, index=index, commit=nonce))

    # ------------------------------------------------------------------ reads

    def _leader_read(self, context: bytes, requester: int) -> None:
        if self._log.term(self._log.committed) != self._term:
            self._reads_awaiting_commit.append((context, requester))
            return
        read = PendingRead(self._log.committed, requester, context)
        voters = self._membership.current.voters
        if voters == (self.id,):
            self._respond_read(read)
            return
        self._reads.add(read)
        if self.id in voters:
            read.acks.add(self.id)
        self._broadcast_heartbeat(context)

    def _respond_read(self, read: PendingRead) -> None:
        if read.requester == self.id:
            self._read_states.append(ReadState(read.index, read.context))
        else:
            self._send(
                Message(MT.READ_INDEX_RESP, self.id, read.requester, self._term, index=read.index, context=read.context)
            )

    def _send(self, m: Message) -> None:
        self._msgs.append(m)


def _split_early(messages: list[Message], durable_term: int) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """(AppendEntries of the durable term, everything else): see ``Ready.early_messages``."""
    early: list[Message] = []
    late: list[Message] = []
    for m in messages:
        (early if m.type == MT.APPEND and m.term == durable_term else late).append(m)
    return tuple(early), tuple(late)
