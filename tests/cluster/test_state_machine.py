"""The internal state machines' pure rules, in process: total apply, snapshot/restore equivalence."""

from __future__ import annotations

import pytest

from raftka.cluster.group_log import (CommittedOffset, GroupLog, MemberRecord, delete_command, forget_command,
                                      members_command, offsets_command)
from raftka.cluster.metadata import (BrokerRegistration, MetadataState, MoveLimits, TopicRecord,
                                     cancel_reassignment_command, complete_move_command, create_topic_command,
                                     delete_topic_command, reassign_command, register_broker_command)
from raftka.cluster.state_machine import MalformedRecordError, SnapshotFormatError, SnapshotPolicy
from raftka.wire.batch import encode_batch, stamp_replicated
from raftka.wire.structs import TopicPartition

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)
MEMBER = MemberRecord("m1", "", "client", ("t",), "", 30_000, frozenset({T0, T1}), frozenset({T0}), frozenset({T0}), 3)


def batch(offset: int, *values: bytes) -> bytes:
    return stamp_replicated(encode_batch([(b"k", v, (), 0) for v in values]), offset, 0)


def group_records() -> list[bytes]:
    return [offsets_command("a", [(TopicPartition("t", 0), CommittedOffset(5, "m", 1, "id1")),
                                  (TopicPartition("t", 1), CommittedOffset(6, "", 1, "id1"))]),
            members_command("a", 2, "sticky", [MEMBER]),
            offsets_command("b", [(TopicPartition("u", 0), CommittedOffset(1, "", 1, "id2"))]),
            forget_command("a", [(TopicPartition("t", 1), "id1")]),
            offsets_command("c", [(TopicPartition("t", 0), CommittedOffset(9, "", 1, "id1"))]),
            delete_command("c")]


def test_a_group_log_restored_from_a_snapshot_equals_the_replayed_one() -> None:
    records = group_records()
    replayed, snapshotted = GroupLog(0), GroupLog(0)
    for offset, record in enumerate(records[:4]):
        replayed.apply(offset, batch(offset, record))
        snapshotted.apply(offset, batch(offset, record))
    restored = GroupLog(0)
    restored.restore(snapshotted.snapshot())
    assert restored.groups == replayed.groups
    for offset, record in enumerate(records[4:], start=4):
        replayed.apply(offset, batch(offset, record))
        restored.apply(offset, batch(offset, record))
    assert restored.groups == replayed.groups and set(restored.groups) == {"a", "b"}
    assert restored.groups["a"].members == {"m1": MEMBER}
    assert restored.groups["a"].offsets == {("t", 0): CommittedOffset(5, "m", 1, "id1")}


MALFORMED_GROUP_RECORDS = [
    b"", b"\xff", b"[]", b'{"group": "a"}', b'{"op": "offsets"}', b'{"op": "boom", "group": "a"}',
    b'{"op": "offsets", "group": "a", "offsets": [["t", 0, 7, "", 1, "id1"], ["t", 1, "x", "", 1, "id1"]]}',
    b'{"op": "offsets", "group": "a", "offsets": [["t", 0, 7]]}',
    b'{"op": "members", "group": "a", "epoch": 1, "assignor": "", "members": [{"member_id": "m"}]}',
    b'{"op": "forget", "group": "a", "offsets": [["t", true, "id1"]]}',
]


def test_a_malformed_group_record_changes_nothing_and_is_counted_not_raised() -> None:
    group_log = GroupLog(3)
    group_log.apply(0, batch(0, group_records()[0]))
    before = {g: (dict(r.offsets), dict(r.members)) for g, r in group_log.groups.items()}
    group_log.apply(1, batch(1, *MALFORMED_GROUP_RECORDS, group_records()[2]))
    assert group_log.stats.skipped["groups"] == len(MALFORMED_GROUP_RECORDS)
    assert (dict(group_log.groups["a"].offsets), dict(group_log.groups["a"].members)) == before["a"], \
        "a record with one bad offset applies none of its offsets"
    assert "b" in group_log.groups, "the good record after the bad ones applies"
    group_log.apply(40, b"not a batch")
    assert group_log.stats.skipped["groups"] == len(MALFORMED_GROUP_RECORDS) + 1


def topic(name: str, topic_id: str) -> TopicRecord:
    return TopicRecord(name, topic_id, ((1, 2), (2, 1)))


def test_restoring_metadata_tells_the_listeners_exactly_the_topics_that_differ() -> None:
    source = MetadataState()
    for offset, command in enumerate([register_broker_command(BrokerRegistration(1, "h:1", "r1")),
                                      create_topic_command(topic("kept", "k1")),
                                      create_topic_command(topic("renewed", "r2")),
                                      create_topic_command(topic("new", "n1")),
                                      create_topic_command(topic("gone-later", "g1")),
                                      delete_topic_command("gone-later")]):
        assert source.apply(offset, command) is None
    target = MetadataState()
    for offset, command in enumerate([create_topic_command(topic("kept", "k1")),
                                      create_topic_command(topic("renewed", "r1")),
                                      create_topic_command(topic("dropped", "d1"))]):
        target.apply(offset, command)
    created, deleted = [], []
    target.on_created.append(lambda r: created.append((r.name, r.topic_id)))
    target.on_deleted.append(lambda r: deleted.append((r.name, r.topic_id)))
    target.restore(source.snapshot())
    assert sorted(deleted) == [("dropped", "d1"), ("renewed", "r1")]
    assert sorted(created) == [("new", "n1"), ("renewed", "r2")]
    assert target.topics() == source.topics() and target.brokers() == source.brokers()
    assert target.applied_offset == source.applied_offset == 5
    assert target.apply(5, create_topic_command(topic("late", "l1"))) is None and target.find("late") is None, \
        "commands the snapshot covers are not applied again"


@pytest.mark.parametrize("command", [
    b"not json", b"[1]", b'{"op": "explode"}', b'{"op": "create_topic"}', b'{"op": "delete_topic", "name": 3}',
    b'{"op": "register_broker", "broker_id": true, "address": "a", "rack": ""}',
    b'{"op": "create_topic", "topic": {"name": "x", "topic_id": "i", "replicas": [], "config": {}, "internal": false}}',
    b'{"op": "create_topic", "topic": {"name": "x", "topic_id": "i", "replicas": [[1]], '
    b'"config": {"retention.ms": "soon"}, "internal": false}}',
])
def test_a_malformed_metadata_command_raises_malformed_and_changes_nothing(command: bytes) -> None:
    state = MetadataState()
    state.apply(0, create_topic_command(topic("kept", "k1")))
    with pytest.raises(MalformedRecordError):
        state.apply(1, command)
    assert [t.name for t in state.topics()] == ["kept"] and state.brokers() == {}
    assert state.applied_offset == 1, "a skipped command counts as applied: a replay skips it again"


def test_a_snapshot_that_does_not_decode_is_a_broken_store() -> None:
    with pytest.raises(SnapshotFormatError):
        MetadataState().restore(b'{"format": 1, "topics": []}')
    with pytest.raises(SnapshotFormatError):
        GroupLog(0).restore(b"\x00")


def test_snapshots_are_due_after_min_bytes_and_a_multiple_of_the_last_snapshot() -> None:
    policy = SnapshotPolicy(min_bytes=1000, ratio=2.0)
    assert not policy.due(999, 0) and policy.due(1000, 0)
    assert not policy.due(1999, 1000) and policy.due(2000, 1000)


def test_moves_beyond_the_limits_wait_queued_and_start_as_others_end() -> None:
    """With at most 2 moves copying to one broker, 5 moves to broker 4 start 2 at a time, oldest
    first; a completion lets the next one start; a cancel of a queued move makes it active (undoing
    needs no copy); the queue survives a snapshot."""
    state = MetadataState()
    commands = [register_broker_command(BrokerRegistration(b, f"h:{b}", "")) for b in (1, 2, 3, 4)]
    commands.append(create_topic_command(TopicRecord("t", "t1", tuple((1, 2, 3) for _ in range(5)))))
    commands.append(reassign_command({("t", p): (4, 2, 3) for p in range(5)}, 0, None, 0, MoveLimits(per_broker=2)))
    for offset, command in enumerate(commands):
        assert state.apply(offset, command) is None
    queued = {p for (_, p), move in state.moves().items() if move.queued}
    assert queued == {2, 3, 4}
    assert state.apply(len(commands), complete_move_command("t", 0, "t1", (4, 2, 3))) is None
    assert {p for (_, p), move in state.moves().items() if move.queued} == {3, 4}
    assert state.apply(len(commands) + 1, cancel_reassignment_command([("t", 4)])) is None
    assert {p for (_, p), move in state.moves().items() if move.queued} == {3}
    restored = MetadataState()
    restored.restore(state.snapshot())
    assert restored.moves() == state.moves() and restored.move_limits == MoveLimits(2, 0)
