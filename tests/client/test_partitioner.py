"""Keyed records land where a Kafka client would put them; unkeyed ones stick until a batch fills."""

from __future__ import annotations

import pytest

from raftka.client.partitioner import StickyPartitioner, murmur2, partition_for_key


@pytest.mark.parametrize("key, expected", [
    # Vectors from Kafka's UtilsTest.testMurmur2.
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_keyed_partition_is_stable_and_in_range() -> None:
    for partitions in (1, 3, 7, 100):
        for i in range(200):
            key = f"key-{i}".encode()
            p = partition_for_key(key, partitions)
            assert 0 <= p < partitions and p == partition_for_key(key, partitions)


def test_sticky_partition_moves_only_when_its_batch_seals() -> None:
    sticky = StickyPartitioner()
    first = sticky.partition("t", 4)
    assert all(sticky.partition("t", 4) == first for _ in range(10))
    sticky.batch_sealed("t", 4, (first + 1) % 4)
    assert sticky.partition("t", 4) == first
    sticky.batch_sealed("t", 4, first)
    assert sticky.partition("t", 4) != first
    assert StickyPartitioner().partition("single", 1) == 0
