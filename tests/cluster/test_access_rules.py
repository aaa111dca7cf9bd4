"""The pure access rules, in process: ACL decisions, quota accounting, and ACLs and quotas as
metadata-log state (applied and snapshotted)."""

from __future__ import annotations

import json

import pytest

from raftka.cluster.access import REQUIRED
from raftka.cluster.authorizer import Acl, Authorizer
from raftka.cluster.metadata import MetadataState, acls_command, remove_quota_command, set_quota_command
from raftka.cluster.quotas import (BURST_S, ENTITY_KINDS, FETCH, PRODUCE, REQUESTS, Caller, Quota, QuotaManager,
                                   entities_of, resolve)
from raftka.errors import InvalidRequestError
from raftka.proto import api_pb2


def authorizer(*acls: Acl, super_users: tuple[str, ...] = ()) -> Authorizer:
    return Authorizer(lambda: (1, acls), super_users=super_users, enabled=True)


OPERATIONS = ("read", "write", "create", "delete", "alter", "describe", "cluster-admin")


def test_matrix_of_principals_and_operations() -> None:
    rules = authorizer(
        Acl("User:alice", "topic", "orders-", "prefixed", "all", "allow"),
        Acl("User:alice", "topic", "orders-secret", "literal", "read", "deny"),
        Acl("User:bob", "topic", "orders-eu", "literal", "read", "allow"),
        Acl("*", "topic", "public", "literal", "read", "allow"),
        Acl("User:eve", "topic", "*", "literal", "all", "deny"),
        Acl("User:carol", "cluster", "", "literal", "alter", "allow"),
        super_users=("User:admin",))
    allowed = {(who, op, name) for who in ("User:alice", "User:bob", "User:eve", "User:admin", "User:zed")
               for op in OPERATIONS for name in ("orders-eu", "orders-secret", "public", "other")
               if rules.allowed(who, "topic", name, op)}
    alice = {("User:alice", op, n) for op in OPERATIONS for n in ("orders-eu", "orders-secret")} - {
        ("User:alice", "read", "orders-secret")} | {("User:alice", "read", "public"),
                                                    ("User:alice", "describe", "public")}
    bob = {("User:bob", "read", "orders-eu"), ("User:bob", "describe", "orders-eu"), ("User:bob", "read", "public"),
           ("User:bob", "describe", "public")}
    admin = {("User:admin", op, n) for op in OPERATIONS for n in ("orders-eu", "orders-secret", "public", "other")}
    zed = {("User:zed", "read", "public"), ("User:zed", "describe", "public")}
    assert allowed == alice | bob | admin | zed
    assert rules.allowed("User:carol", "cluster", "", "alter")
    assert rules.allowed("User:carol", "cluster", "", "describe")
    assert not rules.allowed("User:carol", "cluster", "", "cluster-admin")
    assert not rules.allowed("User:alice", "group", "orders-eu", "read")


def test_literal_is_not_a_prefix_and_describe_is_not_implied_by_a_deny() -> None:
    rules = authorizer(Acl("User:a", "topic", "logs", "literal", "write", "allow"),
                       Acl("User:a", "group", "g", "literal", "read", "deny"))
    assert rules.allowed("User:a", "topic", "logs", "write")
    assert not rules.allowed("User:a", "topic", "logs-2", "write")
    assert rules.allowed("User:a", "topic", "logs", "describe")
    assert not rules.allowed("User:a", "group", "g", "describe")


def test_off_allows_everything_and_decisions_follow_acl_changes() -> None:
    assert Authorizer(lambda: (0, ()), enabled=False).allowed("User:x", "cluster", "", "cluster-admin")
    acls: list[Acl] = []
    rules = Authorizer(lambda: (len(acls), tuple(acls)), enabled=True)
    assert not rules.allowed("User:x", "topic", "t", "read")
    acls.append(Acl("User:x", "topic", "t", "literal", "read", "allow"))
    assert rules.allowed("User:x", "topic", "t", "read")
    assert rules.allowed_on_some("User:x", "topic", "read")
    acls.append(Acl("User:x", "topic", "*", "literal", "read", "deny"))
    assert not rules.allowed("User:x", "topic", "t", "read")
    assert not rules.allowed_on_some("User:x", "topic", "read")


@pytest.mark.parametrize("binding", [
    api_pb2.AclBinding(),
    api_pb2.AclBinding(principal="User:a", resource_type=api_pb2.RESOURCE_TYPE_TOPIC, name="t",
                       pattern_type=api_pb2.PATTERN_TYPE_LITERAL, operation=api_pb2.ACL_OPERATION_READ),
    api_pb2.AclBinding(principal="a", resource_type=api_pb2.RESOURCE_TYPE_TOPIC, name="t",
                       pattern_type=api_pb2.PATTERN_TYPE_LITERAL, operation=api_pb2.ACL_OPERATION_READ,
                       permission=api_pb2.ACL_PERMISSION_ALLOW),
])
def test_malformed_bindings_are_invalid(binding: api_pb2.AclBinding) -> None:
    with pytest.raises(InvalidRequestError):
        Acl.from_proto(binding)


def test_every_public_rpc_has_a_rule() -> None:
    methods = {f"{name}.{m.name}" for name in ("Broker", "Admin", "Groups")
               for m in api_pb2.DESCRIPTOR.services_by_name[name].methods}
    assert methods == set(REQUIRED)


def test_a_busy_principal_gets_its_rate_plus_one_burst() -> None:
    now = [0.0]
    a = Caller("User:a")
    quotas = QuotaManager(lambda who, kind: Quota(who.principal, produce_bytes_per_s=1000) if who == a else None,
                          clock=lambda: now[0])
    sent = 0
    while now[0] < 100:
        now[0] += quotas.hold_s(a)
        quotas.charge(a, PRODUCE, 300)
        sent += 300
    assert 1000 * 100 <= sent <= 1000 * (100 + BURST_S) + 300
    assert quotas.charge(Caller("User:b"), PRODUCE, 10**9) == 0


def test_entities_follow_kafkas_precedence() -> None:
    """KIP-55's order: /users/u/clients/c, /users/u/clients/<default>, /users/u, the same three for
    <default> users, /clients/c, /clients/<default>; a caller without a client id skips named clients."""
    assert entities_of(Caller("User:u", "c")) == (
        ("User:u", "c"), ("User:u", "*"), ("User:u", ""), ("*", "c"), ("*", "*"), ("*", ""), ("", "c"), ("", "*"))
    assert entities_of(Caller("User:u")) == (("User:u", "*"), ("User:u", ""), ("*", "*"), ("*", ""), ("", "*"))
    every = [Quota(p, produce_bytes_per_s=rate, client_id=c)
             for rate, (p, c) in enumerate(reversed(entities_of(Caller("User:u", "c"))), start=1)]
    assert [q.entity_kind for q in reversed(every)] == list(ENTITY_KINDS)
    quotas = {quota.entity: quota for quota in every}
    while quotas:
        chosen = resolve(quotas, Caller("User:u", "c"), PRODUCE)
        assert chosen is not None and chosen == max(quotas.values(), key=lambda q: q.produce_bytes_per_s)
        del quotas[chosen.entity]
    assert resolve(quotas, Caller("User:u", "c"), PRODUCE) is None


def test_each_kind_falls_to_the_most_specific_entity_limiting_it() -> None:
    quotas = {q.entity: q for q in (Quota("User:u", produce_bytes_per_s=1, client_id="c"),
                                    Quota("User:u", fetch_bytes_per_s=2),
                                    Quota("", requests_per_s=3, client_id="*"))}
    who = Caller("User:u", "c")
    assert resolve(quotas, who, PRODUCE) == Quota("User:u", produce_bytes_per_s=1, client_id="c")
    assert resolve(quotas, who, FETCH) == Quota("User:u", fetch_bytes_per_s=2)
    assert resolve(quotas, who, REQUESTS) == Quota("", requests_per_s=3, client_id="*")
    assert resolve(quotas, Caller("User:v", "d"), PRODUCE) is None


def test_usage_is_accounted_per_matched_entity() -> None:
    """Callers matched by one client id's quota share its budget, whatever their principals; a default
    gives each client id (or principal) it covers a budget of its own."""
    now = [0.0]
    quotas = {q.entity: q for q in (Quota("", produce_bytes_per_s=1000, client_id="shared"),
                                    Quota("", produce_bytes_per_s=1000, client_id="*"))}
    throttled: list[tuple[str, str]] = []
    manager = QuotaManager(lambda who, kind: resolve(quotas, who, kind), clock=lambda: now[0],
                           on_throttled=lambda kind, entity, seconds: throttled.append((kind, entity)))
    assert manager.charge(Caller("User:a", "shared"), PRODUCE, 2000) == pytest.approx(2.0)
    assert manager.charge(Caller("User:b", "shared"), PRODUCE, 1000) == pytest.approx(3.0)
    assert manager.hold_s(Caller("User:b", "shared")) == pytest.approx(3.0)
    assert manager.hold_s(Caller("User:b", "other")) == 0
    assert manager.charge(Caller("User:a", "other"), PRODUCE, 1000) == pytest.approx(1.0)
    assert manager.charge(Caller("User:b", "third"), PRODUCE, 1000) == pytest.approx(1.0)
    assert throttled == [(PRODUCE, "client")] * 2 + [(PRODUCE, "client-default")] * 2


@pytest.mark.parametrize("quota, error", [
    (Quota("", produce_bytes_per_s=1), "names a principal, a client id or both"),
    (Quota("", produce_bytes_per_s=1, client_id="a b"), "visible ASCII"),
    (Quota("User:a", produce_bytes_per_s=1, client_id="x" * 256), "at most 255"),
    (Quota("alice", produce_bytes_per_s=1, client_id="app"), "not 'User:<name>'"),
])
def test_malformed_quota_entities_are_invalid(quota: Quota, error: str) -> None:
    with pytest.raises(InvalidRequestError, match=error):
        quota.validate()


def test_acls_and_quotas_are_metadata_state_and_survive_a_snapshot() -> None:
    state = MetadataState()
    acl = Acl("User:a", "topic", "t", "literal", "read", "allow")
    state.apply(0, acls_command("create_acls", [acl, Acl("*", "group", "g", "prefixed", "all", "deny")]))
    state.apply(1, set_quota_command(Quota("*", fetch_bytes_per_s=5)))
    state.apply(2, set_quota_command(Quota("User:a", produce_bytes_per_s=7)))
    state.apply(3, acls_command("delete_acls", [Acl("*", "group", "g", "prefixed", "all", "deny")]))
    restored = MetadataState()
    restored.restore(state.snapshot())
    assert restored.acls()[1] == (acl,)
    assert restored.quota_for(Caller("User:a"), PRODUCE) == Quota("User:a", produce_bytes_per_s=7)
    assert restored.quota_for(Caller("User:b"), FETCH) == Quota("*", fetch_bytes_per_s=5)
    restored.apply(4, remove_quota_command("*"))
    assert restored.quota_for(Caller("User:b"), FETCH) is None
    with pytest.raises(Exception, match="ACL"):
        restored.apply(5, json.dumps({"op": "create_acls", "acls": [["User:a", "disk", "t", "literal", "read",
                                                                      "allow"]]}).encode())
    assert restored.acls()[1] == (acl,)


def test_quota_records_of_the_code_before_client_ids_are_principal_quotas() -> None:
    """Commands and snapshots written before client ids existed (no `client_id` keys) read as
    principal quotas; a client-id quota of the same principal is another entity."""
    state = MetadataState()
    state.apply(0, json.dumps({"op": "set_quota", "quota": {"principal": "User:a", "produce": 7, "fetch": 0,
                                                            "requests": 0}}).encode())
    state.apply(1, set_quota_command(Quota("User:a", produce_bytes_per_s=9, client_id="app")))
    assert state.quota_for(Caller("User:a", "other"), PRODUCE) == Quota("User:a", produce_bytes_per_s=7)
    assert state.quota_for(Caller("User:a", "app"), PRODUCE) == Quota("User:a", produce_bytes_per_s=9, client_id="app")
    old_snapshot = json.loads(state.snapshot())
    old_snapshot["quotas"] = [{"principal": "User:a", "produce": 7, "fetch": 0, "requests": 0}]
    restored = MetadataState()
    restored.restore(json.dumps(old_snapshot).encode())
    assert restored.quotas() == [Quota("User:a", produce_bytes_per_s=7)]
    state.apply(2, json.dumps({"op": "remove_quota", "principal": "User:a"}).encode())
    assert state.quotas() == [Quota("User:a", produce_bytes_per_s=9, client_id="app")]
