"""Scrape-time metrics of a broker: partition health, storage and consumer-group lag.

Each figure is exported by exactly one broker, so summing a metric over brokers never counts a
partition or a group twice:
- under-replicated partitions, partitions with learners and follower lag: by the partition's leader;
- leaderless partitions: by the lowest-id replica that this broker's Raft transport does not report
  down, among the replicas that know no leader, and by the metadata leader for partitions none of
  whose replicas it can reach (they have no replica left to count them);
- log size and segments: by every broker for its own replicas (that is what its disk holds);
- consumer-group lag and members: by the group's coordinator (the leader of the group's
  `__consumer_offsets` partition). Lag is each committed partition's end offset as this broker's
  replica knows it minus the committed offset; a partition this broker holds no replica of is left
  out (with three brokers and replication factor 3 every broker holds every partition).

These collectors run on the broker's event loop (`raftka.cluster.metrics.OnLoop`).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from raftka.cluster.coordinator import GroupCoordinator
from raftka.cluster.metadata import MetadataState
from raftka.cluster.metrics import topic_label_names, topic_label_values
from raftka.cluster.partitions import PartitionManager
from raftka.proto import NO_LEADER
from raftka.replication.raft import Role


@dataclass
class _TopicHealth:
    under_replicated: int = 0
    leaderless: int = 0
    with_learners: int = 0
    lag_max: int = 0
    lag_sum: int = 0
    size_bytes: int = 0
    segments: int = 0


_PARTITION_GAUGES = (
    ("partitions_under_replicated", "under_replicated",
     "Partitions led here with a voter that is not in sync (inactive, or missing committed entries)"),
    ("partitions_leaderless", "leaderless", "Partitions with no leader (see the module doc for who counts one)"),
    ("partitions_with_learners", "with_learners",
     "Partitions led here with a learner (a replica catching up before it may vote: a move in progress)"),
    ("raft_follower_lag_max_entries", "lag_max",
     "Largest number of log entries a follower of a partition led here is behind the leader"),
    ("raft_follower_lag_entries", "lag_sum",
     "Log entries the followers of the partitions led here are behind their leader, summed"),
    ("log_size_bytes", "size_bytes", "Bytes of record batches in this broker's replicas"),
    ("log_segments", "segments", "Log segments of this broker's replicas"),
)


class PartitionCollector(Collector):
    def __init__(self, broker_id: int, partitions: PartitionManager, metadata: MetadataState, *,
                 is_metadata_leader: Callable[[], bool], reported_down: Callable[[int], bool], data_dir: Path,
                 per_topic: bool) -> None:
        self._broker_id = broker_id
        self._partitions = partitions
        self._metadata = metadata
        self._is_metadata_leader = is_metadata_leader
        self._reported_down = reported_down
        self._data_dir = data_dir
        self._per_topic = per_topic

    def collect(self) -> Iterable[Metric]:
        me = self._broker_id
        health: defaultdict[str, _TopicHealth] = defaultdict(_TopicHealth)
        if not self._per_topic:
            health[""] = _TopicHealth()
        for topic, _, replica in self._partitions.replicas():
            counts = health[topic if self._per_topic else ""]
            size, segments = replica.storage_usage()
            counts.size_bytes += size
            counts.segments += segments
            node = replica.node
            voters = node.conf_state.voters
            if node.role == Role.LEADER:
                counts.under_replicated += not set(voters) <= set(replica.in_sync_replicas())
                counts.with_learners += bool(node.conf_state.learners)
                last = node.last_index
                for broker, progress in node.progress().items():
                    if broker != me:
                        counts.lag_max = max(counts.lag_max, last - progress.match)
                        counts.lag_sum += last - progress.match
            elif replica.leader_id == NO_LEADER:
                reachable = [broker for broker in voters if broker == me or not self._reported_down(broker)]
                counts.leaderless += bool(reachable) and min(reachable) == me
        if self._is_metadata_leader():
            for record in self._metadata.topics():
                for partition in range(record.partitions):
                    hosts = self._metadata.hosts(record, partition)
                    if me not in hosts and all(self._reported_down(broker) for broker in hosts):
                        health[record.name if self._per_topic else ""].leaderless += 1
        for name, field, documentation in _PARTITION_GAUGES:
            family = GaugeMetricFamily(f"raftka_{name}", documentation, labels=topic_label_names(self._per_topic))
            for topic, counts in sorted(health.items()):
                family.add_metric(topic_label_values(self._per_topic, topic), getattr(counts, field))
            yield family
        usage = shutil.disk_usage(self._data_dir)
        yield GaugeMetricFamily("raftka_data_dir_free_bytes",
                                "Bytes free on the file system of the broker's data directory", value=usage.free)
        yield GaugeMetricFamily("raftka_data_dir_capacity_bytes",
                                "Size of the file system of the broker's data directory", value=usage.total)


class GroupCollector(Collector):
    def __init__(self, coordinator: GroupCoordinator, partitions: PartitionManager, *, per_topic: bool) -> None:
        self._coordinator = coordinator
        self._partitions = partitions
        self._per_topic = per_topic

    def collect(self) -> Iterable[Metric]:
        members = GaugeMetricFamily("raftka_group_members", "Members of each consumer group this broker coordinates",
                                    labels=["group"])
        for summary in self._coordinator.list_groups():
            members.add_metric([summary.group_id], summary.members)
        yield members
        lag_sum: defaultdict[tuple[str, str], int] = defaultdict(int)
        lag_max: defaultdict[tuple[str, str], int] = defaultdict(int)
        for group_id, offsets in self._coordinator.committed_offsets().items():
            for (topic, partition), committed in offsets.items():
                replica = self._partitions.find(topic, partition)
                if replica is None:
                    continue
                lag = max(0, replica.high_watermark - committed)
                key = (group_id, topic if self._per_topic else "")
                lag_sum[key] += lag
                lag_max[key] = max(lag_max[key], lag)
        labels = ["group", *topic_label_names(self._per_topic)]
        for name, values, documentation in (
                ("group_lag_records", lag_sum,
                 "Records of a topic a consumer group has yet to commit, summed over its partitions"),
                ("group_lag_max_records", lag_max,
                 "Records a consumer group has yet to commit on its most lagging partition of a topic")):
            family = GaugeMetricFamily(f"raftka_{name}", documentation, labels=labels)
            for (group_id, topic), value in sorted(values.items()):
                family.add_metric([group_id, *topic_label_values(self._per_topic, topic)], value)
            yield family
