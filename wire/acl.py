"""ACLs as both sides of the wire name them: the words the CLI, the client API and the metadata log
use (`topic`, `prefixed`, `cluster-admin`, `deny`, ...) and their protobuf enums, in one table read
both ways. The rules (what an ACL allows) belong to the broker's authorizer."""

from __future__ import annotations

from typing import Mapping, TypeVar

from raftka.proto import api_pb2

TOPIC, GROUP, CLUSTER = "topic", "group", "cluster"
RESOURCES = (TOPIC, GROUP, CLUSTER)
LITERAL, PREFIXED = "literal", "prefixed"
ALLOW, DENY = "allow", "deny"
READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, CLUSTER_ADMIN, ALL = (
    "read", "write", "create", "delete", "alter", "describe", "cluster-admin", "all")
OPERATIONS = (READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, CLUSTER_ADMIN, ALL)

_Enum = TypeVar("_Enum", bound=int)

_RESOURCE = {TOPIC: api_pb2.RESOURCE_TYPE_TOPIC, GROUP: api_pb2.RESOURCE_TYPE_GROUP,
             CLUSTER: api_pb2.RESOURCE_TYPE_CLUSTER}
_PATTERN = {LITERAL: api_pb2.PATTERN_TYPE_LITERAL, PREFIXED: api_pb2.PATTERN_TYPE_PREFIXED}
_OPERATION = {READ: api_pb2.ACL_OPERATION_READ, WRITE: api_pb2.ACL_OPERATION_WRITE,
              CREATE: api_pb2.ACL_OPERATION_CREATE, DELETE: api_pb2.ACL_OPERATION_DELETE,
              ALTER: api_pb2.ACL_OPERATION_ALTER, DESCRIBE: api_pb2.ACL_OPERATION_DESCRIBE,
              CLUSTER_ADMIN: api_pb2.ACL_OPERATION_CLUSTER_ADMIN, ALL: api_pb2.ACL_OPERATION_ALL}
_PERMISSION = {ALLOW: api_pb2.ACL_PERMISSION_ALLOW, DENY: api_pb2.ACL_PERMISSION_DENY}


def _number(table: Mapping[str, _Enum], word: str, what: str) -> _Enum:
    if word not in table:
        raise ValueError(f"ACL {what} {word!r} is not one of {', '.join(table)}")
    return table[word]


def _word(table: Mapping[str, int], number: int, what: str) -> str:
    for word, value in table.items():
        if value == number:
            return word
    raise ValueError(f"ACL has no {what} (one of {', '.join(table)})")


def to_binding(principal: str, resource: str, name: str, pattern: str, operation: str,
               permission: str) -> api_pb2.AclBinding:
    """The protobuf of an ACL given in words; ValueError names a word that is not in the vocabulary."""
    return api_pb2.AclBinding(principal=principal, name=name,
                              resource_type=_number(_RESOURCE, resource, "resource type"),
                              pattern_type=_number(_PATTERN, pattern, "pattern type"),
                              operation=_number(_OPERATION, operation, "operation"),
                              permission=_number(_PERMISSION, permission, "permission"))


def from_binding(binding: api_pb2.AclBinding) -> tuple[str, str, str, str, str, str]:
    """(principal, resource, name, pattern, operation, permission) in words; ValueError names an unset
    or unknown enum."""
    return (binding.principal, _word(_RESOURCE, binding.resource_type, "resource type"), binding.name,
            _word(_PATTERN, binding.pattern_type, "pattern type"), _word(_OPERATION, binding.operation, "operation"),
            _word(_PERMISSION, binding.permission, "permission"))
