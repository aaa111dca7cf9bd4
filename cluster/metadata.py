"""Cluster metadata as a replicated state machine (KRaft-style): brokers, topics, replica placement.

The metadata log is the Raft log of the internal partition `__cluster_metadata/0`, hosted by the
controller-eligible brokers. Each record of it is one command (JSON: register_broker, create_topic, delete_topic,
allocate_producer_id — whose offset in the log is the producer id it allocates, so it changes no state);
every broker applies the committed commands in log order to the same `MetadataState`, so all of them
agree on which brokers registered (address, rack), which topics exist and where their replicas live, and a restart rebuilds the state by
replaying the log.

Invariants: `apply` is deterministic and total — a command that is no longer valid when it commits
(a topic created twice by racing controllers, a delete of a topic already gone) changes nothing
and reports why, so replaying the log always yields the same state. Each topic gets a random id at
creation; partition logs are named by topic id, so a deleted and re-created topic never sees the
old topic's records.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from raftka.cluster.topics import TopicConfig
from raftka.errors import RaftkaError, TopicExistsError, UnknownTopicError

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
    def from_json(cls, raw: dict[str, Any]) -> TopicRecord:
        return cls(name=raw["name"], topic_id=raw["topic_id"], replicas=tuple(tuple(r) for r in raw["replicas"]),
                   config=TopicConfig.parse(raw["config"]), internal=raw["internal"])


@dataclass(frozen=True)
class BrokerRegistration:
    broker_id: int
    address: str
    rack: str = ""


def register_broker_command(registration: BrokerRegistration) -> bytes:
    return json.dumps({"op": "register_broker", "broker_id": registration.broker_id,
                       "address": registration.address, "rack": registration.rack}, sort_keys=True).encode()


def create_topic_command(record: TopicRecord) -> bytes:
    return json.dumps({"op": "create_topic", "topic": record.to_json()}, sort_keys=True).encode()


def delete_topic_command(name: str) -> bytes:
    return json.dumps({"op": "delete_topic", "name": name}, sort_keys=True).encode()


ALLOCATE_PRODUCER_ID_COMMAND = json.dumps({"op": "allocate_producer_id"}).encode()


Listener = Callable[[TopicRecord], None]


class MetadataState:
    """The applied metadata. Mutated only by `apply` on the broker's event loop; read from anywhere."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, TopicRecord] = {}
        self._brokers: dict[int, BrokerRegistration] = {}
        self.applied_offset = -1
        self.on_created: list[Listener] = []
        self.on_deleted: list[Listener] = []

    def apply(self, offset: int, command: bytes) -> RaftkaError | None:
        """Apply the command at `offset` of the metadata log; returns why it changed nothing, if so."""
        if offset <= self.applied_offset:
            return None
        self.applied_offset = offset
        raw = json.loads(command)
        if raw["op"] == "create_topic":
            record = TopicRecord.from_json(raw["topic"])
            with self._lock:
                if record.name in self._topics:
                    return TopicExistsError(f"topic {record.name!r} already exists")
                self._topics[record.name] = record
            log.info("topic created name=%s id=%s partitions=%d replicas=%s", record.name, record.topic_id,
                     record.partitions, [list(r) for r in record.replicas])
            for listener in self.on_created:
                listener(record)
        elif raw["op"] == "register_broker":
            registration = BrokerRegistration(raw["broker_id"], raw["address"], raw["rack"])
            with self._lock:
                self._brokers[registration.broker_id] = registration
            log.info("broker registered id=%d address=%s rack=%s", registration.broker_id, registration.address,
                     registration.rack)
        elif raw["op"] == "delete_topic":
            with self._lock:
                record = self._topics.pop(raw["name"], None)
            if record is None:
                return UnknownTopicError(f"unknown topic {raw['name']!r}")
            log.info("topic deleted name=%s id=%s", record.name, record.topic_id)
            for listener in self.on_deleted:
                listener(record)
        elif raw["op"] == "allocate_producer_id":
            log.debug("producer id allocated id=%d", offset)
        else:
            log.error("unknown metadata command at offset %d: %r", offset, raw)
        return None

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
