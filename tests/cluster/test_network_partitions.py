"""Network partitions between real brokers, each in its own network namespace, cut with iptables.

Three brokers run in namespaces joined by a bridge; the test process (the client) sits on the bridge
in the root namespace. While an idempotent producer writes a steady stream to a one-partition topic
(RF 3, acks=all), a fault cuts the partition's leader off in one of four ways, holds for
`FAULT_S`, then heals:

- isolated: the leader can reach neither peer (both directions); the client reaches every broker;
- deaf: the leader's packets reach its peers, theirs never reach it;
- bridge: the leader and one follower cannot reach each other, the third broker reaches both;
- minority client: the leader is isolated from its peers and the client reaches only the leader.

Each run checks safety (every acknowledged record is in the log at its acknowledged offset, and the
log holds no record twice and none out of order) and liveness (writes resume, at the latest soon
after the heal). How long writes stalled is measured, not asserted: each scenario's figures go to
`failover-results.json` (one JSON object per line) and the test's output. Needs root (namespaces,
iptables); `scripts/install-debian iptables iproute2` installs the tools. Slow: run with
`scripts/test -m slow tests/cluster/test_network_partitions.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from raftka import Admin, Consumer, Producer, TopicPartition
from raftka.client.local import LocalBroker
from raftka.errors import RaftkaError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "failover-results.json"
FAULT_S = 8.0
STEADY_S = 2.0
AFTER_HEAL_S = 6.0
RATE_PER_S = 200
PORT = 9092
RESUME_DEADLINE_S = 20.0
"""Liveness, not speed: writes must resume within this long after the heal."""


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


class Network:
    """A bridge in the root namespace (the client's side, `.1`) and one namespace per broker."""

    def __init__(self, brokers: int) -> None:
        tag = os.getpid() % 10_000
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() // 50 % 250}"
        self.bridge = f"rk{tag}br"
        self.namespaces = [f"rk{tag}-b{i}" for i in range(1, brokers + 1)]
        self.client_ip = f"{self.subnet}.1"
        self.ips = [f"{self.subnet}.{10 + i}" for i in range(1, brokers + 1)]

    def __enter__(self) -> Network:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.client_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for n, (namespace, ip) in enumerate(zip(self.namespaces, self.ips), start=1):
            veth = f"{self.bridge[:-2]}v{n}"
            sh("ip", "netns", "add", namespace)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            sh("ip", "-n", namespace, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", namespace, "link", "set", "eth0", "up")
            sh("ip", "-n", namespace, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def drop(self, broker: int, *, source: str | None = None, destination: str | None = None) -> None:
        """In broker's namespace, drop packets from `source` (INPUT) or to `destination` (OUTPUT)."""
        namespace = self.namespaces[broker - 1]
        if source is not None:
            sh("ip", "netns", "exec", namespace, "iptables", "-A", "INPUT", "-s", source, "-j", "DROP")
        if destination is not None:
            sh("ip", "netns", "exec", namespace, "iptables", "-A", "OUTPUT", "-d", destination, "-j", "DROP")

    def cut(self, a: int, b: int) -> None:
        """Brokers a and b can no longer reach each other (both directions, on both sides)."""
        self.drop(a, source=self.ips[b - 1], destination=self.ips[b - 1])
        self.drop(b, source=self.ips[a - 1], destination=self.ips[a - 1])

    def heal(self) -> None:
        for namespace in self.namespaces:
            sh("ip", "netns", "exec", namespace, "iptables", "-F")


@dataclass
class NamespacedBroker(LocalBroker):
    namespace: str = ""

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command()]


@dataclass
class Load:
    """One idempotent producer writing numbered records at a steady rate, timing each ack."""

    bootstrap: str
    acks: list[tuple[float, int, int]] = field(default_factory=list)
    """(monotonic ack time, record number, offset)."""
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        producer = Producer(self.bootstrap, linger_ms=1, delivery_timeout_ms=120_000)
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            def acked(future, n: int = n) -> None:
                now = time.monotonic()
                with self._lock:
                    if future.exception() is None:
                        self.acks.append((now, n, future.result().offset))
                    else:
                        self.failures.append(f"record {n}: {future.exception()}")
            producer.send("t", f"{n}".encode(), partition=0).add_done_callback(acked)
            n += 1
            next_at += 1 / RATE_PER_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        producer.close(timeout=120)

    def acked_after(self, moment: float) -> int:
        with self._lock:
            return sum(1 for at, _, _ in self.acks if at > moment)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=180)


@pytest.fixture
def network() -> Iterator[Network]:
    if os.geteuid() != 0:
        pytest.fail("network-partition tests need root (network namespaces and iptables)")
    subprocess.run([str(ROOT / "scripts" / "install-debian"), "iptables", "iproute2"], check=True)
    with Network(3) as net:
        yield net


@pytest.fixture
def cluster(network: Network, tmp_path: Path) -> Iterator[list[NamespacedBroker]]:
    addresses = [f"{ip}:{PORT}" for ip in network.ips]
    peers = ",".join(f"{i}={address}" for i, address in enumerate(addresses, start=1))
    brokers = [NamespacedBroker(i, address, tmp_path / f"broker-{i}", peers, namespace=namespace,
                                extra_args=("--leader-balance-delay-ms", "600000"))
               for i, (address, namespace) in enumerate(zip(addresses, network.namespaces), start=1)]
    for broker in brokers:
        broker.spawn()
    for broker in brokers:
        broker.wait()
    yield brokers
    for broker in brokers:
        broker.stop()


def leader_of(bootstrap: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with Admin(bootstrap, request_timeout_ms=5000) as admin:
                info = admin.describe_topic("t").partitions[0]
            if info.leader > 0 and len(info.in_sync_replicas) == 3:
                return info.leader
        except RaftkaError:
            pass
        time.sleep(0.1)
    raise AssertionError("partition t/0 got no leader with three in-sync replicas")


def all_in_sync(bootstrap: str, deadline: float) -> float:
    """Wait until the partition's leader counts all three replicas in sync again; returns when."""
    while True:
        try:
            with Admin(bootstrap, request_timeout_ms=2000) as admin:
                if len(admin.describe_topic("t").partitions[0].in_sync_replicas) == 3:
                    return time.monotonic()
        except RaftkaError:
            pass
        assert time.monotonic() < deadline, "the cut-off broker did not catch up after the heal"
        time.sleep(0.05)


def check_log(bootstrap: str, load: Load) -> None:
    """Every acknowledged record sits at its acknowledged offset; the log has no duplicate and keeps
    the records in the order they were sent."""
    consumer = Consumer(bootstrap, auto_offset_reset="earliest")
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    end = consumer.end_offsets([tp])[tp]
    log: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while len(log) < end and time.monotonic() < deadline:
        for record in consumer.poll(timeout_ms=500):
            log[record.offset] = int(record.value)
    consumer.close()
    assert len(log) == end, f"read {len(log)} of {end} records"
    numbers = [log[offset] for offset in sorted(log)]
    assert len(set(numbers)) == len(numbers), "a record was written twice"
    assert numbers == sorted(numbers), "records are out of order in the log"
    missing = [(n, offset) for _, n, offset in load.acks if log.get(offset) != n]
    assert not missing, f"acknowledged records lost or moved: {missing[:10]}"


def measure(load: Load, fault_at: float, healed_at: float) -> dict[str, float]:
    """The longest gap between acknowledgements from just before the fault on, and when it ended."""
    times = sorted(at for at, _, _ in load.acks if at >= fault_at - 1.0)
    gaps = [(later - earlier, later) for earlier, later in zip(times, times[1:])]
    stall, resumed = max(gaps) if gaps else (0.0, fault_at)
    return {"stall_s": round(stall, 3), "resumed_after_fault_s": round(resumed - fault_at, 3),
            "resumed_after_heal_s": round(resumed - healed_at, 3)}


def cut_off(net: Network, scenario: str, leader: int) -> None:
    others = [b for b in (1, 2, 3) if b != leader]
    if scenario == "isolated":
        for other in others:
            net.cut(leader, other)
    elif scenario == "deaf":
        for other in others:
            net.drop(leader, source=net.ips[other - 1])
    elif scenario == "bridge":
        net.cut(leader, others[0])
    elif scenario == "minority-client":
        for other in others:
            net.cut(leader, other)
            net.drop(other, source=net.client_ip, destination=net.client_ip)
    else:
        raise ValueError(scenario)


@pytest.mark.parametrize("scenario", ["isolated", "deaf", "bridge", "minority-client"])
def test_a_cut_off_leader_loses_nothing_and_writes_resume(scenario: str, network: Network,
                                                          cluster: list[NamespacedBroker]) -> None:
    bootstrap = ",".join(broker.address for broker in cluster)
    with Admin(bootstrap) as admin:
        admin.create_topic("t", partitions=1, replication_factor=3)
    leader = leader_of(bootstrap)
    load = Load(bootstrap)
    try:
        time.sleep(STEADY_S)
        fault_at = time.monotonic()
        cut_off(network, scenario, leader)
        time.sleep(FAULT_S)
        healed_at = time.monotonic()
        network.heal()
        deadline = healed_at + RESUME_DEADLINE_S
        while load.acked_after(healed_at + 0.5) < RATE_PER_S:
            assert time.monotonic() < deadline, f"writes did not resume after the heal ({scenario})"
            time.sleep(0.1)
        rejoined_at = all_in_sync(bootstrap, deadline)
        time.sleep(max(0.0, healed_at + AFTER_HEAL_S - time.monotonic()))
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
    check_log(bootstrap, load)
    figures = {"scenario": scenario, "leader": leader, "fault_s": FAULT_S, "acknowledged": len(load.acks),
               **measure(load, fault_at, healed_at), "in_sync_after_heal_s": round(rejoined_at - healed_at, 3)}
    print(json.dumps(figures))
    with open(RESULTS, "a") as results:
        results.write(json.dumps(figures) + "\n")
