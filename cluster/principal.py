"""Who is calling: the principal a gRPC call is made by, as the authorizer sees it.

Today the one source is a verified client certificate (mutual TLS, `--tls-client-auth required`):
gRPC puts a client certificate into the call's auth context only once it has verified it against the
cluster CA. A certificate that names a broker id (SAN URI ``raftka://broker/<id>``, the rule of
`raftka.wire.tls`) is that broker's, ``Broker:<id>``, which the authorizer may treat as a super-user;
any other is ``User:<CN>``, Kafka's default mapping of a certificate subject.
"""

from __future__ import annotations

import grpc

from raftka.wire.tls import ANY_BROKER, broker_id_of

USER_PRINCIPAL_PREFIX = "User:"
BROKER_PRINCIPAL_PREFIX = "Broker:"


def tls_principal(context: grpc.aio.ServicerContext) -> str | None:
    """The principal the call's verified client certificate names, or None (no TLS, no certificate,
    or a certificate without a common name that names no broker)."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    broker = broker_id_of(uri.decode() for uri in auth.get("peer_uri", ()))
    if broker is not None:
        return f"{BROKER_PRINCIPAL_PREFIX}{'*' if broker == ANY_BROKER else broker}"
    names = list(auth.get("x509_common_name", ()))
    return f"{USER_PRINCIPAL_PREFIX}{names[0].decode()}" if names else None
