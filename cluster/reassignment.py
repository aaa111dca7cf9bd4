"""Carrying out partition moves: each partition's leader walks its group to the move's target.

A move is a target in the metadata log (`PartitionMove`); the metadata says where a partition must
go, the partition's own Raft log says where it is. The leader of the partition compares the two
every `interval_s` and takes the next step, one membership change at a time (the Raft core proves
single-server changes, so every majority of consecutive configurations overlaps):

1. a target broker that is not a member joins as a **learner** (it never counts towards a quorum);
2. a learner that holds every committed entry and answers is **promoted** to voter;
3. if the leader itself is not in the target, it **hands leadership** to an in-sync target voter
   (the new leader takes over from step 4);
4. members not in the target are **removed**, learners first;
5. when the voters are exactly the target and no learner is left, the leader asks the metadata leader
   to record the **completion**, which sets the partition's replicas to the target; then every broker
   that no longer hosts the partition drops its replica and log.

Because the state is in the two logs and each step is decided from them alone, a move survives the
failover of the partition leader (the new one resumes at the step the log shows) and of the metadata
leader (the completion is retried until it commits). A cancel sets the target back to the original
replicas; the same steps then undo the move (a promoted newcomer that leads hands leadership back and
is removed). A target broker that is down stalls the move at step 1 or 2 (its learner never catches
up); the status shows it, and a cancel removes the learner.

Invariants: the group's members are always among the move's hosts (original ∪ every target), so no
broker drops a replica the group may count on; the voter count never drops below the smaller of the
original and the target; the leader never removes itself.

While learners catch up, the bytes sent to them are limited by the move's throttle
(`MultiRaft.throttle`); voters are never throttled, so acknowledgements do not slow down. The
throttle is lifted once no learner is left, and on cancel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from raftka.cluster.metadata import MetadataState, PartitionMove, TopicRecord
from raftka.cluster.partitions import PartitionManager
from raftka.cluster.replica import RaftReplica
from raftka.errors import RaftkaError
from raftka.proto import api_pb2
from raftka.replication.driver import MultiRaft
from raftka.replication.errors import RaftError
from raftka.replication.membership import ConfChange, next_move_step
from raftka.replication.raft import Role

log = logging.getLogger(__name__)

Complete = Callable[[str, int, str, tuple[int, ...]], Awaitable[None]]
"""Records a move's completion in the metadata log: (topic, partition, topic id, replicas)."""

RATE_WINDOW_S = 10.0


@dataclass
class _WriteRate:
    """Bytes per second written to a partition over the last RATE_WINDOW_S (for the throttle warning)."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, now: float, size: int) -> int:
        self.samples.append((now, size))
        while self.samples and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.pop(0)
        elapsed = now - self.samples[0][0]
        return int((size - self.samples[0][1]) / elapsed) if elapsed > 0 else 0


class Reassigner:
    def __init__(self, broker_id: int, metadata: MetadataState, partitions: PartitionManager, driver: MultiRaft,
                 complete: Complete) -> None:
        self._broker_id = broker_id
        self._metadata = metadata
        self._partitions = partitions
        self._driver = driver
        self._complete = complete
        self._completing: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._rates: dict[tuple[str, int], _WriteRate] = {}
        self._write_rates: dict[tuple[str, int], int] = {}

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.step_all()

    def step_all(self) -> None:
        """Take the next step of every move whose partition this broker leads."""
        moves = self._metadata.moves()
        for key in set(self._rates) - set(moves):
            del self._rates[key]
            self._write_rates.pop(key, None)
        for (topic, partition), move in moves.items():
            replica = self._partitions.find(topic, partition)
            record = self._metadata.find(topic)
            if replica is None or record is None or record.topic_id != move.topic_id or move.queued:
                continue
            if replica.node.role != Role.LEADER:
                self._driver.throttle(replica.group_id, 0, ())
                continue
            self._write_rates[(topic, partition)] = self._rates.setdefault((topic, partition), _WriteRate()).add(
                time.monotonic(), replica.size_bytes)
            try:
                self._step(record, partition, move, replica)
            except (RaftError, RaftkaError) as exc:
                log.debug("partition move step deferred topic=%s partition=%d reason=%s", topic, partition, exc)

    def _step(self, record: TopicRecord, partition: int, move: PartitionMove, replica: RaftReplica) -> None:
        node = replica.node
        conf = node.conf_state
        voters, learners, target = set(conf.voters), set(conf.learners), set(move.target)
        self._driver.throttle(replica.group_id, move.throttle_bytes_per_s, tuple(sorted(target - voters)))
        if conf_change_pending(replica):
            return
        change = next_move_step(self._broker_id, move.target, voters, learners, replica.in_sync_replicas())
        if isinstance(change, ConfChange):
            self._driver.propose_conf_change(replica.group_id, change)
            log.info("partition move step topic=%s partition=%d change=%s", record.name, partition, change)
        elif isinstance(change, int):
            replica.transfer_leadership(change)
            log.info("partition move step topic=%s partition=%d transfer_leadership_to=%d", record.name, partition,
                     change)
        elif voters == target and not learners:
            self._driver.throttle(replica.group_id, 0, ())
            key = (record.name, partition)
            running = self._completing.get(key)
            if running is None or running.done():
                self._completing[key] = asyncio.create_task(self._record_completion(record, partition, move))

    async def _record_completion(self, record: TopicRecord, partition: int, move: PartitionMove) -> None:
        try:
            await self._complete(record.name, partition, record.topic_id, move.target)
        except RaftkaError as exc:
            log.info("partition move completion will be retried topic=%s partition=%d reason=%s", record.name,
                     partition, exc)

    def status(self, topic: str, partition: int, move: PartitionMove) -> api_pb2.ReassignmentStatus:
        """The move as the metadata records it, with the progress this broker sees if it leads the partition."""
        status = api_pb2.ReassignmentStatus(
            topic=topic, partition=partition, original=move.original, target=move.target, cancelled=move.cancelled,
            throttle_bytes_per_s=move.throttle_bytes_per_s, started_ms=move.started_ms, leader_id=-1)
        if move.queued:
            status.phase = api_pb2.QUEUED
        replica = self._partitions.find(topic, partition)
        if replica is None or replica.node.role != Role.LEADER:
            return status
        node = replica.node
        conf = node.conf_state
        status.leader_id = self._broker_id
        status.voters.extend(conf.voters)
        status.learners.extend(conf.learners)
        status.partition_bytes = replica.size_bytes
        status.write_bytes_per_s = self._write_rates.get((topic, partition), 0)
        entries = max(1, node.last_index)
        progress = node.progress()
        for broker in sorted(set(move.target) - set(conf.voters)):
            known = progress.get(broker)
            behind = max(0, node.last_index - known.match) if known is not None else node.last_index
            status.learner_progress.append(api_pb2.LearnerProgress(
                broker_id=broker, entries_behind=behind, bytes_behind=replica.size_bytes * behind // entries,
                active=known is not None and known.recent_active))
        if not move.queued:
            status.phase = phase(self._broker_id, move.target, set(conf.voters), set(conf.learners))
        return status


def conf_change_pending(replica: RaftReplica) -> bool:
    """Whether the group's latest configuration is not committed yet (the next change must wait)."""
    node = replica.node
    return node.conf_state != node.conf_state_at(node.commit_index)


def phase(me: int, target: tuple[int, ...], voters: set[int], learners: set[int]) -> api_pb2.MovePhase:
    """Where the move stands, as `next_move_step` would continue it."""
    wanted = set(target)
    if not wanted <= voters:
        return api_pb2.CATCHING_UP
    if me not in wanted:
        return api_pb2.TRANSFERRING_LEADERSHIP
    if (voters | learners) - wanted:
        return api_pb2.REMOVING
    return api_pb2.COMPLETING
