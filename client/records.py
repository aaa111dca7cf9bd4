"""The value types users see: consumed records and produce acknowledgements (and `TopicPartition`,
which the broker shares: `raftka.wire.structs`).

`Record` is a NamedTuple (as in kafka-python), not a dataclass: the consumer builds one for every
record it returns, and a tuple's construction runs in C, several times faster than a dataclass's. It
is immutable and compares by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, NamedTuple

from raftka.wire.structs import TopicPartition


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
