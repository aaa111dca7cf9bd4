"""The idempotent producer's identity: a cluster-assigned producer id and per-partition sequences.

Each batch is stamped once, when first sent, with (producer id, epoch 0, base sequence); a retry
resends the same bytes, so the partition leader recognises it and answers with the first write's
offsets instead of writing it twice (cluster/producer_state.py).

A partition's sequence can only move forward through batches the leader accepted. When a batch is
given up (delivery timeout, a non-retriable error) or the leader has forgotten the producer, the
partition moves to a fresh producer id starting at sequence 0; batches still stamped with the old
id are refused without being written (OUT_OF_ORDER_SEQUENCE or UNKNOWN_PRODUCER_ID) and are stamped
again under the new one. One id is shared by all partitions until one of them needs its own.
"""

from __future__ import annotations

import threading
from typing import Callable

from raftka.wire.structs import TopicPartition

MAX_SEQUENCE = 2**31 - 1
"""Sequences are i32 in the batch header; a partition about to pass it moves to a fresh id."""


class Sequences:
    """Thread-safe: the sender stamps batches, response readers retire ids."""

    def __init__(self, allocate: Callable[[], int]) -> None:
        """`allocate()` asks the cluster for a new producer id (it may block and raise RaftkaError)."""
        self._allocate = allocate
        self._lock = threading.Lock()
        self._shared: int | None = None
        self._partitions: dict[TopicPartition, list[int]] = {}
        self._retired: set[TopicPartition] = set()

    def stamp(self, tp: TopicPartition, count: int) -> tuple[int, int]:
        """The (producer id, base sequence) for the partition's next batch of `count` records.
        Called by the sender thread only; an id is allocated outside the lock, so response readers
        never wait on the cluster."""
        with self._lock:
            state = self._partitions.get(tp)
            renew = state is None or tp in self._retired or state[1] + count > MAX_SEQUENCE
            shared = self._shared if state is None else None
        if renew:
            producer_id = shared if shared is not None else self._allocate()
            with self._lock:
                if state is None and self._shared is None:
                    self._shared = producer_id
                state = self._partitions[tp] = [producer_id, 0]
                self._retired.discard(tp)
        assert state is not None, "renewed whenever there was none"
        with self._lock:
            producer_id, sequence = state
            state[1] += count
            return producer_id, sequence

    def current(self, tp: TopicPartition) -> int | None:
        """The id the partition's next batch gets, or None when it will get a fresh one."""
        with self._lock:
            state = self._partitions.get(tp)
            return None if state is None or tp in self._retired else state[0]

    def retire(self, tp: TopicPartition, producer_id: int) -> None:
        """Stop using `producer_id` on `tp` (if it is still the current one there)."""
        with self._lock:
            state = self._partitions.get(tp)
            if state is not None and state[0] == producer_id:
                self._retired.add(tp)
