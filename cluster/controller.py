"""The controller: the metadata log's replica on this broker, and the commands proposed through it.

The metadata log is an internal partition (`__cluster_metadata`) replicated by the controller
voters (the brokers named by `--peers`). Each command is one record of one batch; when it commits,
every broker's replica applies it to its `MetadataState` (the controller is that replica's state
machine: it applies records, snapshots and restores the metadata; `raftka.cluster.state_machine`).
A topic operation is accepted only by the metadata leader, which validates it, places the replicas,
proposes the command and answers with the command's outcome once it is applied here; other brokers
get NOT_LEADER with the leader's address.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Callable

from raftka.cluster.brokers import BrokerDirectory
from raftka.cluster.metadata import (ALLOCATE_PRODUCER_ID_COMMAND, METADATA_TOPIC, BrokerRegistration,
                                     MetadataState, MoveLimits, TopicRecord, acls_command, alter_topic_config_command,
                                     cancel_reassignment_command, complete_move_command, create_partitions_command,
                                     create_topic_command, delete_records_command, delete_topic_command,
                                     drain_broker_command, reassign_command, register_broker_command,
                                     remove_quota_command, set_quota_command, unregister_broker_command)
from raftka.cluster.authorizer import Acl
from raftka.cluster.quotas import Quota
from raftka.cluster.partitions import open_replica
from raftka.cluster.placement import BrokerSlot, assign_replicas
from raftka.cluster.state_machine import SnapshotPolicy, StateMachineStats, apply_records
from raftka.cluster.topics import TopicConfig, validate_topic_name
from raftka.errors import (IncarnationMismatchError, InvalidPartitionsError, InvalidRequestError,
                           InvalidTopicError, NotEnoughReplicasError, NotLeaderError, RaftkaError, RequestTimedOutError,
                           TopicExistsError)
from raftka.partition.store import LogStore
from raftka.replication.driver import MultiRaft
from raftka.replication.errors import ConfChangeError, ConfChangeInProgressError, RaftError
from raftka.replication.raft import Role
from raftka.replication.membership import ConfChange, ConfChangeOp
from raftka.wire.batch import encode_batch

log = logging.getLogger(__name__)

METADATA_GROUP = f"{METADATA_TOPIC}/0"
MAX_PARTITIONS = 10_000


class Controller:
    kind = "metadata"

    def __init__(self, store: LogStore, driver: MultiRaft, state: MetadataState, directory: BrokerDirectory,
                 founders: tuple[int, ...], *, is_alive: Callable[[int], bool] = lambda broker: True,
                 timeout_s: float = 30.0, stats: StateMachineStats | None = None,
                 move_limits: MoveLimits = MoveLimits(),
                 snapshot_policy: SnapshotPolicy = SnapshotPolicy(), rejoining: bool = False) -> None:
        """`founders` are the voters the metadata log is founded with if this broker has none yet
        (empty for a broker that joins: it learns the log from its leader). `is_alive(broker)` is the
        failure detector's view; new replicas go to live brokers. `rejoining`: this broker replaced
        one whose disk was lost, so a new metadata log rejoins (`partitions.open_replica`)."""
        self._state = state
        self.stats = stats or StateMachineStats()
        self._directory = directory
        self._driver = driver
        self._is_alive = is_alive
        self._timeout_s = timeout_s
        self._move_limits = move_limits
        self._outcomes: dict[int, RaftkaError | None] = {}
        voters = tuple(sorted(founders))
        self.replica, founded = open_replica(store, driver, METADATA_GROUP, voters, TopicConfig(
            retention_ms=-1, retention_bytes=-1), directory.address_of, state_machine=self,
            snapshot_policy=snapshot_policy, rejoining=rejoining)
        if founded and len(voters) == 1:
            self.replica.campaign()

    @property
    def leader_id(self) -> int:
        """The metadata log's leader, or NO_LEADER while none is known."""
        return self.replica.leader_id

    async def create_topic(self, name: str, partitions: int, replication_factor: int, config: TopicConfig,
                           *, internal: bool = False) -> TopicRecord:
        validate_topic_name(name, allow_internal=internal)
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidPartitionsError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
        if self._state.find(name) is not None:
            raise TopicExistsError(f"topic {name!r} already exists")
        replicas = assign_replicas(partitions, replication_factor, self._placeable(replication_factor),
                                   self._state.leader_load())
        record = TopicRecord(name, uuid.uuid4().hex, tuple(map(tuple, replicas)), config, internal)
        await self._propose(create_topic_command(record))
        return self._state.get(name)

    async def create_partitions(self, name: str, partitions: int) -> TopicRecord:
        """Raise the topic's partition count to `partitions`, placing the new ones as a new topic's
        would be (spread over live brokers, balancing preferred leaders). Refused for internal topics:
        their partitioning is part of their meaning (a group's coordinator is murmur2(group) mod N)."""
        record = self._state.get(name)
        if record.internal:
            raise InvalidTopicError(f"internal topic {name!r} cannot get more partitions")
        if not record.partitions < partitions <= MAX_PARTITIONS:
            raise InvalidPartitionsError(
                f"topic {name!r} has {record.partitions} partitions; the new count must be more than that "
                f"(partitions are never removed) and at most {MAX_PARTITIONS}, not {partitions}")
        added = assign_replicas(partitions - record.partitions, record.replication_factor,
                                self._placeable(record.replication_factor), self._state.leader_load())
        await self._propose(create_partitions_command(record, [tuple(r) for r in added]))
        return self._state.get(name)

    async def alter_topic_config(self, name: str, changes: dict[str, str], reset: list[str]) -> TopicRecord:
        record = self._state.get(name)
        if record.internal:
            raise InvalidTopicError(f"internal topic {name!r} keeps its settings")
        if not changes and not reset:
            raise InvalidRequestError("the request changes no setting (give keys to set or to reset)")
        await self._propose(alter_topic_config_command(record, record.config.altered(changes, reset)))
        return self._state.get(name)

    async def advance_log_start(self, name: str, topic_id: str, partition: int, offset: int) -> int:
        """Record a partition's new log start offset (checked against its high watermark by its
        leader); returns its log start offset after the command."""
        if offset < 0:
            raise InvalidRequestError(f"offset must be >= 0, not {offset}")
        await self._propose(delete_records_command(name, topic_id, partition, offset))
        return self._state.get(name).log_start(partition)

    async def register_broker(self, registration: BrokerRegistration, *, replace: bool = False) -> None:
        """Record a broker's address, rack and incarnation; a broker the metadata log does not know yet
        then follows it as a learner. A registration from another data directory than the registered
        one (a lost or wiped disk) is refused unless `replace`: that broker's old replicas voted on
        entries its new, empty logs no longer hold."""
        known = self._state.brokers().get(registration.broker_id)
        if (known is not None and known.incarnation and registration.incarnation != known.incarnation
                and not replace):
            raise IncarnationMismatchError(
                f"broker {registration.broker_id} is registered with another data directory (incarnation "
                f"{known.incarnation}, this one is {registration.incarnation}); if its disk was lost or "
                f"replaced, start it with --replace")
        await self._propose(register_broker_command(registration))
        if registration.broker_id not in self.replica.node.conf_state.members():
            await self.change_membership(ConfChange(ConfChangeOp.ADD_LEARNER, registration.broker_id))

    async def change_membership(self, change: ConfChange) -> None:
        """Commit one change of the metadata log's voters or learners (one at a time, as Raft needs)."""
        self.replica.require_leader()
        try:
            future = self._driver.propose_conf_change(METADATA_GROUP, change)
        except ConfChangeInProgressError as exc:
            raise NotEnoughReplicasError(f"the metadata log is changing its members already ({exc}); retry") from None
        except ConfChangeError as exc:
            raise InvalidRequestError(f"cannot {change.op.name.lower().replace('_', ' ')} broker "
                                      f"{change.node_id}: {exc}") from None
        try:
            async with asyncio.timeout(self._timeout_s):
                await future
        except TimeoutError:
            raise RequestTimedOutError(f"the metadata log's member change ({change}) did not commit within "
                                       f"{self._timeout_s:.0f}s; it may still") from None
        except RaftError as exc:
            raise NotLeaderError(f"the metadata leader changed before the member change committed ({exc}); "
                                 "retry") from None
        log.info("metadata members changed op=%s broker=%d", change.op.name, change.node_id)

    async def drain_broker(self, broker_id: int, draining: bool) -> None:
        await self._propose(drain_broker_command(broker_id, draining))

    async def change_acls(self, op: str, acls: list[Acl]) -> None:
        """`create_acls` or `delete_acls` (each ACL validated by the caller)."""
        await self._propose(acls_command(op, acls))

    async def set_quota(self, quota: Quota) -> None:
        await self._propose(set_quota_command(quota))

    async def remove_quota(self, principal: str, client_id: str = "") -> None:
        await self._propose(remove_quota_command(principal, client_id))

    async def finish_decommissions(self) -> list[int]:
        """On the metadata leader: every draining broker that hosts no replica any more leaves the
        metadata log's learners and is unregistered. Returns the brokers unregistered now."""
        if self.replica.node.role != Role.LEADER:
            return []
        done = []
        members = self.replica.node.conf_state
        for broker_id, registration in sorted(self._state.brokers().items()):
            if not registration.draining or self._state.hosting(broker_id) or broker_id in members.voters:
                continue
            if broker_id in members.learners:
                await self.change_membership(ConfChange(ConfChangeOp.REMOVE, broker_id))
            await self._propose(unregister_broker_command(broker_id, registration.incarnation))
            log.info("broker decommissioned id=%d", broker_id)
            done.append(broker_id)
        return done

    async def run_decommissions(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.finish_decommissions()
            except RaftkaError as exc:
                log.info("decommission step will be retried: %s", exc)

    async def reassign(self, moves: dict[tuple[str, int], tuple[int, ...]], throttle_bytes_per_s: int,
                       expected_placement_offset: int | None) -> int:
        """Record the moves (all or none: `MetadataState` refuses a move of a moving partition, an
        unregistered target, a stale plan); returns the placement offset after them."""
        if throttle_bytes_per_s < 0:
            raise InvalidRequestError(f"throttle must be >= 0 bytes/s, not {throttle_bytes_per_s}")
        for (topic, partition), target in moves.items():
            if not target:
                raise InvalidRequestError(f"the target of {topic}/{partition} names no broker")
        await self._propose(reassign_command(moves, throttle_bytes_per_s, expected_placement_offset,
                                             int(time.time() * 1000), self._move_limits))
        return self._state.placement_offset

    async def cancel_reassignments(self, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Cancel the unfinished moves of `partitions` (every move when empty); returns those cancelled."""
        before = {key for key, move in self._state.moves().items() if not move.cancelled}
        wanted = before if not partitions else before & set(partitions)
        if wanted:
            await self._propose(cancel_reassignment_command(sorted(wanted)))
        return sorted(wanted)

    async def complete_move(self, topic: str, partition: int, topic_id: str, replicas: tuple[int, ...]) -> None:
        await self._propose(complete_move_command(topic, partition, topic_id, replicas))

    def _placeable(self, replication_factor: int) -> list[BrokerSlot]:
        return self._directory.placeable(self._is_alive, replication_factor)

    async def delete_topic(self, name: str) -> None:
        if self._state.get(name).internal:
            raise InvalidTopicError(f"internal topic {name!r} cannot be deleted")
        await self._propose(delete_topic_command(name))

    async def allocate_producer_id(self) -> int:
        """A new producer id: the offset of its allocation in the metadata log, so never reused."""
        return await self._propose(ALLOCATE_PRODUCER_ID_COMMAND)

    async def _propose(self, command: bytes) -> int:
        """Commit one command; returns its offset in the metadata log."""
        batch = encode_batch([(None, command, (), int(time.time() * 1000))])
        outcome = await self.replica.append(batch, durable=True, timeout_s=self._timeout_s)
        error = self._outcomes.pop(outcome.base_offset, None)
        if error is not None:
            raise error
        return outcome.base_offset

    def apply(self, base_offset: int, batch: bytes) -> None:
        """Apply a committed batch of commands; keep recent outcomes for the proposer to collect.

        The driver applies an entry before it resolves the proposal, so `_propose` always finds the
        outcome of its own command; outcomes of commands proposed elsewhere age out.
        """
        apply_records(self, METADATA_GROUP, base_offset, batch, self._apply_command)

    def snapshot(self) -> bytes:
        return self._state.snapshot()

    def restore(self, data: bytes) -> None:
        self._state.restore(data)

    def _apply_command(self, offset: int, command: bytes) -> None:
        self._outcomes[offset] = self._state.apply(offset, command)
        while len(self._outcomes) > 1024:
            del self._outcomes[next(iter(self._outcomes))]
