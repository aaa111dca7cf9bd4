"""Choosing a partition for a record: Kafka-compatible key hashing, sticky placement without a key.

Keyed records go to `toPositive(murmur2(key)) % partitions`, exactly as Kafka's default partitioner
does, so a key lands on the same partition number as it would with a Kafka client. Unkeyed records
stick to one partition until its batch is sent (KIP-480), which fills batches instead of spreading a
trickle of records over every partition.
"""

from __future__ import annotations

import random

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 (seed 0x9747b28c), as a signed int like Java's."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


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
