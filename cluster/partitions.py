"""The broker's partition replicas, kept in step with the applied cluster metadata.

When a create_topic command is applied (or a metadata snapshot holding the topic is restored), the
broker opens a replica for every partition that lists it among its replicas; a brand-new replica
bootstraps its Raft group with the topic's replica set as the founding voters, and the preferred
leader (first replica) campaigns at once. When a delete is applied, the groups go and their logs are
dropped. Start-up restores the metadata snapshot and replays the metadata log after it, which opens
the replicas again (their logs already exist, so nothing is bootstrapped twice), and then drops logs
that no topic names any more (a crash between a delete and its drop). The replicas of an internal
topic with a state machine (`attach`) snapshot it by the manager's `SnapshotPolicy`.

A partition being moved (`PartitionMove`) is hosted by every broker the move involves: a broker
added by the move opens an empty replica that founds nothing (the leader adds it to the group as a
learner and sends it the log); a broker the move removes keeps its replica until the move completes
(the group may count on it until the leader removed it), then drops it and its log.

A topic altered in place (`MetadataState.on_altered`) changes its replicas here at once: new
partitions are opened (founded as a new topic's are), new settings reach every replica's log, and
a DeleteRecords' log start offset every replica's reads and retention.
"""

from __future__ import annotations

import logging
from typing import Callable

from raftka.cluster.metadata import BrokerRegistration, MetadataState, TopicRecord
from raftka.cluster.replica import RaftReplica
from raftka.cluster.state_machine import SnapshotPolicy, StateMachine
from raftka.cluster.topics import TopicConfig
from raftka.errors import NotLeaderError, UnknownPartitionError
from raftka.partition.log import LogConfig
from raftka.partition.store import LogStore
from raftka.replication.driver import MultiRaft
from raftka.replication.log_storage import PartitionStorage
from raftka.replication.state import ConfState

log = logging.getLogger(__name__)

StateMachineFactory = Callable[[int], StateMachine]


def log_config(config: TopicConfig) -> LogConfig:
    return LogConfig(segment_bytes=config.segment_bytes, segment_ms=config.segment_ms,
                     retention_bytes=config.retention_bytes, retention_ms=config.retention_ms)


def open_replica(store: LogStore, driver: MultiRaft, group_id: str, voters: tuple[int, ...], config: TopicConfig,
                 address_of: Callable[[int], str], *, rejoining: bool = False,
                 **options: object) -> tuple[RaftReplica, bool]:
    """The replica of `group_id` on this broker, and whether its group was founded just now: a replica
    with no log founds its group with `voters` as the first configuration, unless `voters` is empty
    (it joins a group that exists: it starts empty and learns everything from the leader) or
    `rejoining`.

    `rejoining` says the group may predate this broker's data directory: the broker replaced one
    whose disk was lost (`raftka broker --replace`), and that one may have been a member. A replica
    with no log then founds nothing (the group exists, and its old member's votes and
    acknowledgements are gone with its disk) and starts as a rejoining member (`RaftConfig.rejoining`,
    design note 14 in replication/raft.py): it neither votes nor counts towards a commit until it
    holds everything committed before it started; its HardState keeps that rule across restarts.
    A replica that has a log ignores the flag: its HardState says whether it is still rejoining."""
    entry_log = store.open_raft_log(group_id, log_config(config))
    empty = entry_log.last_index == 0 and entry_log.snapshot.index == 0
    founded = bool(voters) and empty and not rejoining
    storage = (PartitionStorage.bootstrap(entry_log, ConfState(voters=tuple(sorted(voters)))) if founded
               else PartitionStorage(entry_log))
    if rejoining and empty:
        log.warning("replica rejoins after its broker's disk was lost group=%s: it votes again once it "
                    "has caught up", group_id)
    replica = RaftReplica(group_id, entry_log.log, storage, driver, config,
                          address_of, rejoining=rejoining and empty, **options)  # type: ignore[arg-type]  # options: RaftReplica's keywords
    return replica, founded


class PartitionManager:
    def __init__(self, store: LogStore, metadata: MetadataState, driver: MultiRaft,
                 address_of: Callable[[int], str], *, snapshot_policy: SnapshotPolicy = SnapshotPolicy(),
                 replaced_incarnation: str = "") -> None:
        """`replaced_incarnation`: this broker's data directory (that incarnation) replaced one whose
        disk was lost (`raftka broker --replace`). The partitions whose topic predates the
        replacement then rejoin rather than found their groups (`open_replica`). The contract: a
        topic predates it unless its create_topic command is applied after this incarnation's
        registration (a later metadata log offset), since the lost directory was gone by the time
        this one registered. A topic restored from a metadata snapshot counts as predating whenever
        the snapshot holds the registration too (the snapshot does not say which came first), which
        is only ever too careful: such a replica waits for a majority of the others to catch it up."""
        self._store = store
        self._snapshot_policy = snapshot_policy
        self._metadata = metadata
        self._driver = driver
        self._address_of = address_of
        self._replicas: dict[tuple[str, int], RaftReplica] = {}
        self._state_machines: dict[str, StateMachineFactory] = {}
        self._replaced_incarnation = replaced_incarnation
        self._registered_at: int | None = None
        """Metadata offset at which this replaced incarnation's registration was applied (or the
        offset of the snapshot that held it); None until then."""
        metadata.on_created.append(self._host)
        metadata.on_deleted.append(self._unhost)
        metadata.on_moved.append(self._rehost)
        metadata.on_altered.append(self._alter)
        metadata.on_registered.append(self._registered)

    def attach(self, topic: str, factory: StateMachineFactory) -> None:
        """Make the replicas of internal topic `topic` feed a state machine: `factory(partition)`
        returns the partition's, which the replica restores from its snapshot and feeds the committed
        batches after it. Call before the metadata log is replayed."""
        self._state_machines[topic] = factory

    def replica(self, topic: str, partition: int) -> RaftReplica:
        """This broker's replica of the partition; NOT_LEADER (with the preferred leader) if it has none.

        A replaced broker answers NOT_LEADER (retriable) rather than UNKNOWN_TOPIC for a topic it
        does not know until its replacing registration is applied: before, its metadata log is still
        catching up, and clients that knew its address as a leader's keep asking it meanwhile."""
        if (self._metadata.find(topic) is None and self._replaced_incarnation
                and self._registered_at is None):
            raise NotLeaderError(f"broker {self._driver.broker_id} replaced a lost disk and is still catching up "
                                 f"the metadata log; topic {topic!r} is not known here yet")
        record = self._metadata.get(topic)
        if not 0 <= partition < record.partitions:
            raise UnknownPartitionError(
                f"topic {topic!r} has partitions 0 to {record.partitions - 1}; there is no partition {partition}")
        replica = self._replicas.get((topic, partition))
        if replica is None:
            preferred = record.replicas[partition][0]
            raise NotLeaderError(f"broker {self._driver.broker_id} holds no replica of {topic}/{partition}",
                                 preferred, self._address_of(preferred))
        return replica

    def find(self, topic: str, partition: int) -> RaftReplica | None:
        return self._replicas.get((topic, partition))

    def replicas(self) -> list[tuple[str, int, RaftReplica]]:
        return [(topic, partition, replica) for (topic, partition), replica in self._replicas.items()]

    def drop_orphans(self, keep: set[str]) -> None:
        """Drop logs that no applied topic names, or that this broker no longer hosts (call after the
        metadata log has been replayed)."""
        me = self._driver.broker_id
        wanted = keep | {t.group_id(p) for t in self._metadata.topics() for p in range(t.partitions)
                         if me in self._metadata.hosts(t, p)}
        for name in set(self._store.log_names()) - wanted:
            log.warning("dropping orphan partition log name=%s (its topic was deleted or its replica moved away)",
                        name)
            self._store.drop_log(name)

    def _registered(self, registration: BrokerRegistration) -> None:
        if (self._replaced_incarnation and self._registered_at is None
                and registration.broker_id == self._driver.broker_id
                and registration.incarnation == self._replaced_incarnation):
            self._registered_at = self._metadata.applied_offset
            log.info("replacing registration applied broker=%d metadata_offset=%d: topics created after it "
                     "found their groups here", registration.broker_id, self._registered_at)

    def _predates_replacement(self) -> bool:
        """Whether the group that the command being applied makes this broker host (a topic's creation,
        or a move adding it) may predate this replaced data directory (see `__init__`)."""
        if not self._replaced_incarnation:
            return False
        return self._registered_at is None or self._metadata.applied_offset <= self._registered_at

    def _host(self, record: TopicRecord) -> None:
        for partition in range(record.partitions):
            self._open(record, partition)

    def _open(self, record: TopicRecord, partition: int) -> None:
        me = self._driver.broker_id
        if me not in self._metadata.hosts(record, partition) or (record.name, partition) in self._replicas:
            return
        voters = record.replicas[partition]
        move = self._metadata.move(record.name, partition)
        factory = self._state_machines.get(record.name)
        options = {} if factory is None else {"state_machine": factory(partition),
                                              "snapshot_policy": self._snapshot_policy}
        founding = voters if me in voters and (move is None or me in move.original) else ()
        replica, founded = open_replica(self._store, self._driver, record.group_id(partition), founding,
                                        record.config, self._address_of, rejoining=self._predates_replacement(),
                                        **options)
        self._replicas[(record.name, partition)] = replica
        replica.deleted_before = record.log_start(partition)
        if founded and voters[0] == me:
            replica.campaign()
        elif founded:
            replica.defer_election()

    def _alter(self, record: TopicRecord) -> None:
        for partition in range(record.partitions):
            replica = self._replicas.get((record.name, partition))
            if replica is None:
                self._open(record, partition)
            else:
                replica.reconfigure(record.config, log_config(record.config))
                replica.deleted_before = record.log_start(partition)

    def _rehost(self, record: TopicRecord, partition: int) -> None:
        """A move of the partition started, was cancelled or completed: open or drop this broker's replica."""
        if self._driver.broker_id in self._metadata.hosts(record, partition):
            self._open(record, partition)
        else:
            self._close(record, partition)

    def _close(self, record: TopicRecord, partition: int) -> None:
        if self._replicas.pop((record.name, partition), None) is not None:
            log.info("replica dropped topic=%s partition=%d", record.name, partition)
            self._driver.remove_group(record.group_id(partition))
            self._store.drop_log(record.group_id(partition))

    def _unhost(self, record: TopicRecord) -> None:
        for partition in range(record.partitions):
            self._close(record, partition)
