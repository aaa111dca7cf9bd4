"""The gRPC metadata a client's calls carry, named once for the client that sends it and the broker
that reads it: the bearer token (`authorization: Bearer <token>`) and the client id
(`raftka-client-id`), with the rule a client id follows.

A client id names an application (Kafka's `client.id`): it is not authenticated, a caller picks it
freely, and quotas may be set per client id (alone or with a principal). At most one travels on a
call; a call without one has the client id "" (none), which only default client-id quotas match.
"""

from __future__ import annotations

AUTHORIZATION_HEADER = "authorization"
CLIENT_ID_HEADER = "raftka-client-id"
MAX_CLIENT_ID_CHARS = 255
DEFAULT_ENTITY = "*"
"""In a quota, the principal or client id `*` is the default of those without a quota of their own,
so `*` is never a client id."""


def client_id_problem(client_id: str) -> str | None:
    """Why `client_id` is not a client id, None when it is one ("" is: no client id). A client id is at
    most MAX_CLIENT_ID_CHARS visible ASCII characters (no spaces or control characters: gRPC metadata
    carries only ASCII, and a name that prints as it is leaves no doubt in logs and quota lists)."""
    if len(client_id) > MAX_CLIENT_ID_CHARS:
        return f"client id is {len(client_id)} characters long; at most {MAX_CLIENT_ID_CHARS} are allowed"
    bad = sorted({char for char in client_id if not "!" <= char <= "~"})
    if bad:
        return f"client id {client_id!r} has characters other than visible ASCII: {''.join(bad)!r}"
    if client_id == DEFAULT_ENTITY:
        return f"client id {DEFAULT_ENTITY!r} is reserved (in a quota it names the default client id)"
    return None
