"""TLS as the client and the broker both see it: how a broker certificate names its broker id, and the
one place a gRPC channel to a broker is opened (plaintext, or TLS with an optional client certificate).

A broker's certificate names its broker id as a SAN URI ``raftka://broker/<id>`` (`broker_uri`), next
to the DNS names and IP addresses clients reach it by. The Raft transport and the authorizer read the
id from there: a certificate of the cluster CA without that URI is a client's, not a broker's.
``raftka://broker/*`` (`ANY_BROKER_URI`) names a certificate that all brokers share (one Kubernetes
Secret mounted by every pod): it vouches for any broker id, so its holders can pose as each other —
the price of sharing one key; per-broker certificates keep them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import grpc

BROKER_URI_PREFIX = "raftka://broker/"

ChannelOptions = Sequence[tuple[str, object]]

RERESOLVE_OPTIONS: ChannelOptions = (("grpc.dns_min_time_between_resolutions_ms", 1_000),)
"""Every channel to a broker looks its name up again at most a second after the last lookup, not
gRPC's default 30 s. A broker's name outlives its address: a StatefulSet pod recreated by a rolling
update comes back under the same DNS name at a new IP. A channel that looked the name up while the pod
was down kept the old address for the rest of the 30 s; the chart's rolling-restart container test
measured a producer acknowledging nothing for 21-22 s after pod 0 (broker 1) was ready again."""


def broker_uri(broker_id: int) -> str:
    """The SAN URI a certificate of broker `broker_id` carries (ANY_BROKER: of every broker)."""
    return ANY_BROKER_URI if broker_id == ANY_BROKER else f"{BROKER_URI_PREFIX}{broker_id}"


def certifies(certified: int | None, broker_id: int) -> bool:
    """Whether a certificate naming `certified` (`broker_id_of`) may speak for broker `broker_id`."""
    return certified is not None and certified in (broker_id, ANY_BROKER)


ANY_BROKER = 0
"""What `broker_id_of` returns for a certificate shared by all brokers (`ANY_BROKER_URI`)."""
ANY_BROKER_URI = f"{BROKER_URI_PREFIX}*"


def broker_id_of(uris: Iterable[str]) -> int | None:
    """The broker id the SAN URIs of a certificate name, ANY_BROKER for a certificate all brokers
    share, or None when they name none (or several)."""
    ids = {uri.removeprefix(BROKER_URI_PREFIX) for uri in uris if uri.startswith(BROKER_URI_PREFIX)}
    if len(ids) != 1:
        return None
    text = ids.pop()
    if text == "*":
        return ANY_BROKER
    return int(text) if text.isdigit() and int(text) > 0 else None


@dataclass(frozen=True)
class ClientTls:
    """How a client (or a broker calling another broker) opens TLS channels: the CA bundle that
    verifies brokers (None: the system's roots), an optional client certificate and key, and a server
    name to verify instead of the address's host (`server_name`, for addresses the certificate does
    not name). The files are read when a channel is opened, so a rotated certificate is used by the
    next channel."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a TLS client certificate needs its key, and a key its certificate "
                             "(give both tls_cert and tls_key, or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)

    def options(self, options: ChannelOptions) -> list[tuple[str, object]]:
        override = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return [*options, *override]

    @classmethod
    def of(cls, ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None,
           server_name: str | None = None) -> ClientTls | None:
        """The settings of the client API's `tls_*` arguments, or None (plaintext) when none is given."""
        if not (ca or cert or key or server_name):
            return None
        return cls(Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None,
                   server_name or "")


def open_channel(address: str, tls: ClientTls | None, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking-API channel to `address`: TLS when `tls` is given, else plaintext."""
    options = [*RERESOLVE_OPTIONS, *options]
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.credentials(), options=tls.options(options))


def open_aio_channel(address: str, tls: ClientTls | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """An asyncio channel to `address`: TLS when `tls` is given, else plaintext."""
    options = [*RERESOLVE_OPTIONS, *options]
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, tls.credentials(), options=tls.options(options))
