"""The cluster changes shape while it runs: brokers join as learners of the metadata log and take
replicas, voters change one at a time, a broker whose disk was lost is told apart, draining brokers
take no new replicas."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest

from raftka import Admin, Producer
from raftka.client.local import LocalBroker, free_port, plan
from raftka.errors import InvalidReplicationFactorError, InvalidRequestError
from raftka.proto import api_pb2, api_pb2_grpc
from waiting import wait_until


def roles(admin: Admin) -> dict[int, str]:
    return {b.broker_id: b.role for b in admin.describe_cluster()}


def test_brokers_join_as_learners_and_take_replicas(start_cluster, joiner) -> None:
    founders = start_cluster(3)
    joiners = [joiner(i, founders).spawn() for i in (4, 5)]
    try:
        for broker in joiners:
            broker.wait(30)
        bootstrap = ",".join(b.address for b in founders)
        with Admin(bootstrap) as admin:
            wait_until(lambda: roles(admin) == {1: "voter", 2: "voter", 3: "voter", 4: "learner", 5: "learner"},
                     "the joiners are learners of the metadata log")
            status = {b.broker_id: b for b in admin.describe_cluster()}
            assert status[4].address == joiners[0].address and status[5].address == joiners[1].address
            for broker in (*founders, *joiners):
                with grpc.insecure_channel(broker.address) as channel:
                    listed = api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=10).brokers
                assert {b.id: b.address for b in listed} == {b.broker_id: b.address for b in (*founders, *joiners)}
            topic = admin.create_topic("wide", partitions=5, replication_factor=3)
            assert {4, 5} <= {b for p in topic.partitions for b in p.replicas}
            wait_until(lambda: all(len(p.in_sync_replicas) == 3 for p in admin.describe_topic("wide").partitions),
                     "every replica, on the joiners too, is in sync")
    finally:
        for broker in joiners:
            broker.stop()


def test_pods_of_one_template_found_or_join_by_whether_peers_name_them(tmp_path) -> None:
    """A StatefulSet's pods all start at once with the same flags: `--peers` names the founding
    controllers, and a pod it does not name (here the fourth, its id from its pod name) joins through
    them, also after a restart."""
    founders = plan(3, tmp_path, [free_port() for _ in range(3)])
    fourth = LocalBroker(9, f"127.0.0.1:{free_port()}", tmp_path / "pod-3", founders[0].peers,
                         extra_args=("--id-from-name", "raftka-3"))
    brokers = [*founders, fourth]
    try:
        for broker in brokers:
            broker.spawn()
        for broker in brokers:
            broker.wait(60)
        with Admin(founders[0].address) as admin:
            wait_until(lambda: roles(admin) == {1: "voter", 2: "voter", 3: "voter", 4: "learner"},
                       "the pod --peers does not name is a learner, broker 4 (raftka-3's ordinal + 1)")
            assert fourth.stop() == 0
            fourth.start(30)
            topic = admin.create_topic("spread", partitions=4, replication_factor=3)
            assert 4 in {b for p in topic.partitions for b in p.replicas}
            wait_until(lambda: roles(admin) == {1: "voter", 2: "voter", 3: "voter", 4: "learner"},
                       "after a restart it is the same learner")
    finally:
        for broker in brokers:
            broker.stop()


def test_a_broker_back_with_an_empty_data_directory_is_refused(start_cluster, registered) -> None:
    brokers = start_cluster(3)
    wiped = brokers[2]
    wait_until(lambda: 3 in registered(brokers[0]), "broker 3 registered")
    assert wiped.stop() == 0
    subprocess.run(["rm", "-rf", str(wiped.data_dir)], check=True)
    wiped.spawn()
    assert wiped.process is not None and wiped.process.wait(timeout=60) == 2
    assert "start it with --replace" in wiped.log()
    wiped.spawn()
    assert wiped.process.wait(timeout=60) == 2, "a second start is refused too (it founded no metadata log)"


def test_a_joiner_back_with_an_empty_data_directory_is_refused(start_cluster, joiner, registered) -> None:
    founders = start_cluster(3)
    broker = joiner(4, founders).start(30)
    wait_until(lambda: 4 in registered(founders[0]), "broker 4 registered")
    assert broker.stop() == 0
    subprocess.run(["rm", "-rf", str(broker.data_dir)], check=True)
    broker.spawn()
    assert broker.process is not None and broker.process.wait(timeout=60) == 2
    assert "IncarnationMismatch" in broker.log() or "start it with --replace" in broker.log()


def test_voters_change_one_at_a_time_while_producing(start_cluster, joiner,
                                                    ack_recorder, consume_all, lost) -> None:
    founders = start_cluster(3)
    fourth = joiner(4, founders).start(30)
    bootstrap = ",".join(b.address for b in (*founders, fourth))
    try:
        with Admin(bootstrap) as admin:
            admin.create_topic("steady", partitions=3)
            producers = ack_recorder(bootstrap, "steady", workers=1, linger_ms=1)
            try:
                producers.wait_for(200)
                wait_until(lambda: roles(admin).get(4) == "learner", "broker 4 follows the metadata log")
                assert admin.add_controller(4) == ([1, 2, 3, 4], [])
                assert admin.remove_controller(1) == ([2, 3, 4], [1])
                with pytest.raises(InvalidRequestError, match="not a voter"):
                    admin.remove_controller(1)
                assert roles(admin) == {1: "learner", 2: "voter", 3: "voter", 4: "voter"}
                admin.create_topic("after", partitions=1)
                count = len(producers.acknowledged)
                producers.wait_for(count + 200)
            finally:
                acked = producers.stop()
        assert producers.failures == []
        assert not lost(acked, consume_all(bootstrap, "steady", 3))
    finally:
        fourth.stop()


def test_draining_brokers_take_no_new_replicas(start_cluster, joiner, registered) -> None:
    """A decommissioning broker gets no new replica while its replicas move away (throttled here, so
    the moves last); recommissioned, it takes new replicas again and stays registered."""
    founders = start_cluster(3)
    fourth = joiner(4, founders).start(30)
    bootstrap = ",".join(b.address for b in founders)
    wait_until(lambda: registered(founders[0]) == {1, 2, 3, 4}, "four brokers registered")
    try:
        with Admin(bootstrap) as admin:
            admin.create_topic("rf3", partitions=4, replication_factor=3)
            with Producer(bootstrap, linger_ms=5) as producer:
                for i in range(200):
                    producer.send("rf3", bytes(4096), partition=i % 4)
            moves = admin.decommission_broker(4, throttle_bytes_per_s=16 * 1024)
            assert moves and all(4 not in replicas for replicas in moves.values())
            assert {b.broker_id: b.draining for b in admin.describe_cluster()}[4] is True
            topic = admin.create_topic("spread", partitions=8, replication_factor=3)
            assert 4 not in {b for p in topic.partitions for b in p.replicas}
            with pytest.raises(InvalidReplicationFactorError, match="cannot decommission broker 3"):
                admin.decommission_broker(3)
            assert admin.decommission_broker(4, draining=False) == {}
            topic = admin.create_topic("again", partitions=8, replication_factor=3)
            assert 4 in {b for p in topic.partitions for b in p.replicas}
            wait_until(lambda: not admin.list_reassignments().moves, "the moves off broker 4 completed")
            assert 4 in {b.broker_id for b in admin.describe_cluster()}
        status = subprocess.run([sys.executable, "-m", "raftka", "cluster", "status", "--bootstrap", bootstrap],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0].split() == ["ID", "ADDRESS", "RACK", "ROLE", "STATE", "REPLICAS", "LEADERS"]
        assert [line.split()[:5] for line in lines[1:]] == [
            ["1", founders[0].address, "-", "voter", "alive"], ["2", founders[1].address, "-", "voter", "alive"],
            ["3", founders[2].address, "-", "voter", "alive"], ["4", fourth.address, "-", "learner", "alive"]]
    finally:
        fourth.stop()


@pytest.mark.slow
def test_a_rolling_restart_of_five_brokers_surfaces_no_error(start_cluster, joiner,
                                                            ack_recorder, consume_all, exactly_once) -> None:
    """Each broker in turn: SIGTERM (it hands its leaderships off), start, wait until it serves again.
    A producer at about 1,000 records/s with acks=all sees no error; every record is in the log once,
    in the order it was sent."""
    founders = start_cluster(3)
    brokers = [*founders, *(joiner(i, founders).start(30) for i in (4, 5))]
    bootstrap = ",".join(b.address for b in brokers)
    try:
        with Admin(bootstrap) as admin:
            admin.create_topic("rolling", partitions=5, replication_factor=3)
        producers = ack_recorder(bootstrap, "rolling", workers=1, pace_s=0.1, keyed=True, linger_ms=1)
        try:
            producers.wait_for(500)
            started = time.monotonic()
            for broker in brokers:
                assert broker.stop() == 0, broker.log()[-2000:]
                broker.start(60)
                count = len(producers.acknowledged)
                producers.wait_for(count + 300)
            stall = producers.longest_gap_s(started)
        finally:
            acked = producers.stop()
        assert producers.failures == [], producers.failures[:3]
        exactly_once(acked, consume_all(bootstrap, "rolling", 5))
        print(f"rolling restart of 5 brokers: {len(acked)} records acknowledged, longest stall {stall:.3f} s")
    finally:
        for broker in brokers[3:]:
            broker.stop()
