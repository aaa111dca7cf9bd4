"""Who is calling: the principal a gRPC call's verified client certificate names.

gRPC puts a client certificate into the call's auth context only once it has verified it against the
cluster CA (mutual TLS, `--tls-client-auth required`). Two rules decide its principal, in this order:

1. A certificate that names a broker id (SAN URI ``raftka://broker/<id>``, the rule of
   `raftka.wire.tls`) is that broker's, ``Broker:<id>``, which the authorizer treats as a super-user.
   No mapping rule is asked, so brokers stay super-users whatever the rules say, and no rule can make
   a ``Broker:`` principal (rules name ``User:`` principals only).
2. Any other is ``User:<name>``, the name the operator's mapping rules give (`--tls-principal-rule`,
   `raftka.cluster.principal_rules`; without rules ``DEFAULT``, its CN). A certificate no rule maps is
   refused with AuthenticationFailedError, as Kafka refuses it: it is not anonymous.

The values the rules read come from the auth context's keys (`AUTH_CONTEXT_KEYS`), which grpcio fills
from the certificate: ``x509_subject`` is the subject DN in RFC 2253 form.
"""

from __future__ import annotations

from typing import Sequence

import grpc

from raftka.cluster.principal_rules import DEFAULT_RULES, PrincipalRule, principal_name
from raftka.errors import AuthenticationFailedError
from raftka.wire.tls import ANY_BROKER, broker_id_of

USER_PRINCIPAL_PREFIX = "User:"
BROKER_PRINCIPAL_PREFIX = "Broker:"

AUTH_CONTEXT_KEYS = {"DN": "x509_subject", "CN": "x509_common_name", "URI": "peer_uri", "DNS": "peer_dns",
                     "EMAIL": "peer_email", "IP": "peer_ip"}
"""The auth-context key behind each source a rule reads (`raftka.cluster.principal_rules.SOURCES`)."""


class CertificatePrincipal:
    """The authenticator of verified client certificates (`raftka.cluster.authentication`)."""

    def __init__(self, rules: Sequence[PrincipalRule] = ()) -> None:
        self.rules = tuple(rules) or DEFAULT_RULES

    def __call__(self, context: grpc.aio.ServicerContext) -> str | None:
        """The principal of the call's verified certificate; None without TLS or without a verified
        certificate. Raises AuthenticationFailedError when no rule maps the certificate."""
        auth = context.auth_context()
        if auth.get("transport_security_type") != [b"ssl"] or not auth.get("x509_pem_cert"):
            return None
        broker = broker_id_of(uri.decode() for uri in auth.get("peer_uri", ()))
        if broker is not None:
            return f"{BROKER_PRINCIPAL_PREFIX}{'*' if broker == ANY_BROKER else broker}"
        names = {source: [value.decode(errors="replace") for value in auth.get(key, ())]
                 for source, key in AUTH_CONTEXT_KEYS.items()}
        name = principal_name(self.rules, names)
        if name is None:
            subject = names["DN"][0] if names["DN"] else ""
            raise AuthenticationFailedError(f"the client certificate (subject {subject!r}) matches no principal "
                                            "mapping rule (--tls-principal-rule)")
        return f"{USER_PRINCIPAL_PREFIX}{name}"
