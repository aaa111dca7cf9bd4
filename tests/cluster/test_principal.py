"""`CertificatePrincipal` on real gRPC calls over mutual TLS: a broker's certificate, a client's, none,
and what each mapping-rule source reads out of grpcio's auth context."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Callable

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftka.client.certs import LocalPki, issue, local_pki
from raftka.cluster.principal import AUTH_CONTEXT_KEYS, BROKER_PRINCIPAL_PREFIX, CertificatePrincipal
from raftka.cluster.principal_rules import SOURCES, parse_rules
from raftka.errors import AuthenticationFailedError
from raftka.wire.tls import ClientTls, open_aio_channel

Outcome = str | None


class Recorder(health_pb2_grpc.HealthServicer):
    """Asks each authenticator about every call: its principal, None, or the refusal's message."""

    def __init__(self, authenticators: dict[str, CertificatePrincipal]) -> None:
        self.authenticators = authenticators
        self.outcomes: list[dict[str, Outcome]] = []

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        outcomes: dict[str, Outcome] = {}
        for name, authenticate in self.authenticators.items():
            try:
                outcomes[name] = authenticate(context)
            except AuthenticationFailedError as exc:
                outcomes[name] = f"refused: {exc.message}"
        self.outcomes.append(outcomes)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def calls(tmp_path: Path, authenticators: dict[str, CertificatePrincipal], require: bool,
          callers: Callable[[Path, int, int], list[tuple[int, ClientTls | None]]]) -> list[dict[str, Outcome]]:
    """Serve health checks on a TLS port (and a plaintext one) with broker 1's certificate and record what
    `authenticators` make of each call `callers(ca, tls_port, plaintext_port)` lists."""
    pki = local_pki(tmp_path, 1)
    cert, key = pki.broker(1)

    async def scenario() -> list[dict[str, Outcome]]:
        recorder = Recorder(authenticators)
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(recorder, server)
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())], pki.ca.read_bytes(),
                                                  require_client_auth=require)
        port = server.add_secure_port("127.0.0.1:0", credentials)
        insecure_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            for target, tls in callers(pki.ca, port, insecure_port):
                async with open_aio_channel(f"127.0.0.1:{target}", tls) as channel:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        finally:
            await server.stop(0)
        return recorder.outcomes

    return asyncio.run(scenario())


@pytest.mark.parametrize("require", [True, False])
def test_the_principal_of_a_call_is_its_verified_certificates(tmp_path: Path, require: bool) -> None:
    """A broker's certificate is `Broker:<id>` whatever the rules say; a client's is `User:<CN>` by
    default; a call without a verified certificate names nobody."""
    rules = CertificatePrincipal(parse_rules(r"RULE:(.*)/everyone/"))

    def callers(ca: Path, port: int, insecure_port: int) -> list[tuple[int, ClientTls | None]]:
        pki = local_pki(tmp_path, 2)
        alice = issue(pki.authority(), "alice").write(tmp_path, "alice")
        return [(port, ClientTls(ca, *pki.broker(2))), (port, ClientTls(ca, *alice)), (insecure_port, None)]

    outcomes = calls(tmp_path, {"default": CertificatePrincipal(), "rules": rules}, require, callers)
    if require:
        assert outcomes == [{"default": f"{BROKER_PRINCIPAL_PREFIX}2", "rules": f"{BROKER_PRINCIPAL_PREFIX}2"},
                            {"default": "User:alice", "rules": "User:everyone"},
                            {"default": None, "rules": None}]
    else:
        assert outcomes == [{"default": None, "rules": None}] * 3, \
            "a certificate the server did not verify names nobody"


def test_each_rule_source_reads_its_part_of_the_certificate(tmp_path: Path) -> None:
    """The subject DN in RFC 2253 form (escapes included), the CN, and the SANs by type, as grpcio reports
    them; a certificate no rule maps is refused, naming its subject."""
    assert set(AUTH_CONTEXT_KEYS) == set(SOURCES)
    rules = {"DN": r"RULE:(.*)/$1/", "CN": "DEFAULT",
             "URI": r"SAN:URI:spiffe:\/\/example\.org\/ns\/[^\/]+\/sa\/(.+)/$1/",
             "DNS": r"SAN:DNS:(.+)\.example\.org/$1/", "EMAIL": r"SAN:EMAIL:(.+)@example\.org/$1/U",
             "IP": r"SAN:IP:10\.(.+)/$1/", "none": r"SAN:URI:https:\/\/.*/x/"}
    authenticators = {name: CertificatePrincipal(parse_rules(rule)) for name, rule in rules.items()}
    subject = r"CN=Alice\+Bob,OU=Payments,O=Acme\, Inc,C=US"

    def callers(ca: Path, port: int, insecure_port: int) -> list[tuple[int, ClientTls | None]]:
        sans = [x509.UniformResourceIdentifier("spiffe://example.org/ns/x/sa/y"),
                x509.RFC822Name("alice@example.org"), x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]
        files = issue(LocalPki(tmp_path).authority(), "", subject=subject, hosts=["svc.example.org"],
                      sans=sans).write(tmp_path, "ab")
        return [(port, ClientTls(ca, *files))]

    [outcome] = calls(tmp_path, authenticators, True, callers)
    assert outcome == {"DN": f"User:{subject}", "CN": "User:Alice+Bob", "URI": "User:y", "DNS": "User:svc",
                       "EMAIL": "User:ALICE", "IP": "User:1.2.3",
                       "none": f"refused: the client certificate (subject {subject!r}) matches no principal mapping "
                               "rule (--tls-principal-rule)"}
