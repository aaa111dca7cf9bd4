"""The broker's table of partition replicas, kept in step with the metadata.

Creating a topic records it in the metadata first and then opens its logs; deleting removes it from
the metadata first and then drops its logs. A crash between the two steps leaves at most logs that
no topic names, and start-up drops those, so a deleted topic's records never come back.
"""

from __future__ import annotations

import logging

from raftka.cluster.group_commit import GroupCommitter
from raftka.cluster.metadata import MetadataStore, TopicRecord
from raftka.cluster.replica import LocalReplica
from raftka.cluster.topics import TopicConfig, validate_topic_name
from raftka.errors import (InvalidPartitionsError, InvalidReplicationFactorError, UnknownPartitionError)
from raftka.partition.log import LogConfig
from raftka.partition.store import LogStore

log = logging.getLogger(__name__)

MAX_PARTITIONS = 10_000


def log_config(config: TopicConfig) -> LogConfig:
    return LogConfig(segment_bytes=config.segment_bytes, segment_ms=config.segment_ms,
                     retention_bytes=config.retention_bytes, retention_ms=config.retention_ms)


class PartitionManager:
    def __init__(self, store: LogStore, metadata: MetadataStore, committer: GroupCommitter,
                 *, broker_count: int = 1) -> None:
        self._store = store
        self._metadata = metadata
        self._committer = committer
        self._broker_count = broker_count
        self._replicas: dict[tuple[str, int], LocalReplica] = {}
        for topic in metadata.topics():
            self._open(topic)
        wanted = {t.log_name(p) for t in metadata.topics() for p in range(t.partitions)}
        for name in set(store.log_names()) - wanted:
            log.warning("dropping orphan partition log name=%s (its topic was deleted)", name)
            store.drop_log(name)

    @property
    def broker_count(self) -> int:
        return self._broker_count

    def replica(self, topic: str, partition: int) -> LocalReplica:
        record = self._metadata.get(topic)
        replica = self._replicas.get((record.name, partition))
        if replica is None:
            raise UnknownPartitionError(
                f"topic {topic!r} has partitions 0 to {record.partitions - 1}; there is no partition {partition}")
        return replica

    def replicas(self) -> list[tuple[str, int, LocalReplica]]:
        return [(topic, partition, replica) for (topic, partition), replica in self._replicas.items()]

    def create_topic(self, name: str, partitions: int, replication_factor: int, config: TopicConfig,
                     *, internal: bool = False) -> TopicRecord:
        validate_topic_name(name, allow_internal=internal)
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidPartitionsError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
        if not 1 <= replication_factor <= self._broker_count:
            raise InvalidReplicationFactorError(
                f"replication factor {replication_factor} is impossible with {self._broker_count} "
                f"broker(s); it must be between 1 and {self._broker_count}")
        record = self._metadata.create(name, partitions, replication_factor, config, internal=internal)
        self._open(record)
        return record

    def delete_topic(self, name: str) -> None:
        record = self._metadata.delete(name)
        for partition in range(record.partitions):
            del self._replicas[(name, partition)]
            self._store.drop_log(record.log_name(partition))

    def _open(self, record: TopicRecord) -> None:
        for partition in range(record.partitions):
            partition_log = self._store.open_log(record.log_name(partition), log_config(record.config))
            self._replicas[(record.name, partition)] = LocalReplica(partition_log, self._committer, record.config)
