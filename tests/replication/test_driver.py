"""The multi-Raft driver: many groups on three brokers, driven by one loop per broker.

Storage is the core's MemoryStorage and the network a loopback between three drivers in one event
loop, so these tests check the driver's own contract (persist, one sync, send, apply, advance;
proposal futures; quiescence); the RocksDB storage and the gRPC transport have their own tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from functools import partial

import pytest

from raftka.replication import (ConfState, Entry, GroupFailedError, HardState, MemoryStorage, Message, MessageType,
                                NotRaftLeaderError, ProposalDroppedError, RaftConfig, Role, Snapshot,
                                bootstrap_snapshot)
from raftka.replication.driver import MultiRaft
from waiting import until

BROKERS = (1, 2, 3)


class Loopback:
    """Delivers each broker's messages to the destination driver on the next loop iteration."""

    def __init__(self) -> None:
        self.drivers: dict[int, MultiRaft] = {}
        self.down: set[int] = set()
        self.sent = 0
        self.log: list[tuple[int, str, Message]] = []

    def for_broker(self, broker: int) -> Loopback.Endpoint:
        return Loopback.Endpoint(self, broker)

    class Endpoint:
        def __init__(self, net: Loopback, broker: int) -> None:
            self.net, self.broker = net, broker

        def send(self, group: str, message: Message) -> None:
            net = self.net
            net.sent += 1
            net.log.append((self.broker, group, message))
            if self.broker in net.down or message.dst in net.down:
                return
            asyncio.get_running_loop().call_soon(net.drivers[message.dst].step, group, message)


class Cluster:
    def __init__(self, groups: int) -> None:
        self.net = Loopback()
        self.syncs = {b: 0 for b in BROKERS}
        self.sync_errors: dict[int, Exception] = {}
        """A broker listed here fails its next sync with this error."""
        self.failures: list[tuple[int, str, str]] = []
        """(broker, group, stage) of every group failure the drivers reported."""
        self.fatal: dict[int, BaseException] = {}
        self.applied: dict[tuple[int, str], list[bytes]] = {}
        self.restored: dict[tuple[int, str], list[tuple[int, bytes]]] = {}
        self.storages: dict[tuple[int, str], MemoryStorage] = {}
        rng = random.Random(7)
        for broker in BROKERS:
            async def sync(broker: int = broker) -> None:
                self.syncs[broker] += 1
                if broker in self.sync_errors:
                    raise self.sync_errors.pop(broker)
            driver = MultiRaft(broker, self.net.for_broker(broker), sync, tick_interval_s=0.01,
                               quiesce_after_ticks=10, rng=random.Random(rng.random()),
                               on_group_failed=partial(self._group_failed, broker),
                               on_fatal=partial(self.fatal.__setitem__, broker))
            self.net.drivers[broker] = driver
            for g in range(groups):
                storage = MemoryStorage()
                storage.apply_snapshot(bootstrap_snapshot(ConfState(voters=BROKERS)))
                storage.set_hard_state(HardState(term=1, commit=1))
                key = (broker, f"g{g}")
                self.applied[key], self.restored[key] = [], []
                self.storages[key] = storage
                driver.add_group(f"g{g}", storage, partial(self._apply, key),
                                 RaftConfig(id=broker, election_ticks=10, applied=1),
                                 restore=partial(self._restore, key))

    def _group_failed(self, broker: int, group: str, stage: str) -> None:
        self.failures.append((broker, group, stage))

    def _apply(self, key: tuple[int, str], entries: list[Entry]) -> None:
        self.applied[key].extend(e.data for e in entries if e.data)

    def _restore(self, key: tuple[int, str], snapshot: Snapshot) -> None:
        self.restored[key].append((snapshot.index, snapshot.data))

    def start(self) -> None:
        for driver in self.net.drivers.values():
            driver.start()

    async def stop(self) -> None:
        for driver in self.net.drivers.values():
            await driver.stop()

    def leader(self, group: str) -> int | None:
        leaders = [b for b, d in self.net.drivers.items()
                   if b not in self.net.down and d.node(group).role == Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    async def wait_leader(self, group: str, timeout_s: float = 10) -> int:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (leader := self.leader(group)) is None:
            assert asyncio.get_running_loop().time() < deadline, f"no leader for {group}"
            await asyncio.sleep(0.01)
        return leader


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def refuse_next_append(storage: MemoryStorage, error: Exception) -> None:
    """The storage refuses its next append of any entry (once), as a full or failing disk would."""
    append = storage.append

    def refuse(entries):
        if entries:
            storage.append = append
            raise error
        append(entries)
    storage.append = refuse  # type: ignore[method-assign]  # a failing disk, injected


def test_proposals_commit_in_order_on_every_broker() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=20)
        cluster.start()
        futures = []
        for g in range(20):
            group = f"g{g}"
            leader = await cluster.wait_leader(group)
            futures += [cluster.net.drivers[leader].propose(group, f"{group}-{i}".encode()) for i in range(5)]
        indexes = await asyncio.gather(*futures)
        assert all(index > 1 for index in indexes)
        await until(lambda: all(len(cluster.applied[(b, f"g{g}")]) >= 5 for g in range(20) for b in BROKERS),
                    "every broker applied every group's proposals")
        for g in range(20):
            expected = [f"g{g}-{i}".encode() for i in range(5)]
            for broker in BROKERS:
                assert cluster.applied[(broker, f"g{g}")] == expected
        assert sum(cluster.syncs.values()) < 20 * 5 * 3, "one sync covers many groups' writes"
        await cluster.stop()
    run(scenario())


def test_an_entry_the_leaders_storage_refuses_never_reaches_a_follower() -> None:
    """Early appends leave before the fsync, but only after storage has checked and staged the
    entries: a refused entry stops the leader's round, not its followers'."""
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        await cluster.net.drivers[leader].propose("g0", b"fine")
        storage = cluster.storages[(leader, "g0")]
        append = storage.append

        def refuse(entries):
            if any(e.data == b"poison" for e in entries):
                raise ValueError("refused by storage")
            append(entries)
        storage.append = refuse  # type: ignore[method-assign]  # a disk refusing one entry, injected
        cluster.net.drivers[leader].propose("g0", b"poison")
        # The refusal fails the group in the very round that would have sent the entry early, and
        # sends are logged as they happen: once the failure is reported, nothing more can leave.
        await until(lambda: cluster.failures == [(leader, "g0", "storage")], "the leader's storage refused the entry")
        carried = [m for src, _, m in cluster.net.log if src == leader and any(e.data == b"poison" for e in m.entries)]
        assert carried == []
        assert all(b"poison" not in cluster.applied[(b, "g0")] for b in BROKERS)
        await cluster.stop()
    run(scenario())


def test_a_group_whose_storage_fails_stops_alone_and_reopens() -> None:
    """One refused append, on a broker that leads some groups and follows others: that group fails
    its waiters and stops on that broker, every other group keeps committing, and once reopened the
    failed group catches up and commits again (no group is left wedged)."""
    async def scenario() -> None:
        groups = [f"g{g}" for g in range(20)]
        cluster = Cluster(groups=len(groups))
        cluster.start()
        leaders = {group: await cluster.wait_leader(group) for group in groups}
        broken = "g3"
        victim = leaders[broken]
        refuse_next_append(cluster.storages[(victim, broken)], OSError(28, "No space left on device"))
        failed = cluster.net.drivers[victim].propose(broken, b"refused")
        with pytest.raises(GroupFailedError):
            await asyncio.wait_for(failed, 10)
        assert cluster.failures == [(victim, broken, "storage")]
        assert broken in cluster.net.drivers[victim].stopped_groups()

        async def write(group: str, data: bytes) -> None:
            while True:
                leader = await cluster.wait_leader(group, timeout_s=30)
                try:
                    await asyncio.wait_for(cluster.net.drivers[leader].propose(group, data), 5)
                    return
                except (NotRaftLeaderError, ProposalDroppedError, GroupFailedError, TimeoutError):
                    await asyncio.sleep(0.05)

        def applied_everywhere(group: str) -> bool:
            return all(f"{group}-after".encode() in cluster.applied[(b, group)] for b in BROKERS)

        await asyncio.gather(*(write(group, f"{group}-after".encode()) for group in groups))
        for group in groups:
            await until(partial(applied_everywhere, group), f"every broker applied {group}'s write")
        assert b"refused" not in cluster.applied[(victim, broken)]
        assert cluster.net.drivers[victim].stopped_groups() == []
        assert len(cluster.failures) == 1 and not cluster.fatal
        await cluster.stop()
    run(scenario())


def test_an_applier_that_raises_gets_the_batch_again_after_the_reopen() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=2)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        follower = next(b for b in BROKERS if b != leader)
        driver = cluster.net.drivers[follower]
        group = driver._groups["g0"]
        apply, raised = group.apply, []

        def flaky(entries):
            if not raised:
                raised.append(True)
                raise RuntimeError("state machine bug")
            apply(entries)
        group.apply = flaky
        await cluster.net.drivers[leader].propose("g0", b"once")
        await until(lambda: cluster.applied[(follower, "g0")] == [b"once"], "the reopened follower applied")
        assert cluster.failures == [(follower, "g0", "apply")]
        await cluster.stop()
    run(scenario())


def test_proposals_fail_at_once_when_their_leader_is_cut_off() -> None:
    """A leader that can reach no peer steps down (CheckQuorum) and fails what it was waiting to
    commit, instead of holding it until the network heals."""
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        cluster.start()
        old = await cluster.wait_leader("g0")
        await cluster.net.drivers[old].propose("g0", b"before")
        cluster.net.down.add(old)
        stranded = cluster.net.drivers[old].propose("g0", b"stranded")
        with pytest.raises(ProposalDroppedError):
            await asyncio.wait_for(stranded, 10)
        assert cluster.net.drivers[old].node("g0").role != Role.LEADER
        await cluster.stop()
    run(scenario())


def test_a_failed_sync_stops_the_driver_and_fails_every_waiter(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=3)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        driver = cluster.net.drivers[leader]
        cluster.sync_errors[leader] = OSError(5, "Input/output error")
        with pytest.raises(GroupFailedError):
            await asyncio.wait_for(driver.propose("g0", b"in doubt"), 10)
        assert isinstance(cluster.fatal.get(leader), OSError)
        await until(lambda: driver._task is not None and driver._task.done(), "the driver's loop ended")
        with pytest.raises(GroupFailedError):
            driver.propose("g0", b"after")
        await cluster.stop()
    with caplog.at_level(logging.CRITICAL, logger="raftka.replication.driver"):
        run(scenario())
    assert sum("multi-raft driver stopped" in r.message for r in caplog.records) == 1


def test_follower_refuses_proposals_with_a_leader_hint() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        follower = next(b for b in BROKERS if b != leader)
        with pytest.raises(NotRaftLeaderError) as info:
            cluster.net.drivers[follower].propose("g0", b"x")
        assert info.value.leader_id == leader
        await cluster.stop()
    run(scenario())


def test_leader_loss_elects_a_new_leader_and_keeps_committed_entries() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=3)
        cluster.start()
        for g in range(3):
            leader = await cluster.wait_leader(f"g{g}")
            await cluster.net.drivers[leader].propose(f"g{g}", b"before")
        old = await cluster.wait_leader("g0")
        cluster.net.down.add(old)
        for driver in cluster.net.drivers.values():
            driver.wake(old)
        new = await cluster.wait_leader("g0")
        assert new != old
        await cluster.net.drivers[new].propose("g0", b"after")
        survivors = [b for b in BROKERS if b != old]
        await until(lambda: all(len(cluster.applied[(b, "g0")]) >= 2 for b in survivors), "the survivors applied both")
        for broker in survivors:
            assert cluster.applied[(broker, "g0")] == [b"before", b"after"]
        await cluster.stop()
    run(scenario())


def test_a_follower_behind_the_compacted_log_gets_the_snapshot_restored_before_later_entries() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        lagging = next(b for b in BROKERS if b != leader)
        cluster.net.down.add(lagging)
        for i in range(5):
            await cluster.net.drivers[leader].propose("g0", b"old-%d" % i)
        storage, node = cluster.storages[(leader, "g0")], cluster.net.drivers[leader].node("g0")
        index = node.applied_index
        storage.create_snapshot(index, node.conf_state_at(index), b"state")
        storage.compact(index)
        cluster.net.down.discard(lagging)
        await cluster.net.drivers[leader].propose("g0", b"new")
        deadline = asyncio.get_running_loop().time() + 10
        while cluster.applied[(lagging, "g0")][-1:] != [b"new"]:
            assert asyncio.get_running_loop().time() < deadline, "the lagging follower did not catch up"
            await asyncio.sleep(0.01)
        assert cluster.restored[(lagging, "g0")] == [(index, b"state")]
        assert cluster.applied[(lagging, "g0")] == [b"new"], "entries the snapshot covers are not applied"
        assert cluster.restored[(leader, "g0")] == []
        await cluster.stop()
    run(scenario())


def test_idle_groups_quiesce_and_stop_costing_rounds() -> None:
    """Once quiescent, a group sends nothing however many ticks pass. The ticks are witnessed by one
    group per broker kept busy: its leader heartbeats on every tick of the driver that ticks the
    quiescent groups too, so 50 of its heartbeats are 50 ticks (5 quiesce windows) of silence."""
    async def scenario() -> None:
        cluster = Cluster(groups=50)
        cluster.start()
        leaders = {f"g{g}": await cluster.wait_leader(f"g{g}") for g in range(50)}

        def quiet() -> list[int]:
            return [g for g in range(50) if all(d.node(f"g{g}").is_quiescent for d in cluster.net.drivers.values())]
        await until(lambda: len(quiet()) == 50, "every idle group quiesced", timeout_s=10)
        assert len(quiet()) == 50
        witnesses = {broker: next(g for g, leader in leaders.items() if leader == broker) for broker in BROKERS}

        async def keep_busy(group: str, broker: int) -> None:
            while True:
                await cluster.net.drivers[broker].propose(group, b"busy")
        writers = [asyncio.create_task(keep_busy(group, broker)) for broker, group in witnesses.items()]
        silent = {f"g{g}" for g in range(50)} - set(witnesses.values())
        start = len(cluster.net.log)

        def heartbeats(broker: int) -> int:
            return sum(1 for src, group, m in cluster.net.log[start:]
                       if src == broker and group == witnesses[broker] and m.type == MessageType.HEARTBEAT)
        await until(lambda: all(heartbeats(b) >= 50 * (len(BROKERS) - 1) for b in BROKERS),
                    "50 ticks of every driver")
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        assert [m for _, group, m in cluster.net.log[start:] if group in silent] == [], \
            "quiescent groups send nothing"
        sleeper = min(silent)
        leader = cluster.leader(sleeper)
        assert leader is not None
        await cluster.net.drivers[leader].propose(sleeper, b"wake up")
        await cluster.stop()
    run(scenario())


def test_read_index_on_a_follower_covers_every_write_committed_before_it() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        committed = await cluster.net.drivers[leader].propose("g0", b"acknowledged")
        follower = next(b for b in BROKERS if b != leader)
        index = await asyncio.wait_for(cluster.net.drivers[follower].read_index("g0"), 5)
        assert index >= committed
        await cluster.stop()
    run(scenario())


def test_read_index_without_a_known_leader_is_refused() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        with pytest.raises(NotRaftLeaderError):
            cluster.net.drivers[1].read_index("g0")
    run(scenario())


def test_reads_from_different_brokers_never_collide_at_the_leader() -> None:
    """Read contexts travel to the leader; each broker's first read must not look like another's."""
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        await cluster.net.drivers[leader].propose("g0", b"x")
        followers = [b for b in BROKERS if b != leader]
        forwarded = [cluster.net.drivers[b].read_index("g0") for b in followers]
        await asyncio.sleep(0.05)
        local = cluster.net.drivers[leader].read_index("g0")
        indexes = await asyncio.wait_for(asyncio.gather(local, *forwarded), 5)
        assert len(set(indexes)) == 1
        await cluster.stop()
    run(scenario())
