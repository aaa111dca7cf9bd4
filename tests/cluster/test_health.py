"""BrokerHealth's rule, in process: the gRPC health servicer and the HTTP probes answer from the same
statuses, through start, serving and shutdown (the live broker's probes are in test_graceful_stop and
test_tls)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable
from wsgiref.util import setup_testing_defaults

from grpc_health.v1 import health_pb2

from raftka.cluster.health import LIVENESS_SERVICE, READINESS_SERVICE, BrokerHealth


def grpc_status(health: BrokerHealth, service: str) -> int:
    async def check() -> int:
        response = await health.servicer.Check(health_pb2.HealthCheckRequest(service=service), None)
        return response.status

    return asyncio.run(check())


def http_status(health: BrokerHealth, path: str) -> tuple[str, bytes]:
    answered: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]],
                       _exc_info: object = None) -> Callable[[bytes], object]:
        answered.append(status)
        return lambda _data: None

    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    body = b"".join(health.http_probes()[path](environ, start_response))
    return answered[0], body


def answers(health: BrokerHealth) -> tuple[tuple[int, str], tuple[int, str]]:
    """(gRPC status, HTTP status line) of readiness and of liveness."""
    return ((grpc_status(health, READINESS_SERVICE), http_status(health, "/healthz/ready")[0]),
            (grpc_status(health, LIVENESS_SERVICE), http_status(health, "/healthz/live")[0]))


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_grpc_and_http_probes_agree_from_start_to_shutdown() -> None:
    health = BrokerHealth()
    asyncio.run(health.set(READINESS_SERVICE, False))
    asyncio.run(health.set(LIVENESS_SERVICE, True))
    assert answers(health) == ((NOT_SERVING, "503 Service Unavailable"), (SERVING, "200 OK"))
    assert http_status(health, "/healthz/ready")[1] == b"NOT_SERVING\n"

    asyncio.run(health.set(READINESS_SERVICE, True))
    assert answers(health) == ((SERVING, "200 OK"), (SERVING, "200 OK"))
    assert http_status(health, "/healthz/ready")[1] == b"SERVING\n"

    asyncio.run(health.shut_down())
    assert answers(health) == ((NOT_SERVING, "503 Service Unavailable"), (NOT_SERVING, "503 Service Unavailable"))
    asyncio.run(health.set(READINESS_SERVICE, True))
    assert answers(health) == ((NOT_SERVING, "503 Service Unavailable"), (NOT_SERVING, "503 Service Unavailable")), \
        "a stopping broker does not turn ready again"


def test_a_service_never_set_is_not_serving() -> None:
    assert http_status(BrokerHealth(), "/healthz/ready")[0] == "503 Service Unavailable"
