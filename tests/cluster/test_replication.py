"""Raft-replicated partitions across three real broker processes.

The promise under test: a record acknowledged with acks=all survives the loss of any minority of
brokers, and every partition keeps its order through leader changes.
"""

from __future__ import annotations

import time

import grpc
import pytest

from raftka import Admin, Producer
from raftka.client.connection import ClusterConnection
from raftka.client.local import LocalBroker
from raftka.errors import RaftkaError, RequestTimedOutError
from raftka.proto import api_pb2, api_pb2_grpc
from waiting import wait_until


def bootstrap_of(brokers: list[LocalBroker]) -> str:
    return ",".join(b.address for b in brokers)


def test_topics_are_replicated_with_leaders_spread(start_cluster) -> None:
    brokers = start_cluster(3)
    with Admin(bootstrap_of(brokers)) as admin:
        topic = admin.create_topic("spread", partitions=6)
        assert topic.replication_factor == 3
        assert sorted(p.replicas[0] for p in topic.partitions) == [1, 1, 2, 2, 3, 3]
        assert all(sorted(p.replicas) == [1, 2, 3] for p in topic.partitions)
    for broker in brokers:
        with Admin(broker.address) as admin:
            assert [t.name for t in admin.list_topics()] == ["spread"], "every broker applies the metadata log"


def test_leader_kills_lose_no_acknowledged_record(start_cluster, consume_all, ack_recorder, lost, kill_leaders) -> None:
    """Producers run with acks=all while partition leaders are SIGKILLed and restarted, over and over."""
    brokers = start_cluster(3)
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("safe", partitions=2)
    producers = ack_recorder(bootstrap, "safe", workers=2, linger_ms=2, batch_size=4096,
                             delivery_timeout_ms=30_000, request_timeout_ms=5_000, max_in_flight=1)
    try:
        kill_leaders(bootstrap, "safe", 2, brokers)
    finally:
        acked = producers.stop()
    assert len(acked) > 500
    found = consume_all(bootstrap, "safe", 2)
    missing = lost(acked, found)
    assert not missing, f"{len(missing)} acknowledged records lost or moved, e.g. {missing[:5]}"
    for records in found.values():
        assert [r.offset for r in records] == list(range(len(records))), "offsets are dense and in order"
    acked_values = [v for _, _, v in acked]
    assert len(set(acked_values)) == len(acked_values), "no acknowledged record was written twice"


def test_minority_cannot_acknowledge_and_majority_continues(start_cluster, consume_all, leader_of) -> None:
    brokers = start_cluster(3)
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("quorum")
    with Producer(bootstrap, linger_ms=0) as producer:
        producer.send("quorum", b"before").result(timeout=30)
    leader = leader_of(bootstrap, "quorum", 0, brokers)
    others = [b for b in brokers if b is not leader]
    for broker in others:
        broker.pause()
    try:
        with (Producer(leader.address, linger_ms=0, delivery_timeout_ms=3_000, request_timeout_ms=1_000) as producer,
              pytest.raises(RequestTimedOutError)):
            producer.send("quorum", b"minority", partition=0).result(timeout=30)
    finally:
        for broker in others:
            broker.resume()
    leader.pause()
    try:
        majority = bootstrap_of(others)
        with Producer(majority, linger_ms=0, delivery_timeout_ms=30_000, request_timeout_ms=2_000) as producer:
            producer.send("quorum", b"majority").result(timeout=30)
    finally:
        leader.resume()
    values = [r.value for r in consume_all(bootstrap, "quorum", 1)[0]]
    assert values[0] == b"before" and b"majority" in values
    assert values.count(b"majority") == 1


def test_a_frozen_broker_listed_first_does_not_stall_metadata(start_cluster) -> None:
    """A frozen broker answers nothing on a connection opened before it froze; clients ask the
    next broker and ask the frozen one last from then on."""
    brokers = start_cluster(3)
    with Admin(bootstrap_of(brokers)) as admin:
        admin.create_topic("first", partitions=3)
    conn = ClusterConnection(bootstrap_of(brokers), request_timeout_s=1.0)
    try:
        conn.refresh(["first"])
        brokers[0].pause()
        try:
            for _ in range(3):
                assert [t.name for t in conn.refresh(["first"]).topics] == ["first"]
        finally:
            brokers[0].resume()
    finally:
        conn.close()


def test_restarted_broker_catches_up_and_metadata_survives_full_restart(start_cluster, consume_all,
                                                                       restart_cluster) -> None:
    brokers = start_cluster(3)
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("catchup", partitions=1)
    down = brokers[2]
    down.kill()
    with Producer(bootstrap_of(brokers[:2]), linger_ms=1) as producer:
        for i in range(2000):
            producer.send("catchup", f"r{i}".encode())
    down.start()
    deadline = time.monotonic() + 30
    while True:
        with Admin(down.address) as admin:
            hw = admin.describe_topic("catchup").partitions[0].high_watermark
        if hw == 2000:
            break
        assert time.monotonic() < deadline, f"broker {down.broker_id} stuck at {hw}"
        time.sleep(0.2)
    restart_cluster(brokers)
    with Admin(bootstrap) as admin:
        assert [t.name for t in admin.list_topics()] == ["catchup"]
    values = [r.value for r in consume_all(bootstrap, "catchup", 1)[0]]
    assert values == [f"r{i}".encode() for i in range(2000)]


def wait_preferred_leaders(bootstrap: str, topic: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with Admin(bootstrap) as admin:
            partitions = admin.describe_topic(topic).partitions
        if all(p.leader == p.replicas[0] and p.leader in p.in_sync_replicas for p in partitions):
            return True
        time.sleep(0.2)
    return False


def test_preferred_leaders_return_automatically_after_a_restart(start_cluster) -> None:
    brokers = start_cluster(3, "--leader-balance-delay-ms", "1000")
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("balanced", partitions=3)
    assert wait_preferred_leaders(bootstrap, "balanced", 20)
    brokers[0].kill()
    with Producer(bootstrap_of(brokers[1:]), linger_ms=0) as producer:
        for p in range(3):
            producer.send("balanced", b"while broker 1 is down", partition=p).result(timeout=30)
    brokers[0].start()
    assert wait_preferred_leaders(bootstrap, "balanced", 30), "broker 1 leads its preferred partitions again"


def test_elect_leaders_command_restores_preferred_leaders(start_cluster) -> None:
    brokers = start_cluster(3, "--leader-balance-delay-ms", "3600000")
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("manual", partitions=3)
        assert wait_preferred_leaders(bootstrap, "manual", 20)
        brokers[1].kill()
        with Producer(bootstrap_of([brokers[0], brokers[2]]), linger_ms=0) as producer:
            for p in range(3):
                producer.send("manual", b"x", partition=p).result(timeout=30)
        brokers[1].start()
        wait_until(lambda: sum(b.metric_total("raftka_leader_imbalance_partitions") for b in brokers) >= 1,
                   "a leader's balancer saw broker 2 in sync and not leading its preferred partition")
        partitions = admin.describe_topic("manual").partitions
        assert any(p.leader != p.replicas[0] for p in partitions), "no automatic move within the delay"
        deadline = time.monotonic() + 20
        moves = []
        while not moves and time.monotonic() < deadline:
            moves = admin.elect_preferred_leaders("manual")
            time.sleep(0.2)
        assert moves and all(m.to_broker == 2 for m in moves)
    assert wait_preferred_leaders(bootstrap, "manual", 20)


def test_follower_behind_the_compacted_log_catches_up_by_snapshot(start_cluster, consume_all, leader_of) -> None:
    """While a follower is down, retention deletes (and Raft compacts) what it misses; on restart it
    installs the leader's snapshot and continues from the leader's log start."""
    brokers = start_cluster(3, "--retention-check-ms", "200")
    bootstrap = bootstrap_of(brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("compacted", config={"segment.bytes": 4096, "retention.bytes": 8192})
    with Producer(bootstrap, linger_ms=0) as producer:
        producer.send("compacted", b"first").result(timeout=30)
    leader = leader_of(bootstrap, "compacted", 0, brokers)
    follower = next(b for b in brokers if b is not leader)
    follower.kill()
    with Producer(bootstrap_of([b for b in brokers if b is not follower]), linger_ms=0, batch_size=1024) as producer:
        for i in range(300):
            producer.send("compacted", f"{i:04d}".encode() * 64).result(timeout=30)

    def own_view(broker: LocalBroker) -> api_pb2.PartitionOffsets:
        with grpc.insecure_channel(broker.address) as channel:
            response = api_pb2_grpc.AdminStub(channel).DescribeTopic(
                api_pb2.DescribeTopicRequest(name="compacted"), timeout=5)
        return response.offsets[0]

    deadline = time.monotonic() + 30
    while own_view(leader).log_start_offset == 0:
        assert time.monotonic() < deadline, "the leader's retention never ran"
        time.sleep(0.2)
    follower.start()
    deadline = time.monotonic() + 30
    while (mine := own_view(follower)).high_watermark < 301:
        assert time.monotonic() < deadline, f"follower stuck: {mine}"
        time.sleep(0.2)
    assert mine.log_start_offset > 0, "the follower restarted its log from the leader's snapshot"
    values = [r.value for r in consume_all(bootstrap, "compacted", 1)[0]]
    assert values[-1] == b"0299" * 64


def test_topics_created_during_a_controller_failover_are_not_lost(start_cluster) -> None:
    brokers = start_cluster(3)
    bootstrap = bootstrap_of(brokers)
    controller_id = -1
    with grpc.insecure_channel(brokers[0].address) as channel:
        while controller_id < 1:
            metadata = api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=5)
            controller_id = metadata.controller_id
            time.sleep(0.05)
    controller = next(b for b in brokers if b.broker_id == controller_id)
    survivors = bootstrap_of([b for b in brokers if b is not controller])
    created: list[str] = []
    failures: list[str] = []
    for i in range(30):
        if i == 5:
            controller.kill()
        try:
            with Admin(survivors if i >= 5 else bootstrap, request_timeout_ms=20_000) as admin:
                admin.create_topic(f"t-{i}")
            created.append(f"t-{i}")
        except RaftkaError as exc:
            failures.append(f"t-{i}: {type(exc).__name__}: {exc}")
    assert len(created) >= 25, f"the survivors elect a new controller and keep accepting topics: {failures}"
    controller.start()
    for broker in brokers:
        deadline = time.monotonic() + 20
        while True:
            with Admin(broker.address) as admin:
                missing = set(created) - {t.name for t in admin.list_topics()}
            if not missing:
                break
            assert time.monotonic() < deadline, f"broker {broker.broker_id} lost {missing}"
            time.sleep(0.2)


def reported_down_by_leader(live: list[LocalBroker], broker_id: int) -> bool:
    """Whether the metadata leader, which places replicas, has seen `broker_id`'s Raft connection
    fail (DescribeCluster's `reachable` is the answering broker's own view)."""
    def describe(broker: LocalBroker) -> api_pb2.DescribeClusterResponse:
        with grpc.insecure_channel(broker.address) as channel:
            return api_pb2_grpc.AdminStub(channel).DescribeCluster(api_pb2.DescribeClusterRequest(), timeout=5)
    try:
        leader = next((b for b in live if b.broker_id == describe(live[0]).controller_id), None)
        if leader is None:
            return False
        return any(s.broker.id == broker_id and not s.reachable for s in describe(leader).brokers)
    except grpc.RpcError:
        return False


def test_new_replicas_go_to_live_brokers(start_cluster) -> None:
    brokers = start_cluster(3)
    with Admin(bootstrap_of(brokers)) as admin:
        admin.create_topic("warm-up")
    brokers[2].kill()
    wait_until(lambda: reported_down_by_leader(brokers[:2], 3), "the metadata leader saw broker 3 go down",
               timeout_s=30)
    with Admin(bootstrap_of(brokers[:2])) as admin:
        topic = admin.create_topic("placed", partitions=4, replication_factor=2)
        assert all(sorted(p.replicas) == [1, 2] for p in topic.partitions), topic.partitions
        everywhere = admin.create_topic("wide", partitions=1, replication_factor=3)
        assert sorted(everywhere.partitions[0].replicas) == [1, 2, 3], "too few live brokers: use them all"
    with Producer(bootstrap_of(brokers[:2]), linger_ms=0) as producer:
        producer.send("wide", b"two of three replicas are enough").result(timeout=30)


def test_a_frozen_broker_gets_no_new_replicas_once_its_pings_go_unanswered(start_cluster) -> None:
    """SIGSTOP keeps a broker's sockets open and its kernel answering TCP; the Raft transport's
    pings (every 10 s, 5 s to answer) are what mark it down, and reconnection attempts that hang
    against it must not make it look alive again."""
    brokers = start_cluster(3)
    with Admin(bootstrap_of(brokers)) as admin:
        admin.create_topic("warm-up")
    brokers[2].pause()
    try:
        wait_until(lambda: reported_down_by_leader(brokers[:2], 3), "unanswered pings marked broker 3 down",
                   timeout_s=60)
        with Admin(bootstrap_of(brokers[:2])) as admin:
            topic = admin.create_topic("placed-around", partitions=4, replication_factor=2)
            assert all(sorted(p.replicas) == [1, 2] for p in topic.partitions), topic.partitions
    finally:
        brokers[2].resume()


def test_brokers_register_their_racks_and_replicas_span_racks(start_cluster) -> None:
    brokers = start_cluster(4, racks=["east", "east", "west", "west"])
    racks = {1: "east", 2: "east", 3: "west", 4: "west"}
    deadline = time.monotonic() + 20
    with grpc.insecure_channel(brokers[0].address) as channel:
        stub = api_pb2_grpc.BrokerStub(channel)
        while {b.id: b.rack for b in stub.Metadata(api_pb2.MetadataRequest(), timeout=5).brokers} != racks:
            assert time.monotonic() < deadline, "brokers did not register their racks"
            time.sleep(0.2)
    with Admin(bootstrap_of(brokers)) as admin:
        topic = admin.create_topic("zoned", partitions=8, replication_factor=2)
    assert all({racks[b] for b in p.replicas} == {"east", "west"} for p in topic.partitions), topic.partitions



def test_a_created_topic_is_known_to_every_broker_at_once(start_cluster) -> None:
    """Metadata reads are linearizable: once a creation is acknowledged, no broker calls the topic
    unknown, not even one that was frozen while it was created and is asked before it catches up."""
    brokers = start_cluster(3)
    for i in range(5):
        with grpc.insecure_channel(brokers[0].address) as channel:
            controller = api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=30).controller_id
        lagging = next(b for b in brokers if b.broker_id != controller)
        lagging.pause()
        try:
            with Admin(bootstrap_of([b for b in brokers if b is not lagging])) as admin:
                admin.create_topic(f"fresh-{i}", partitions=2)
        finally:
            lagging.resume()
        with grpc.insecure_channel(lagging.address) as channel:
            response = api_pb2_grpc.BrokerStub(channel).Metadata(
                api_pb2.MetadataRequest(topics=[f"fresh-{i}"]), timeout=30)
        assert [t.name for t in response.topics] == [f"fresh-{i}"]
        with Admin(lagging.address) as admin:
            assert f"fresh-{i}" in [t.name for t in admin.list_topics()]
