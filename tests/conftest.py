"""Shared fixtures: real `raftka broker` processes on 127.0.0.1 with data on disk."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

from helm_chart import Helm, install_helm
from raftka import Admin, Consumer, Producer, Record, TopicPartition
from raftka.client.certs import LocalPki
from raftka.client.local import LocalBroker, free_port, plan
from raftka.errors import RaftkaError
from raftka.proto import api_pb2, api_pb2_grpc


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., list[LocalBroker]]]:
    """Start a cluster of N brokers (extra `raftka broker` flags allowed; TLS from `pki`, a
    `raftka.client.certs.LocalPki`); stopped after the test."""
    started: list[LocalBroker] = []

    def start(brokers: int = 1, *extra_args: str, racks: list[str] | None = None,
              pki: LocalPki | None = None) -> list[LocalBroker]:
        layout = plan(brokers, tmp_path / f"cluster-{len(started)}", [free_port() for _ in range(brokers)],
                      metrics_ports=[free_port() for _ in range(brokers)], extra_args=extra_args, racks=racks,
                      pki=pki)
        started.extend(layout)
        for broker in layout:
            broker.spawn()
        for broker in layout:
            broker.wait()
        return layout

    yield start
    for broker in started:
        if broker.alive():
            assert broker.stop() == 0, broker.log()[-3000:]


@pytest.fixture
def start_broker(start_cluster: Callable[..., list[LocalBroker]]) -> Callable[..., LocalBroker]:
    """Start a one-broker cluster with extra `raftka broker` flags."""
    return lambda *extra_args: start_cluster(1, *extra_args)[0]


@pytest.fixture
def broker(start_broker: Callable[..., LocalBroker]) -> LocalBroker:
    return start_broker()


@pytest.fixture
def stubs(broker: LocalBroker) -> Iterator[tuple[api_pb2_grpc.BrokerStub, api_pb2_grpc.AdminStub]]:
    with grpc.insecure_channel(broker.address) as channel:
        yield api_pb2_grpc.BrokerStub(channel), api_pb2_grpc.AdminStub(channel)


@pytest.fixture
def cli_env(broker: LocalBroker) -> dict[str, str]:
    return {**os.environ, "RAFTKA_BOOTSTRAP": broker.address}


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The helm binary (scripts/install-helm) and an environment whose HOME and HELM_* are private."""
    return install_helm(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """A function returning an unused TCP port on 127.0.0.1."""
    return free_port


def drain(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60) -> dict[int, list[Record]]:
    """Every record of the topic from each partition's log start to its end, by partition."""
    consumer = Consumer(bootstrap, auto_offset_reset="earliest", request_timeout_ms=10_000)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    ends = consumer.end_offsets(consumer.assignment())
    expected = sum(end - consumer.position(tp) for tp, end in ends.items())
    records: dict[int, list[Record]] = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, records.values())) < expected and time.monotonic() < deadline:
        for record in consumer.poll(timeout_ms=500):
            records[record.partition].append(record)
    consumer.close()
    return records


@pytest.fixture(name="consume_all")
def consume_all_fixture() -> Callable[..., dict[int, list[Record]]]:
    """`consume_all(bootstrap, topic, partitions)`: the topic's records by partition."""
    return drain


class AckRecorder:
    """Producer threads sending unique values until stopped, recording every acknowledged one as
    (partition, offset, value): the ground truth a durability test checks the log against. Each
    thread pauses `pace_s` after every 100 records (the default sends as fast as the cluster takes);
    `keyed` records (the value is the key) spread over every partition even at a trickle."""

    def __init__(self, bootstrap: str, topic: str, workers: int = 2, *, pace_s: float = 0.005, keyed: bool = False,
                 **producer_options: object) -> None:
        self.acknowledged: list[tuple[int, int, bytes]] = []
        self.failures: list[BaseException] = []
        """Errors the producer surfaced (a record it gave up on)."""
        self.ack_times: list[float] = []
        """When each acknowledgement arrived (monotonic), in arrival order."""
        self.latencies: list[float] = []
        """Seconds from send to acknowledgement, in the order of `ack_times`."""
        self._bootstrap, self._topic, self._options = bootstrap, topic, producer_options
        self._pace_s, self._keyed = pace_s, keyed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._produce, args=(w,), daemon=True) for w in range(workers)]
        for thread in self._threads:
            thread.start()

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} of {count} records acknowledged"
            time.sleep(0.02)

    def longest_gap_s(self, since: float) -> float:
        """The longest time without an acknowledgement after `since` (monotonic)."""
        with self._lock:
            times = [since, *(t for t in self.ack_times if t > since)]
        return max((later - earlier for earlier, later in zip(times, times[1:])), default=0.0)

    def stop(self) -> list[tuple[int, int, bytes]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        with self._lock:
            return list(self.acknowledged)

    def _produce(self, worker: int) -> None:
        producer = Producer(self._bootstrap, **self._options)
        i = 0
        while not self._stop.is_set():
            value = f"w{worker}-{i}".encode()
            i += 1

            def record(future, value: bytes = value, sent: float = time.monotonic()) -> None:
                error = future.exception()
                with self._lock:
                    if error is None:
                        meta = future.result()
                        now = time.monotonic()
                        self.acknowledged.append((meta.partition, meta.offset, value))
                        self.ack_times.append(now)
                        self.latencies.append(now - sent)
                    else:
                        self.failures.append(error)
            try:
                producer.send(self._topic, value, key=value if self._keyed else None).add_done_callback(record)
            except RaftkaError:
                break
            if i % 100 == 0:
                time.sleep(self._pace_s)
        with contextlib.suppress(RaftkaError):
            producer.close(timeout=60)


def lost(acknowledged: list[tuple[int, int, bytes]], found: dict[int, list[Record]]) -> list[tuple[int, int, bytes]]:
    """The acknowledged records that are not in `found` at their acknowledged position."""
    at = {(partition, r.offset): r.value for partition, records in found.items() for r in records}
    return [(p, o, v) for p, o, v in acknowledged if at.get((p, o)) != v]


def find_leader(bootstrap: str, topic: str, partition: int, brokers: list[LocalBroker]) -> LocalBroker:
    """The live broker leading the partition, as the leader itself reports (Admin.describe_topic)."""
    by_id = {broker.broker_id: broker for broker in brokers}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with Admin(bootstrap, request_timeout_ms=5000) as admin:
                info = admin.describe_topic(topic).partitions[partition]
        except RaftkaError:
            info = None
        if info is not None and info.leader in info.in_sync_replicas and by_id[info.leader].alive():
            return by_id[info.leader]
        time.sleep(0.1)
    raise AssertionError(f"no leader for {topic}/{partition}")


def kill_leaders(bootstrap: str, topic: str, partitions: int, brokers: list[LocalBroker], *, rounds: int = 4,
                 seed: int = 3, down_s: tuple[float, float] = (0.5, 1.5)) -> None:
    """SIGKILL the leader of a random partition of `topic`, then restart it, `rounds` times, a second apart."""
    rng = random.Random(seed)
    for _ in range(rounds):
        time.sleep(1.0)
        victim = find_leader(bootstrap, topic, rng.randrange(partitions), brokers)
        victim.kill()
        time.sleep(rng.uniform(*down_s))
        victim.start()


def restart_cluster(brokers: list[LocalBroker]) -> None:
    """Stop every broker gracefully (each must exit 0), then start them all again and wait for them."""
    for broker in brokers:
        assert broker.stop() == 0, broker.log()[-2000:]
    for broker in brokers:
        broker.spawn()
    for broker in brokers:
        broker.wait()


@pytest.fixture(name="restart_cluster")
def restart_cluster_fixture() -> Callable[[list[LocalBroker]], None]:
    return restart_cluster


@pytest.fixture(name="kill_leaders")
def kill_leaders_fixture() -> Callable[..., None]:
    return kill_leaders


@pytest.fixture(name="leader_of")
def leader_of_fixture() -> Callable[..., LocalBroker]:
    """`leader_of(bootstrap, topic, partition, brokers)`: the live broker leading the partition."""
    return find_leader


@pytest.fixture(name="ack_recorder")
def ack_recorder_fixture() -> type[AckRecorder]:
    return AckRecorder


@pytest.fixture(name="lost")
def lost_fixture() -> Callable[..., list[tuple[int, int, bytes]]]:
    return lost


def exactly_once_in_order(acknowledged: list[tuple[int, int, bytes]], found: dict[int, list[Record]]) -> None:
    """Every acknowledged record of an AckRecorder is at its position, no value is in the log twice,
    and each worker's records are in the order it sent them."""
    assert not lost(acknowledged, found)
    for records in found.values():
        values = [r.value for r in records]
        assert len(set(values)) == len(values), "a record was written twice"
        sent: dict[bytes, list[int]] = {}
        for value in values:
            worker, _, number = value.partition(b"-")
            sent.setdefault(worker, []).append(int(number))
        assert all(numbers == sorted(numbers) for numbers in sent.values()), "a partition's records are out of order"


@pytest.fixture(name="exactly_once")
def exactly_once_fixture() -> Callable[..., None]:
    """`exactly_once(acknowledged, found)`: see `exactly_once_in_order`."""
    return exactly_once_in_order


def registered_incarnations(asked: LocalBroker) -> dict[int, str]:
    """The registered brokers `asked` knows, with their incarnations ("" until registered)."""
    with grpc.insecure_channel(asked.address) as channel:
        brokers = api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=10).brokers
    return {b.id: b.incarnation for b in brokers}


@pytest.fixture(name="registered")
def registered_fixture() -> Callable[[LocalBroker], set[int]]:
    """`registered(broker)`: the ids of the brokers that broker knows to have registered."""
    return lambda asked: {b for b, incarnation in registered_incarnations(asked).items() if incarnation}


@pytest.fixture(name="joiner")
def joiner_fixture(tmp_path: Path) -> Iterator[Callable[..., LocalBroker]]:
    """`joiner(broker_id, seeds, rack="")`: a broker (not started) that joins the cluster of `seeds`
    with --join; stopped after the test."""
    made: list[LocalBroker] = []

    def make(broker_id: int, seeds: list[LocalBroker], rack: str = "") -> LocalBroker:
        broker = LocalBroker(broker_id, f"127.0.0.1:{free_port()}", tmp_path / f"joiner-{broker_id}",
                             metrics_port=free_port(), extra_args=("--join", ",".join(b.address for b in seeds),
                                                                   *(("--rack", rack) if rack else ())))
        made.append(broker)
        return broker

    yield make
    for broker in made:
        if broker.alive():
            broker.stop()
