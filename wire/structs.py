"""Value types both sides pass around: `TopicPartition`, and its form in the API's group messages.

`TopicPartition` is a NamedTuple (as in kafka-python), not a dataclass: the producer looks one up for
every record it sends, and a tuple's hashing and construction run in C, several times faster than a
dataclass's. Being a tuple, it is equal to, and hashes as, the plain `(topic, partition)` pair, so
either finds the other in a set or a dict.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from raftka.proto import api_pb2


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


def as_group_partitions(tps: Iterable[tuple[str, int]]) -> list[api_pb2.GroupPartitions]:
    """(topic, partition) pairs as the API's per-topic lists, in (topic, partition) order."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(tps):
        by_topic.setdefault(topic, []).append(partition)
    return [api_pb2.GroupPartitions(topic=topic, partitions=partitions) for topic, partitions in by_topic.items()]


def from_group_partitions(items: Iterable[api_pb2.GroupPartitions]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(item.topic, p) for item in items for p in item.partitions)
