"""Prometheus metrics of one broker, served on `/metrics` of the metrics port.

Labels stay low-cardinality (request outcome, never topic or client), so a broker with thousands of
partitions exposes the same few series. Per-partition figures belong in the Admin API.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.fetch_requests = Counter("raftka_fetch_requests", "Fetch requests", ["outcome"], registry=r)
        self.fetch_bytes = Counter("raftka_fetch_bytes", "Record-batch bytes served to fetchers", registry=r)
        self.fetch_latency = Histogram("raftka_fetch_latency_seconds",
                                       "Time to answer a fetch, long-poll wait included",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.flush_latency = Histogram("raftka_log_flush_latency_seconds",
                                       "Duration of one group-commit write with fsync",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.flush_partitions = Histogram("raftka_log_flush_partitions",
                                          "Partitions made durable by one group-commit write",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=r)
        self.partitions = Gauge("raftka_partitions", "Partition replicas hosted by this broker", registry=r)

    def observe_flush(self, partitions: int, seconds: float) -> None:
        self.flush_latency.observe(seconds)
        self.flush_partitions.observe(partitions)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
