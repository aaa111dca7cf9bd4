"""Certificate principal mapping rules: the pure parser and matcher in process, then real brokers with
real certificates, whose ACLs check the principals the rules name (`--tls-principal-rule`)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from cryptography import x509

from raftka import Admin, Producer
from raftka.client.admin import AclEntry
from raftka.client.certs import LocalPki, issue, local_pki
from raftka.client.local import LocalBroker, free_port
from raftka.cluster import cli as broker_cli
from raftka.cluster.principal_rules import DEFAULT_RULES, parse_rules, principal_name
from raftka.errors import AuthenticationFailedError, AuthorizationFailedError

SERVICE_USER = "CN=kafka-server,OU=ServiceUsers,O=Org,C=US"


def name(rules: str, subject: str = "", common_name: str = "", **sans: list[str]) -> str | None:
    names = {"DN": [subject] if subject else [], "CN": [common_name] if common_name else [],
             **{kind.upper(): values for kind, values in sans.items()}}
    return principal_name(parse_rules(rules), names)


def test_kafka_rules_map_the_subject_dn_and_must_match_all_of_it() -> None:
    assert name(r"RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/", SERVICE_USER) == "kafka-server"
    assert name(r"RULE:^CN=(.*?),OU=(.*?),O=(.*?),C=(.*?)$/$1@$3/", SERVICE_USER) == "kafka-server@Org"
    assert name(r"RULE:^CN=(.*?),OU=(.*?),.*$/$2-$1/L", SERVICE_USER) == "serviceusers-kafka-server"
    assert name(r"RULE:^CN=(.*?),.*$/$1/U", SERVICE_USER) == "KAFKA-SERVER"
    assert name(r"RULE:CN=kafka-server/matched/", SERVICE_USER) is None, "the pattern must match the whole DN"
    assert name(r"RULE:.*/$0/", SERVICE_USER) == SERVICE_USER


def test_the_first_rule_that_applies_wins_and_an_empty_result_does_not_apply() -> None:
    dn_first = r"RULE:^CN=([^,]+),.*$/dn-$1/, SAN:URI:spiffe:\/\/[^\/]+\/sa\/(.+)/san-$1/, DEFAULT"
    san_first = r"SAN:URI:spiffe:\/\/[^\/]+\/sa\/(.+)/san-$1/, RULE:^CN=([^,]+),.*$/dn-$1/, DEFAULT"
    spiffe = ["https://elsewhere/sa/a", "spiffe://example.org/sa/b", "spiffe://example.org/sa/c"]
    assert name(dn_first, SERVICE_USER, "kafka-server", uri=spiffe) == "dn-kafka-server"
    assert name(san_first, SERVICE_USER, "kafka-server", uri=spiffe) == "san-b", "the first SAN that matches"
    assert name(san_first, "CN=solo", "solo") == "solo", "no SAN of the type, no DN match: DEFAULT"
    assert name(r"RULE:(.*)//, DEFAULT", SERVICE_USER, "kafka-server") == "kafka-server"
    assert name(r"RULE:^O=(.*)$/$1/", SERVICE_USER) is None, "no rule applies"
    assert name("DEFAULT", "O=Org") is None, "DEFAULT needs a CN"
    assert principal_name(DEFAULT_RULES, {"CN": ["alice"], "DN": ["CN=alice"]}) == "alice"


def test_each_san_type_is_its_own_source() -> None:
    assert name(r"SAN:DNS:(.+)\.svc\.cluster\.local/$1/", dns=["orders.prod.svc.cluster.local"]) == "orders.prod"
    assert name(r"SAN:EMAIL:(.+)@example\.org/$1/", email=["bob@example.org"]) == "bob"
    assert name(r"SAN:IP:10\.0\.(.+)/net-$1/", ip=["10.0.3.4"]) == "net-3.4"
    assert name(r"SAN:DNS:(.+)/$1/", email=["bob@example.org"]) is None


def test_kafkas_list_syntax_commas_inside_patterns_escapes_and_group_numbers() -> None:
    rules = parse_rules("RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,\n RULE:^CN=(.*?),OU=(.*?),.*$/$1@$2/L ,,DEFAULT,")
    assert [rule.text for rule in rules] == [r"RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
                                             r"RULE:^CN=(.*?),OU=(.*?),.*$/$1@$2/L", "DEFAULT"]
    assert parse_rules("") == () and parse_rules(" , \n") == ()
    assert name(r"RULE:^CN=a\/b,O=(.*)$/a\/b\$-$1/", "CN=a/b,O=x") == "a/b$-x", "escaped slash and dollar"
    assert name(r"RULE:^CN=(.*)$/$12/", "CN=x") == "x2", "Java: $12 with one group is $1 then '2'"
    many = "".join(f"({c})" for c in "abcdefghijkl")
    assert name(f"RULE:{many}/$12$10/", "abcdefghijkl") == "lj"


def test_the_flags_replace_the_environment_variable_which_holds_a_kafka_list(monkeypatch) -> None:
    parser = argparse.ArgumentParser()
    broker_cli.add_arguments(parser)
    monkeypatch.setenv("RAFTKA_TLS_PRINCIPAL_RULES", "RULE:^CN=([^,]+),O=Acme$/$1/L,\nDEFAULT")
    from_env = broker_cli.principal_rules(parser.parse_args([]))
    assert [rule.text for rule in from_env] == ["RULE:^CN=([^,]+),O=Acme$/$1/L", "DEFAULT"]
    flags = broker_cli.principal_rules(parser.parse_args(["--tls-principal-rule", "SAN:DNS:(.*)/$1/",
                                                          "--tls-principal-rule", "DEFAULT"]))
    assert [rule.text for rule in flags] == ["SAN:DNS:(.*)/$1/", "DEFAULT"]
    monkeypatch.delenv("RAFTKA_TLS_PRINCIPAL_RULES")
    assert broker_cli.principal_rules(parser.parse_args([])) == (), "none given: the broker applies DEFAULT_RULES"


@pytest.mark.parametrize("rules, reason", [
    ("RULE:^CN=(.*)$", "is not DEFAULT, RULE:pattern/replacement/[L|U] or SAN:"),
    ("RULE:^CN=(.*)$/$1/X", "is not DEFAULT"),
    ("RULE:^CN=(.*)$/$1/Lx", "is not DEFAULT"),
    ("default", "is not DEFAULT"),
    ("DEFAULT RULE:a/b/", "is not DEFAULT"),
    ("rule:a/b/", "is not DEFAULT"),
    ("SAN:XYZ:(.*)/$1/", "unknown SAN type 'XYZ', expected one of URI, DNS, EMAIL, IP"),
    ("SAN:DN:(.*)/$1/", "unknown SAN type 'DN'"),
    ("RULE:^CN=((.*)$/$1/", "bad pattern: missing ), unterminated subpattern"),
    ("RULE:^CN=(.*)$/$2/", "the replacement uses group $2 but the pattern has 1 group"),
    ("RULE:^CN=.*$/user-$name/", "'$' must be followed by a group number"),
])
def test_a_malformed_rule_is_refused_naming_it(rules: str, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_rules(f"DEFAULT, {rules}")
    message = str(refused.value)
    assert repr(rules) in message and reason in message, message


# Real brokers: the rules given to `raftka broker`, the certificates its clients present.

SPIFFE_RULE = r"SAN:URI:spiffe:\/\/example\.org\/ns\/[^\/]+\/sa\/([^\/]+)/$1/"
PAYMENTS_RULE = r"RULE:^CN=([^,]+),OU=Payments,O=Acme$/$1/L"
OPS_RULE = r"RULE:^CN=([^,]+),OU=Ops,O=Acme$/$1/U"


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    return local_pki(tmp_path / "pki", 1)


def client(pki: LocalPki, subject: str, *sans: x509.GeneralName) -> dict[str, Path]:
    """Client options presenting a certificate of the cluster CA with `subject` and `sans`."""
    label = f"client-{len(list(pki.directory.glob('client-*-key.pem')))}"
    cert, key = issue(pki.authority(), "", subject=subject, sans=sans).write(pki.directory, label)
    return {"tls_ca": pki.ca, "tls_cert": cert, "tls_key": key}


def as_broker(pki: LocalPki) -> dict[str, Path]:
    cert, key = pki.broker(1)
    return {"tls_ca": pki.ca, "tls_cert": cert, "tls_key": key}


def test_rules_name_the_principals_the_acls_check_and_brokers_stay_super_users(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki) -> None:
    """Rules in order, no DEFAULT: the SPIFFE SAN comes first, then the subject rules with L and U. A
    broker's certificate (CN=broker-1, which no rule maps) is still Broker:1, a super-user; a client
    certificate no rule maps is refused."""
    [broker] = start_cluster(1, "--authorizer", "acl", "--tls-principal-rule", SPIFFE_RULE,
                             "--tls-principal-rule", PAYMENTS_RULE, "--tls-principal-rule", OPS_RULE, pki=pki)
    alice = client(pki, "CN=Alice,OU=Payments,O=Acme")
    workload = client(pki, "CN=Alice,OU=Payments,O=Acme",
                      x509.UniformResourceIdentifier("spiffe://example.org/ns/shop/sa/checkout"))
    carol = client(pki, "CN=carol,OU=Ops,O=Acme")
    mallory = client(pki, "CN=mallory,OU=Sales,O=Acme")
    with Admin(broker.address, **as_broker(pki)) as admin:
        admin.create_topic("payments")
        admin.add_acls([AclEntry("User:alice", "topic", "payments", "write")])
    with Producer(broker.address, **alice) as producer:
        assert producer.send("payments", b"from alice", partition=0).result(timeout=30).offset == 0
    for options, principal in ((workload, "User:checkout"), (carol, "User:CAROL"), (alice, "User:alice")):
        with Admin(broker.address, **options) as admin, pytest.raises(AuthorizationFailedError) as denied:
            admin.delete_topic("payments")
        assert str(denied.value) == f"{principal} is not authorized to delete topic 'payments'"
    with Admin(broker.address, **mallory) as admin, pytest.raises(AuthenticationFailedError) as refused:
        admin.list_topics()
    assert "subject 'CN=mallory,OU=Sales,O=Acme') matches no principal mapping rule" in str(refused.value)
    assert "tls_principal_rules=" in broker.log() and PAYMENTS_RULE in broker.log()


def test_without_rules_the_same_certificate_is_its_cn_which_that_acl_does_not_allow(
        start_cluster: Callable[..., list[LocalBroker]], pki: LocalPki) -> None:
    """DEFAULT (no rule given) names `User:Alice` for the certificate the lowercasing rule above maps to
    `User:alice`, so the same ACL allows it nothing: the topic is hidden from it."""
    [broker] = start_cluster(1, "--authorizer", "acl", pki=pki)
    with Admin(broker.address, **as_broker(pki)) as admin:
        admin.create_topic("payments")
        admin.add_acls([AclEntry("User:alice", "topic", "payments", "write")])
    with Admin(broker.address, **client(pki, "CN=Alice,OU=Payments,O=Acme")) as admin:
        assert "payments" not in [topic.name for topic in admin.list_topics()], "User:Alice may not describe it"
        with pytest.raises(AuthorizationFailedError) as denied:
            admin.delete_topic("payments")
    assert str(denied.value) == "User:Alice is not authorized to delete topic 'payments'"


@pytest.mark.parametrize("flags, message", [
    (("--tls-principal-rule", "DEFAULT", "--tls-principal-rule", r"RULE:^CN=(.*)$/$1"),
     r"--tls-principal-rule: principal mapping rule 'RULE:^CN=(.*)$/$1' is not DEFAULT"),
    (("--tls-principal-rule", r"RULE:^CN=(.*$/$1/"), "principal mapping rule 'RULE:^CN=(.*$/$1/': bad pattern"),
    (("--tls-principal-rule", "SAN:SPIFFE:(.*)/$1/"), "unknown SAN type 'SPIFFE'"),
    (("--tls-principal-rule", "DEFAULT", "--tls-client-auth", "none"),
     "--tls-principal-rule maps verified client certificates: it needs"),
])
def test_a_malformed_rule_refuses_to_start_the_broker(tmp_path: Path, pki: LocalPki, flags: tuple[str, ...],
                                                      message: str) -> None:
    started = subprocess.run([sys.executable, "-m", "raftka", "broker", "--id", "1", "--data-dir", str(tmp_path / "d"),
                              "--listen", f"127.0.0.1:{free_port()}", *pki.broker_args(1), *flags],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 2, started.stderr
    assert message in started.stderr, started.stderr
