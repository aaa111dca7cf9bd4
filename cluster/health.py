"""A broker's health: one record of each health service's status, answered over gRPC (the standard
`grpc.health.v1.Health` service) and over HTTP on the metrics listener (`/healthz/ready`,
`/healthz/live`).

Why HTTP too: Kubernetes' built-in gRPC probe speaks plaintext only and presents no client
certificate, so it cannot reach a gRPC port that requires TLS and client certificates. The kubelet's
HTTPS probes do work (they do not verify the server's certificate), so with TLS on the chart probes
these paths on the metrics port, plaintext or `--metrics-tls`.

Invariant: `BrokerHealth.set` and `BrokerHealth.shut_down` are the only writers; the gRPC servicer and
the HTTP paths read what they wrote, so a probe of either kind gets the same answer. Statuses are
written on the event loop and read by the metrics server's threads; each read is one dict lookup.
"""

from __future__ import annotations

from typing import Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from grpc_health.v1 import health, health_pb2

from raftka.proto import api_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS_SERVICE = "liveness"
"""A health service name that answers SERVING while the process runs, whatever its cluster is doing:
what a liveness probe asks (restarting a broker because its quorum is away would not help)."""
READINESS_SERVICE = api_pb2.DESCRIPTOR.services_by_name["Broker"].full_name
"""SERVING once the broker knows a metadata leader (topic operations can succeed): what startup and
readiness probes ask."""
HTTP_PROBES = {"/healthz/ready": READINESS_SERVICE, "/healthz/live": LIVENESS_SERVICE}
"""The HTTP paths of the metrics listener and the health service each answers for."""


class BrokerHealth:
    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self._statuses: dict[str, int] = {}
        self._shutting_down = False

    async def set(self, service: str, serving: bool) -> None:
        """Ignored once shutting down, as the gRPC servicer ignores it."""
        if self._shutting_down:
            return
        status = SERVING if serving else NOT_SERVING
        self._statuses[service] = status
        await self.servicer.set(service, status)

    async def shut_down(self) -> None:
        """Every service NOT_SERVING, for good: the broker is stopping."""
        self._shutting_down = True
        for service in self._statuses:
            self._statuses[service] = NOT_SERVING
        await self.servicer.enter_graceful_shutdown()

    def serving(self, service: str) -> bool:
        return self._statuses.get(service) == SERVING

    def http_probe(self, service: str) -> WSGIApplication:
        """A WSGI app answering 200 `SERVING` while `service` serves, else 503 `NOT_SERVING`."""
        def app(_environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            status, body = ("200 OK", b"SERVING\n") if self.serving(service) else \
                ("503 Service Unavailable", b"NOT_SERVING\n")
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
            return [body]

        return app

    def http_probes(self) -> dict[str, WSGIApplication]:
        return {path: self.http_probe(service) for path, service in HTTP_PROBES.items()}
