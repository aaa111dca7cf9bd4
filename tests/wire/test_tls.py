"""How a certificate names its broker, and the client's TLS settings."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from raftka.cluster.tls import PeerChannels
from raftka.wire.tls import (ANY_BROKER, ANY_BROKER_URI, ClientTls, broker_id_of, broker_uri, certifies,
                             open_aio_channel, open_channel)


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


def test_every_channel_to_a_broker_looks_its_name_up_again_within_a_second(monkeypatch, tmp_path) -> None:
    """A rescheduled pod keeps its DNS name and changes its IP: no channel may keep the old address for
    gRPC's default 30 s (the chart's rolling-restart container test measures the stall this caused)."""
    opened: list[dict[str, Any]] = []

    def record(address: str, *credentials: object, options: Any = ()) -> None:
        opened.append(dict(options))

    for name in ("insecure_channel", "secure_channel"):
        monkeypatch.setattr(grpc, name, record)
        monkeypatch.setattr(grpc.aio, name, record)
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    tls = ClientTls(ca=ca)
    open_channel("broker-1:9092", None, [("grpc.max_reconnect_backoff_ms", 1000)])
    open_channel("broker-1:9092", tls)
    open_aio_channel("broker-1:9092", None)
    open_aio_channel("broker-1:9092", tls)
    PeerChannels(None).open("broker-1:9092")
    assert [options.get("grpc.dns_min_time_between_resolutions_ms") for options in opened] == [1000] * 5
    assert opened[0]["grpc.max_reconnect_backoff_ms"] == 1000, "the caller's options are kept"
