"""Prometheus metrics of one broker, served on `/metrics` of the metrics port (which also serves the
health paths `raftka.cluster.health` gives it).

Labels stay low-cardinality (request outcome, never topic or client), so a broker with thousands of
partitions exposes the same few series. Per-partition figures belong in the Admin API.
"""

from __future__ import annotations

import socket
import ssl
import threading
from functools import partial
from typing import Any, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from raftka.cluster.state_machine import StateMachineStats
from raftka.replication.transport import TransportStats

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BrokerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.produce_requests = Counter("raftka_produce_requests", "Produce requests (unary and stream items)",
                                        ["outcome"], registry=r)
        self.produce_bytes = Counter("raftka_produce_bytes", "Record-batch bytes appended", registry=r)
        self.produce_latency = Histogram("raftka_produce_latency_seconds",
                                         "Time from receiving a produce request to acknowledging it",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.fetch_requests = Counter("raftka_fetch_requests",
                                      "Fetches answered (every answer to a followed fetch counts)", ["outcome"],
                                      registry=r)
        self.fetch_bytes = Counter("raftka_fetch_bytes", "Record-batch bytes served to fetchers", registry=r)
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
                                        "Time callers over their quota were told to wait, by quota kind "
                                        "(produce, fetch, requests); not by principal, whose number is unbounded",
                                        ["kind"], registry=r)
        self.access_refusals = Counter("raftka_access_refusals",
                                       "Calls refused: unauthenticated or not authorized", ["reason"], registry=r)

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
