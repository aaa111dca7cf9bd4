"""A deterministic in-process cluster of Raft cores, with a safety checker, for the simulator and
the scenario tests.

Each :class:`SimNode` plays the driver of one core: its :class:`MemoryStorage` is the disk (what
survives a crash), a Ready that was taken but not yet completed is the write in flight (lost on a
crash, with everything else in the core's memory), and a hash chain over applied entries is the
state machine. :meth:`SimNode.lose_disk` is a crash that also loses the disk: the node restarts
empty under its old id, as a broker started with ``--replace`` after its data directory was lost,
and (unless told otherwise, to show what the rule prevents) with ``RaftConfig.rejoining``. The
:class:`Network` delivers, drops, duplicates and reorders messages and honours directed blocks
(symmetric and asymmetric partitions).

:class:`SafetyChecker` states the Raft invariants and checks them incrementally, as the cluster
runs, so every check is cheap:

* election safety: at most one leader per term;
* log matching: two persisted entries with the same index and term have identical prefixes
  (checked through a hash chain over each node's persisted log);
* committed prefix: every commit index a node persists agrees with one canonical committed log;
  no node truncates below its own persisted commit index;
* leader completeness: a leader of term t holds every entry reported committed in a term < t;
* state-machine safety: every applied entry (and every installed snapshot) equals the canonical
  committed one, so anything acknowledged to a client is what every node later applies;
* ReadIndex linearizability: a read's index is at least every commit reported before it began.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, field, replace
from typing import Callable

from raftka.replication.entries import Entry
from raftka.replication.errors import CompactedError, RaftError
from raftka.replication.messages import Message
from raftka.replication.raft import RaftConfig, RaftNode, Role
from raftka.replication.ready import Ready
from raftka.replication.membership import Membership
from raftka.replication.state import ConfState, Snapshot
from raftka.replication.storage import MemoryStorage

GENESIS = b"\x00" * 8
BOOT = b"boot-sm\x00"
"""State-machine state in the bootstrap snapshot (index 1) of the founding members."""
_ENTRY_HEADER = struct.Struct(">QQB")


def chain(prev: bytes, e: Entry) -> bytes:
    """Hash of a log prefix ending with ``e``: equal chains at an index mean equal prefixes."""
    return hashlib.blake2b(prev + _ENTRY_HEADER.pack(e.index, e.term, e.type) + e.data, digest_size=8).digest()


class Violation(Exception):
    """A safety or liveness property failed; the message says which and where."""


@dataclass
class SafetyChecker:
    violations: list[str] = field(default_factory=list)
    leader_of_term: dict[int, int] = field(default_factory=dict)
    entry_chain: dict[tuple[int, int], bytes] = field(default_factory=dict)
    canon: dict[int, tuple[int, bytes]] = field(default_factory=lambda: {0: (0, GENESIS), 1: (1, BOOT)})
    max_committed: int = 1
    commit_by_term: dict[int, int] = field(default_factory=dict)
    read_floor: dict[bytes, int] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.violations.append(what)
        raise Violation(what)

    def on_entries_persisted(self, node: SimNode, first_new: int, prev_commit: int) -> None:
        if first_new <= prev_commit:
            self.fail(f"node {node.id} overwrote its committed prefix at {first_new} (commit {prev_commit})")
        for i in range(first_new, node.storage.last_index() + 1):
            key = (i, node.storage.term(i))
            h = node.chain_at(i)
            known = self.entry_chain.setdefault(key, h)
            if known != h:
                self.fail(f"log matching: node {node.id} entry {i}/{key[1]} has a different prefix")

    def on_commit_persisted(self, node: SimNode, term: int, commit: int) -> None:
        if commit > self.max_committed:
            if (self.max_committed >= node.chain_off
                    and node.chain_at(self.max_committed) != self.canon[self.max_committed][1]):
                self.fail(f"node {node.id} committed {commit} on a log that disagrees at {self.max_committed}")
            for i in range(max(self.max_committed, node.chain_off) + 1, commit + 1):
                self.canon[i] = (node.storage.term(i), node.chain_at(i))
            self.max_committed = commit
        elif commit >= node.chain_off:
            known = self.canon.get(commit)
            if known is not None and known[1] != node.chain_at(commit):
                self.fail(f"node {node.id} committed entry {commit} differs from the committed log")
        if commit > self.commit_by_term.get(term, 0):
            self.commit_by_term[term] = commit

    def on_applied(self, node: SimNode, index: int, state: bytes) -> None:
        known = self.canon.get(index)
        if known is None:
            self.fail(f"node {node.id} applied {index} before any node reported it committed")
        elif known[1] != state:
            self.fail(f"state machine safety: node {node.id} applied a different entry at {index}")

    def on_read_started(self, context: bytes) -> None:
        self.read_floor[context] = self.max_committed

    def on_read_released(self, node: SimNode, index: int, context: bytes) -> None:
        floor = self.read_floor.pop(context, None)
        if floor is not None and index < floor:
            self.fail(f"ReadIndex on node {node.id}: index {index} < {floor} committed before the read")

    def check_leaders(self, nodes: list[SimNode]) -> None:
        for n in nodes:
            core = n.core
            if core is None or core.role != Role.LEADER:
                continue
            t = core.term
            holder = self.leader_of_term.setdefault(t, n.id)
            if holder != n.id:
                self.fail(f"election safety: nodes {holder} and {n.id} both led term {t}")
            j = max((c for term, c in self.commit_by_term.items() if term < t), default=0)
            known = self.canon.get(j)
            if j == 0 or known is None:
                continue
            if j > core.last_index:
                self.fail(f"leader completeness: leader {n.id} of term {t} lacks entry {j} committed earlier")
            try:
                held = core.term_of(j)
            except CompactedError:
                continue
            if held != known[0]:
                self.fail(f"leader completeness: leader {n.id} of term {t} has {j}/{held}, committed {j}/{known[0]}")


class SimNode:
    """The driver of one core plus its disk; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        conf: ConfState,
        config: RaftConfig,
        seed: int,
        make_rng: Callable[[int], random.Random] | None = None,
    ) -> None:
        """A founding member if ``conf`` has voters, else a node with empty storage that may join.

        ``make_rng(restarts)`` gives the core its randomness (seeded from ``seed`` by default).
        """
        self.id = node_id
        self.config = config
        self.seed = seed
        self.make_rng = make_rng or (lambda restarts: random.Random(seed * 1_000_003 + node_id * 7919 + restarts))
        self.storage = MemoryStorage.bootstrap(conf, BOOT) if conf.voters else MemoryStorage()
        snap = self.storage.snapshot()
        self.chain_off = snap.index
        self.chain: list[bytes] = [snap.data or GENESIS]
        self.core: RaftNode | None = None
        self.pending: Ready | None = None
        self.pending_due = 0
        self.early_sent = False
        self.restarts = 0
        self.sm_index = 0
        self.sm_state = GENESIS
        self.applied_data: list[bytes] = []
        self.rejoin_rule = True
        self.lost_state_floor: int | None = None
        """While set, this node's disk was lost and it has not yet caught up: it has not yet
        persisted a commit index of at least this floor (the highest commit any node had persisted
        when the disk was lost) with the rejoin rule lifted. Such a node counts as failed when
        the simulator decides whether another disk may be lost."""
        self.start()

    @property
    def alive(self) -> bool:
        return self.core is not None

    def start(self) -> None:
        """Start the core on what the disk holds; a node whose disk was lost starts rejoining
        (``RaftConfig.rejoining``, which the core applies to an empty disk only; once persisted, its
        HardState keeps the rule)."""
        config = replace(self.config, rejoining=self.lost_state_floor is not None and self.rejoin_rule)
        self.core = RaftNode(config, self.storage, self.make_rng(self.restarts))
        snap = self.storage.snapshot()
        self.sm_index = snap.index
        self.sm_state = snap.data or GENESIS

    def crash(self) -> None:
        self.core = None
        self.pending = None
        self.restarts += 1

    def lose_disk(self, committed: int, rejoin_rule: bool = True) -> None:
        """Crash and lose the disk: the node restarts (``start``) with empty storage. ``committed``
        is the highest commit persisted anywhere now (see ``lost_state_floor``); ``rejoin_rule``
        False restarts it as an ordinary empty node, which Raft's safety argument does not cover."""
        self.crash()
        self.storage = MemoryStorage()
        self.chain_off, self.chain = 0, [GENESIS]
        self.sm_index, self.sm_state = 0, GENESIS
        self.rejoin_rule = rejoin_rule
        self.lost_state_floor = committed

    @property
    def lost_state(self) -> bool:
        """Whether this node's disk was lost and it has not yet caught up (``lost_state_floor``)."""
        return self.lost_state_floor is not None

    def latest_conf(self) -> ConfState:
        """The configuration in force at this node: its core's, or the one its disk holds."""
        if self.core is not None:
            return self.core.conf_state
        snap = self.storage.snapshot()
        membership = Membership(snap.metadata.conf_state, snap.index)
        membership.append(self.storage.config_entries(snap.index + 1, self.storage.last_index() + 1))
        return membership.current

    def chain_at(self, index: int) -> bytes:
        return self.chain[index - self.chain_off]

    def take_ready(self) -> Ready | None:
        assert self.core is not None and self.pending is None
        self.pending = self.core.ready()
        self.early_sent = False
        return self.pending

    def send_early(self) -> tuple[Message, ...]:
        """The pending Ready's early messages, to send while its write is still in flight (a crash
        before ``complete_ready`` then loses the write but not the messages)."""
        assert self.pending is not None and not self.early_sent
        self.early_sent = True
        return self.pending.early_messages

    def complete_ready(self, checker: SafetyChecker,
                       on_apply: Callable[[SimNode, Entry], None] | None = None) -> tuple[Message, ...]:
        """Persist the pending Ready, then apply it and advance; returns the messages to send
        (its early ones first, unless ``send_early`` already returned them)."""
        assert self.core is not None and self.pending is not None
        rd, self.pending = self.pending, None
        outgoing = rd.messages if self.early_sent else rd.early_messages + rd.messages
        prev_commit = self.storage.hard_state.commit
        if rd.snapshot is not None:
            self._persist_snapshot(rd.snapshot, checker)
        if rd.entries:
            self._persist_entries(list(rd.entries), checker, prev_commit)
        if rd.hard_state is not None:
            hs = rd.hard_state
            self.storage.set_hard_state(hs)
            checker.on_commit_persisted(self, hs.term, hs.commit)
            if self.lost_state_floor is not None and not hs.rejoining and hs.commit >= self.lost_state_floor:
                self.lost_state_floor = None
        if rd.snapshot is not None:
            self.sm_index, self.sm_state = rd.snapshot.index, rd.snapshot.data
            checker.on_applied(self, self.sm_index, self.sm_state)
        for e in rd.committed_entries:
            if e.index != self.sm_index + 1:
                checker.fail(f"node {self.id} applied {e.index} after {self.sm_index}")
            self.sm_state = chain(self.sm_state, e)
            self.sm_index = e.index
            checker.on_applied(self, e.index, self.sm_state)
            if on_apply is not None:
                on_apply(self, e)
        for rs in rd.read_states:
            checker.on_read_released(self, rs.index, rs.context)
        self.core.advance(rd)
        return outgoing

    def _persist_snapshot(self, snap: Snapshot, checker: SafetyChecker) -> None:
        self.storage.apply_snapshot(snap)
        self.chain_off = snap.index
        self.chain = [snap.data]
        known = checker.canon.get(snap.index)
        if known is None or known[1] != snap.data:
            checker.fail(f"node {self.id} received snapshot {snap.index} that is not the committed state")

    def _persist_entries(self, entries: list[Entry], checker: SafetyChecker, prev_commit: int) -> None:
        entries = [e for e in entries if e.index > self.chain_off]
        if not entries:
            return
        self.storage.append(entries)
        first = entries[0].index
        del self.chain[first - self.chain_off :]
        h = self.chain[-1]
        for e in entries:
            h = chain(h, e)
            self.chain.append(h)
        checker.on_entries_persisted(self, first, prev_commit)

    def snapshot_and_compact(self, keep: int) -> bool:
        """Snapshot the state machine at its applied index and drop all but ``keep`` older entries."""
        core = self.core
        if core is None or self.sm_index <= self.storage.snapshot().index or self.sm_index != core.applied_index:
            return False
        try:
            conf = core.conf_state_at(self.sm_index)
        except RaftError:
            return False
        self.storage.create_snapshot(self.sm_index, conf, self.sm_state)
        compact_to = self.sm_index - keep
        if compact_to >= self.storage.first_index():
            self.storage.compact(compact_to)
            del self.chain[: compact_to - self.chain_off]
            self.chain_off = compact_to
        return True


class Network:
    """Messages in flight, each with a delivery tick; ``blocked`` holds directed (src, dst) pairs."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, int, Message]] = []
        self.blocked: set[tuple[int, int]] = set()
        self._seq = 0

    def send(self, m: Message, due: int) -> None:
        self._seq += 1
        self.queue.append((due, self._seq, m))

    def take_due(self, now: int) -> list[Message]:
        due = [item for item in self.queue if item[0] <= now]
        if due:
            self.queue = [item for item in self.queue if item[0] > now]
        return [m for _, _, m in sorted(due)]

    def partition(self, groups: list[list[int]]) -> None:
        """Block every pair of nodes in different groups, both ways."""
        self.blocked = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}

    def heal(self) -> None:
        self.blocked = set()
