"""Broker settings: the peers list (with racks) and the checks that refuse a broken configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raftka.cluster.config import BrokerConfig, parse_peers
from raftka.wire.settings import parse_host_port


def test_peers_with_and_without_racks() -> None:
    peers, racks = parse_peers("1=10.0.0.1:9092@a, 2=10.0.0.2:9092@b,3=[::1]:9092")
    assert peers == {1: "10.0.0.1:9092", 2: "10.0.0.2:9092", 3: "[::1]:9092"}
    assert racks == {1: "a", 2: "b"}
    assert parse_peers("") == ({}, {})
    assert parse_host_port("[::1]:9092") == ("::1", 9092)


@pytest.mark.parametrize("text, fragment", [
    ("1:10.0.0.1:9092", "expected ID=HOST:PORT"),
    ("x=10.0.0.1:9092", "expected ID=HOST:PORT"),
    ("1=10.0.0.1", "expected HOST:PORT"),
    ("1=10.0.0.1:99999", "expected HOST:PORT"),
])
def test_bad_peers_are_refused_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_peers(text)


def test_broker_config_checks() -> None:
    base: dict[str, Any] = dict(listen="127.0.0.1:9092", data_dir=Path("/tmp/x"))
    with pytest.raises(ValueError, match="broker id must be >= 1"):
        BrokerConfig(broker_id=0, **base).validate()
    unnamed = BrokerConfig(broker_id=4, peers={1: "h:1", 2: "h:2"}, **base)
    unnamed.validate()
    assert (unnamed.founders, unnamed.seeds) == ({}, ("h:1", "h:2")), "a broker --peers does not name joins"
    named = BrokerConfig(broker_id=2, peers={1: "h:1", 2: "h:2"}, **base)
    assert (named.founders, named.seeds) == ({1: "h:1", 2: "h:2"}, ())
    with pytest.raises(ValueError, match="wildcard"):
        BrokerConfig(broker_id=1, listen="0.0.0.0:9092", data_dir=Path("/tmp/x")).validate()
    config = BrokerConfig(broker_id=1, **base)
    config.validate()
    assert config.founders == {1: "127.0.0.1:9092"}
    assert BrokerConfig(broker_id=4, join=("h:1",), **base).founders == {}
    with pytest.raises(ValueError, match="not both"):
        BrokerConfig(broker_id=1, peers={1: "h:1"}, join=("h:2",), **base).validate()
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        BrokerConfig(broker_id=4, join=("nowhere",), **base).validate()
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        BrokerConfig(broker_id=1, raft_listen="nowhere", **base).validate()
    with pytest.raises(ValueError, match="--tls-cert, --tls-key and --tls-ca together"):
        BrokerConfig(broker_id=1, tls_cert=Path("c.pem"), tls_key=Path("k.pem"), **base).validate()
    with pytest.raises(ValueError, match="--metrics-tls needs"):
        BrokerConfig(broker_id=1, metrics_tls=True, **base).validate()
    tls: dict[str, Any] = dict(tls_cert=Path("c.pem"), tls_key=Path("k.pem"), tls_ca=Path("ca.pem"))
    with pytest.raises(ValueError, match="required or none"):
        BrokerConfig(broker_id=1, tls_client_auth="optional", **tls, **base).validate()
    BrokerConfig(broker_id=1, tls_client_auth="none", metrics_tls=True, **tls, **base).validate()


@pytest.mark.parametrize("listen, advertise, raft_listen, bind", [
    ("127.0.0.1:9092", "", "", ("127.0.0.1", 0, "127.0.0.1")),
    ("0.0.0.0:9092", "broker-1.raftka:9092", "", ("0.0.0.0", 0, "broker-1.raftka")),
    ("0.0.0.0:9092", "broker-1.raftka:9092", "0.0.0.0:9093", ("0.0.0.0", 9093, "broker-1.raftka")),
    ("10.0.0.1:9092", "", "10.0.1.1:7000", ("10.0.1.1", 7000, "10.0.1.1")),
])
def test_raft_listener_defaults_to_the_listen_host_and_is_advertised_by_name(
        listen: str, advertise: str, raft_listen: str, bind: tuple[str, int, str]) -> None:
    config = BrokerConfig(broker_id=1, listen=listen, advertise=advertise, raft_listen=raft_listen,
                          data_dir=Path("/tmp/x"))
    config.validate()
    assert config.raft_bind == bind


def test_metrics_listen_on_the_client_listeners_host_unless_told_otherwise() -> None:
    assert BrokerConfig(broker_id=1, data_dir=Path("d"), listen="0.0.0.0:9092").metrics_bind_host == "0.0.0.0"
    assert BrokerConfig(broker_id=1, data_dir=Path("d"), listen="127.0.0.1:9092").metrics_bind_host == "127.0.0.1"
    assert BrokerConfig(broker_id=1, data_dir=Path("d"), listen="[::]:9092").metrics_bind_host == "::"
    assert BrokerConfig(broker_id=1, data_dir=Path("d"), listen="0.0.0.0:9092",
                        metrics_host="127.0.0.1").metrics_bind_host == "127.0.0.1"
