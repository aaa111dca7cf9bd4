"""Cluster metadata as a replicated state machine (KRaft-style): brokers, topics, replica placement.

The metadata log is the Raft log of the internal partition `__cluster_metadata/0`, hosted by the
controller-eligible brokers. Each record of it is one command (JSON: register_broker, drain_broker,
unregister_broker, create_topic, delete_topic, reassign, cancel_reassignment, complete_move,
create_partitions, alter_topic_config, delete_records, allocate_producer_id — whose offset in the log
is the producer id it allocates, so it changes no state —, create_acls, delete_acls, set_quota,
remove_quota); every broker applies the committed commands in log order to the same
`MetadataState`, so all of them agree on which brokers registered (address, rack), which topics
exist, their settings, partitions and log start offsets (DeleteRecords), and where their replicas
live, and on the ACLs and quotas.
The state is snapshotted into the partition's Raft snapshot (`snapshot`/`restore`), so a restart
restores the snapshot and replays only the commands after it.

Invariants: applying is deterministic and total — a command that is no longer valid when it commits
(a topic created twice by racing controllers, a delete of a topic already gone) changes nothing
and reports why, and a malformed one is reported and skipped (`raftka.cluster.state_machine`), so
replaying the log always yields the same state. `restore` tells the listeners exactly the topics
that differ (deleted, then created), as if the commands it skips had been applied. Each topic gets a
random id at creation; partition logs are named by topic id, so a deleted and re-created topic never
sees the old topic's records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from raftka.cluster.authorizer import Acl
from raftka.cluster.quotas import Caller, Entity, Quota, resolve
from raftka.cluster.state_machine import MalformedRecordError, SnapshotFormatError, field_of, parse_json
from raftka.cluster.topics import TopicConfig
from raftka.errors import (InvalidConfigError, InvalidPartitionsError, InvalidReplicaAssignmentError,
                           InvalidRequestError, RaftkaError, ReassignmentInProgressError, StalePlanError,
                           TopicExistsError, UnknownPartitionError, UnknownTopicError)

log = logging.getLogger(__name__)

METADATA_TOPIC = "__cluster_metadata"


@dataclass(frozen=True)
class TopicRecord:
    name: str
    topic_id: str
    replicas: tuple[tuple[int, ...], ...]
    """Replica broker ids of each partition; the first is the preferred leader."""
    config: TopicConfig = field(default_factory=TopicConfig)
    internal: bool = False
    log_starts: tuple[int, ...] = ()
    """Each partition's log start offset as DeleteRecords left it (records below it are deleted on every
    replica); empty, or shorter than the partitions, means 0 for the rest."""

    @property
    def partitions(self) -> int:
        return len(self.replicas)

    @property
    def replication_factor(self) -> int:
        return len(self.replicas[0])

    def log_start(self, partition: int) -> int:
        return self.log_starts[partition] if partition < len(self.log_starts) else 0

    def group_id(self, partition: int) -> str:
        """The partition's Raft group id, also its log's name in the broker's LogStore."""
        return f"{self.topic_id}/{partition}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "topic_id": self.topic_id, "replicas": [list(r) for r in self.replicas],
                "config": self.config.as_strings(), "internal": self.internal, "log_starts": list(self.log_starts)}

    @classmethod
    def from_json(cls, raw: Any) -> TopicRecord:
        """Raises MalformedRecordError unless `raw` is what `to_json` writes."""
        replicas = field_of(raw, "replicas", list)
        if not replicas or not all(isinstance(r, list) and r and len(r) == len(replicas[0])
                                   and all(isinstance(b, int) and not isinstance(b, bool) for b in r)
                                   for r in replicas):
            raise MalformedRecordError(f"replicas {replicas!r} are not lists of broker ids of one length")
        try:
            config = TopicConfig.parse(field_of(raw, "config", dict))
        except InvalidConfigError as exc:
            raise MalformedRecordError(f"bad topic config: {exc.message}") from None
        log_starts = raw.get("log_starts", [])
        if not isinstance(log_starts, list) or len(log_starts) > len(replicas) or not all(
                isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in log_starts):
            raise MalformedRecordError(f"log_starts {log_starts!r} are not offsets of the partitions")
        return cls(name=field_of(raw, "name", str), topic_id=field_of(raw, "topic_id", str),
                   replicas=tuple(map(tuple, replicas)), config=config, internal=field_of(raw, "internal", bool),
                   log_starts=tuple(log_starts))


@dataclass(frozen=True)
class BrokerRegistration:
    broker_id: int
    address: str
    """Where clients reach it (its advertised gRPC address; peers ask there for its Raft listener)."""
    rack: str = ""
    incarnation: str = ""
    """The id its data directory was given at first start: a registration of the same broker id
    from another data directory is a replaced (or wiped) disk, accepted only with `--replace`."""
    draining: bool = False
    """Decommissioning: no new replicas go to it."""

    def to_json(self) -> dict[str, Any]:
        return {"broker_id": self.broker_id, "address": self.address, "rack": self.rack,
                "incarnation": self.incarnation, "draining": self.draining}

    @classmethod
    def from_json(cls, raw: Any) -> BrokerRegistration:
        """Registrations written before incarnations and draining existed lack those fields."""
        incarnation = raw.get("incarnation", "") if isinstance(raw, dict) else ""
        draining = raw.get("draining", False) if isinstance(raw, dict) else False
        if not isinstance(incarnation, str) or not isinstance(draining, bool):
            raise MalformedRecordError(f"bad incarnation {incarnation!r} or draining {draining!r}")
        return cls(field_of(raw, "broker_id", int), field_of(raw, "address", str), field_of(raw, "rack", str),
                   incarnation, draining)


def register_broker_command(registration: BrokerRegistration) -> bytes:
    return json.dumps({"op": "register_broker", **registration.to_json()}, sort_keys=True).encode()


def drain_broker_command(broker_id: int, draining: bool) -> bytes:
    return json.dumps({"op": "drain_broker", "broker_id": broker_id, "draining": draining}, sort_keys=True).encode()


def unregister_broker_command(broker_id: int, incarnation: str) -> bytes:
    return json.dumps({"op": "unregister_broker", "broker_id": broker_id, "incarnation": incarnation},
                      sort_keys=True).encode()


def create_topic_command(record: TopicRecord) -> bytes:
    return json.dumps({"op": "create_topic", "topic": record.to_json()}, sort_keys=True).encode()


def create_partitions_command(record: TopicRecord, added: list[tuple[int, ...]]) -> bytes:
    """Add partitions with replicas `added` to `record` (refused unless the topic still has its partitions)."""
    return json.dumps({"op": "create_partitions", "name": record.name, "topic_id": record.topic_id,
                       "from": record.partitions, "replicas": [list(r) for r in added]}, sort_keys=True).encode()


def alter_topic_config_command(record: TopicRecord, config: TopicConfig) -> bytes:
    return json.dumps({"op": "alter_topic_config", "name": record.name, "topic_id": record.topic_id,
                       "config": config.as_strings()}, sort_keys=True).encode()


def delete_records_command(name: str, topic_id: str, partition: int, offset: int) -> bytes:
    return json.dumps({"op": "delete_records", "name": name, "topic_id": topic_id, "partition": partition,
                       "offset": offset}, sort_keys=True).encode()


def delete_topic_command(name: str) -> bytes:
    return json.dumps({"op": "delete_topic", "name": name}, sort_keys=True).encode()


ALLOCATE_PRODUCER_ID_COMMAND = json.dumps({"op": "allocate_producer_id"}).encode()


def acls_command(op: str, acls: list[Acl]) -> bytes:
    """`create_acls` or `delete_acls` of `acls`."""
    return json.dumps({"op": op, "acls": [acl.to_json() for acl in acls]}, sort_keys=True).encode()


def set_quota_command(quota: Quota) -> bytes:
    return json.dumps({"op": "set_quota", "quota": quota.to_json()}, sort_keys=True).encode()


def remove_quota_command(principal: str, client_id: str = "") -> bytes:
    """A command written before client ids existed has no `client_id`: it removes a principal's quota."""
    return json.dumps({"op": "remove_quota", "principal": principal,
                       **({"client_id": client_id} if client_id else {})}, sort_keys=True).encode()


def _access_records(raw: Any, name: str, parse: Callable[[Any], Any]) -> list[Any]:
    """Parse a list of ACLs or quotas of a command or snapshot; MalformedRecordError if one is invalid."""
    try:
        return [parse(item) for item in field_of(raw, name, list)]
    except InvalidRequestError as exc:
        raise MalformedRecordError(exc.message) from None


@dataclass(frozen=True)
class PartitionMove:
    """A partition on its way from `original` to `target` replicas (KIP-455's adding/removing sets).

    The partition's leader carries it out one Raft membership change at a time (cluster/reassignment.py)
    and ends it with a complete_move command, which sets the partition's replicas to `target`. Until
    then the topic record keeps `original`. Every broker in `hosts` keeps a replica of the partition
    while the move lasts: the group's members are always among them, whatever step the leader is at,
    so no broker drops a replica the group may still count on. A cancel turns the target back to
    `original` (keeping the hosts): the leader then undoes its steps.
    """

    topic_id: str
    original: tuple[int, ...]
    target: tuple[int, ...]
    hosts: tuple[int, ...]
    throttle_bytes_per_s: int = 0
    """Bytes per second sent to the new replicas while they catch up (0: unthrottled)."""
    cancelled: bool = False
    started_ms: int = 0
    queued: bool = False
    """Waiting for a slot: the moves under way are capped per receiving broker and in the cluster
    (`MoveLimits`); the leader starts a queued move only once the metadata activates it."""

    @property
    def receivers(self) -> frozenset[int]:
        """The brokers this move copies the partition to."""
        return frozenset(self.target) - frozenset(self.original)

    def to_json(self) -> dict[str, Any]:
        return {"topic_id": self.topic_id, "original": list(self.original), "target": list(self.target),
                "hosts": list(self.hosts), "throttle": self.throttle_bytes_per_s, "cancelled": self.cancelled,
                "started_ms": self.started_ms, "queued": self.queued}

    @classmethod
    def from_json(cls, raw: Any) -> PartitionMove:
        return cls(field_of(raw, "topic_id", str), _broker_ids(raw, "original"), _broker_ids(raw, "target"),
                   _broker_ids(raw, "hosts"), field_of(raw, "throttle", int), field_of(raw, "cancelled", bool),
                   field_of(raw, "started_ms", int), field_of(raw, "queued", bool))


@dataclass(frozen=True)
class MoveLimits:
    """How many moves may copy data at once: per receiving broker, and in the whole cluster (0: no
    limit). Set by each reassign command (from the metadata leader's `--max-moves-per-broker` and
    `--max-moves`), so every broker applies the same ones."""

    per_broker: int = 0
    total: int = 0


def _broker_ids(raw: Any, name: str) -> tuple[int, ...]:
    ids = field_of(raw, name, list)
    if not ids or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in ids):
        raise MalformedRecordError(f"{name} {ids!r} is not a list of broker ids")
    return tuple(ids)


def reassign_command(moves: dict[tuple[str, int], tuple[int, ...]], throttle_bytes_per_s: int,
                     expected_placement_offset: int | None, started_ms: int, limits: MoveLimits = MoveLimits()
                     ) -> bytes:
    return json.dumps({"op": "reassign", "throttle": throttle_bytes_per_s, "started_ms": started_ms,
                       "expected_placement_offset": expected_placement_offset,
                       "max_per_broker": limits.per_broker, "max_total": limits.total,
                       "moves": [{"topic": t, "partition": p, "target": list(target)}
                                 for (t, p), target in sorted(moves.items())]}, sort_keys=True).encode()


def cancel_reassignment_command(partitions: list[tuple[str, int]]) -> bytes:
    """Cancel the moves of `partitions` (all moves when empty)."""
    return json.dumps({"op": "cancel_reassignment", "partitions": [[t, p] for t, p in partitions]},
                      sort_keys=True).encode()


def complete_move_command(topic: str, partition: int, topic_id: str, replicas: tuple[int, ...]) -> bytes:
    return json.dumps({"op": "complete_move", "topic": topic, "partition": partition, "topic_id": topic_id,
                       "replicas": list(replicas)}, sort_keys=True).encode()


Listener = Callable[[TopicRecord], None]
MoveListener = Callable[[TopicRecord, int], None]
BrokerListener = Callable[[BrokerRegistration], None]


class MetadataState:
    """The applied metadata. Mutated only by `apply`/`restore` on the broker's event loop; read from anywhere."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, TopicRecord] = {}
        self._brokers: dict[int, BrokerRegistration] = {}
        self._moves: dict[tuple[str, int], PartitionMove] = {}
        self.move_limits = MoveLimits()
        self.decommissioned: set[int] = set()
        """Brokers whose decommission ended (unregistered), until one registers again."""
        self._acls: dict[Acl, None] = {}
        self._acl_version = 0
        """Changes whenever the ACLs do (the authorizer's cache key)."""
        self._quotas: dict[Entity, Quota] = {}
        self.applied_offset = -1
        self.placement_offset = -1
        """The offset of the last command that changed where replicas are or may go (a topic created or
        deleted, a broker registered or drained, a move started, cancelled or completed): a
        reassignment plan made at another placement offset is stale and refused."""
        self.on_created: list[Listener] = []
        self.on_deleted: list[Listener] = []
        self.on_registered: list[BrokerListener] = []
        """Told of every registration applied or restored (a broker's address may have changed)."""
        self.on_altered: list[Listener] = []
        """Told when a topic changes in place (its settings, partitions or log start offsets), or a
        snapshot restored changes it."""
        self.on_moved: list[MoveListener] = []
        """Told (topic, partition) when a partition's move starts, is cancelled or completes, or a
        snapshot restored changes it: the brokers that host the partition may have changed."""

    def apply(self, offset: int, command: bytes) -> RaftkaError | None:
        """Apply the command at `offset` of the metadata log; returns why it changed nothing, if so.
        A command that does not parse changes nothing and raises MalformedRecordError (the caller
        reports and skips it: `state_machine.apply_records`)."""
        if offset <= self.applied_offset:
            return None
        self.applied_offset = offset
        raw = parse_json(command)
        op = field_of(raw, "op", str)
        if op in _PLACEMENT_OPS:
            error = self._apply_placement(offset, op, raw)
            if error is None:
                self.placement_offset = offset
            return error
        if op == "allocate_producer_id":
            log.debug("producer id allocated id=%d", offset)
            return None
        if op in _ACCESS_OPS:
            self._apply_access(op, raw)
            return None
        if op in ("alter_topic_config", "delete_records"):
            return self._alter_topic(op, raw)
        raise MalformedRecordError(f"unknown metadata command {op!r}")

    def _apply_placement(self, offset: int, op: str, raw: Any) -> RaftkaError | None:
        if op == "create_topic":
            record = TopicRecord.from_json(field_of(raw, "topic", dict))
            with self._lock:
                if record.name in self._topics:
                    return TopicExistsError(f"topic {record.name!r} already exists")
                self._topics[record.name] = record
            self._created(record)
        elif op == "register_broker":
            registration = BrokerRegistration.from_json(raw)
            with self._lock:
                known = self._brokers.get(registration.broker_id)
                if known is not None:
                    registration = dataclasses.replace(registration, draining=known.draining)
                self._brokers[registration.broker_id] = registration
                self.decommissioned.discard(registration.broker_id)
            log.info("broker registered id=%d address=%s rack=%s incarnation=%s", registration.broker_id,
                     registration.address, registration.rack, registration.incarnation)
            self._registered(registration)
        elif op == "drain_broker":
            broker_id, draining = field_of(raw, "broker_id", int), field_of(raw, "draining", bool)
            with self._lock:
                known = self._brokers.get(broker_id)
                if known is None:
                    return InvalidRequestError(f"broker {broker_id} is not registered")
                self._brokers[broker_id] = dataclasses.replace(known, draining=draining)
            log.info("broker draining id=%d draining=%s", broker_id, draining)
        elif op == "unregister_broker":
            return self._unregister(field_of(raw, "broker_id", int), field_of(raw, "incarnation", str))
        elif op == "delete_topic":
            name = field_of(raw, "name", str)
            with self._lock:
                dropped = self._topics.pop(name, None)
            if dropped is None:
                return UnknownTopicError(f"unknown topic {name!r}")
            with self._lock:
                for key in [key for key in self._moves if key[0] == name]:
                    del self._moves[key]
            self._deleted(dropped)
        elif op == "create_partitions":
            return self._create_partitions(raw)
        elif op == "reassign":
            return self._reassign(raw)
        elif op == "cancel_reassignment":
            self._cancel(raw)
        else:
            return self._complete(raw)
        return None

    def _same_topic(self, raw: Any) -> TopicRecord | RaftkaError:
        """The topic a command names by name and id (holds the lock), or why there is none."""
        name, topic_id = field_of(raw, "name", str), field_of(raw, "topic_id", str)
        record = self._topics.get(name)
        if record is None or record.topic_id != topic_id:
            return UnknownTopicError(f"unknown topic {name!r} (deleted since, or re-created)")
        return record

    def _create_partitions(self, raw: Any) -> RaftkaError | None:
        """Append the new partitions, if the topic still has the count they were placed after (of two
        racing commands the second changes nothing)."""
        added = [_broker_ids({"r": r}, "r") for r in field_of(raw, "replicas", list)]
        with self._lock:
            record = self._same_topic(raw)
            if isinstance(record, RaftkaError):
                return record
            if field_of(raw, "from", int) != record.partitions or not added:
                return InvalidPartitionsError(f"topic {record.name!r} has {record.partitions} partitions now; "
                                              "describe it and try again")
            if any(len(r) != record.replication_factor for r in added):
                raise MalformedRecordError(f"replicas {added!r} do not have the topic's replication factor")
            record = dataclasses.replace(record, replicas=record.replicas + tuple(added))
            self._topics[record.name] = record
        log.info("partitions created topic=%s partitions=%d replicas=%s", record.name, record.partitions,
                 [list(r) for r in added])
        self._altered(record)
        return None

    def _alter_topic(self, op: str, raw: Any) -> RaftkaError | None:
        """alter_topic_config: the topic's settings become the command's. delete_records: the partition's
        log start offset becomes the command's offset if that is higher (so a retry changes nothing)."""
        with self._lock:
            record = self._same_topic(raw)
            if isinstance(record, RaftkaError):
                return record
            if op == "alter_topic_config":
                try:
                    config = TopicConfig.parse(field_of(raw, "config", dict))
                except InvalidConfigError as exc:
                    raise MalformedRecordError(f"bad topic config: {exc.message}") from None
                record = dataclasses.replace(record, config=config)
                change = " ".join(f"{k}={v}" for k, v in sorted(config.as_strings().items()))
            else:
                partition, offset = field_of(raw, "partition", int), field_of(raw, "offset", int)
                if offset < 0:
                    raise MalformedRecordError(f"offset {offset} is negative")
                if not 0 <= partition < record.partitions:
                    return UnknownPartitionError(f"topic {record.name!r} has no partition {partition}")
                if offset <= record.log_start(partition):
                    return None
                starts = [record.log_start(p) for p in range(record.partitions)]
                starts[partition] = offset
                record = dataclasses.replace(record, log_starts=tuple(starts))
                change = f"partition={partition} log_start={offset}"
            self._topics[record.name] = record
        log.info("topic altered op=%s topic=%s %s", op, record.name, change)
        self._altered(record)
        return None

    def _apply_access(self, op: str, raw: Any) -> None:
        if op in ("create_acls", "delete_acls"):
            acls = _access_records(raw, "acls", Acl.from_json)
            with self._lock:
                for acl in acls:
                    if op == "create_acls":
                        self._acls[acl] = None
                    else:
                        self._acls.pop(acl, None)
                self._acl_version += 1
            log.info("acls changed op=%s acls=%s", op, [acl.to_json() for acl in acls])
        elif op == "set_quota":
            (quota,) = _access_records({"quotas": [field_of(raw, "quota", dict)]}, "quotas", Quota.from_json)
            with self._lock:
                self._quotas[quota.entity] = quota
            log.info("quota set %s", " ".join(f"{k}={v}" for k, v in quota.to_json().items()))
        else:
            principal, client_id = field_of(raw, "principal", str), raw.get("client_id", "")
            if not isinstance(client_id, str):
                raise MalformedRecordError(f"remove_quota client_id {client_id!r} is not a string")
            with self._lock:
                self._quotas.pop((principal, client_id), None)
            log.info("quota removed principal=%s client_id=%s", principal, client_id)

    def _unregister(self, broker_id: int, incarnation: str) -> RaftkaError | None:
        """The end of a decommission: a draining broker that hosts no replica leaves the cluster (its
        id is `decommissioned`: no longer a broker even if `--peers` names it). If it starts again it
        registers anew, like a new broker."""
        with self._lock:
            known = self._brokers.get(broker_id)
            if known is None or not known.draining or known.incarnation != incarnation:
                return InvalidRequestError(f"broker {broker_id} is not a draining broker of incarnation {incarnation}")
            if any(broker_id in hosts for hosts in self._hosting()):
                return InvalidRequestError(f"broker {broker_id} still hosts replicas")
            del self._brokers[broker_id]
            self.decommissioned.add(broker_id)
        log.info("broker unregistered id=%d (decommissioned)", broker_id)
        return None

    def _activate(self) -> None:
        """Let queued moves start, oldest first, while the limits allow (holds the lock). Deterministic:
        every broker applying the same log activates the same moves."""
        limits = self.move_limits
        active = [m for m in self._moves.values() if not m.queued]
        per_broker = Counter(b for m in active for b in m.receivers)
        total = len(active)
        for key, move in self._moves.items():
            if not move.queued:
                continue
            if limits.total and total >= limits.total:
                break
            if limits.per_broker and any(per_broker[b] >= limits.per_broker for b in move.receivers):
                continue
            self._moves[key] = dataclasses.replace(move, queued=False)
            per_broker.update(move.receivers)
            total += 1

    def _hosting(self) -> list[tuple[int, ...]]:
        """Every partition's hosts (its replicas, or every broker its move involves); holds the lock."""
        hosts = [replicas for record in self._topics.values() for replicas in record.replicas]
        return hosts + [move.hosts for move in self._moves.values()]

    def _reassign(self, raw: Any) -> RaftkaError | None:
        """Start every move of the command, or none (a move whose partition is moving already, whose
        target names an unregistered broker, or a plan made at another placement offset is refused)."""
        expected = raw.get("expected_placement_offset") if isinstance(raw, dict) else None
        if expected is not None and expected != self.placement_offset:
            return StalePlanError(f"the plan was made at metadata placement offset {expected}, but placement "
                                  f"changed since (now {self.placement_offset}); make a new plan")
        throttle, started_ms = field_of(raw, "throttle", int), field_of(raw, "started_ms", int)
        started: dict[tuple[str, int], PartitionMove] = {}
        with self._lock:
            for move in field_of(raw, "moves", list):
                name, partition = field_of(move, "topic", str), field_of(move, "partition", int)
                target = _broker_ids(move, "target")
                record = self._topics.get(name)
                if record is None:
                    return UnknownTopicError(f"unknown topic {name!r}")
                if not 0 <= partition < record.partitions:
                    return UnknownPartitionError(f"topic {name!r} has no partition {partition}")
                if (name, partition) in self._moves or (name, partition) in started:
                    return ReassignmentInProgressError(f"{name}/{partition} is being moved already; cancel that "
                                                       "move or wait for it")
                unknown = sorted(set(target) - set(self._brokers))
                if unknown or len(set(target)) != len(target):
                    return InvalidReplicaAssignmentError(
                        f"target {list(target)} of {name}/{partition} "
                        + (f"names unregistered broker(s) {unknown}" if unknown else "repeats a broker"))
                original = record.replicas[partition]
                if target != original:
                    hosts = tuple(dict.fromkeys(original + target))
                    started[(name, partition)] = PartitionMove(record.topic_id, original, target, hosts, throttle,
                                                               started_ms=started_ms, queued=True)
            self.move_limits = MoveLimits(int(raw.get("max_per_broker", 0)), int(raw.get("max_total", 0)))
            self._moves.update(started)
            self._activate()
        for (name, partition), move in sorted(started.items()):
            log.info("partition move started topic=%s partition=%d from=%s to=%s throttle=%d", name, partition,
                     list(move.original), list(move.target), move.throttle_bytes_per_s)
            self._moved(name, partition)
        return None

    def _cancel(self, raw: Any) -> None:
        wanted = {(field_of({"t": t}, "t", str), field_of({"p": p}, "p", int))
                  for t, p in field_of(raw, "partitions", list)}
        with self._lock:
            cancelled = [key for key in self._moves if not wanted or key in wanted]
            for key in cancelled:
                move = self._moves[key]
                self._moves[key] = dataclasses.replace(move, target=move.original, throttle_bytes_per_s=0,
                                                       cancelled=True, queued=False)
            self._activate()
        for name, partition in sorted(cancelled):
            log.info("partition move cancelled topic=%s partition=%d", name, partition)
            self._moved(name, partition)

    def _complete(self, raw: Any) -> RaftkaError | None:
        """The leader reports the group's voters are the target: the move ends, the replicas are the target."""
        name, partition = field_of(raw, "topic", str), field_of(raw, "partition", int)
        replicas = _broker_ids(raw, "replicas")
        with self._lock:
            move = self._moves.get((name, partition))
            record = self._topics.get(name)
            if move is None or record is None or move.topic_id != field_of(raw, "topic_id", str):
                return InvalidRequestError(f"{name}/{partition} has no move to complete")
            if replicas != move.target:
                return InvalidRequestError(f"{name}/{partition} is moving to {list(move.target)}, not "
                                           f"{list(replicas)}")
            del self._moves[(name, partition)]
            self._activate()
            rows = list(record.replicas)
            rows[partition] = replicas
            self._topics[name] = dataclasses.replace(record, replicas=tuple(rows))
        log.info("partition move completed topic=%s partition=%d replicas=%s cancelled=%s", name, partition,
                 list(replicas), move.cancelled)
        self._moved(name, partition)
        return None

    def snapshot(self) -> bytes:
        with self._lock:
            return json.dumps({"format": 1, "applied_offset": self.applied_offset,
                               "placement_offset": self.placement_offset,
                               "decommissioned": sorted(self.decommissioned),
                               "move_limits": [self.move_limits.per_broker, self.move_limits.total],
                               "brokers": [b.to_json() for b in self._brokers.values()],
                               "topics": [t.to_json() for t in self._topics.values()],
                               "moves": [{"topic": t, "partition": p, **m.to_json()}
                                         for (t, p), m in self._moves.items()],
                               "acls": [acl.to_json() for acl in self._acls],
                               "quotas": [quota.to_json() for quota in self._quotas.values()]},
                              sort_keys=True).encode()

    def restore(self, data: bytes) -> None:
        """Replace the state by a snapshot's, then tell the listeners which topics went and came."""
        try:
            raw = parse_json(data)
            if field_of(raw, "format", int) != 1:
                raise MalformedRecordError(f"unknown format {raw['format']}")
            applied_offset = field_of(raw, "applied_offset", int)
            brokers = [BrokerRegistration.from_json(b) for b in field_of(raw, "brokers", list)]
            topics = {t.name: t for t in map(TopicRecord.from_json, field_of(raw, "topics", list))}
            moves = {(field_of(m, "topic", str), field_of(m, "partition", int)): PartitionMove.from_json(m)
                     for m in raw.get("moves", [])}
            placement_offset = raw.get("placement_offset", applied_offset)
            decommissioned = set(raw.get("decommissioned", []))
            move_limits = MoveLimits(*raw.get("move_limits", [0, 0]))
            acls = _access_records({"acls": raw.get("acls", [])}, "acls", Acl.from_json)
            quotas = _access_records({"quotas": raw.get("quotas", [])}, "quotas", Quota.from_json)
        except MalformedRecordError as exc:
            raise SnapshotFormatError(f"metadata snapshot does not decode: {exc}") from None
        with self._lock:
            before, self._topics = self._topics, topics
            moves_before, self._moves = self._moves, moves
            self._brokers = {b.broker_id: b for b in brokers}
            self.applied_offset = applied_offset
            self.placement_offset = placement_offset
            self.decommissioned = decommissioned
            self.move_limits = move_limits
            self._acls = dict.fromkeys(acls)
            self._acl_version += 1
            self._quotas = {quota.entity: quota for quota in quotas}
        for registration in brokers:
            self._registered(registration)
        for record in before.values():
            if _topic_id(topics.get(record.name)) != record.topic_id:
                self._deleted(record)
        for record in topics.values():
            previous = before.get(record.name)
            if _topic_id(previous) != record.topic_id:
                self._created(record)
            elif previous != record:
                self._altered(record)
        for name, partition in sorted(set(moves_before) | set(moves)):
            moved = topics.get(name)
            if (moved is not None and moves_before.get((name, partition)) != moves.get((name, partition))
                    and _topic_id(before.get(name)) == moved.topic_id):
                self._moved(name, partition)

    def _created(self, record: TopicRecord) -> None:
        log.info("topic created name=%s id=%s partitions=%d replicas=%s", record.name, record.topic_id,
                 record.partitions, [list(r) for r in record.replicas])
        for listener in self.on_created:
            listener(record)

    def _moved(self, name: str, partition: int) -> None:
        record = self._topics[name]
        for listener in self.on_moved:
            listener(record, partition)

    def _altered(self, record: TopicRecord) -> None:
        for listener in self.on_altered:
            listener(record)

    def _registered(self, registration: BrokerRegistration) -> None:
        for listener in self.on_registered:
            listener(registration)

    def _deleted(self, record: TopicRecord) -> None:
        log.info("topic deleted name=%s id=%s", record.name, record.topic_id)
        for listener in self.on_deleted:
            listener(record)

    def brokers(self) -> dict[int, BrokerRegistration]:
        with self._lock:
            return dict(self._brokers)

    def topics(self) -> list[TopicRecord]:
        with self._lock:
            return sorted(self._topics.values(), key=lambda t: t.name)

    def get(self, name: str) -> TopicRecord:
        record = self.find(name)
        if record is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return record

    def find(self, name: str) -> TopicRecord | None:
        with self._lock:
            return self._topics.get(name)

    def acls(self) -> tuple[int, tuple[Acl, ...]]:
        """(version, every ACL); the version changes whenever the ACLs do."""
        with self._lock:
            return self._acl_version, tuple(self._acls)

    def quotas(self) -> list[Quota]:
        with self._lock:
            return sorted(self._quotas.values(), key=lambda quota: quota.entity)

    def quota_for(self, caller: Caller, kind: str) -> Quota | None:
        """The quota `caller` is held to for `kind` (`raftka.cluster.quotas.resolve`), None: unlimited."""
        with self._lock:
            return resolve(self._quotas, caller, kind) if self._quotas else None

    def moves(self) -> dict[tuple[str, int], PartitionMove]:
        with self._lock:
            return dict(self._moves)

    def move(self, name: str, partition: int) -> PartitionMove | None:
        with self._lock:
            return self._moves.get((name, partition))

    def hosting(self, broker_id: int) -> int:
        """How many partitions keep a replica on `broker_id` (moves included)."""
        with self._lock:
            return sum(broker_id in hosts for hosts in self._hosting())

    def hosts(self, record: TopicRecord, partition: int) -> tuple[int, ...]:
        """The brokers that keep a replica of the partition: its replicas, and during a move every
        broker the move involves."""
        move = self.move(record.name, partition)
        return record.replicas[partition] if move is None or move.topic_id != record.topic_id else move.hosts

    def leader_load(self) -> Counter[int]:
        """Preferred leaderships per broker, for placing the next topic."""
        with self._lock:
            return Counter(r[0] for t in self._topics.values() for r in t.replicas)


_PLACEMENT_OPS = frozenset({"create_topic", "register_broker", "drain_broker", "unregister_broker", "delete_topic",
                            "reassign", "cancel_reassignment", "complete_move", "create_partitions"})


_ACCESS_OPS = frozenset({"create_acls", "delete_acls", "set_quota", "remove_quota"})


def _topic_id(record: TopicRecord | None) -> str | None:
    return None if record is None else record.topic_id
