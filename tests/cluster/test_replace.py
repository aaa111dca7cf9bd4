"""A broker whose disk was lost comes back under its id with `--replace`: its replicas rejoin their
groups (they vote and count towards commits only once caught up, design note 14 in
replication/raft.py), after which the cluster survives losing another broker with nothing
acknowledged lost, and groups created after the replacement are founded as usual."""

from __future__ import annotations

import json
import subprocess
import sys

from raftka import Admin, Producer
from waiting import wait_until

PARTITIONS = 3


def all_in_sync(admin: Admin, topic: str, brokers: set[int]) -> bool:
    return all(set(p.in_sync_replicas) == brokers for p in admin.describe_topic(topic).partitions)


def cluster_status(bootstrap: str) -> dict[int, dict[str, object]]:
    status = subprocess.run([sys.executable, "-m", "raftka", "cluster", "status", "--bootstrap", bootstrap,
                             "--format", "json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    return {row["id"]: row for row in json.loads(status.stdout)}


def test_a_replaced_broker_rejoins_and_the_cluster_then_survives_losing_another(
        start_cluster, ack_recorder, lost, consume_all) -> None:
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("events", partitions=PARTITIONS, replication_factor=3)
        wait_until(lambda: all_in_sync(admin, "events", {1, 2, 3}), "every replica is in sync")
    recorder = ack_recorder(bootstrap, "events", keyed=True, pace_s=0.05, acks="all")
    recorder.wait_for(300)

    wiped = brokers[2]
    wiped.kill()
    subprocess.run(["rm", "-rf", str(wiped.data_dir)], check=True)
    recorder.wait_for(len(recorder.acknowledged) + 200)
    wiped.extra_args = (*wiped.extra_args, "--replace")
    replaced = wiped.start()
    assert "broker replaces one whose disk was lost id=3" in replaced.log()
    with Admin(bootstrap) as admin:
        wait_until(lambda: all_in_sync(admin, "events", {1, 2, 3}), "the replaced broker's replicas are in sync")
    rejoined = replaced.log().count("replica rejoins after its broker's disk was lost group=")
    assert "rejoins after its broker's disk was lost group=__cluster_metadata/0" in replaced.log()
    assert rejoined == 1 + PARTITIONS, "the metadata log and every partition of the topic rejoin"
    wait_until(lambda: replaced.log().count("caught up after losing its state") == 1 + PARTITIONS,
             "every rejoining replica has caught up (its barrier committed)")
    status = cluster_status(bootstrap)
    assert (status[3]["role"], status[3]["reachable"], status[3]["replicas"]) == ("voter", True, PARTITIONS)

    recorder.wait_for(len(recorder.acknowledged) + 200)
    brokers[0].kill()
    recorder.wait_for(len(recorder.acknowledged) + 300, timeout_s=90)
    acknowledged = recorder.stop()
    assert not recorder.failures, recorder.failures[:3]

    survivors = f"{brokers[1].address},{replaced.address}"
    found = consume_all(survivors, "events", PARTITIONS)
    assert lost(acknowledged, found) == []
    for partition, records in found.items():
        values = [r.value for r in records]
        assert len(values) == len(set(values)), f"partition {partition} holds a record twice"
        assert [r.offset for r in records] == sorted(r.offset for r in records)
    acked_in_order = {p: [v for q, _, v in sorted(acknowledged) if q == p] for p in range(PARTITIONS)}
    for partition, values in acked_in_order.items():
        positions = [r.value for r in found[partition]]
        assert [v for v in positions if v in set(values)] == values

    with Admin(survivors) as admin:
        admin.create_topic("after", partitions=1, replication_factor=2)
    with Producer(survivors) as producer:
        producer.send("after", b"new").result(timeout=30)
    assert [r.value for r in consume_all(survivors, "after", 1)[0]] == [b"new"]
    assert replaced.log().count("replica rejoins after its broker's disk was lost group=") == rejoined, \
        "a group created after the replacement registered is founded, not rejoined"
