"""Where leadership goes: back to each partition's first replica, and away from a stopping broker.

Placement spreads preferred leaders evenly, so when every preferred leader leads, load is spread.
After a broker restarts, others lead its partitions; once its replica is back in sync, the current
leader transfers leadership to it (Raft's TimeoutNow), automatically after `delay_s` of the
imbalance, or at once through the Admin API. Only leaders act, so a partition moves once. A
partition being moved is left alone: its leadership is the move's to decide (cluster/reassignment.py).

A broker that stops gracefully first hands every group it leads to an in-sync follower
(`hand_off`), so a rolling restart costs clients a redirect, not an election timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from raftka.cluster.metadata import MetadataState
from raftka.cluster.partitions import PartitionManager
from raftka.cluster.replica import RaftReplica
from raftka.proto import api_pb2

log = logging.getLogger(__name__)


class LeaderBalancer:
    def __init__(self, broker_id: int, metadata: MetadataState, partitions: PartitionManager) -> None:
        self._broker_id = broker_id
        self._metadata = metadata
        self._partitions = partitions
        self._imbalanced_since: dict[tuple[str, int], float] = {}

    @property
    def imbalanced(self) -> int:
        """Partitions led here whose preferred leader is in sync elsewhere, as the last look found them."""
        return len(self._imbalanced_since)

    def elect_preferred(self, topic: str = "", *, older_than_s: float = 0.0) -> list[api_pb2.LeaderMove]:
        """Start a transfer for every partition this broker leads whose preferred leader is in sync
        (and, with `older_than_s`, has been so for that long)."""
        now = time.monotonic()
        moves = []
        seen = set()
        for record in self._metadata.topics():
            if topic and record.name != topic:
                continue
            for partition, replicas in enumerate(record.replicas):
                replica = self._partitions.find(record.name, partition)
                preferred = replicas[0]
                if replica is None or replica.leader_id != self._broker_id or preferred == self._broker_id:
                    continue
                if self._metadata.move(record.name, partition) is not None:
                    continue
                if preferred not in replica.in_sync_replicas():
                    continue
                key = (record.name, partition)
                seen.add(key)
                since = self._imbalanced_since.setdefault(key, now)
                if now - since < older_than_s:
                    continue
                replica.transfer_leadership(preferred)
                del self._imbalanced_since[key]
                log.info("leadership transfer topic=%s partition=%d from=%d to=%d", record.name, partition,
                         self._broker_id, preferred)
                moves.append(api_pb2.LeaderMove(topic=record.name, partition=partition,
                                                from_broker=self._broker_id, to_broker=preferred))
        for key in set(self._imbalanced_since) - seen:
            del self._imbalanced_since[key]
        return moves

    async def run(self, delay_s: float, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.elect_preferred(older_than_s=delay_s)


def hand_off(broker_id: int, replicas: list[RaftReplica]) -> list[RaftReplica]:
    """Start a leadership transfer for every group in `replicas` this broker leads, each to the
    in-sync voter (learners cannot lead) given the fewest so far (so the load spreads over the remaining brokers);
    returns the groups led here (one without an in-sync follower stays: no one can take it)."""
    led = [replica for replica in replicas if replica.leader_id == broker_id]
    given: Counter[int] = Counter()
    for replica in led:
        voters = replica.node.conf_state.voters
        followers = [b for b in replica.in_sync_replicas() if b != broker_id and b in voters]
        if followers:
            target = min(followers, key=lambda b: (given[b], b))
            given[target] += 1
            replica.transfer_leadership(target)
    return led


async def hand_off_all(broker_id: int, replicas: list[RaftReplica], timeout_s: float,
                       retry_s: float = 0.5) -> tuple[list[RaftReplica], list[RaftReplica]]:
    """Hand off leadership of every group this broker leads and wait until none is led here, or
    `timeout_s` passed (a transfer the core abandoned is started again every `retry_s`). Returns
    (the groups still led that another voter could lead, the groups this broker is the only voter
    of). The latter are not waited for: no one can ever take them, so a one-broker cluster stops at
    once instead of after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    led = hand_off(broker_id, replicas)
    alone = [replica for replica in led if set(replica.node.conf_state.voters) <= {broker_id}]
    led = [replica for replica in led if replica not in alone]
    started = loop.time()
    while led and loop.time() < deadline:
        await asyncio.sleep(0.02)
        led = [replica for replica in led if replica.leader_id == broker_id]
        if led and loop.time() - started >= retry_s:
            led, started = hand_off(broker_id, led), loop.time()
    return led, alone
