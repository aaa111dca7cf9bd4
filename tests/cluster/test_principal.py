"""`tls_principal` on real gRPC calls over mutual TLS: a broker's certificate, a client's, none."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftka.client.certs import Issued, issue, local_pki
from raftka.cluster.principal import BROKER_PRINCIPAL_PREFIX, tls_principal
from raftka.wire.tls import ClientTls, open_aio_channel


class Recorder(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self.principals: list[str | None] = []

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        self.principals.append(tls_principal(context))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("require", [True, False])
def test_the_principal_of_a_call_is_its_verified_certificates(tmp_path: Path, require: bool) -> None:
    pki = local_pki(tmp_path, 2)
    ca = Issued(pki.ca.read_bytes(), (tmp_path / "ca-key.pem").read_bytes())
    alice = issue(ca, "alice").write(tmp_path, "alice")
    cert, key = pki.broker(1)

    async def scenario() -> list[str | None]:
        recorder = Recorder()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(recorder, server)
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())], pki.ca.read_bytes(),
                                                  require_client_auth=require)
        port = server.add_secure_port("127.0.0.1:0", credentials)
        insecure_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            callers = [(port, ClientTls(pki.ca, *pki.broker(2))), (port, ClientTls(pki.ca, *alice)),
                       (insecure_port, None)]
            for target, tls in callers:
                async with open_aio_channel(f"127.0.0.1:{target}", tls) as channel:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        finally:
            await server.stop(0)
        return recorder.principals

    principals = asyncio.run(scenario())
    if require:
        assert principals == [f"{BROKER_PRINCIPAL_PREFIX}2", "User:alice", None]
    else:
        assert principals == [None, None, None], "a certificate the server did not verify names nobody"
