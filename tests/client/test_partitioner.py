"""Keyed records land where a Kafka client would put them; unkeyed ones stick until a batch fills."""

from __future__ import annotations

import pytest

from raftka.client.partitioner import StickyPartitioner
from raftka.wire.partitioning import murmur2, partition_for_key


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


def test_sticky_partition_moves_once_a_batch_size_of_records_went_to_it() -> None:
    sticky = StickyPartitioner(batch_size=1000)
    first = sticky.partition("t", 4)
    for _ in range(9):
        sticky.appended("t", 4, 100)
        assert sticky.partition("t", 4) == first
    sticky.appended("t", 4, 100)
    second = sticky.partition("t", 4)
    assert second != first
    sticky.appended("t", 4, 999)
    assert sticky.partition("t", 4) == second, "the count starts again at each move"
    single = StickyPartitioner(batch_size=1)
    single.appended("single", 1, 10)
    assert single.partition("single", 1) == 0
