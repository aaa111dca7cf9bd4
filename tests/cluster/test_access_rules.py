"""The pure access rules, in process: ACL decisions, quota accounting, and ACLs and quotas as
metadata-log state (applied and snapshotted)."""

from __future__ import annotations

import json

import pytest

from raftka.cluster.access import REQUIRED
from raftka.cluster.authorizer import Acl, Authorizer
from raftka.cluster.metadata import MetadataState, acls_command, remove_quota_command, set_quota_command
from raftka.cluster.quotas import BURST_S, PRODUCE, Quota, QuotaManager
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
    quotas = QuotaManager(lambda p: Quota(p, produce_bytes_per_s=1000) if p == "User:a" else None,
                          clock=lambda: now[0])
    sent = 0
    while now[0] < 100:
        now[0] += quotas.hold_s("User:a")
        quotas.charge("User:a", PRODUCE, 300)
        sent += 300
    assert 1000 * 100 <= sent <= 1000 * (100 + BURST_S) + 300
    assert quotas.charge("User:b", PRODUCE, 10**9) == 0


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
    assert restored.quota_of("User:a") == Quota("User:a", produce_bytes_per_s=7)
    assert restored.quota_of("User:b") == Quota("*", fetch_bytes_per_s=5)
    restored.apply(4, remove_quota_command("*"))
    assert restored.quota_of("User:b") is None
    with pytest.raises(Exception, match="ACL"):
        restored.apply(5, json.dumps({"op": "create_acls", "acls": [["User:a", "disk", "t", "literal", "read",
                                                                      "allow"]]}).encode())
    assert restored.acls()[1] == (acl,)
