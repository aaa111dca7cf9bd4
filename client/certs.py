"""A local certificate authority and the certificates `raftka local --tls` and the tests use.

`local_pki` writes, into one directory: the CA (``ca.pem``, ``ca-key.pem``), one certificate per broker
(``broker-<id>.pem`` and ``-key.pem``, naming the broker id as the SAN URI of `raftka.wire.tls.broker_uri`,
plus ``localhost`` and ``127.0.0.1``), and a client certificate (``client.pem``, CN ``client``).
Keys are ECDSA P-256: quick to make and to handshake with. Nothing here is meant for production,
where a real CA (cert-manager, Vault, ...) issues the same shapes of certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftka.wire.tls import broker_uri

LOCAL_HOSTS = ("localhost", "127.0.0.1")
VALIDITY = datetime.timedelta(days=365)
CLIENT_NAME = "client"
"""Common name of `local_pki`'s client certificate, so its principal is ``User:client``."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert).serial_number

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write `<name>.pem` and `<name>-key.pem` (the key readable by its owner only)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_path.write_bytes(self.cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key)
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(common_name: str = "raftka local CA", *, valid_for: datetime.timedelta = VALIDITY) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue(ca: Issued, common_name: str, *, hosts: Sequence[str] = (), broker_id: int | None = None,
          not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
          subject: str = "", sans: Sequence[x509.GeneralName] = ()) -> Issued:
    """A certificate signed by `ca`, for servers and clients alike (brokers are both), naming `hosts`
    and, for a broker, its id (SAN URI). `not_before`/`not_after` default to now-5min and a year on.
    `subject` (RFC 4514, e.g. ``CN=alice,OU=Payments,O=Acme``) replaces ``CN=<common_name>``; `sans`
    are further SANs (a SPIFFE URI, an email address)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [*(_san(host) for host in hosts), *sans]
    if broker_id is not None:
        names.append(x509.UniformResourceIdentifier(broker_uri(broker_id)))
    name = x509.Name.from_rfc4514_string(subject) if subject else _name(common_name)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
               .not_valid_after(not_after or now + VALIDITY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue_broker(ca: Issued, broker_id: int, hosts: Sequence[str] = LOCAL_HOSTS) -> Issued:
    return issue(ca, f"broker-{broker_id}", hosts=hosts, broker_id=broker_id)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class LocalPki:
    """The files `local_pki` wrote."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def broker(self, broker_id: int) -> tuple[Path, Path]:
        """(certificate, key) of broker `broker_id`."""
        return self.directory / f"broker-{broker_id}.pem", self.directory / f"broker-{broker_id}-key.pem"

    @property
    def client(self) -> tuple[Path, Path]:
        """(certificate, key) of the client, whose principal is ``User:client``."""
        return self.directory / f"{CLIENT_NAME}.pem", self.directory / f"{CLIENT_NAME}-key.pem"

    def authority(self) -> Issued:
        """The CA certificate and key, to sign more certificates with."""
        return Issued(self.ca.read_bytes(), (self.directory / "ca-key.pem").read_bytes())

    def issue_client(self, common_name: str) -> tuple[Path, Path]:
        """(certificate, key) of another client, principal ``User:<common_name>``, signed by this CA."""
        return issue(self.authority(), common_name).write(self.directory, common_name)

    def broker_args(self, broker_id: int) -> tuple[str, ...]:
        """The `raftka broker` flags that turn TLS on with these files."""
        cert, key = self.broker(broker_id)
        return ("--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca))


def local_pki(directory: Path, brokers: int) -> LocalPki:
    """Make (or keep, when its CA is already there) a CA, certificates for brokers 1..`brokers` and a
    client in `directory`. A kept CA gets certificates for brokers it lacks, so `raftka local --tls`
    restarted with more brokers still has one CA."""
    pki = LocalPki(directory)
    if pki.ca.exists() and (directory / "ca-key.pem").exists():
        ca = pki.authority()
    else:
        ca = make_ca()
        ca.write(directory, "ca")
    for broker_id in range(1, brokers + 1):
        if not pki.broker(broker_id)[0].exists():
            issue_broker(ca, broker_id).write(directory, f"broker-{broker_id}")
    if not pki.client[0].exists():
        issue(ca, CLIENT_NAME).write(directory, CLIENT_NAME)
    return pki
