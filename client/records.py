"""The value types users see: topic-partitions, consumed records, and produce acknowledgements.

`TopicPartition` and `Record` are NamedTuples (as in kafka-python), not dataclasses: the producer
looks a TopicPartition up for every record it sends and the consumer builds a Record for every record
it returns, and a tuple's hashing and construction run in C, several times faster than a dataclass's.
Both are immutable and compare by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, NamedTuple


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where an acknowledged record was written."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class Record(NamedTuple):
    """A consumed record. `timestamp` is milliseconds since the epoch, set by the producer."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp: int


def first_offsets(records: Iterable[Record], among: Collection[TopicPartition] | None = None
                  ) -> dict[TopicPartition, int]:
    """The offset of the first of `records` of each partition (of those in `among`, if given) that has
    some: where to seek a partition back to so that these records are read again."""
    firsts: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        if tp not in firsts and (among is None or tp in among):
            firsts[tp] = record.offset
            if among is not None and len(firsts) == len(among):
                break
    return firsts
