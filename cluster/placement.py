"""Where a new topic's partition replicas go: spread evenly over brokers and racks, leaders too.

Brokers are ordered rack by rack, alternating (as Kafka's rack-aware assignment does): with racks
A = {1, 2} and B = {3, 4} the order is 1, 3, 2, 4. Partition p's replicas are the `rf` brokers that
follow position `start + p` in that order, so consecutive replicas sit in different racks whenever
there are as many racks as replicas, each broker holds the same number of replicas (within one), and
the first replica — the preferred leader — rotates over the brokers. `start` is the broker that
leads the fewest partitions already, so leadership stays balanced across topics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from typing import Sequence

from raftka.errors import InvalidReplicationFactorError


@dataclass(frozen=True)
class BrokerSlot:
    broker_id: int
    rack: str = ""


def rack_alternated(brokers: Sequence[BrokerSlot]) -> list[int]:
    """Broker ids ordered so that neighbours are in different racks as far as possible."""
    by_rack: dict[str, list[int]] = {}
    for broker in sorted(brokers, key=lambda b: b.broker_id):
        by_rack.setdefault(broker.rack, []).append(broker.broker_id)
    columns = [by_rack[rack] for rack in sorted(by_rack)]
    return [broker for row in zip_longest(*columns) for broker in row if broker is not None]


def assign_replicas(partitions: int, replication_factor: int, brokers: Sequence[BrokerSlot],
                    leaders: Counter[int] | None = None) -> list[list[int]]:
    """Replica lists for `partitions` new partitions; element 0 of each is the preferred leader."""
    order = rack_alternated(brokers)
    if not 1 <= replication_factor <= len(order):
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} is impossible with {len(order)} broker(s); "
            f"it must be between 1 and {len(order)}")
    load = leaders or Counter()
    start = min(range(len(order)), key=lambda i: (load[order[i]], i))
    return [[order[(start + p + j) % len(order)] for j in range(replication_factor)] for p in range(partitions)]
