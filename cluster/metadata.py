"""Cluster metadata as a replicated state machine (KRaft-style): brokers, topics, replica placement.

The metadata log is the Raft log of the internal partition `__cluster_metadata/0`, hosted by the
controller-eligible brokers. Each record of it is one command (JSON: register_broker, create_topic, delete_topic,
allocate_producer_id — whose offset in the log is the producer id it allocates, so it changes no state);
every broker applies the committed commands in log order to the same `MetadataState`, so all of them
agree on which brokers registered (address, rack), which topics exist and where their replicas live.
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

from raftka.cluster.state_machine import MalformedRecordError, SnapshotFormatError, field_of, parse_json
from raftka.cluster.topics import TopicConfig
from raftka.errors import InvalidConfigError, InvalidRequestError, RaftkaError, TopicExistsError, UnknownTopicError

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

    @property
    def partitions(self) -> int:
        return len(self.replicas)

    @property
    def replication_factor(self) -> int:
        return len(self.replicas[0])

    def group_id(self, partition: int) -> str:
        """The partition's Raft group id, also its log's name in the broker's LogStore."""
        return f"{self.topic_id}/{partition}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "topic_id": self.topic_id, "replicas": [list(r) for r in self.replicas],
                "config": self.config.as_strings(), "internal": self.internal}

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
        return cls(name=field_of(raw, "name", str), topic_id=field_of(raw, "topic_id", str),
                   replicas=tuple(map(tuple, replicas)), config=config, internal=field_of(raw, "internal", bool))


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


def create_topic_command(record: TopicRecord) -> bytes:
    return json.dumps({"op": "create_topic", "topic": record.to_json()}, sort_keys=True).encode()


def delete_topic_command(name: str) -> bytes:
    return json.dumps({"op": "delete_topic", "name": name}, sort_keys=True).encode()


ALLOCATE_PRODUCER_ID_COMMAND = json.dumps({"op": "allocate_producer_id"}).encode()


Listener = Callable[[TopicRecord], None]
BrokerListener = Callable[[BrokerRegistration], None]


class MetadataState:
    """The applied metadata. Mutated only by `apply`/`restore` on the broker's event loop; read from anywhere."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, TopicRecord] = {}
        self._brokers: dict[int, BrokerRegistration] = {}
        self.applied_offset = -1
        self.on_created: list[Listener] = []
        self.on_deleted: list[Listener] = []
        self.on_registered: list[BrokerListener] = []
        """Told of every registration applied or restored (a broker's address may have changed)."""

    def apply(self, offset: int, command: bytes) -> RaftkaError | None:
        """Apply the command at `offset` of the metadata log; returns why it changed nothing, if so.
        A command that does not parse changes nothing and raises MalformedRecordError (the caller
        reports and skips it: `state_machine.apply_records`)."""
        if offset <= self.applied_offset:
            return None
        self.applied_offset = offset
        raw = parse_json(command)
        op = field_of(raw, "op", str)
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
        elif op == "delete_topic":
            name = field_of(raw, "name", str)
            with self._lock:
                dropped = self._topics.pop(name, None)
            if dropped is None:
                return UnknownTopicError(f"unknown topic {name!r}")
            self._deleted(dropped)
        elif op == "allocate_producer_id":
            log.debug("producer id allocated id=%d", offset)
        else:
            raise MalformedRecordError(f"unknown metadata command {op!r}")
        return None

    def snapshot(self) -> bytes:
        with self._lock:
            return json.dumps({"format": 1, "applied_offset": self.applied_offset,
                               "brokers": [b.to_json() for b in self._brokers.values()],
                               "topics": [t.to_json() for t in self._topics.values()]},
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
        except MalformedRecordError as exc:
            raise SnapshotFormatError(f"metadata snapshot does not decode: {exc}") from None
        with self._lock:
            before, self._topics = self._topics, topics
            self._brokers = {b.broker_id: b for b in brokers}
            self.applied_offset = applied_offset
        for registration in brokers:
            self._registered(registration)
        for record in before.values():
            if _topic_id(topics.get(record.name)) != record.topic_id:
                self._deleted(record)
        for record in topics.values():
            if _topic_id(before.get(record.name)) != record.topic_id:
                self._created(record)

    def _created(self, record: TopicRecord) -> None:
        log.info("topic created name=%s id=%s partitions=%d replicas=%s", record.name, record.topic_id,
                 record.partitions, [list(r) for r in record.replicas])
        for listener in self.on_created:
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

    def leader_load(self) -> Counter[int]:
        """Preferred leaderships per broker, for placing the next topic."""
        with self._lock:
            return Counter(r[0] for t in self._topics.values() for r in t.replicas)


def _topic_id(record: TopicRecord | None) -> str | None:
    return None if record is None else record.topic_id
