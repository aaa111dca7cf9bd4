"""A broker's TLS material (`--tls-cert`, `--tls-key`, `--tls-ca`), re-read when the files change, and
what each listener makes of it.

Rotation without a restart (cert-manager replaces the files of a mounted Secret): `BrokerTls.refresh`
re-reads the three files when their size or mtime changed, and takes them only if they form a valid
pair and CA (a rotation caught half-written is retried at the next poll; the old material stays in
use meanwhile). Each listener asks for the current material per new connection, so existing
connections keep their session and new ones get the new certificate:

* client gRPC: grpc's dynamic certificate fetcher (`grpc_credentials`), called on every handshake;
* Raft transport: `server_context`/`client_context` per connection (`raftka.replication.transport`);
* broker-to-broker gRPC: `client_tls` reads the files when a channel is opened (`channel`);
* metrics: the listening socket's context hands each handshake the current context (SNI callback,
  which OpenSSL calls on every ClientHello, with or without a server name).

Client certificates on the gRPC listener are `required` (verified against the CA) or not requested
(`none`). grpcio's Python API has no "request but do not require" mode: a server that does not require
a client certificate does not ask for one, so its verified identity would never reach
`raftka.cluster.principal`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, cast

import grpc

from raftka.wire.files import FileStamp, file_stamp
from raftka.wire.tls import ChannelOptions, ClientTls, open_aio_channel

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 2.0
"""How often the broker looks at its certificate files."""


class ClientAuth(enum.Enum):
    REQUIRED = "required"
    NONE = "none"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    ca: bytes
    server: ssl.SSLContext
    client: ssl.SSLContext
    metrics: ssl.SSLContext
    generation: int

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert).hexdigest()[:16]


class BrokerTls:
    """Thread-safe: gRPC calls the certificate fetcher on its own threads, and the metrics server
    handshakes on its thread."""

    def __init__(self, files: TlsFiles, client_auth: ClientAuth = ClientAuth.REQUIRED) -> None:
        self.files = files
        self.client_auth = client_auth
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._material = self._load(0)

    @property
    def generation(self) -> int:
        """Incremented each time new material is taken."""
        return self._material.generation

    def refresh(self) -> bool:
        """Take the files' content if they changed and are valid; whether new material was taken."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        current = self._material
        try:
            material = self._load(current.generation + 1)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("tls reload failed, keeping the current certificate cert=%s error=%s: %s",
                        self.files.cert, type(exc).__name__, exc)
            return False
        self._stamp = stamp
        if (material.cert, material.key, material.ca) == (current.cert, current.key, current.ca):
            return False
        with self._lock:
            self._material = material
        log.info("tls reloaded cert=%s fingerprint=%s generation=%d", self.files.cert, material.fingerprint,
                 material.generation)
        return True

    def server_context(self) -> ssl.SSLContext:
        """For the Raft listener: our certificate, and the peer's required, of the cluster CA."""
        return self._material.server

    def client_context(self) -> ssl.SSLContext:
        """For Raft connections we open: the peer's certificate verified against the CA (its broker id is
        checked by the transport, not its host name), and ours presented."""
        return self._material.client

    def client_tls(self) -> ClientTls:
        """How this broker calls other brokers' gRPC: its own certificate as the client certificate."""
        return ClientTls(ca=self.files.ca, cert=self.files.cert, key=self.files.key)

    def channel(self, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
        return open_aio_channel(address, self.client_tls(), options)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials whose certificate follows the files (asked for on every handshake)."""
        served = [self._material.generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            material = self._material
            if material.generation == served[0]:
                return None
            served[0] = material.generation
            return self._grpc_config(material)

        # grpc takes None from the fetcher as "unchanged"; its type stub allows only a configuration.
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(self._material), cast(Callable[[], grpc.ServerCertificateConfiguration], fetch),
            require_client_authentication=self.client_auth is ClientAuth.REQUIRED)

    def metrics_context(self) -> ssl.SSLContext:
        """For the metrics listener: serves the current certificate, asks no client certificate."""
        def current(sslobj: ssl.SSLObject, _name: str | None, _context: ssl.SSLContext) -> None:
            sslobj.context = self._material.metrics

        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._load_chain(base, self._material.cert, self._material.key)
        base.sni_callback = current
        return base

    @staticmethod
    def _grpc_config(material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)],
                                                         root_certificates=material.ca)

    def _stat(self) -> tuple[FileStamp, ...]:
        return tuple(file_stamp(path) for path in (self.files.cert, self.files.key, self.files.ca))

    def _load(self, generation: int) -> _Material:
        cert, key, ca = (path.read_bytes() for path in (self.files.cert, self.files.key, self.files.ca))
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        for context in (server, client):
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=ca.decode())
            self._load_chain(context, cert, key)
        metrics = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._load_chain(metrics, cert, key)
        return _Material(cert, key, ca, server, client, metrics, generation)

    @staticmethod
    def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
        """`load_cert_chain` reads only files: give it the bytes already read and checked (not the paths,
        which a rotation may change in between), through a temporary file only this user can read."""
        with tempfile.NamedTemporaryFile(prefix="raftka-tls-") as chain:
            chain.write(cert + b"\n" + key)
            chain.flush()
            context.load_cert_chain(chain.name)


class PeerChannels:
    """gRPC channels from this broker to the others: TLS with this broker's certificate as the client
    certificate when TLS is on, else plaintext. `cached` keeps one channel per address for the calls
    a broker forwards; a channel made before a rotation keeps the old certificate, which a rotation
    leaves valid for a while (cert-manager renews at two thirds of the lifetime)."""

    def __init__(self, tls: BrokerTls | None) -> None:
        self._tls = tls
        self._cached: dict[str, grpc.aio.Channel] = {}

    def open(self, address: str) -> grpc.aio.Channel:
        """A new channel (the caller closes it)."""
        return open_aio_channel(address, None) if self._tls is None else self._tls.channel(address)

    def cached(self, address: str) -> grpc.aio.Channel:
        channel = self._cached.get(address)
        if channel is None:
            channel = self._cached[address] = self.open(address)
        return channel
