"""The internal state machines on real brokers: snapshots bound their logs, restarts and lagging
followers start from the snapshots, and a malformed record is skipped and reported by both."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from raftka import Admin, TopicPartition
from raftka.client.connection import ClusterConnection
from raftka.client.local import LocalBroker
from raftka.client.membership import GroupCoordinatorClient
from raftka.partition.log import LogConfig
from raftka.partition.raft_entries import RECORDS
from raftka.partition.store import LogStore
from raftka.proto import api_pb2
from raftka.wire.batch import encode_batch, stamp_replicated
from raftka.wire.structs import as_group_partitions, from_group_partitions
from waiting import wait_until

OFFSETS = "__consumer_offsets"
METADATA_LOG = "__cluster_metadata/0"


def metric(broker: LocalBroker, series: str) -> float:
    """The value of one series of the broker's metrics (0 if absent)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(series + " "))


def join(client: GroupCoordinatorClient, topics: list[str]) -> str:
    """A hand-driven member that joins, applies its assignment and then stays silent (5 min session)."""
    member_id, owned, epoch = "", frozenset(), 0
    for _ in range(3):
        response = client.call(lambda stub: stub.Heartbeat, api_pb2.GroupHeartbeatRequest(
            group_id=client.group_id, member_id=member_id, topics=topics, owned=as_group_partitions(owned),
            session_timeout_ms=300_000, member_epoch=epoch))
        member_id, owned, epoch = response.member_id, from_group_partitions(response.assignment), response.member_epoch
    return member_id


def commit_many(client: GroupCoordinatorClient, topic: str, partitions: int, count: int) -> dict[TopicPartition, int]:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    for n in range(count):
        client.commit({tp: (n * 100 + tp.partition, f"commit {n}") for tp in tps})
    return {tp: (count - 1) * 100 + tp.partition for tp in tps}


def cluster_state(bootstrap: str, groups: list[str]) -> tuple[object, ...]:
    """Everything the state machines hold, as clients see it: topics, brokers, groups' members and offsets."""
    with Admin(bootstrap) as admin:
        topics = sorted((t.name, len(t.partitions), tuple(p.replicas for p in t.partitions),
                         tuple(sorted(t.config.items())))
                        for t in admin.list_topics(include_internal=True))
        described = [admin.describe_group(g) for g in groups]
    conn = ClusterConnection(bootstrap)
    try:
        brokers = sorted((b.id, b.address, b.rack) for b in conn.refresh([]).brokers)
        committed = {g: {tp: (o.offset, o.metadata) for tp, o in GroupCoordinatorClient(conn, g).committed().items()}
                     for g in groups}
    finally:
        conn.close()
    members = [(g.group_id, g.assignor, sorted((m.member_id, sorted(m.assignment), sorted(m.owned), m.topics)
                                               for m in g.members)) for g in described]
    return topics, brokers, members, committed


def test_a_restart_after_many_commits_starts_from_the_snapshots_with_the_same_state(start_broker) -> None:
    broker = start_broker("--snapshot-bytes", "2048", "--offsets-partitions", "1")
    with Admin(broker.address) as admin:
        for n in range(12):
            admin.create_topic(f"topic-{n}", partitions=2)
        admin.delete_topic("topic-11")
        admin.create_topic("events", partitions=4)
    conn = ClusterConnection(broker.address)
    member = join(GroupCoordinatorClient(conn, "live"), ["topic-3"])
    commit_many(GroupCoordinatorClient(conn, "busy"), "events", 4, 300)
    conn.close()
    with Admin(broker.address) as admin:
        offsets_log = admin.describe_topic(OFFSETS).partitions[0]
    assert offsets_log.log_start_offset > 250, "the group log was truncated behind its snapshots"
    assert offsets_log.size_bytes < 16_000, f"300 commits of ~400 B; the log keeps only the tail: {offsets_log}"
    assert metric(broker, 'raftka_state_machine_snapshots{event="taken",machine="metadata"}') >= 1
    before = cluster_state(broker.address, ["busy", "live"])
    assert member in str(before[2])

    assert broker.stop() == 0, broker.log()[-2000:]
    broker.start()

    assert metric(broker, 'raftka_state_machine_snapshots{event="restored",machine="groups"}') == 1
    assert metric(broker, 'raftka_state_machine_snapshots{event="restored",machine="metadata"}') == 1
    restarted = broker.log().rsplit("broker stopped", 1)[1]
    assert "state machine restored from snapshot machine=metadata source=local" in restarted
    assert "state machine restored from snapshot machine=groups source=local" in restarted
    assert cluster_state(broker.address, ["busy", "live"]) == before


def test_a_follower_behind_the_truncated_logs_catches_up_from_the_leaders_snapshots(start_cluster) -> None:
    brokers = start_cluster(3, "--snapshot-bytes", "2048", "--offsets-partitions", "1")
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("events", partitions=3)
    conn = ClusterConnection(bootstrap)
    client = GroupCoordinatorClient(conn, "g")
    client.commit({TopicPartition("events", 0): (1, "")})
    with Admin(bootstrap) as admin:
        preferred = admin.describe_topic(OFFSETS).partitions[0].replicas[0]
    lagging = next(b for b in brokers if b.broker_id == preferred)
    assert lagging.stop() == 0, lagging.log()[-2000:]

    expected = commit_many(client, "events", 3, 200)
    with Admin(bootstrap) as admin:
        for n in range(15):
            admin.create_topic(f"while-down-{n}", partitions=3)
        wait_until(lambda: admin.describe_topic(OFFSETS).partitions[0].log_start_offset > 100,
                   "the group log to be truncated behind a snapshot")

    lagging.start()
    wait_until(lambda: metric(lagging, 'raftka_state_machine_snapshots{event="restored",machine="groups"}') >= 1,
               "the lagging broker to install the group snapshot")
    wait_until(lambda: "machine=metadata source=leader" in lagging.log(),
               "the lagging broker to install the metadata snapshot")
    assert "state machine restored from snapshot machine=groups source=leader" in lagging.log()

    with Admin(lagging.address) as admin:
        names = {t.name for t in admin.list_topics()}
        assert {f"while-down-{n}" for n in range(15)} <= names

        def leads_offsets() -> bool:
            admin.elect_preferred_leaders(OFFSETS)
            return admin.describe_topic(OFFSETS).partitions[0].leader == preferred
        wait_until(leads_offsets, "the caught-up broker to lead the group partition again")
    assert {tp: o.offset for tp, o in client.committed(list(expected)).items()} == expected
    with Admin(bootstrap) as admin:
        def follows_new_topics() -> bool:
            hosted = [p for t in range(15) for p in admin.describe_topic(f"while-down-{t}").partitions
                      if preferred in p.replicas]
            return bool(hosted) and all(preferred in p.in_sync_replicas for p in hosted)
        wait_until(follows_new_topics, "the caught-up broker to replicate the topics created while it was down")
    conn.close()


def append_committed(data_dir: Path, log_name: str, values: list[bytes]) -> None:
    """Append one batch of `values` to a stopped broker's Raft log as a committed entry of its term."""
    with LogStore(data_dir / "log") as store:
        raft_log = store.open_raft_log(log_name, LogConfig())
        term, vote = raft_log.hard_state.term, raft_log.hard_state.vote
        index = raft_log.last_index + 1
        batch = stamp_replicated(encode_batch([(None, v, (), 0) for v in values]), raft_log.end_offset, term)
        raft_log.append([(index, term, RECORDS, batch)])
        raft_log.set_hard_state(term, vote, index)


def offsets_log_name(data_dir: Path) -> str:
    """The log of `__consumer_offsets/0` (logs are named topic_id/partition; with one offsets partition
    it is the only topic log that has a partition 0 and no partition 1)."""
    with LogStore(data_dir / "log") as store:
        names = set(store.log_names()) - {METADATA_LOG}
    return next(n for n in names if n.endswith("/0") and n[:-1] + "1" not in names)


def test_malformed_records_are_skipped_and_reported_by_both_state_machines(start_broker) -> None:
    broker = start_broker("--offsets-partitions", "1")
    with Admin(broker.address) as admin:
        admin.create_topic("events", partitions=2)
    conn = ClusterConnection(broker.address)
    GroupCoordinatorClient(conn, "g").commit({TopicPartition("events", 0): (5, "kept")})
    conn.close()
    assert broker.stop() == 0
    append_committed(broker.data_dir, METADATA_LOG, [
        b"not json", b'{"op": "create_topic"}', b'{"op": "explode"}',
        b'{"op": "register_broker", "broker_id": "one", "address": "a:1", "rack": ""}',
        b'{"op": "create_topic", "topic": {"name": "after-bad", "topic_id": "0123", "replicas": [[1]], '
        b'"config": {}, "internal": false}}'])
    append_committed(broker.data_dir, offsets_log_name(broker.data_dir), [
        b"\xff\xfe", b'{"op": "offsets", "group": "g", "offsets": [["events", 0, "x", "", 0, "id"]]}',
        b'{"op": "members", "group": "g"}', b'{"op": "unknown", "group": "g"}', b"[]"])
    broker.start()

    assert metric(broker, 'raftka_state_machine_records_skipped{machine="metadata"}') == 4
    assert metric(broker, 'raftka_state_machine_records_skipped{machine="groups"}') == 5
    log = broker.log()
    assert log.count("state machine record skipped machine=metadata log=__cluster_metadata/0") == 4
    assert log.count("state machine record skipped machine=groups log=__consumer_offsets/0") == 5
    with Admin(broker.address) as admin:
        assert "after-bad" in {t.name for t in admin.list_topics()}, "records after the bad ones apply"
        admin.create_topic("still-serving")
    conn = ClusterConnection(broker.address)
    client = GroupCoordinatorClient(conn, "g")
    client.commit({TopicPartition("events", 1): (9, "")})
    committed = client.committed()
    conn.close()
    assert {tp: (o.offset, o.metadata) for tp, o in committed.items()} == {
        TopicPartition("events", 0): (5, "kept"), TopicPartition("events", 1): (9, "")}
