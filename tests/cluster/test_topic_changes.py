"""Topic changes in the metadata log, in process: settings, new partitions and DeleteRecords' log start
offsets apply deterministically, refuse stale commands, and survive snapshot and restore."""

from __future__ import annotations

import pytest

from raftka.cluster.metadata import (MetadataState, TopicRecord, alter_topic_config_command, create_partitions_command,
                                     create_topic_command, delete_records_command, delete_topic_command)
from raftka.cluster.topics import TopicConfig
from raftka.errors import InvalidConfigError, InvalidPartitionsError, UnknownTopicError

TOPIC = TopicRecord("t", "id1", ((1, 2), (2, 1)))


def applied(*commands: bytes) -> tuple[MetadataState, list]:
    state = MetadataState()
    outcomes = [state.apply(offset, command) for offset, command in enumerate([create_topic_command(TOPIC), *commands])]
    return state, outcomes[1:]


def test_changes_apply_in_place_and_a_snapshot_restores_them_telling_the_listeners() -> None:
    config = TopicConfig.parse({"retention.ms": "1000"})
    state, outcomes = applied(alter_topic_config_command(TOPIC, config),
                              create_partitions_command(TOPIC, [(1, 2)]),
                              delete_records_command("t", "id1", 2, 7), delete_records_command("t", "id1", 2, 3))
    assert outcomes == [None] * 4
    record = state.get("t")
    assert record.config == config and record.replicas == ((1, 2), (2, 1), (1, 2))
    assert [record.log_start(p) for p in range(3)] == [0, 0, 7], "a lower offset later changes nothing"
    assert state.placement_offset == 2, "new partitions change placement; settings and log starts do not"
    target, _ = applied()
    altered = []
    target.on_altered.append(altered.append)
    target.restore(state.snapshot())
    assert target.get("t") == record and altered == [record]


def test_stale_commands_change_nothing() -> None:
    other = TopicRecord("t", "id0", TOPIC.replicas)
    state, outcomes = applied(create_partitions_command(TOPIC, [(1, 2)]), create_partitions_command(TOPIC, [(2, 1)]),
                              delete_records_command("t", "id0", 0, 5),
                              alter_topic_config_command(other, TopicConfig(retention_ms=5)))
    assert outcomes[0] is None and isinstance(outcomes[1], InvalidPartitionsError), \
        "of two commands placed after 2 partitions, the second is refused"
    assert all(isinstance(outcome, UnknownTopicError) for outcome in outcomes[2:]), "a re-created topic is another"
    assert state.get("t") == TopicRecord("t", "id1", ((1, 2), (2, 1), (1, 2)))
    state.apply(10, delete_topic_command("t"))
    assert isinstance(state.apply(11, delete_records_command("t", "id1", 0, 1)), UnknownTopicError)


def test_altered_settings_are_validated_as_a_whole() -> None:
    config = TopicConfig(retention_ms=1000)
    assert config.altered({"segment.bytes": "2048"}, ["retention.ms"]) == TopicConfig(segment_bytes=2048)
    for changes, reset, why in [({"retention.mss": "1"}, [], "unknown topic config 'retention.mss'"),
                                ({}, ["nope"], "unknown topic config 'nope'"),
                                ({"retention.ms": "soon"}, [], "not an integer"),
                                ({"segment.bytes": "10"}, [], "at least 1024"),
                                ({"retention.ms": "5"}, ["retention.ms"], "both set and reset")]:
        with pytest.raises(InvalidConfigError, match=why):
            config.altered(changes, reset)
