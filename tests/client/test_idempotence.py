"""The idempotent producer's sequences: one shared id, dense sequences, fresh ids after a retirement."""

from __future__ import annotations

import itertools

from raftka.client.idempotence import MAX_SEQUENCE, Sequences
from raftka.wire.structs import TopicPartition

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def test_partitions_share_one_id_with_their_own_dense_sequences() -> None:
    ids = itertools.count(100)
    sequences = Sequences(lambda: next(ids))
    assert sequences.stamp(A, 3) == (100, 0)
    assert sequences.stamp(A, 2) == (100, 3)
    assert sequences.stamp(B, 4) == (100, 0)
    assert sequences.current(A) == 100


def test_a_retired_id_gives_the_partition_a_fresh_one_from_sequence_zero() -> None:
    ids = itertools.count(100)
    sequences = Sequences(lambda: next(ids))
    sequences.stamp(A, 3)
    sequences.stamp(B, 3)
    sequences.retire(A, 55)
    assert sequences.current(A) == 100, "retiring an id the partition no longer uses changes nothing"
    sequences.retire(A, 100)
    assert sequences.current(A) is None
    assert sequences.stamp(A, 1) == (101, 0)
    assert sequences.stamp(B, 1) == (100, 3), "other partitions keep their id"


def test_sequence_overflow_moves_to_a_fresh_id() -> None:
    ids = itertools.count(100)
    sequences = Sequences(lambda: next(ids))
    assert sequences.stamp(A, MAX_SEQUENCE) == (100, 0)
    assert sequences.stamp(A, 2) == (101, 0)
