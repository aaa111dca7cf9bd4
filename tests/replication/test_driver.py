"""The multi-Raft driver: many groups on three brokers, driven by one loop per broker.

Storage is the core's MemoryStorage and the network a loopback between three drivers in one event
loop, so these tests check the driver's own contract (persist, one sync, send, apply, advance;
proposal futures; quiescence); the RocksDB storage and the gRPC transport have their own tests.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from raftka.replication import (ConfState, HardState, MemoryStorage, Message, NotLeaderError, RaftConfig,
                                Role, bootstrap_snapshot)
from raftka.replication.driver import MultiRaft

BROKERS = (1, 2, 3)


class Loopback:
    """Delivers each broker's messages to the destination driver on the next loop iteration."""

    def __init__(self) -> None:
        self.drivers: dict[int, MultiRaft] = {}
        self.down: set[int] = set()
        self.sent = 0
        self.log: list[tuple[int, str, Message]] = []

    def for_broker(self, broker: int) -> "Loopback.Endpoint":
        return Loopback.Endpoint(self, broker)

    class Endpoint:
        def __init__(self, net: "Loopback", broker: int) -> None:
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
        self.applied: dict[tuple[int, str], list[bytes]] = {}
        self.restored: dict[tuple[int, str], list[tuple[int, bytes]]] = {}
        self.storages: dict[tuple[int, str], MemoryStorage] = {}
        rng = random.Random(7)
        for broker in BROKERS:
            async def sync(broker: int = broker) -> None:
                self.syncs[broker] += 1
            driver = MultiRaft(broker, self.net.for_broker(broker), sync, tick_interval_s=0.01,
                               quiesce_after_ticks=10, rng=random.Random(rng.random()))
            self.net.drivers[broker] = driver
            for g in range(groups):
                storage = MemoryStorage()
                storage.apply_snapshot(bootstrap_snapshot(ConfState(voters=BROKERS)))
                storage.set_hard_state(HardState(term=1, commit=1))
                key = (broker, f"g{g}")
                self.applied[key], self.restored[key] = [], []
                self.storages[key] = storage
                driver.add_group(f"g{g}", storage,
                                 lambda entries, key=key: self.applied[key].extend(e.data for e in entries if e.data),
                                 RaftConfig(id=broker, election_ticks=10, applied=1),
                                 restore=lambda snapshot, key=key: self.restored[key].append(
                                     (snapshot.index, snapshot.data)))

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


def run(coro) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(coro, 60))


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
        await asyncio.sleep(0.3)
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

        def refuse(entries):  # type: ignore[no-untyped-def]
            if any(e.data == b"poison" for e in entries):
                raise ValueError("refused by storage")
            append(entries)
        storage.append = refuse  # type: ignore[method-assign]
        cluster.net.drivers[leader].propose("g0", b"poison")
        await asyncio.sleep(0.2)
        carried = [m for src, _, m in cluster.net.log if src == leader and any(e.data == b"poison" for e in m.entries)]
        assert carried == []
        assert all(b"poison" not in cluster.applied[(b, "g0")] for b in BROKERS)
        await cluster.stop()
    run(scenario())


def test_follower_refuses_proposals_with_a_leader_hint() -> None:
    async def scenario() -> None:
        cluster = Cluster(groups=1)
        cluster.start()
        leader = await cluster.wait_leader("g0")
        follower = next(b for b in BROKERS if b != leader)
        with pytest.raises(NotLeaderError) as info:
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
        await asyncio.sleep(0.2)
        survivors = [b for b in BROKERS if b != old]
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
    async def scenario() -> None:
        cluster = Cluster(groups=50)
        cluster.start()
        for g in range(50):
            await cluster.wait_leader(f"g{g}")
        await asyncio.sleep(1.0)
        quiet = [g for g in range(50) if all(d.node(f"g{g}").is_quiescent for d in cluster.net.drivers.values())]
        assert len(quiet) == 50
        sent = cluster.net.sent
        await asyncio.sleep(0.5)
        assert cluster.net.sent == sent, "quiescent groups send nothing"
        leader = cluster.leader("g0")
        assert leader is not None
        await cluster.net.drivers[leader].propose("g0", b"wake up")
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
        with pytest.raises(NotLeaderError):
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
