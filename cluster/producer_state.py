"""Idempotent producers on one partition: the last batches each producer wrote, to drop retries.

A producer stamps each batch with (producer id, epoch, base sequence); sequences of one producer on
one partition are dense, so the leader accepts a batch only if it starts right after the producer's
last batch, answers a retry of a recent batch with the offsets it already got, and refuses a gap.

Every replica keeps the table of the batches it has committed since it started (`record`, fed by
the replica's applier). A replica that becomes leader adds, once, the batches of the last
`HISTORY_BYTES` of its log from before it started, then the uncommitted tail of its log; its working
copy also records every batch it proposes.

Invariants:
- a batch is recorded only once it is in the log (proposed by this leader, or committed);
- the leader's verdict depends only on what is in its log, so it is the same after a failover;
- memory is bounded: `CACHED_BATCHES` per producer and `MAX_PRODUCERS` per partition (least
  recently written evicted), and so is the history read back. A forgotten producer gets
  UNKNOWN_PRODUCER_ID for a non-zero sequence, which writes nothing: the client starts a new
  producer id. The one case this cannot cover is a retry of a producer's very first batch after
  the producer was forgotten.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from raftka.errors import (DuplicateSequenceError, OutOfOrderSequenceError, ProducerFencedError,
                           UnknownProducerIdError)
from raftka.wire.batch import BatchHeader
from raftka.wire.batch import IDEMPOTENCE_WINDOW as CACHED_BATCHES
MAX_PRODUCERS = 10_000
HISTORY_BYTES = 8 * 1024 * 1024
"""How much of the log from before a restart a new leader reads back for producer state."""


@dataclass(frozen=True, slots=True)
class WrittenBatch:
    first_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int


@dataclass(slots=True)
class _Producer:
    epoch: int
    batches: deque[WrittenBatch] = field(default_factory=lambda: deque(maxlen=CACHED_BATCHES))


class ProducerStates:
    def __init__(self, max_producers: int = MAX_PRODUCERS) -> None:
        self._producers: OrderedDict[int, _Producer] = OrderedDict()
        self._max_producers = max_producers

    def __len__(self) -> int:
        return len(self._producers)

    def copy(self) -> ProducerStates:
        twin = ProducerStates(self._max_producers)
        for producer_id, producer in self._producers.items():
            twin._producers[producer_id] = _Producer(producer.epoch, deque(producer.batches, maxlen=CACHED_BATCHES))
        return twin

    def check(self, header: BatchHeader) -> WrittenBatch | None:
        """The earlier write this batch repeats, or None when it is the producer's next batch.

        Raises when it must not be written: a gap (OutOfOrderSequenceError), a stale epoch
        (ProducerFencedError), an unknown producer mid-stream (UnknownProducerIdError) or a repeat
        of a batch older than the remembered window (DuplicateSequenceError).
        """
        producer_id, epoch, first = header.producer_id, header.producer_epoch, header.base_sequence
        last = first + header.record_count - 1
        producer = self._producers.get(producer_id)
        if producer is None or epoch > producer.epoch or not producer.batches:
            if first == 0:
                return None
            raise UnknownProducerIdError(
                f"no state for producer {producer_id} epoch {epoch} and its batch starts at sequence {first}, "
                "not 0; nothing was written")
        if epoch < producer.epoch:
            raise ProducerFencedError(f"producer {producer_id} epoch {epoch} is fenced by epoch {producer.epoch}")
        expected = producer.batches[-1].last_sequence + 1
        if first == expected:
            return None
        for written in producer.batches:
            if written.first_sequence == first and written.last_sequence == last:
                return written
        if first > expected:
            raise OutOfOrderSequenceError(
                f"producer {producer_id} sent sequence {first} but {expected} is next; nothing was written")
        raise DuplicateSequenceError(
            f"producer {producer_id} sequence {first} was written before the {CACHED_BATCHES} batches remembered")

    def record(self, header: BatchHeader) -> None:
        """Remember a batch now in the log (its header carries the stamped base offset)."""
        if header.producer_id >= 0:
            self._add(header.producer_id, header.producer_epoch, WrittenBatch(
                header.base_sequence, header.base_sequence + header.record_count - 1,
                header.base_offset, header.next_offset - 1))

    def extend(self, later: ProducerStates) -> None:
        """Add the batches of `later`, a table of log entries that follow this table's."""
        for producer_id, producer in later._producers.items():
            for written in producer.batches:
                self._add(producer_id, producer.epoch, written)

    def _add(self, producer_id: int, epoch: int, written: WrittenBatch) -> None:
        producer = self._producers.get(producer_id)
        if producer is None or epoch > producer.epoch:
            producer = self._producers[producer_id] = _Producer(epoch)
        self._producers.move_to_end(producer_id)
        producer.batches.append(written)
        while len(self._producers) > self._max_producers:
            self._producers.popitem(last=False)
