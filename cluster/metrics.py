"""Prometheus metrics of one broker, served on `/metrics` of the metrics port (which also serves the
health paths `raftka.cluster.health` gives it).

Cardinality is bounded by design: labels are request outcomes, reasons and stages, the topic (only
topics that exist, and none at all with `per_topic=False`, `--no-metrics-per-topic`) and the consumer
group (exported only by the group's coordinator); never a client, principal, partition or record.
Per-partition figures belong in the Admin API. The README's "Observability" section is the catalogue
(tests/cluster/test_prometheus.py keeps the two in step).

The hot path counts per request or per batch into plain numbers (`TopicCounters`); everything about
partitions, groups and storage is computed when scraped (raftka.cluster.collectors), on the broker's
event loop (`OnLoop`), so it reads one consistent state and costs nothing between scrapes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import platform
import socket
import ssl
import threading
from collections import defaultdict
from functools import partial
from typing import Any, Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, make_wsgi_app)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from raftka import __version__
from raftka.cluster.quotas import ENTITY_KINDS, FETCH, PRODUCE, REQUESTS
from raftka.cluster.state_machine import StateMachineStats
from raftka.replication.transport import TransportStats

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


disable_created_metrics()
"""No `_created` series: a counter's or histogram's start time is not worth a second series each."""

COLLECT_TIMEOUT_S = 10.0
"""How long a scrape waits for the event loop to compute the scrape-time metrics."""


def topic_label_names(per_topic: bool) -> list[str]:
    """The label names of a per-topic series: `topic`, or none when topics are aggregated."""
    return ["topic"] if per_topic else []


def topic_label_values(per_topic: bool, topic: str) -> list[str]:
    return [topic] if per_topic else []


class TopicCounters(Collector):
    """Counters per topic, added to per request (never per record) as plain numbers and exported as
    `raftka_<name>_total{topic}` when scraped. Every existing topic (`topics()`) has its series, zero
    until something happens, so rates exist from its creation; counts of deleted topics are dropped."""

    def __init__(self, per_topic: bool, catalogue: dict[str, str]) -> None:
        self._per_topic = per_topic
        self._catalogue = catalogue
        self._counts: dict[str, defaultdict[str, float]] = {name: defaultdict(float) for name in catalogue}
        self.topics: Callable[[], Iterable[str]] = tuple

    def add(self, name: str, topic: str, amount: float) -> None:
        self._counts[name][topic] += amount

    def collect(self) -> Iterable[Metric]:
        topics = set(self.topics())
        for name, documentation in self._catalogue.items():
            counts = self._counts[name]
            for gone in [topic for topic in counts if topic not in topics]:
                del counts[gone]
            family = CounterMetricFamily(f"raftka_{name}", documentation,
                                         labels=topic_label_names(self._per_topic))
            if self._per_topic:
                for topic in sorted(topics):
                    family.add_metric([topic], counts.get(topic, 0.0))
            else:
                family.add_metric([], sum(counts.values()))
            yield family


class OnLoop(Collector):
    """Runs a collector on the broker's event loop, whose state it reads, and waits for its metrics:
    the scrape thread never iterates structures the loop is changing."""

    def __init__(self, collector: Collector, loop: asyncio.AbstractEventLoop) -> None:
        self._collector = collector
        self._loop = loop

    def collect(self) -> Iterable[Metric]:
        result: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(list(self._collector.collect()))
            except Exception as exc:  # noqa: BLE001 - the scrape reports it, the loop goes on
                result.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return result.result(timeout=COLLECT_TIMEOUT_S)


class BrokerMetrics:
    def __init__(self, *, per_topic: bool = True) -> None:
        """`per_topic`: label traffic, storage and partition-health series by topic (else one series
        each for the whole broker). Every labelled counter starts with a zero series per known label
        value, so rates and alerts have a series before the first event."""
        self.per_topic = per_topic
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(PROCESS_COLLECTOR)
        r.register(PLATFORM_COLLECTOR)
        self.build_info = Gauge("raftka_build_info", "Always 1: the broker's version and Python",
                                ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.topic_counters = TopicCounters(per_topic, {
            "produce_records": "Records appended by produce requests (counted from batch headers)",
            "produce_bytes": "Record-batch bytes appended by produce requests",
            "fetch_records": "Records served to fetchers (counted from batch headers)",
            "fetch_bytes": "Record-batch bytes served to fetchers",
            "retention_deleted_segments": "Log segments retention deleted from this broker's replicas",
            "retention_deleted_bytes": "Record-batch bytes retention deleted from this broker's replicas",
        })
        r.register(self.topic_counters)
        self.produce_requests = Counter("raftka_produce_requests", "Produce requests (unary and stream items)",
                                        ["outcome"], registry=r)
        self.produce_latency = Histogram("raftka_produce_latency_seconds",
                                         "Time from receiving a produce request to acknowledging it",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.fetch_requests = Counter("raftka_fetch_requests",
                                      "Fetches answered (every answer to a followed fetch counts)", ["outcome"],
                                      registry=r)
        self.fetch_latency = Histogram("raftka_fetch_latency_seconds",
                                       "Time to answer a fetch, long-poll wait included (a followed "
                                       "fetch: from its previous answer)",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.fetch_follows_ended = Counter("raftka_fetch_follows_ended",
                                           "Followed fetches that stopped being followed, by reason: allowance "
                                           "(their follow_bytes were sent), error, newer (another request "
                                           "arrived on the stream)", ["reason"], registry=r)
        self.flush_latency = Histogram("raftka_log_flush_latency_seconds",
                                       "Duration of one group-commit write with fsync",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.round_groups = Histogram("raftka_raft_round_groups",
                                      "Raft groups whose writes one driver round made durable with one sync",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=r)
        self.commit_latency = Histogram("raftka_raft_commit_latency_seconds",
                                        "Time from proposing an entry (one record batch) to its commit by a "
                                        "majority, on the leader that proposed it", buckets=_LATENCY_BUCKETS,
                                        registry=r)
        self.leaderships_won = Counter("raftka_raft_leaderships_won",
                                       "Times this broker became a Raft group's leader, by cause: election (a "
                                       "campaign after an election timeout) or transfer (leadership handed over)",
                                       ["cause"], registry=r)
        self.partitions = Gauge("raftka_partitions", "Partition replicas hosted by this broker", registry=r)
        self.leaders = Gauge("raftka_partition_leaders", "Partitions this broker leads", registry=r)
        self.leader_imbalance = Gauge("raftka_leader_imbalance_partitions",
                                      "Partitions this broker leads whose in-sync preferred leader is another "
                                      "broker (leadership goes back after --leader-balance-delay-ms)", registry=r)
        self.raft_messages = Gauge("raftka_raft_messages", "Raft messages exchanged with peer brokers since start",
                                   ["direction"], registry=r)
        self.raft_bytes = Gauge("raftka_raft_bytes", "Raft message bytes exchanged with peer brokers since start",
                                ["direction"], registry=r)
        self.raft_group_failures = Counter("raftka_raft_group_failures",
                                           "Raft groups stopped on this broker after a failure of their own, by "
                                           "stage (storage, apply, core, send); each is reopened after a backoff",
                                           ["stage"], registry=r)
        self.raft_groups_stopped = Gauge("raftka_raft_groups_stopped",
                                         "Raft groups stopped after a failure, waiting to be reopened", registry=r)
        self.state_machine_skipped = Gauge("raftka_state_machine_records_skipped",
                                           "Malformed records of the metadata or group logs skipped since start",
                                           ["machine"], registry=r)
        self.state_machine_snapshots = Gauge("raftka_state_machine_snapshots",
                                             "Snapshots of the metadata or group state taken or restored since start",
                                             ["machine", "event"], registry=r)
        self.raft_refusals = Gauge("raftka_raft_refusals",
                                   "Raft connections refused since start, by this broker (incoming: another "
                                   "cluster or broker id, malformed) or by its peers (outgoing)", ["by"], registry=r)
        self.throttle_seconds = Counter("raftka_quota_throttle_seconds",
                                        "Time callers over their quota were told to wait, by quota kind (produce, "
                                        "fetch, requests) and the shape of the quota's entity (user, client, "
                                        "user+client, ...-default); not by principal or client id, whose number "
                                        "is unbounded", ["kind", "entity"], registry=r)
        self.access_refusals = Counter("raftka_access_refusals",
                                       "Calls refused: unauthenticated or not authorized", ["reason"], registry=r)
        for counter, values in ((self.access_refusals, ("unauthenticated", "unauthorized")),
                                (self.fetch_follows_ended, ("allowance", "error", "newer")),
                                (self.raft_group_failures, ("storage", "apply", "core", "send")),
                                (self.leaderships_won, ("election", "transfer"))):
            for value in values:
                counter.labels(value)
        for kind, entity in itertools.product((PRODUCE, FETCH, REQUESTS), ENTITY_KINDS):
            self.throttle_seconds.labels(kind, entity)

    def produced(self, topic: str, records: int, size: int) -> None:
        self.topic_counters.add("produce_records", topic, records)
        self.topic_counters.add("produce_bytes", topic, size)

    def fetched(self, topic: str, records: int, size: int) -> None:
        self.topic_counters.add("fetch_records", topic, records)
        self.topic_counters.add("fetch_bytes", topic, size)

    def retention_deleted(self, topic: str, segments: int, size: int) -> None:
        self.topic_counters.add("retention_deleted_segments", topic, segments)
        self.topic_counters.add("retention_deleted_bytes", topic, size)

    def watch(self, collector: Collector, loop: asyncio.AbstractEventLoop) -> None:
        """Export `collector`'s metrics, computed on `loop` when scraped."""
        self.registry.register(OnLoop(collector, loop))

    def watch_transport(self, stats: TransportStats) -> None:
        """Export the transport's counters (read when scraped)."""
        for direction in ("sent", "received", "dropped"):
            self.raft_messages.labels(direction).set_function(partial(getattr, stats, f"{direction}_messages"))
            self.raft_bytes.labels(direction).set_function(partial(getattr, stats, f"{direction}_bytes"))
        self.raft_refusals.labels("this_broker").set_function(lambda: stats.refused_streams)
        self.raft_refusals.labels("peers").set_function(lambda: stats.refused_by_peers)

    def watch_state_machines(self, stats: StateMachineStats) -> None:
        """Export the internal state machines' counters (read when scraped)."""
        for machine in ("metadata", "groups"):
            self.state_machine_skipped.labels(machine).set_function(partial(stats.skipped.__getitem__, machine))
            self.state_machine_snapshots.labels(machine, "taken").set_function(
                partial(stats.snapshots_taken.__getitem__, machine))
            self.state_machine_snapshots.labels(machine, "restored").set_function(
                partial(stats.snapshots_restored.__getitem__, machine))

    def serve(self, host: str, port: int, tls: ssl.SSLContext | None = None,
              routes: Mapping[str, WSGIApplication] | None = None) -> None:
        """Serve /metrics from a daemon thread, over TLS with `tls` (`raftka.cluster.tls`), which wraps
        the listening socket before the thread accepts anything. `routes` answer their exact paths
        (health probes); every other path is the metrics, as prometheus_client serves them."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        app = _route(dict(routes or {}), make_wsgi_app(self.registry))
        server: ThreadingWSGIServer = make_server(host, port, app,
                             type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family}),
                             handler_class=_QuietHandler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


def _route(routes: dict[str, WSGIApplication], default: WSGIApplication) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return routes.get(environ.get("PATH_INFO", ""), default)(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    """Scrapes are not worth a log line each."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
