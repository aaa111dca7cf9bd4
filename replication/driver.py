"""The multi-Raft driver: one asyncio loop drives every Raft group a broker hosts.

Each loop round collects the Ready of every group that has work, stages all their writes (storage
checks each entry as it stages it, so an entry it refuses never leaves), queues the leaders' early
appends, makes the writes durable with ONE sync (the broker's group commit: one fsync for every
group's entries and hard state), then sends all their other messages (the transport batches them
per destination broker, which coalesces heartbeats), applies committed entries, and advances. Rounds start as soon as a message,
a proposal or a tick makes a group dirty, so a proposal does not wait for the next tick.

Invariants (the core's Ready contract, for many groups at once):
- no message of a round leaves before the round's writes are durable, except ``early_messages``
  (a leader's appends, queued before the sync so that its fsync overlaps its followers');
- committed entries are handed to the group's applier in index order, exactly once per process
  lifetime (after a restart the applier is told where the core resumes: `applied_index`); a snapshot
  the group installs from its leader is handed to its restorer, if it has one, once durable and
  before the entries committed after it;
- a proposal's future resolves only when an entry with the proposal's index AND term is committed,
  and fails when a different entry is committed at that index (leadership changed first);
- a read's future resolves with its ReadIndex; the reader serves it once its state machine has
  applied that index. The core drops reads across leadership changes, so callers bound the wait.

The driver knows nothing of topics: a group is an opaque id, a storage, and an applier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence

from raftka.replication.entries import Entry
from raftka.replication.errors import ProposalDroppedError
from raftka.replication.messages import Message
from raftka.replication.raft import RaftConfig, RaftNode, Role
from raftka.replication.ready import Ready
from raftka.replication.state import Snapshot
from raftka.replication.storage import Storage

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, group: str, message: Message) -> None:
        """Queue a message for `message.dst`; delivery is best effort (Raft tolerates loss)."""
        ...


Applier = Callable[[Sequence[Entry]], None]
"""Receives a group's committed entries, in index order, after they are durable."""

Restorer = Callable[[Snapshot], None]
"""Receives a snapshot the group installed (its state machine now starts from it), once durable."""


@dataclass
class _Group:
    group_id: str
    node: RaftNode
    storage: Storage
    apply: Applier
    restore: Restorer | None
    pending: dict[int, tuple[int, asyncio.Future[int]]] = field(default_factory=dict)
    reads: dict[bytes, asyncio.Future[int]] = field(default_factory=dict)
    idle_ticks: int = 0


class MultiRaft:
    def __init__(self, broker_id: int, transport: Transport, sync: Callable[[], Awaitable[None]], *,
                 tick_interval_s: float = 0.05, quiesce_after_ticks: int = 20,
                 rng: random.Random | None = None, on_round: Callable[[int], None] | None = None) -> None:
        """`sync` makes every storage write staged so far durable (one fsync for all groups).

        A group whose leader saw no proposal for `quiesce_after_ticks` ticks is asked to quiesce,
        so idle groups stop heartbeating and cost nothing until traffic or `wake` revives them.
        `on_round(groups)` is told how many groups each synced round made durable.
        """
        self.broker_id = broker_id
        self._transport = transport
        self._sync = sync
        self._tick_interval_s = tick_interval_s
        self._quiesce_after_ticks = quiesce_after_ticks
        self._on_round = on_round
        self._rng = rng or random.Random()
        self._groups: dict[str, _Group] = {}
        self._dirty: set[str] = set()
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._tick_pending = False
        self._read_ids = 0
        self._read_prefix = broker_id.to_bytes(4, "big") + os.urandom(4)
        """Read contexts travel to the group's leader and must be unique among all its outstanding
        reads: every broker (and every incarnation of it) gets its own prefix."""
        self.rounds = 0

    def add_group(self, group_id: str, storage: Storage, apply: Applier, config: RaftConfig,
                  restore: Restorer | None = None) -> RaftNode:
        if group_id in self._groups:
            raise ValueError(f"group {group_id!r} is already hosted")
        if config.id != self.broker_id:
            raise ValueError(f"group {group_id!r}: node id {config.id} is not this broker ({self.broker_id})")
        node = RaftNode(config, storage, random.Random(self._rng.random()))
        self._groups[group_id] = _Group(group_id, node, storage, apply, restore)
        self._mark(group_id)
        return node

    def remove_group(self, group_id: str) -> None:
        group = self._groups.pop(group_id)
        self._dirty.discard(group_id)
        for future in [*(f for _, f in group.pending.values()), *group.reads.values()]:
            if not future.done():
                future.set_exception(ProposalDroppedError(f"group {group_id!r} was removed from this broker"))

    def node(self, group_id: str) -> RaftNode:
        return self._groups[group_id].node

    def groups(self) -> list[str]:
        return list(self._groups)

    def propose(self, group_id: str, data: bytes) -> asyncio.Future[int]:
        """Propose `data`; the future gives the entry's index once it is committed.

        Raises the core's NotLeaderError (with the leader hint) at once on a follower.
        """
        group = self._groups[group_id]
        index = group.node.propose(data)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        group.pending[index] = (group.node.term, future)
        group.idle_ticks = 0
        self._mark(group_id)
        return future

    def read_index(self, group_id: str) -> asyncio.Future[int]:
        """Start a linearizable read (ReadIndex); the future gives the index the reader must see
        applied. Raises the core's NotLeaderError when the group knows no leader. The future never
        resolves if leadership changes meanwhile: wait on it with a timeout."""
        group = self._groups[group_id]
        self._read_ids += 1
        context = self._read_prefix + self._read_ids.to_bytes(8, "big")
        group.node.read_index(context)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: group.reads.pop(context, None))
        group.reads[context] = future
        self._mark(group_id)
        return future

    def step(self, group_id: str, message: Message) -> None:
        """Deliver a peer's message (from the transport); unknown groups are ignored and logged."""
        group = self._groups.get(group_id)
        if group is None:
            log.debug("message for unhosted group=%s from=%d dropped", group_id, message.src)
            return
        group.node.step(message)
        self._mark(group_id)

    def wake(self, peer: int) -> None:
        """A peer broker went down or came back: wake the quiesced groups that must notice.

        Those are the groups this broker leads that include the peer (to replicate to it, or report
        it unreachable) and the groups the peer led (their followers must elect a new leader). Other
        groups stay quiet: waking a follower whose leader is fine would only risk a needless election.
        """
        for group_id, group in self._groups.items():
            node = group.node
            if peer not in node.conf_state.members():
                continue
            if node.role == Role.LEADER:
                node.report_unreachable(peer)
            elif node.leader_id != peer:
                continue
            node.wake()
            self._mark(group_id)

    def mark(self, group_id: str) -> None:
        """Tell the driver a group's node was driven directly (e.g. campaign, transfer)."""
        self._mark(group_id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"multi-raft-{self.broker_id}")

    async def stop(self) -> None:
        """Finish the current round, then stop driving (no cancellation mid-round)."""
        if self._task is not None:
            self._stopping = True
            self._work.set()
            await self._task
            self._task = None

    def _mark(self, group_id: str) -> None:
        self._dirty.add(group_id)
        self._work.set()

    async def _run(self) -> None:
        """Rounds run whenever there is work; a timer marks each tick due. One timer per tick
        rather than a timeout per wait: arming `asyncio.timeout` on every wake cost about 5% of the
        leader's event loop at 1,000 writes/s."""
        loop = asyncio.get_running_loop()
        ticker = loop.call_later(self._tick_interval_s, self._tick_due)
        try:
            while not self._stopping:
                if self._dirty or self._tick_pending:
                    await asyncio.sleep(0)
                else:
                    await self._work.wait()
                if self._stopping:
                    return
                self._work.clear()
                if self._tick_pending:
                    self._tick_pending = False
                    ticker = loop.call_later(self._tick_interval_s, self._tick_due)
                    self._tick()
                if self._dirty:
                    try:
                        await self._round()
                    except Exception:  # noqa: BLE001 - one bad round must not stop every group
                        log.exception("multi-raft round failed broker=%d", self.broker_id)
        finally:
            ticker.cancel()

    def _tick_due(self) -> None:
        self._tick_pending = True
        self._work.set()

    def _tick(self) -> None:
        for group_id, group in self._groups.items():
            node = group.node
            if node.is_quiescent:
                continue
            node.tick()
            group.idle_ticks += 1
            if group.idle_ticks >= self._quiesce_after_ticks and not group.pending:
                node.quiesce()
            self._dirty.add(group_id)

    async def _round(self) -> None:
        dirty, self._dirty = self._dirty, set()
        readies: list[tuple[_Group, Ready]] = []
        for group_id in dirty:
            group = self._groups.get(group_id)
            if group is None:
                continue
            ready = group.node.ready()
            if ready is not None:
                readies.append((group, ready))
        if not readies:
            return
        self.rounds += 1
        must_sync = False
        for group, ready in readies:
            if ready.snapshot is not None:
                group.storage.apply_snapshot(ready.snapshot)
            if ready.entries:
                group.storage.append(list(ready.entries))
            if ready.hard_state is not None:
                group.storage.set_hard_state(ready.hard_state)
            must_sync = must_sync or ready.must_sync
        for group, ready in readies:
            for message in ready.early_messages:
                self._transport.send(group.group_id, message)
        if must_sync:
            await self._sync()
            if self._on_round is not None:
                self._on_round(len(readies))
        for group, ready in readies:
            for message in ready.messages:
                self._transport.send(group.group_id, message)
        for group, ready in readies:
            if ready.snapshot is not None and group.restore is not None:
                group.restore(ready.snapshot)
            if ready.committed_entries:
                group.apply(ready.committed_entries)
                self._settle(group, ready.committed_entries)
            for read in ready.read_states:
                future = group.reads.get(read.context)
                if future is not None and not future.done():
                    future.set_result(read.index)
            group.node.advance(ready)
            self._dirty.add(group.group_id)

    @staticmethod
    def _settle(group: _Group, committed: Sequence[Entry]) -> None:
        for entry in committed:
            waiting = group.pending.pop(entry.index, None)
            if waiting is None:
                continue
            term, future = waiting
            if future.done():
                continue
            if entry.term == term:
                future.set_result(entry.index)
            else:
                future.set_exception(ProposalDroppedError(
                    f"entry {entry.index} of term {term} was replaced by one of term {entry.term} "
                    "(leadership changed before it committed)"))
