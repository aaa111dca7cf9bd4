"""The producer's choice of partition for unkeyed records: sticky placement (Kafka's KIP-480/KIP-794).

Keyed records follow `raftka.wire.partitioning.partition_for_key` instead. Unkeyed records stick to
one partition until `batch_size` bytes of them went to it, which fills batches instead of spreading a
trickle of records over every partition, and still spreads a slow producer's records.
"""

from __future__ import annotations

import random


class StickyPartitioner:
    """Per topic, the partition unkeyed records currently go to; it moves once `batch_size` bytes of
    records went to it, whether or not they left in one batch (Kafka's KIP-794). Moving on a sealed
    batch alone never moves under a trickle, whose batches leave on linger before they fill: every
    unkeyed record of a slow producer then landed on one partition. Not thread-safe: the caller locks."""

    def __init__(self, batch_size: int) -> None:
        self._batch_size = batch_size
        self._current: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def partition(self, topic: str, partitions: int) -> int:
        current = self._current.get(topic)
        if current is None or current >= partitions:
            current = self._current[topic] = random.randrange(partitions)
            self._bytes[topic] = 0
        return current

    def appended(self, topic: str, partitions: int, size: int) -> None:
        """`size` bytes of records went to the topic's sticky partition."""
        sent = self._bytes[topic] = self._bytes.get(topic, 0) + size
        if sent >= self._batch_size and partitions > 1:
            current = self._current[topic]
            choice = random.randrange(partitions - 1)
            self._current[topic] = choice if choice < current else choice + 1
            self._bytes[topic] = 0
