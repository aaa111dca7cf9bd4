"""TLS on every port of real brokers: the client gRPC port (client certificates required), the Raft
transport (mutual TLS, the certificate's broker id checked against the one claimed), metrics, and
certificate rotation by replacing the files."""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import grpc
import pytest
from cryptography import x509

from raftka import Admin, Consumer, Producer, TopicPartition
from raftka.client.certs import Issued, LocalPki, issue, issue_broker, local_pki, make_ca
from raftka.client.local import LocalBroker, free_port
from raftka.client.admin import AclEntry
from raftka.errors import AuthorizationFailedError, BrokerUnavailableError
from raftka.proto import api_pb2, api_pb2_grpc, raft_pb2
from raftka.replication.codec import encode_message_batch
from raftka.replication.transport import ENDPOINT_METHOD, FRAME_HEADER
from raftka.wire.tls import ANY_BROKER, ClientTls, open_channel
from waiting import wait_until

CLUSTER_ID = "raftka-local"


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    return local_pki(tmp_path / "pki", 3)


def client_tls(pki: LocalPki) -> dict[str, Path]:
    cert, key = pki.client
    return {"tls_ca": pki.ca, "tls_cert": cert, "tls_key": key}


def metadata_call(address: str, tls: ClientTls | None) -> grpc.StatusCode:
    """The status of a Metadata call over a fresh channel (OK when it answers)."""
    with open_channel(address, tls) as channel:
        try:
            api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def served_serial(host: str, port: int, pki: LocalPki, *, alpn: bool = True) -> int:
    """The serial number of the certificate a TLS port serves now (a new connection, our client cert)."""
    context = ssl.create_default_context(cafile=pki.ca)
    context.check_hostname = False
    context.load_cert_chain(*pki.client)
    if alpn:
        context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def raft_address(broker: LocalBroker) -> tuple[str, int]:
    """Where the broker's Raft listener is (its Endpoint, asked over TLS as broker 2 would)."""
    assert broker.tls is not None
    with open_channel(broker.address, broker.tls) as channel:
        endpoint = channel.unary_unary(ENDPOINT_METHOD, request_serializer=raft_pb2.EndpointRequest.SerializeToString,
                                       response_deserializer=raft_pb2.EndpointResponse.FromString)
        address = endpoint(raft_pb2.EndpointRequest(cluster_id=CLUSTER_ID, from_broker=2, to_broker=broker.broker_id),
                           timeout=5).address
    host, port = address.rsplit(":", 1)
    return host, int(port)


def raft_hello(host: str, port: int, ca: Path, cert: Issued, claimed: int, to_broker: int,
               tmp_path: Path) -> raft_pb2.Ack | None:
    """Open a Raft connection with `cert`, claiming to be broker `claimed`: the receiver's first answer
    (None when it ended the connection without one, as after a failed handshake)."""
    cert_path, key_path = cert.write(tmp_path, f"hello-{claimed}-{cert.serial}")
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    context.load_cert_chain(cert_path, key_path)
    payload = encode_message_batch(CLUSTER_ID, claimed, to_broker, ()).SerializeToString()
    try:
        with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(FRAME_HEADER.pack(len(payload)) + payload)
            header = tls.recv(FRAME_HEADER.size)
            if len(header) < FRAME_HEADER.size:
                return None
            (size,) = FRAME_HEADER.unpack(header)
            body = b""
            while len(body) < size:
                chunk = tls.recv(size - len(body))
                if not chunk:
                    return None
                body += chunk
            return raft_pb2.Ack.FromString(body)
    except (ssl.SSLError, ConnectionError):
        return None


def test_a_three_broker_tls_cluster_replicates_and_serves_clients_with_a_ca(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki) -> None:
    brokers = start_cluster(3, pki=pki)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap, **client_tls(pki)) as admin:
        admin.create_topic("secure", partitions=3, replication_factor=3)
    with Producer(bootstrap, **client_tls(pki)) as producer:
        futures = [producer.send("secure", f"v{i}".encode(), key=str(i).encode()) for i in range(300)]
        offsets = {(f.result().partition, f.result().offset) for f in futures}
    assert len(offsets) == 300
    consumer = Consumer(bootstrap, auto_offset_reset="earliest", **client_tls(pki))
    consumer.assign([TopicPartition("secure", p) for p in range(3)])
    values: set[bytes | None] = set()

    def consumed_all() -> bool:
        values.update(r.value for r in consumer.poll(timeout_ms=200))
        return len(values) == 300
    wait_until(consumed_all, "every record was consumed over TLS")
    consumer.close()
    with Admin(bootstrap, **client_tls(pki)) as admin:
        wait_until(lambda: all(len(p.in_sync_replicas) == 3 for p in admin.describe_topic("secure").partitions),
                   "every replica of every partition is in sync (the Raft transport replicates over TLS)")


def test_plaintext_and_foreign_or_expired_client_certificates_are_refused(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki, tmp_path: Path) -> None:
    broker = start_cluster(1, pki=pki)[0]
    with pytest.raises(BrokerUnavailableError), Admin(broker.address, request_timeout_ms=3000) as admin:
        admin.list_topics()
    assert metadata_call(broker.address, None) == grpc.StatusCode.UNAVAILABLE
    stranger = issue(make_ca("another CA"), "stranger").write(tmp_path, "stranger")
    assert metadata_call(broker.address, ClientTls(pki.ca, *stranger)) == grpc.StatusCode.UNAVAILABLE
    now = datetime.datetime.now(datetime.UTC)
    expired = issue(pki.authority(), "expired", not_before=now - datetime.timedelta(days=2),
                    not_after=now - datetime.timedelta(days=1)).write(tmp_path, "expired")
    assert metadata_call(broker.address, ClientTls(pki.ca, *expired)) == grpc.StatusCode.UNAVAILABLE
    assert metadata_call(broker.address, ClientTls(pki.ca)) == grpc.StatusCode.UNAVAILABLE, "no client certificate"
    assert metadata_call(broker.address, broker.tls) == grpc.StatusCode.OK, "the broker keeps serving"
    log = broker.log()
    assert "WRONG_VERSION_NUMBER" in log, "the plaintext client's refusal is logged"
    assert "CERTIFICATE_VERIFY_FAILED" in log, "the stranger's and the expired certificate's refusals are logged"
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log


def test_the_raft_port_refuses_a_strangers_certificate_and_a_broker_claiming_another_id(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki, tmp_path: Path) -> None:
    broker = start_cluster(1, pki=pki)[0]
    host, port = raft_address(broker)
    stranger_ca = make_ca("another CA")
    assert raft_hello(host, port, pki.ca, issue_broker(stranger_ca, 2), 2, 1, tmp_path) is None
    ack = raft_hello(host, port, pki.ca, issue_broker(pki.authority(), 2), 3, 1, tmp_path)
    assert ack is not None and ack.refusal == "CERTIFICATE_MISMATCH", ack
    assert "broker 3 comes with the certificate of broker 2" in ack.detail
    client = Issued(*(path.read_bytes() for path in pki.client))
    ack = raft_hello(host, port, pki.ca, client, 2, 1, tmp_path)
    assert ack is not None and ack.refusal == "CERTIFICATE_MISMATCH", "a client's certificate names no broker"
    ack = raft_hello(host, port, pki.ca, issue_broker(pki.authority(), 2), 2, 1, tmp_path)
    assert ack is not None and not ack.refusal, "a broker's own certificate is accepted"
    wait_until(lambda: broker.metric_total('raftka_raft_refusals{by="this_broker"}') >= 3, "the refusals are counted")
    log = broker.log()
    assert re.search(r"raft transport: refused connection from .*: TLS: SSL\w*Error", log), log[-3000:]
    assert re.search(r"refused connection from .*: CERTIFICATE_MISMATCH: batch from broker 3 comes with the "
                     r"certificate of broker 2", log)
    assert metadata_call(broker.address, broker.tls) == grpc.StatusCode.OK, "the broker keeps serving"


def replace_files(cert: Issued, cert_path: Path, key_path: Path) -> None:
    """Rotate as a Kubernetes Secret volume does: new files renamed into place."""
    for data, path in ((cert.cert, cert_path), (cert.key, key_path)):
        temporary = path.with_suffix(".new")
        temporary.write_bytes(data)
        os.replace(temporary, path)


def test_rotating_the_files_keeps_existing_clients_and_serves_the_new_certificate_to_new_connections(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki) -> None:
    broker = start_cluster(1, "--metrics-tls", pki=pki)[0]
    metrics_port = broker.metrics_port
    assert metrics_port is not None
    host, port = broker.address.rsplit(":", 1)
    raft_host, raft_port = raft_address(broker)
    cert_path, key_path = pki.broker(1)
    old = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
    assert served_serial(host, int(port), pki) == old
    assert served_serial(raft_host, raft_port, pki, alpn=False) == old
    assert served_serial("127.0.0.1", metrics_port, pki, alpn=False) == old
    admin = Admin(broker.address, **client_tls(pki))
    admin.create_topic("before", partitions=1)

    new = issue_broker(pki.authority(), 1)
    replace_files(new, cert_path, key_path)
    wait_until(lambda: served_serial(host, int(port), pki) == new.serial, "the gRPC port serves the new certificate")
    wait_until(lambda: served_serial(raft_host, raft_port, pki, alpn=False) == new.serial,
               "the Raft port serves the new certificate")
    wait_until(lambda: served_serial("127.0.0.1", metrics_port, pki, alpn=False) == new.serial,
               "the metrics port serves the new certificate")
    admin.create_topic("after", partitions=1)
    assert {"before", "after"} <= {t.name for t in admin.list_topics()}, "the existing client kept working"
    admin.close()
    with Admin(broker.address, **client_tls(pki)) as fresh:
        assert "after" in {t.name for t in fresh.list_topics()}
    context = ssl.create_default_context(cafile=pki.ca)
    body = urllib.request.urlopen(f"https://127.0.0.1:{metrics_port}/metrics", context=context,
                                  timeout=5).read().decode()
    assert "raftka_" in body
    assert f"tls reloaded cert={cert_path}" in broker.log()


def test_a_broker_without_tls_warns_when_it_listens_beyond_loopback(
        start_cluster: Callable[..., list[LocalBroker]], tmp_path: Path) -> None:
    port = free_port()
    exposed = LocalBroker(1, f"127.0.0.1:{port}", tmp_path / "exposed",
                          extra_args=("--listen", f"0.0.0.0:{port}", "--advertise", f"127.0.0.1:{port}"))
    try:
        exposed.start()
        assert f"listening without TLS on a non-loopback address listen=0.0.0.0:{port}" in exposed.log()
    finally:
        assert exposed.stop() == 0
    quiet = start_cluster(1)[0]
    assert "listening without TLS" not in quiet.log()


def test_raftka_local_tls_prints_a_command_that_works(tmp_path: Path) -> None:
    base_port = free_port()
    local = subprocess.Popen([sys.executable, "-m", "raftka", "local", "--tls", "--brokers", "1",
                              "--data-dir", str(tmp_path / "local"), "--base-port", str(base_port)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert local.stdout is not None
        lines = []
        for line in local.stdout:
            lines.append(line)
            if line.startswith("try: "):
                break
        command = lines[-1].removeprefix("try: ").strip()
        assert "RAFTKA_TLS_CA=" in command, lines
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env = {k: v for k, v in env.items() if not k.startswith("RAFTKA_")}
        done = subprocess.run(["bash", "-c", f"{command} && raftka topic describe demo"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "demo" in done.stdout
        plaintext = subprocess.run([sys.executable, "-m", "raftka", "--bootstrap", f"127.0.0.1:{base_port}",
                                    "--request-timeout-ms", "3000", "topic", "list"],
                                   env=env, capture_output=True, text=True, timeout=60)
        assert plaintext.returncode != 0 and "BrokerUnavailableError" in plaintext.stderr
    finally:
        os.killpg(local.pid, signal.SIGINT)
        local.wait(timeout=30)


def test_client_certificates_name_the_principal_the_acls_check_and_brokers_need_no_token(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki) -> None:
    """With mutual TLS, a call's principal is its certificate's (`User:<CN>`); brokers' certificates
    (`Broker:<id>`) are super-users, so a three-broker cluster with ACLs on forms and forwards calls
    without a broker token."""
    brokers = start_cluster(3, "--authorizer", "acl", "--super-users", "User:client", pki=pki)
    bootstrap = ",".join(b.address for b in brokers)
    issue(pki.authority(), "alice").write(pki.directory, "alice")
    alice = {"tls_ca": pki.ca, "tls_cert": pki.directory / "alice.pem", "tls_key": pki.directory / "alice-key.pem"}
    with Admin(bootstrap, **client_tls(pki)) as admin:
        admin.create_topic("guarded", partitions=3, replication_factor=3)
    with Admin(bootstrap, **alice) as admin:
        assert "guarded" not in [t.name for t in admin.list_topics()]
        with pytest.raises(AuthorizationFailedError, match="User:alice"):
            admin.delete_topic("guarded")
    with Admin(bootstrap, **client_tls(pki)) as admin:
        admin.add_acls([AclEntry("User:alice", "topic", "guarded", "write")])
    with Producer(bootstrap, **alice) as producer:
        assert producer.send("guarded", b"from alice", partition=1).result(timeout=30).offset == 0
    with Admin(bootstrap, **alice) as admin:
        assert "guarded" in [t.name for t in admin.list_topics()]


def test_brokers_sharing_one_certificate_for_any_broker_form_a_cluster(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki) -> None:
    """One certificate naming `raftka://broker/*` (a Kubernetes Secret every pod mounts) is accepted on
    the Raft port for whichever broker id its holder claims."""
    shared = issue(pki.authority(), "raftka-brokers", hosts=["127.0.0.1", "localhost"], broker_id=ANY_BROKER)
    for broker_id in (1, 2, 3):
        cert, key = pki.broker(broker_id)
        replace_files(shared, cert, key)
    brokers = start_cluster(3, pki=pki)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap, **client_tls(pki)) as admin:
        admin.create_topic("shared", partitions=2, replication_factor=3)
        wait_until(lambda: all(len(p.in_sync_replicas) == 3 for p in admin.describe_topic("shared").partitions),
                   "every replica in sync over the shared certificate")


def test_the_https_probes_answer_a_kubelet_while_the_grpc_port_requires_client_certificates(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki) -> None:
    """What the chart's httpGet probes (scheme HTTPS) see: the kubelet neither verifies the broker's
    certificate nor presents one, which the gRPC port would refuse, and which /healthz serves."""
    broker = start_cluster(1, "--metrics-tls", pki=pki)[0]
    kubelet = ssl.create_default_context()
    kubelet.check_hostname = False
    kubelet.verify_mode = ssl.CERT_NONE
    for path in ("/healthz/ready", "/healthz/live"):
        with urllib.request.urlopen(f"https://127.0.0.1:{broker.metrics_port}{path}", context=kubelet,
                                    timeout=5) as response:
            assert (response.status, response.read()) == (200, b"SERVING\n")
    without_certificate = ClientTls(ca=pki.ca, server_name="localhost")
    assert metadata_call(broker.address, without_certificate) == grpc.StatusCode.UNAVAILABLE, \
        "the gRPC port refuses what the probes send"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/healthz/ready", timeout=5)
