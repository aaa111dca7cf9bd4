"""The accumulator's sending rules: which batches `drain` releases, and when (no broker involved:
the accumulator is the producer's pure bookkeeping)."""

from __future__ import annotations

import time

from raftka.client.accumulator import IDLE_WAIT_S, RecordAccumulator
from raftka.wire.structs import TopicPartition

TP = TopicPartition("t", 0)


def _accumulator(*, linger_s: float = 0.0, batch_size: int = 1 << 20, max_in_flight: int = 8) -> RecordAccumulator:
    return RecordAccumulator(batch_size=batch_size, linger_s=linger_s, buffer_memory=64 << 20, max_block_s=1.0,
                             max_in_flight=max_in_flight, delivery_timeout_s=60.0)


def _send(acc: RecordAccumulator, value: bytes = b"v" * 100) -> None:
    acc.append((TP,), 0, None, value, (), 0)


def _drain(acc: RecordAccumulator, now: float = 1e12) -> list:
    return acc.drain(now)[0]


def test_linger_zero_sends_at_once_then_gathers_records_while_a_batch_is_in_flight() -> None:
    acc = _accumulator()
    _send(acc)
    (first,) = _drain(acc)
    assert len(first.records) == 1
    for _ in range(5):
        _send(acc)
        assert _drain(acc) == [], "a partial batch waits while its partition has one in flight"
    first.complete(0)
    acc.finished(first)
    (second,) = _drain(acc)
    assert len(second.records) == 5, "what arrived during the round trip travels in one request"


def test_full_batches_pipeline_up_to_max_in_flight() -> None:
    acc = _accumulator(batch_size=1_000, max_in_flight=3)
    for _ in range(40):
        _send(acc)
    sent = _drain(acc)
    assert len(sent) == 3
    assert all(batch.size + batch.size // len(batch.records) > 1_000 for batch in sent), "each sealed: no room left"
    assert _drain(acc) == []
    acc.finished(sent[0])
    assert len(_drain(acc)) == 1


def test_linger_still_delays_the_first_batch_and_flush_sends_everything() -> None:
    acc = _accumulator(linger_s=0.005)
    _send(acc)
    batches, wait = acc.drain(time.monotonic())
    assert batches == [] and 0 < wait <= 0.005
    (first,) = _drain(acc)
    _send(acc)
    acc.begin_flush()
    try:
        (second,) = _drain(acc)
    finally:
        acc.end_flush()
    assert [len(first.records), len(second.records)] == [1, 1]


def test_a_sender_with_nothing_due_sleeps_until_an_event_wakes_it() -> None:
    acc = _accumulator(linger_s=0.005)
    wakes: list[None] = []
    acc.wake = lambda: wakes.append(None)
    assert acc.drain(time.monotonic()) == ([], IDLE_WAIT_S), "idle: no polling every linger"
    _send(acc)
    assert len(wakes) == 1, "a new batch wakes the sender"
    assert 0 < acc.drain(time.monotonic())[1] <= 0.005, "it is due after linger"
    (first,) = _drain(acc)
    _send(acc)
    assert acc.drain(1e12) == ([], IDLE_WAIT_S), "behind a batch in flight: nothing to time"
    acc.finished(first)
    assert len(wakes) == 3 and len(_drain(acc)) == 1, "the completion wakes the sender"


def test_a_trickle_of_unkeyed_records_moves_between_partitions() -> None:
    """Each record leaves alone (linger 0, nothing in flight), so no batch ever fills: the sticky
    partition must still move once a batch size of records went to it (KIP-794)."""
    acc = _accumulator(batch_size=1024)
    tps = tuple(TopicPartition("t", p) for p in range(4))
    used = set()
    for _ in range(100):
        acc.append(tps, None, None, b"v" * 100, (), 0)
        for batch in _drain(acc):
            used.add(batch.tp.partition)
            batch.complete(0)
            acc.finished(batch)
    assert len(used) > 1
