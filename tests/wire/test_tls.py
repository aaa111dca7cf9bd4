"""How a certificate names its broker, and the client's TLS settings."""

from __future__ import annotations

import pytest

from raftka.wire.tls import ANY_BROKER, ANY_BROKER_URI, ClientTls, broker_id_of, broker_uri, certifies


def test_a_broker_certificate_names_exactly_one_positive_broker_id() -> None:
    assert broker_id_of([broker_uri(7)]) == 7
    assert broker_id_of(["spiffe://x/y", broker_uri(3), broker_uri(3)]) == 3
    assert broker_id_of([]) is None
    assert broker_id_of([broker_uri(1), broker_uri(2)]) is None, "two ids name no one"
    assert broker_id_of(["raftka://broker/0", "raftka://broker/x", "raftka://broker/-1"]) is None


def test_a_certificate_all_brokers_share_vouches_for_any_of_them_and_a_broker_s_only_for_itself() -> None:
    assert broker_id_of([ANY_BROKER_URI]) == ANY_BROKER and broker_uri(ANY_BROKER) == ANY_BROKER_URI
    assert certifies(ANY_BROKER, 3) and certifies(3, 3)
    assert not certifies(2, 3) and not certifies(None, 3)


def test_client_tls_is_off_unless_asked_and_needs_key_and_cert_together(tmp_path) -> None:
    assert ClientTls.of() is None
    assert ClientTls.of(ca=tmp_path / "ca.pem") == ClientTls(ca=tmp_path / "ca.pem")
    assert ClientTls(server_name="broker-1").options([("a", 1)]) == [("a", 1),
                                                                    ("grpc.ssl_target_name_override", "broker-1")]
    with pytest.raises(ValueError, match="needs its key"):
        ClientTls.of(ca="ca.pem", cert="client.pem")
