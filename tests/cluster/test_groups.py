"""The group coordinator on real brokers, driven through its RPCs (no consumer in the loop)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from raftka import Admin, TopicPartition
from raftka.client.connection import ClusterConnection
from raftka.client.membership import GroupCoordinatorClient
from raftka.errors import (GroupNotEmptyError, InvalidRequestError, NotPartitionOwnerError, UnknownGroupError,
                           UnknownMemberIdError, UnreleasedInstanceIdError)
from raftka.proto import api_pb2
from raftka.wire.structs import as_group_partitions, from_group_partitions


class Member:
    """A hand-driven group member: heartbeats report what it owns and the epoch it applied."""

    def __init__(self, client: GroupCoordinatorClient, topics: list[str], instance_id: str = "") -> None:
        self.client, self.topics, self.instance_id = client, topics, instance_id
        self.member_id, self.owned, self.epoch = "", frozenset(), 0

    def heartbeat(self, *, apply: bool = True, leave: bool = False) -> frozenset[TopicPartition]:
        response = self.client.call(lambda stub: stub.Heartbeat, api_pb2.GroupHeartbeatRequest(
            group_id=self.client.group_id, member_id=self.member_id, instance_id=self.instance_id,
            topics=self.topics, owned=as_group_partitions(self.owned), session_timeout_ms=10_000,
            member_epoch=self.epoch, leave=leave))
        self.member_id = response.member_id
        granted = from_group_partitions(response.assignment)
        if apply:
            self.owned, self.epoch = granted, response.member_epoch
        return granted


@pytest.fixture
def cluster(start_cluster):
    brokers = start_cluster(3, "--offsets-partitions", "3")
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("events", partitions=6)
    conn = ClusterConnection(bootstrap)
    yield brokers, bootstrap, conn
    conn.close()


def settle(members: list[Member], rounds: int = 6) -> None:
    for _ in range(rounds):
        for member in members:
            member.heartbeat()


def test_partitions_move_only_after_release_and_never_have_two_owners(cluster) -> None:
    _, _, conn = cluster
    client = GroupCoordinatorClient(conn, "g1")
    a, b = Member(client, ["events"]), Member(client, ["events"])
    assert len(a.heartbeat()) == 6
    b.heartbeat()
    assert b.owned == frozenset(), "nothing is free until a releases"
    a.heartbeat(apply=False)
    assert b.heartbeat() == frozenset(), "a has not applied its new assignment yet"
    assert len(a.heartbeat()) == 3, "a applies its shrunk assignment..."
    assert b.heartbeat() == frozenset(), "...but holds the rest until it reports the release"
    a.heartbeat()
    b.heartbeat()
    assert len(b.owned) == 3 and not (a.owned & b.owned)
    settle([a, b])
    assert a.owned | b.owned == {TopicPartition("events", p) for p in range(6)}
    a.heartbeat(leave=True)
    settle([b])
    assert len(b.owned) == 6


def test_commits_need_ownership_and_survive_as_offsets(cluster) -> None:
    _, bootstrap, conn = cluster
    client = GroupCoordinatorClient(conn, "g2")
    member = Member(client, ["events"])
    member.heartbeat()
    tp0, tp9 = TopicPartition("events", 0), TopicPartition("events", 9)
    client.commit({tp0: (42, "note")}, member.member_id)
    assert client.committed([tp0])[tp0].offset == 42
    assert client.committed([tp0])[tp0].metadata == "note"
    with pytest.raises(GroupNotEmptyError):
        client.commit({tp0: (1, "")})
    with pytest.raises(UnknownMemberIdError):
        client.commit({tp0: (1, "")}, "nobody")
    with pytest.raises(InvalidRequestError):
        client.commit({tp0: (-1, "")}, member.member_id)
    with pytest.raises(Exception, match="no partition 9"):
        client.commit({tp9: (1, "")}, member.member_id)
    other = Member(client, ["events"])
    other.heartbeat()
    with pytest.raises(NotPartitionOwnerError):
        client.commit({next(iter(member.owned)): (5, "")}, other.member_id)
    with Admin(bootstrap) as admin:
        with pytest.raises(GroupNotEmptyError):
            admin.delete_group("g2")
        member.heartbeat(leave=True)
        other.heartbeat(leave=True)
        info = admin.describe_group("g2")
        assert info.state == "empty" and [p.committed for p in info.partitions if p.tp == tp0] == [42]
        assert "g2" in [g.group_id for g in admin.list_groups()]
        admin.delete_group("g2")
        with pytest.raises(UnknownGroupError):
            admin.describe_group("g2")


def test_reset_offsets_is_a_dry_run_until_executed(cluster) -> None:
    _, bootstrap, conn = cluster
    client = GroupCoordinatorClient(conn, "g3")
    from raftka import Producer
    with Producer(bootstrap) as producer:
        for i in range(30):
            producer.send("events", f"{i}".encode(), partition=i % 6)
    tps = [TopicPartition("events", p) for p in range(6)]
    client.commit({tp: (2, "") for tp in tps})
    with Admin(bootstrap) as admin:
        plan = admin.reset_offsets("g3", "events", "shift", 10)
        assert all((plan[tp].current, plan[tp].new) == (2, 5) and plan[tp].clamped for tp in tps), \
            "clamped to the log end"
        assert client.committed(tps)[tps[0]].offset == 2, "a dry run commits nothing"
        admin.reset_offsets("g3", "events", "earliest", execute=True)
        assert {tp: o.offset for tp, o in client.committed(tps).items()} == {tp: 0 for tp in tps}
        admin.reset_offsets("g3", "events", "offset", 3, execute=True)
        assert {o.offset for o in client.committed(tps).values()} == {3}
        member = Member(client, ["events"])
        member.heartbeat()
        with pytest.raises(GroupNotEmptyError):
            admin.reset_offsets("g3", "events", "latest", execute=True)


def test_coordinator_failover_keeps_members_grants_and_offsets(cluster) -> None:
    brokers, _, conn = cluster
    client = GroupCoordinatorClient(conn, "g4")
    a, b = Member(client, ["events"]), Member(client, ["events"])
    a.heartbeat()
    settle([b, a])
    tp = next(iter(a.owned))
    client.commit({tp: (7, "")}, a.member_id)
    coordinator = client.call(lambda stub: stub.DescribeGroup, api_pb2.DescribeGroupRequest(group_id="g4")
                              ).summary.coordinator_id
    victim = next(broker for broker in brokers if broker.broker_id == coordinator)
    victim.kill()
    owned_a, owned_b = a.owned, b.owned
    settle([a, b], rounds=2)
    assert (a.owned, b.owned) == (owned_a, owned_b), "members and their partitions survive the failover"
    assert client.committed([tp])[tp].offset == 7
    victim.start()


def test_a_silent_member_expires_and_its_partitions_move(start_cluster) -> None:
    brokers = start_cluster(1)
    with Admin(brokers[0].address) as admin:
        admin.create_topic("events", partitions=4)
    conn = ClusterConnection(brokers[0].address)
    client = GroupCoordinatorClient(conn, "g5")
    quiet = Member(client, ["events"])
    quiet.heartbeat()
    quiet.client.call(lambda stub: stub.Heartbeat, api_pb2.GroupHeartbeatRequest(
        group_id="g5", member_id=quiet.member_id, topics=["events"], session_timeout_ms=1_000,
        owned=as_group_partitions(quiet.owned), member_epoch=quiet.epoch))
    active = Member(client, ["events"])
    deadline = time.monotonic() + 20
    while len(active.heartbeat()) < 4:
        assert time.monotonic() < deadline, "the silent member's partitions never moved"
        time.sleep(0.2)
    with pytest.raises(UnknownMemberIdError):
        quiet.heartbeat()
    conn.close()


def test_a_static_member_gets_its_partitions_back_after_a_restart(cluster) -> None:
    _, _, conn = cluster
    client = GroupCoordinatorClient(conn, "g6")
    pod_a, pod_b = Member(client, ["events"], "pod-a"), Member(client, ["events"], "pod-b")
    pod_a.heartbeat()
    settle([pod_b, pod_a])
    before = pod_a.owned
    pod_a.heartbeat(leave=True)
    settle([pod_b])
    assert len(pod_b.owned) == 3, "a static member's partitions stay reserved while it restarts"
    restarted = Member(client, ["events"], "pod-a")
    assert restarted.heartbeat() == before
    assert restarted.member_id != pod_a.member_id


def test_bad_group_requests_get_precise_errors(cluster) -> None:
    _, bootstrap, conn = cluster
    client = GroupCoordinatorClient(conn, "g7")

    def heartbeat(**fields: Any) -> None:
        client.call(lambda stub: stub.Heartbeat, api_pb2.GroupHeartbeatRequest(group_id="g7", **fields))

    with pytest.raises(InvalidRequestError, match="pattern"):
        heartbeat(pattern="ev(ents")
    with pytest.raises(InvalidRequestError, match="session_timeout_ms"):
        heartbeat(topics=["events"], session_timeout_ms=10)
    with pytest.raises(InvalidRequestError, match="assignor"):
        heartbeat(topics=["events"], assignor="best")
    with pytest.raises(InvalidRequestError, match="subscribe"):
        heartbeat()
    with pytest.raises(InvalidRequestError, match="group id"):
        GroupCoordinatorClient(conn, "").committed()
    from raftka import Producer
    from raftka.errors import InvalidTopicError
    with Producer(bootstrap, linger_ms=0) as producer, pytest.raises(InvalidTopicError, match="internal"):
        producer.send("__consumer_offsets", b"forged", partition=0).result(timeout=30)


def test_joins_are_retry_safe_and_a_live_static_id_is_not_taken_over(cluster) -> None:
    _, bootstrap, conn = cluster
    client = GroupCoordinatorClient(conn, "g8")
    first = Member(client, ["events"], "pod-a")
    first.member_id = "member-one"
    first.heartbeat(apply=False)
    first.heartbeat()
    info = client.call(lambda stub: stub.DescribeGroup, api_pb2.DescribeGroupRequest(group_id="g8"))
    assert [m.member_id for m in info.members] == ["member-one"], "a retried join is the same member"
    impatient = ClusterConnection(bootstrap, request_timeout_s=2)
    twin = Member(GroupCoordinatorClient(impatient, "g8"), ["events"], "pod-a")
    twin.member_id = "member-two"
    with pytest.raises(UnreleasedInstanceIdError):
        twin.heartbeat()
    impatient.close()
    assert first.heartbeat() == first.owned and len(first.owned) == 6


def test_offsets_of_deleted_topics_are_cleaned_up(cluster) -> None:
    _, bootstrap, conn = cluster
    with Admin(bootstrap) as admin:
        admin.create_topic("short-lived", partitions=2)
        only_deleted, mixed = GroupCoordinatorClient(conn, "g9"), GroupCoordinatorClient(conn, "g10")
        only_deleted.commit({TopicPartition("short-lived", 0): (5, "")})
        mixed.commit({TopicPartition("short-lived", 1): (6, ""), TopicPartition("events", 0): (7, "")})
        admin.delete_topic("short-lived")
        deadline = time.monotonic() + 30
        while "g9" in [g.group_id for g in admin.list_groups()]:
            assert time.monotonic() < deadline, "a group with only offsets of a deleted topic stayed"
            time.sleep(0.5)
        assert [(p.tp, p.committed) for p in admin.describe_group("g10").partitions] == [
            (TopicPartition("events", 0), 7)]
        admin.create_topic("short-lived", partitions=2)
        assert mixed.committed([TopicPartition("short-lived", 1)]) == {}, "a new topic starts without offsets"
