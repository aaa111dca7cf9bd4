"""The broker's cluster metadata: which topics exist, their partitions and configuration.

Until the metadata Raft group lands, a broker is its own cluster and keeps its metadata in one JSON
file that is replaced atomically (write, fsync, rename, fsync the directory), so a crash leaves either
the old or the new state, never a torn one. `MetadataStore` is the seam the replicated metadata log
will take over: callers only see `TopicRecord`s and the create/delete operations.

Each topic gets a random id at creation. Partition logs are named by topic id, not by topic name, so
deleting a topic and creating another with the same name can never see the old topic's records.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from raftka.cluster.topics import TopicConfig
from raftka.errors import TopicExistsError, UnknownTopicError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TopicRecord:
    name: str
    topic_id: str
    partitions: int
    replication_factor: int
    config: TopicConfig = field(default_factory=TopicConfig)
    internal: bool = False

    def log_name(self, partition: int) -> str:
        """The partition log's name in the broker's LogStore."""
        return f"{self.topic_id}/{partition}"

    def to_json(self) -> dict:
        return {"name": self.name, "topic_id": self.topic_id, "partitions": self.partitions,
                "replication_factor": self.replication_factor, "config": self.config.as_strings(),
                "internal": self.internal}

    @classmethod
    def from_json(cls, raw: dict) -> TopicRecord:
        return cls(name=raw["name"], topic_id=raw["topic_id"], partitions=raw["partitions"],
                   replication_factor=raw["replication_factor"], config=TopicConfig.parse(raw["config"]),
                   internal=raw["internal"])


class MetadataStore:
    """Topics of a single-broker cluster, persisted in `<data-dir>/metadata.json`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._topics: dict[str, TopicRecord] = {}
        self.cluster_id = uuid.uuid4().hex
        if path.exists():
            raw = json.loads(path.read_text())
            if raw.get("version") != FORMAT_VERSION:
                raise RuntimeError(f"{path}: unsupported metadata format {raw.get('version')!r}")
            self.cluster_id = raw["cluster_id"]
            self._topics = {t["name"]: TopicRecord.from_json(t) for t in raw["topics"]}
        else:
            self._save()
        log.info("metadata loaded path=%s cluster_id=%s topics=%d", path, self.cluster_id, len(self._topics))

    def topics(self) -> list[TopicRecord]:
        with self._lock:
            return sorted(self._topics.values(), key=lambda t: t.name)

    def get(self, name: str) -> TopicRecord:
        with self._lock:
            record = self._topics.get(name)
        if record is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return record

    def find(self, name: str) -> TopicRecord | None:
        with self._lock:
            return self._topics.get(name)

    def create(self, name: str, partitions: int, replication_factor: int, config: TopicConfig,
               *, internal: bool = False) -> TopicRecord:
        with self._lock:
            if name in self._topics:
                raise TopicExistsError(f"topic {name!r} already exists")
            record = TopicRecord(name, uuid.uuid4().hex, partitions, replication_factor, config, internal)
            self._topics[name] = record
            self._save()
        log.info("topic created name=%s id=%s partitions=%d", name, record.topic_id, partitions)
        return record

    def delete(self, name: str) -> TopicRecord:
        with self._lock:
            record = self._topics.pop(name, None)
            if record is None:
                raise UnknownTopicError(f"unknown topic {name!r}")
            self._save()
        log.info("topic deleted name=%s id=%s", name, record.topic_id)
        return record

    def _save(self) -> None:
        body = {"version": FORMAT_VERSION, "cluster_id": self.cluster_id,
                "topics": [t.to_json() for t in self._topics.values()]}
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
