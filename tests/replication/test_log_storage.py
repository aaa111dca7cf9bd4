"""PartitionStorage (the partition log as the Raft core's Storage) against MemoryStorage as the model,
then the real core on three brokers whose storage it is."""

from __future__ import annotations

import copy
import random
import struct

import pytest

from raftka.partition.errors import InvalidEntryError
from raftka.partition.log import LogConfig
from raftka.partition.store import LogStore
from raftka.replication import (CompactedError, ConfState, Entry, EntryType, HardState, MemoryStorage, RaftConfig,
                                RaftNode, Role, Snapshot, SnapshotMetadata, SnapshotOutOfDateError, UnavailableError)
from raftka.replication.log_storage import PartitionStorage, SnapshotDataError, snapshot_offset
from raftka.wire.batch import encode_batch, split_batches, stamp_replicated

CONFIG = LogConfig(segment_bytes=4096, retention_bytes=-1, retention_ms=-1)
RAW = [encode_batch([(b"k%d" % n, b"v" * (n * 37 % 500), (), 1_000 + n)] * (1 + n % 3)) for n in range(8)]
_U64 = struct.Struct(">Q")


def open_storage(path, name="topic/0", config=CONFIG) -> tuple[LogStore, PartitionStorage]:
    store = LogStore(path, sync=False)
    return store, PartitionStorage(store.open_raft_log(name, config))


class Differential:
    """Drives a PartitionStorage and a MemoryStorage with the same random operations."""

    def __init__(self, path, seed: int) -> None:
        self.path, self.rng = path, random.Random(seed)
        self.store, self.sut = open_storage(path)
        self.model = MemoryStorage()
        self.offsets = {0: 0}
        self.flushed = (copy.deepcopy(self.model), dict(self.offsets))

    def step(self) -> None:
        op = self.rng.choices(["append", "hard", "snap", "compact", "install", "flush", "reopen", "crash"],
                              [40, 8, 6, 6, 2, 10, 2, 2])[0]
        getattr(self, op)()
        self.compare()

    def append(self) -> None:
        first, last = self.model.first_index(), self.model.last_index()
        start = self.rng.randint(max(1, first - 2), last + 1)
        if max(start, first) <= self.model.snapshot().index:
            start = self.model.snapshot().index + 1
        term = self.model.term(last) + self.rng.randint(0, 1) if last >= first - 1 else 1
        entries, offset = [], self.offsets[max(start, first) - 1]
        planned = dict(self.offsets)
        for index in range(start, start + self.rng.randint(1, 6)):
            kind = self.rng.choices(list(EntryType), [6, 1, 1])[0] if index >= first else EntryType.NOOP
            if kind == EntryType.NORMAL:
                raw = self.rng.choice(RAW)
                data = stamp_replicated(raw, offset, term)
                offset += split_count(raw)
            else:
                data = b"conf-%d" % index if kind == EntryType.CONF_CHANGE else b""
            entries.append(Entry(index, term, kind, data))
            planned[index] = offset
        self.sut.append(entries)
        self.model.append(entries)
        if entries[-1].index >= first:
            self.offsets = {i: o for i, o in planned.items() if i <= entries[-1].index}

    def hard(self) -> None:
        hs = HardState(self.rng.randint(0, 9), self.rng.randint(0, 3), self.rng.randint(0, 50), self.rng.random() < 0.3)
        self.sut.set_hard_state(hs)
        self.model.set_hard_state(hs)

    def snap(self) -> None:
        snap, last = self.model.snapshot().index, self.model.last_index()
        index = self.rng.randint(max(snap + 1, self.model.first_index() - 1), last + 1)
        conf = ConfState(tuple(sorted(self.rng.sample(range(1, 6), 3))))
        model_data = _U64.pack(self.offsets.get(index, 0)) + b"app"
        self.both(lambda s: s.create_snapshot(index, conf, model_data if s is self.model else b"app"))

    def compact(self) -> None:
        index = self.rng.randint(self.model.first_index() - 1, self.model.snapshot().index + 1)
        self.both(lambda s: s.compact(index))

    def install(self) -> None:
        index = self.rng.randint(self.model.snapshot().index, self.model.last_index() + 3)
        offset = self.offsets.get(index, max(self.offsets.values()) + 5)
        snapshot = Snapshot(SnapshotMetadata(index, 7, ConfState((1, 2))), _U64.pack(offset) + b"x")
        try:
            self.model.apply_snapshot(snapshot)
        except SnapshotOutOfDateError:
            with pytest.raises(SnapshotOutOfDateError):
                self.sut.apply_snapshot(snapshot)
            return
        self.sut.apply_snapshot(snapshot)
        self.offsets = {index: offset}

    def flush(self) -> None:
        self.store.flush()
        self.flushed = (copy.deepcopy(self.model), dict(self.offsets))

    def reopen(self) -> None:
        self.flush()
        self.store.close()
        self.store, self.sut = open_storage(self.path)

    def crash(self) -> None:
        self.store.close(flush=False)
        self.store, self.sut = open_storage(self.path)
        self.model, self.offsets = copy.deepcopy(self.flushed[0]), dict(self.flushed[1])

    def both(self, op) -> None:
        outcome: list[type[Exception] | None] = []
        for storage in (self.model, self.sut):
            try:
                op(storage)
                outcome.append(None)
            except (CompactedError, UnavailableError, SnapshotOutOfDateError) as exc:
                outcome.append(type(exc))
        assert outcome[0] == outcome[1]

    def compare(self) -> None:
        sut, model = self.sut, self.model
        assert (sut.first_index(), sut.last_index()) == (model.first_index(), model.last_index())
        assert sut.initial_state() == model.initial_state()
        assert sut.snapshot() == model.snapshot()
        first, last = model.first_index(), model.last_index()
        for index in range(first - 1, last + 1):
            assert sut.term(index) == model.term(index)
            assert sut.end_offset_at(index) == self.offsets[index]
        assert sut.end_offset == self.offsets[last]
        for bad in (first - 2, last + 1):
            with pytest.raises(CompactedError if bad < first else UnavailableError):
                sut.term(bad)
        if first <= last:
            lo = self.rng.randint(first, last)
            hi = self.rng.randint(lo, last + 1)
            max_bytes = self.rng.choice([None, 0, 300, 2000])
            assert sut.entries(lo, hi, max_bytes) == model.entries(lo, hi, max_bytes)
            assert sut.config_entries(first, last + 1) == model.config_entries(first, last + 1)
        with pytest.raises(UnavailableError):
            sut.entries(first, last + 2)
        if first > 1:
            with pytest.raises(CompactedError):
                sut.entries(first - 1, last + 1)


def split_count(raw: bytes) -> int:
    return struct.unpack_from(">I", raw, 27)[0]


@pytest.mark.parametrize("seed", range(6))
def test_partition_storage_answers_like_memory_storage(tmp_path, seed):
    run = Differential(tmp_path / "db", seed)
    for _ in range(250):
        run.step()
    run.reopen()
    run.compare()
    run.store.close()


def test_a_badly_stamped_batch_is_refused_and_nothing_is_staged(tmp_path):
    store, storage = open_storage(tmp_path / "db")
    PartitionStorage.bootstrap(storage.entry_log, ConfState((1,)))
    good = stamp_replicated(RAW[1], 0, 2)
    for bad in (stamp_replicated(RAW[1], 1, 2), stamp_replicated(RAW[1], 0, 3), good + good):
        with pytest.raises(InvalidEntryError):
            storage.append([Entry(2, 2, EntryType.NOOP), Entry(3, 2, EntryType.NORMAL, bad)])
        assert storage.last_index() == 1 and storage.end_offset == 0
    storage.append([Entry(2, 2, EntryType.NORMAL, good)])
    store.flush()
    assert storage.entries(2, 3) == [Entry(2, 2, EntryType.NORMAL, good)]
    with pytest.raises(SnapshotDataError):
        storage.apply_snapshot(Snapshot(SnapshotMetadata(9, 9, ConfState((1,))), b""))
    store.close()


# ---------------------------------------------------------------- the real core on three brokers


class Broker:
    def __init__(self, node_id: int, path, *, founding: bool, config: LogConfig) -> None:
        self.id, self.path, self.config = node_id, path, config
        self.store, self.storage = open_storage(path, config=config)
        if founding:
            PartitionStorage.bootstrap(self.storage.entry_log, ConfState((1, 2, 3)))
            self.store.flush()
        self.node = RaftNode(RaftConfig(node_id), self.storage, random.Random(node_id))

    def handle_ready(self, outbox: list, *, crash_before_flush: bool = False) -> bool:
        rd = self.node.ready()
        if rd is None:
            return False
        outbox.extend(rd.early_messages)
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(list(rd.entries))
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        if crash_before_flush:
            self.store.close(flush=False)
            return False
        self.store.flush()
        outbox.extend(rd.messages)
        self.node.advance(rd)
        return True

    def restart(self) -> None:
        self.store, self.storage = open_storage(self.path, config=self.config)
        self.node = RaftNode(RaftConfig(self.id), self.storage, random.Random(self.id + 100))

    def records(self) -> bytes:
        partition_log = self.storage.entry_log.log
        return partition_log.read(partition_log.start_offset, 1 << 30)


class Cluster:
    def __init__(self, tmp_path, config: LogConfig = CONFIG) -> None:
        self.brokers = {i: Broker(i, tmp_path / f"b{i}", founding=True, config=config) for i in (1, 2, 3)}
        self.down: set[int] = set()

    def drain(self) -> None:
        outbox: list = []
        while True:
            progressed = False
            for broker_id, broker in self.brokers.items():
                if broker_id not in self.down:
                    progressed |= broker.handle_ready(outbox)
            for message in outbox:
                if message.dst not in self.down and message.src not in self.down:
                    self.brokers[message.dst].node.step(message)
            progressed |= bool(outbox)
            outbox.clear()
            if not progressed:
                return

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for broker_id, broker in self.brokers.items():
                if broker_id not in self.down:
                    broker.node.tick()
            self.drain()

    def leader(self) -> Broker:
        leaders = [b for i, b in self.brokers.items() if i not in self.down and b.node.role == Role.LEADER]
        assert len(leaders) == 1
        return leaders[0]

    def produce(self, count: int) -> None:
        """Propose `count` batches, stamped as a leader's driver stamps them: each at the log end offset
        plus the records of the proposals in flight (none survive a drain, so the storage's end)."""
        leader = self.leader()
        offset = leader.storage.end_offset
        for n in range(count):
            raw = RAW[n % len(RAW)]
            leader.node.propose(stamp_replicated(raw, offset, leader.node.term))
            offset += split_count(raw)
        self.drain()

    def assert_replicated(self) -> None:
        leader = self.leader()
        commit = leader.node.commit_index
        hw = leader.storage.end_offset_at(commit)
        assert hw == leader.storage.end_offset
        for broker_id, broker in self.brokers.items():
            if broker_id in self.down:
                continue
            assert broker.node.commit_index == commit and broker.storage.end_offset == hw
            assert broker.records() == leader.records()
        assert split_batches(leader.records(), verify_crc=True)


def test_three_brokers_replicate_byte_identical_logs_and_a_crashed_one_catches_up(tmp_path):
    cluster = Cluster(tmp_path)
    cluster.brokers[1].node.campaign()
    cluster.drain()
    cluster.produce(20)
    cluster.assert_replicated()

    leader = cluster.leader()
    victim = next(b for b in cluster.brokers.values() if b is not leader)
    leader.node.propose(stamp_replicated(RAW[0], leader.storage.end_offset, leader.node.term))
    outbox = []
    leader.handle_ready(outbox)
    for message in outbox:
        cluster.brokers[message.dst].node.step(message)
    durable_last = victim.storage.last_index()
    victim.handle_ready([], crash_before_flush=True)
    cluster.down.add(victim.id)
    cluster.drain()
    cluster.produce(10)
    victim.restart()
    assert victim.storage.last_index() == durable_last < leader.storage.last_index()
    cluster.down.discard(victim.id)
    cluster.tick(3)
    cluster.produce(5)
    cluster.assert_replicated()
    for broker in cluster.brokers.values():
        broker.store.close()


def test_a_follower_behind_the_compacted_log_installs_a_snapshot(tmp_path):
    config = LogConfig(segment_bytes=2048, retention_bytes=4096, retention_ms=-1)
    cluster = Cluster(tmp_path, config)
    cluster.brokers[1].node.campaign()
    cluster.drain()
    cluster.produce(5)
    cluster.down.add(3)
    cluster.produce(40)
    for broker_id in (1, 2):
        broker = cluster.brokers[broker_id]
        assert broker.storage.apply_retention(0, broker.node.applied_index, broker.node.conf_state_at) > 0
        broker.store.flush()
        assert broker.storage.first_index() > 6
    leader_storage = cluster.brokers[1].storage
    assert snapshot_offset(leader_storage.snapshot()) == leader_storage.entry_log.log.start_offset
    cluster.down.discard(3)
    cluster.tick(12)
    cluster.produce(3)
    follower = cluster.brokers[3]
    assert follower.storage.snapshot().index >= leader_storage.first_index() - 1
    assert follower.storage.entry_log.log.start_offset == snapshot_offset(follower.storage.snapshot())
    cluster.assert_replicated()
    for broker in cluster.brokers.values():
        broker.store.close()
    follower.restart()
    assert follower.storage.last_index() == cluster.brokers[1].node.last_index
