"""The multi-Raft driver: one asyncio loop drives every Raft group a broker hosts.

Each loop round collects the Ready of every group that has work, stages all their writes (storage
checks each entry as it stages it, so an entry it refuses never leaves), queues the leaders' early
appends, makes the writes durable with ONE sync (the broker's group commit: one fsync for every
group's entries and hard state), then sends all their other messages (the transport batches them
per destination broker, which coalesces heartbeats), applies committed entries, and advances. Rounds
start as soon as a message, a proposal or a tick makes a group dirty, so a proposal does not wait for
the next tick.

Invariants (the core's Ready contract, for many groups at once):
- no message of a round leaves before the round's writes are durable, except ``early_messages``
  (a leader's appends, queued before the sync so that its fsync overlaps its followers');
- committed entries are handed to the group's applier in index order, exactly once per process
  lifetime (after a restart the applier is told where the core resumes: `applied_index`), except
  the entries of a batch the applier raised on (see the failure contract); a snapshot the group
  installs from its leader is handed to its restorer, if it has one, once durable and before the
  entries committed after it;
- a proposal's future resolves only when an entry with the proposal's index AND term is committed,
  and fails when a different entry is committed at that index, or as soon as the node stops leading
  the term it was proposed in (the entry may still commit under the next leader: the caller retries
  there, and an idempotent producer's retry is recognised);
- a read's future resolves with its ReadIndex; the reader serves it once its state machine has
  applied that index. The core drops reads across leadership changes, so callers bound the wait.

Failure contract. A group fails when its own part of a round raises: its storage refuses or fails a
write, its core raises (in ``ready``, ``advance``, ``step`` or ``tick``: a bug), its applier raises,
or one of its messages cannot be sent. Then, for that group only:
- nothing more of its round happens: none of its messages leave and it is not advanced;
- every proposal and read waiting on it fails at once with GroupFailedError;
- it is reported once: an ERROR log line ``raft group failed group=... stage=...`` and
  ``on_group_failed(group, stage)``;
- it is stopped: its node is replaced by a follower rebuilt from its storage that is neither ticked
  nor stepped (peers' messages to it are dropped, proposals are refused with GroupFailedError), so it
  neither votes nor claims to lead, and the rest of its Raft group carries on without it;
- after a backoff (``REOPEN_BACKOFF_S``, doubling with each failure since the group last ran
  ``HEALTHY_RESET_S`` without one, at most ``REOPEN_BACKOFF_MAX_S``) it is reopened: after one sync,
  so that whatever its failed round staged is durable, a new node is built from its storage, and
  its applier resumes after the last batch it accepted (the batch it raised on comes again: appliers
  skip and report bad input rather than raise).
Every other group keeps running; one group's failure never stops another's round.

The one failure every group shares is the sync (the group commit's write and fsync): what it
covered is in doubt, and retrying an fsync after a failure is unsafe (the kernel may have dropped the
dirty pages). So are a node that cannot be rebuilt from its storage and any error of the driver
itself. Then the driver fails every waiter, stops, and calls ``on_fatal(error)``: the broker exits
non-zero and its supervisor restarts it from its durable state.

The driver knows nothing of topics: a group is an opaque id, a storage, and an applier.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence

from raftka.replication.entries import Entry
from raftka.replication.errors import GroupFailedError, ProposalDroppedError
from raftka.replication.membership import ConfChange
from raftka.replication.messages import Message
from raftka.replication.raft import RaftConfig, RaftNode, Role
from raftka.replication.ready import Ready
from raftka.replication.state import Snapshot
from raftka.replication.storage import LogWriter
from raftka.replication.throttle import Throttle

log = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, group: str, message: Message) -> None:
        """Queue a message for `message.dst`; delivery is best effort (Raft tolerates loss)."""
        ...


Applier = Callable[[Sequence[Entry]], None]
"""Receives a group's committed entries, in index order, after they are durable."""

Restorer = Callable[[Snapshot], None]
"""Receives a snapshot the group installed (its state machine now starts from it), once durable."""

REOPEN_BACKOFF_S = 0.5
REOPEN_BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0
"""A failed group reopens after REOPEN_BACKOFF_S, then twice as long after each failure that follows
within HEALTHY_RESET_S of its reopening, up to REOPEN_BACKOFF_MAX_S: a group whose storage refuses
every round costs one log line and one rebuild per half minute, not a loop."""


@dataclass
class _Group:
    group_id: str
    node: RaftNode
    storage: LogWriter
    apply: Applier
    restore: Restorer | None
    config: RaftConfig
    applied: int
    """The last index the applier accepted, or the snapshot restored (or the index the node resumed from)."""
    pending: dict[int, tuple[int, asyncio.Future[int], float]] = field(default_factory=dict)
    """Proposals awaiting commit: index -> (term proposed in, future, monotonic time proposed)."""
    reads: dict[bytes, asyncio.Future[int]] = field(default_factory=dict)
    idle_ticks: int = 0
    stopped: bool = False
    failures: int = 0
    reopened_at: float = -math.inf
    led_term: int = 0
    """The last term in which this broker became the group's leader (counted once per term)."""


class _DriverFailed(Exception):
    """Raised inside the loop for a failure no single group owns; `_run` stops the driver."""


class MultiRaft:
    def __init__(self, broker_id: int, transport: Transport, sync: Callable[[], Awaitable[None]], *,
                 tick_interval_s: float = 0.05, quiesce_after_ticks: int = 20,
                 rng: random.Random | None = None, on_round: Callable[[int], None] | None = None,
                 on_group_failed: Callable[[str, str], None] | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 on_elected: Callable[[str], None] | None = None,
                 on_committed: Callable[[float], None] | None = None) -> None:
        """`sync` makes every storage write staged so far durable (one fsync for all groups).

        A group whose leader saw no proposal for `quiesce_after_ticks` ticks is asked to quiesce,
        so idle groups stop heartbeating and cost nothing until traffic or `wake` revives them.
        `on_round(groups)` is told how many groups each synced round made durable;
        `on_group_failed(group, stage)` and `on_fatal(error)`: see the failure contract above.
        `on_elected(cause)` is told each time this broker becomes a group's leader, once per term, by
        "election" (a timeout's campaign) or "transfer" (a leadership transfer handed it over);
        `on_committed(seconds)` the time each proposal this broker made took to commit (one call per
        entry, i.e. per record batch).
        """
        self.broker_id = broker_id
        self._transport = transport
        self._sync = sync
        self._tick_interval_s = tick_interval_s
        self._quiesce_after_ticks = quiesce_after_ticks
        self._on_round = on_round
        self._on_group_failed = on_group_failed
        self._on_fatal = on_fatal
        self._on_elected = on_elected
        self._on_committed = on_committed
        self._reopening: set[str] = set()
        self._failure: BaseException | None = None
        self._rng = rng or random.Random()
        self._groups: dict[str, _Group] = {}
        self._throttles: dict[str, Throttle] = {}
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

    def add_group(self, group_id: str, storage: LogWriter, apply: Applier, config: RaftConfig,
                  restore: Restorer | None = None) -> RaftNode:
        if group_id in self._groups:
            raise ValueError(f"group {group_id!r} is already hosted")
        if config.id != self.broker_id:
            raise ValueError(f"group {group_id!r}: node id {config.id} is not this broker ({self.broker_id})")
        node = self._new_node(config, storage)
        self._groups[group_id] = _Group(group_id, node, storage, apply, restore, config, node.applied_index)
        self._mark(group_id)
        return node

    def remove_group(self, group_id: str) -> None:
        self._throttles.pop(group_id, None)
        group = self._groups.pop(group_id)
        self._dirty.discard(group_id)
        self._reopening.discard(group_id)
        self._fail_waiters(group, ProposalDroppedError(f"group {group_id!r} was removed from this broker"))

    def node(self, group_id: str) -> RaftNode:
        """The group's current node: a failed group's is replaced (see the failure contract), so
        callers look it up here rather than keep the one `add_group` returned."""
        return self._groups[group_id].node

    def groups(self) -> list[str]:
        return list(self._groups)

    def stopped_groups(self) -> list[str]:
        """Groups stopped after a failure, waiting to be reopened."""
        return [group_id for group_id, group in self._groups.items() if group.stopped]

    def propose(self, group_id: str, data: bytes) -> asyncio.Future[int]:
        """Propose `data`; the future gives the entry's index once it is committed.

        Raises the core's NotRaftLeaderError (with the leader hint) at once on a follower, and
        GroupFailedError while the group is stopped after a failure.
        """
        group = self._live(group_id)
        return self._track(group, group.node.propose(data))

    def propose_conf_change(self, group_id: str, change: ConfChange) -> asyncio.Future[int]:
        """Propose a change of the group's voters or learners (one at a time); the future gives its
        index once committed. Raises as `RaftNode.propose_conf_change` does, and as `propose`."""
        group = self._live(group_id)
        return self._track(group, group.node.propose_conf_change(change))

    def _track(self, group: _Group, index: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        group.pending[index] = (group.node.term, future, time.monotonic())
        group.idle_ticks = 0
        self._mark(group.group_id)
        return future

    def read_index(self, group_id: str) -> asyncio.Future[int]:
        """Start a linearizable read (ReadIndex); the future gives the index the reader must see
        applied. Raises the core's NotRaftLeaderError when the group knows no leader. The future never
        resolves if leadership changes meanwhile: wait on it with a timeout."""
        group = self._live(group_id)
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
        if group is None or group.stopped:
            log.debug("message for unhosted or stopped group=%s from=%d dropped", group_id, message.src)
            return
        try:
            group.node.step(message)
        except Exception as exc:  # noqa: BLE001 - the group fails, not the transport that delivered
            self._fail(group, "core", exc)
            return
        self._mark(group_id)

    def wake(self, peer: int) -> None:
        """A peer broker went down or came back: wake the quiesced groups that must notice.

        Those are the groups this broker leads that include the peer (to replicate to it, or report
        it unreachable) and the groups the peer led (their followers must elect a new leader). Other
        groups stay quiet: waking a follower whose leader is fine would only risk a needless election.
        """
        for group_id, group in self._groups.items():
            node = group.node
            if group.stopped or peer not in node.conf_state.members():
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
        leader's event loop at 1,000 writes/s (measured on the development machine)."""
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
                try:
                    if self._failure is not None:
                        raise _DriverFailed("a group could not be rebuilt") from self._failure
                    if self._tick_pending:
                        self._tick_pending = False
                        ticker = loop.call_later(self._tick_interval_s, self._tick_due)
                        self._tick()
                    if self._reopening:
                        await self._reopen()
                    if self._dirty:
                        await self._round()
                except Exception as exc:  # noqa: BLE001 - groups' own failures never get here
                    self._stop_fatally((exc.__cause__ or exc) if isinstance(exc, _DriverFailed) else exc)
                    return
        finally:
            ticker.cancel()

    def _tick_due(self) -> None:
        self._tick_pending = True
        self._work.set()

    def _tick(self) -> None:
        now = time.monotonic()
        for group_id, throttle in list(self._throttles.items()):
            throttle.flush(now, functools.partial(self._transport.send, group_id))
            self._hold(self._groups[group_id], throttle)
        for group_id, group in list(self._groups.items()):
            node = group.node
            if group.stopped or node.is_quiescent:
                continue
            try:
                node.tick()
            except Exception as exc:  # noqa: BLE001 - see the failure contract
                self._fail(group, "core", exc)
                continue
            group.idle_ticks += 1
            if group.idle_ticks >= self._quiesce_after_ticks and not group.pending:
                node.quiesce()
            self._dirty.add(group_id)

    async def _round(self) -> None:
        dirty, self._dirty = self._dirty, set()
        readies: list[tuple[_Group, RaftNode, Ready]] = []
        for group_id in dirty:
            group = self._groups.get(group_id)
            if group is None or group.stopped:
                continue
            node = group.node
            try:
                ready = node.ready()
            except Exception as exc:  # noqa: BLE001 - see the failure contract
                self._fail(group, "core", exc)
                continue
            if node.role == Role.LEADER and node.term != group.led_term:
                group.led_term = node.term
                if self._on_elected is not None:
                    self._on_elected("transfer" if node.elected_by_transfer else "election")
            if ready is None:
                self._drop_stale_proposals(group)
                continue
            try:
                self._persist(group, ready)
            except Exception as exc:  # noqa: BLE001 - see the failure contract
                self._fail(group, "storage", exc)
                continue
            readies.append((group, node, ready))
        if not readies:
            return
        self.rounds += 1
        for group, _, ready in readies:
            self._send(group, ready.early_messages)
        if any(ready.must_sync for _, _, ready in readies):
            try:
                await self._sync()
            except Exception as exc:
                raise _DriverFailed("the group commit failed") from exc
            if self._on_round is not None:
                self._on_round(len(readies))
        for group, node, ready in readies:
            if group.node is node:
                self._send(group, ready.messages)
        for group, node, ready in readies:
            if group.node is not node:
                continue
            try:
                if ready.snapshot is not None and group.restore is not None:
                    group.restore(ready.snapshot)
                if ready.committed_entries:
                    group.apply(ready.committed_entries)
            except Exception as exc:  # noqa: BLE001 - see the failure contract
                self._fail(group, "apply", exc)
                continue
            if ready.snapshot is not None:
                group.applied = max(group.applied, ready.snapshot.index)
            if ready.committed_entries:
                group.applied = ready.committed_entries[-1].index
                self._settle(group, ready.committed_entries)
            for read in ready.read_states:
                future = group.reads.get(read.context)
                if future is not None and not future.done():
                    future.set_result(read.index)
            try:
                node.advance(ready)
            except Exception as exc:  # noqa: BLE001 - see the failure contract
                self._fail(group, "core", exc)
                continue
            self._drop_stale_proposals(group)
            self._dirty.add(group.group_id)

    def _persist(self, group: _Group, ready: Ready) -> None:
        """Step 1 of the Ready contract: stage the group's writes (made durable by the round's sync)."""
        if ready.snapshot is not None:
            group.storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            group.storage.append(list(ready.entries))
        if ready.hard_state is not None:
            group.storage.set_hard_state(ready.hard_state)

    def throttle(self, group_id: str, bytes_per_s: int, members: tuple[int, ...]) -> None:
        """Limit the bytes this broker sends `members` of the group it leads to `bytes_per_s` (a
        move's learners; `raftka.replication.throttle`); 0 or no members lifts the limit. The core
        pipelines at most a second's worth to them and sends them nothing while a message waits
        for the bucket, so it reads from its log no more than the throttle passes."""
        current = self._throttles.get(group_id)
        if current is not None and (current.bytes_per_s, current.members) == (bytes_per_s, frozenset(members)):
            return
        node = self._groups[group_id].node
        if current is not None:
            del self._throttles[group_id]
            for member in current.members:
                node.throttle(member, 0, paused=False)
            current.release(lambda message: self._transport.send(group_id, message))
            self._mark(group_id)
        if bytes_per_s > 0 and members:
            self._throttles[group_id] = Throttle(bytes_per_s, members, time.monotonic())
            for member in members:
                node.throttle(member, bytes_per_s, paused=False)

    def _hold(self, group: _Group, throttle: Throttle) -> None:
        """Hold the throttled members' appends back in the core while a message waits for the bucket."""
        if throttle.waiting == throttle.holding:
            return
        throttle.holding = throttle.waiting
        for member in throttle.members:
            group.node.throttle(member, throttle.bytes_per_s, paused=throttle.holding)
        if not throttle.holding:
            self._mark(group.group_id)

    def _send(self, group: _Group, messages: Sequence[Message]) -> None:
        if group.stopped:
            return
        throttle = self._throttles.get(group.group_id)
        try:
            for message in messages:
                if throttle is not None and throttle.applies_to(message):
                    throttle.offer(message, time.monotonic(), lambda m: self._transport.send(group.group_id, m))
                else:
                    self._transport.send(group.group_id, message)
            if throttle is not None:
                self._hold(group, throttle)
        except Exception as exc:  # noqa: BLE001 - see the failure contract
            self._fail(group, "send", exc)

    @staticmethod
    def _drop_stale_proposals(group: _Group) -> None:
        """Fail the proposals of a term this node no longer leads, at once: waiting for them to
        commit would hold their callers until the partition heals or their request times out.
        Pending proposals are in term order, so the oldest tells whether any is stale."""
        if not group.pending:
            return
        node = group.node
        leading = node.role == Role.LEADER
        if leading and next(iter(group.pending.values()))[0] == node.term:
            return
        for index, (term, future, _) in list(group.pending.items()):
            if leading and term == node.term:
                continue
            del group.pending[index]
            if not future.done():
                future.set_exception(ProposalDroppedError(
                    f"this node stopped leading term {term} before entry {index} committed; "
                    "it may still commit under the next leader"))

    def _new_node(self, config: RaftConfig, storage: LogWriter) -> RaftNode:
        return RaftNode(config, storage, random.Random(self._rng.random()))

    def _rebuilt(self, group: _Group) -> RaftNode:
        """A node from the group's storage whose applier resumes after the last batch it accepted."""
        return self._new_node(dataclasses.replace(group.config, applied=group.applied), group.storage)

    def _live(self, group_id: str) -> _Group:
        group = self._groups[group_id]
        if group.stopped:
            raise GroupFailedError(f"group {group_id!r} is stopped on broker {self.broker_id} after a failure; "
                                   "it is reopened shortly")
        return group

    def _fail(self, group: _Group, stage: str, exc: BaseException) -> None:
        """Stop a group after its own failure (the failure contract in the module docstring)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        group.failures = 1 if now - group.reopened_at >= HEALTHY_RESET_S else group.failures + 1
        delay = min(REOPEN_BACKOFF_MAX_S, REOPEN_BACKOFF_S * 2 ** (group.failures - 1))
        group.stopped = True
        log.error("raft group failed group=%s broker=%d stage=%s failures=%d reopen_in_s=%.1f error=%s: %s",
                  group.group_id, self.broker_id, stage, group.failures, delay, type(exc).__name__, exc,
                  exc_info=exc)
        self._fail_waiters(group, GroupFailedError(
            f"group {group.group_id!r} failed on broker {self.broker_id} ({stage}: {type(exc).__name__}: {exc})"))
        self._dirty.discard(group.group_id)
        try:
            group.node = self._rebuilt(group)
        except Exception as rebuild:  # noqa: BLE001 - its storage cannot even be read: no group can trust it
            log.critical("raft group cannot be rebuilt from its storage group=%s broker=%d error=%s: %s",
                         group.group_id, self.broker_id, type(rebuild).__name__, rebuild)
            self._failure = rebuild
            self._work.set()
            return
        if self._on_group_failed is not None:
            self._on_group_failed(group.group_id, stage)
        loop.call_later(delay, self._reopen_due, group.group_id, group.node)

    def _reopen_due(self, group_id: str, dormant: RaftNode) -> None:
        group = self._groups.get(group_id)
        if group is not None and group.node is dormant:
            self._reopening.add(group_id)
            self._work.set()

    async def _reopen(self) -> None:
        """Rebuild the due groups from their storage, once a sync has made what they staged durable."""
        try:
            await self._sync()
        except Exception as exc:
            raise _DriverFailed("the group commit failed") from exc
        due, self._reopening = self._reopening, set()
        for group_id in due:
            group = self._groups.get(group_id)
            if group is None or not group.stopped:
                continue
            try:
                group.node = self._rebuilt(group)
            except Exception as exc:
                raise _DriverFailed(f"group {group_id} could not be rebuilt") from exc
            group.stopped = False
            group.idle_ticks = 0
            group.reopened_at = asyncio.get_running_loop().time()
            log.info("raft group reopened group=%s broker=%d applied=%d", group_id, self.broker_id, group.applied)
            self._mark(group_id)

    @staticmethod
    def _fail_waiters(group: _Group, error: Exception) -> None:
        waiting = [*(future for _, future, _ in group.pending.values()), *group.reads.values()]
        group.pending.clear()
        group.reads.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    def _stop_fatally(self, exc: BaseException) -> None:
        log.critical("multi-raft driver stopped broker=%d error=%s: %s", self.broker_id, type(exc).__name__, exc,
                     exc_info=exc)
        self._stopping = True
        error = GroupFailedError(f"broker {self.broker_id} can no longer write ({type(exc).__name__}: {exc})")
        for group in self._groups.values():
            group.stopped = True
            self._fail_waiters(group, error)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _settle(self, group: _Group, committed: Sequence[Entry]) -> None:
        now = time.monotonic()
        for entry in committed:
            waiting = group.pending.pop(entry.index, None)
            if waiting is None:
                continue
            term, future, proposed = waiting
            if entry.term == term and self._on_committed is not None:
                self._on_committed(now - proposed)
            if future.done():
                continue
            if entry.term == term:
                future.set_result(entry.index)
            else:
                future.set_exception(ProposalDroppedError(
                    f"entry {entry.index} of term {term} was replaced by one of term {entry.term} "
                    "(leadership changed before it committed)"))
