"""What a principal may do: ACL rules, pure (no I/O, no broker state), Kafka's semantics.

An `Acl` grants (ALLOW) or forbids (DENY) one principal (or `*`, every principal) one operation (or
`all`) on resources of one type (topic, group, cluster) whose name equals its name (`literal`; the
name `*` matches every name) or starts with it (`prefixed`). `Authorizer.allowed` decides:

- a super-user (`--super-users`, and the brokers' own principal) may do everything;
- otherwise a matching DENY wins over every ALLOW;
- otherwise a matching ALLOW allows; an ALLOW of read, write, delete or alter also allows describe;
- otherwise (no ACL matches) the operation is refused.

With the authorizer off (`enabled=False`) everything is allowed. Decisions are cached per
(principal, resource, name, operation) until the ACL set changes (its `version`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from raftka.errors import InvalidRequestError
from raftka.proto import api_pb2
from raftka.wire.acl import (ALL, ALLOW, ALTER, CLUSTER, DELETE, DENY, DESCRIBE, LITERAL, OPERATIONS, PREFIXED, READ,
                             RESOURCES, WRITE, from_binding, to_binding)

WILDCARD = "*"
_IMPLIES_DESCRIBE = frozenset({READ, WRITE, DELETE, ALTER})


@dataclass(frozen=True, order=True)
class Acl:
    principal: str
    resource: str
    name: str
    pattern: str
    operation: str
    permission: str

    def validate(self) -> Acl:
        """Raises InvalidRequestError naming what is wrong; returns self when it is a valid ACL."""
        if self.principal != WILDCARD and (":" not in self.principal or not self.principal.split(":", 1)[1]):
            raise InvalidRequestError(f"ACL principal {self.principal!r} is not 'User:<name>' or '*'")
        if self.resource not in RESOURCES:
            raise InvalidRequestError(f"ACL resource type {self.resource!r} is not one of {', '.join(RESOURCES)}")
        if self.pattern not in (LITERAL, PREFIXED):
            raise InvalidRequestError(f"ACL pattern {self.pattern!r} is not literal or prefixed")
        if self.operation not in OPERATIONS:
            raise InvalidRequestError(f"ACL operation {self.operation!r} is not one of {', '.join(OPERATIONS)}")
        if self.permission not in (ALLOW, DENY):
            raise InvalidRequestError(f"ACL permission {self.permission!r} is not allow or deny")
        if self.resource == CLUSTER and self.name:
            raise InvalidRequestError("a cluster ACL names no resource (give an empty name)")
        if self.resource != CLUSTER and not self.name:
            raise InvalidRequestError(f"a {self.resource} ACL needs a name ('*' for every {self.resource})")
        return self

    def matches(self, principal: str, resource: str, name: str, operation: str) -> bool:
        if self.resource != resource or self.principal not in (WILDCARD, principal):
            return False
        if self.operation not in (ALL, operation) and not (
                operation == DESCRIBE and self.permission == ALLOW and self.operation in _IMPLIES_DESCRIBE):
            return False
        if resource == CLUSTER:
            return True
        if self.pattern == PREFIXED:
            return name.startswith(self.name)
        return self.name in (WILDCARD, name)

    def to_json(self) -> list[str]:
        return [self.principal, self.resource, self.name, self.pattern, self.operation, self.permission]

    @classmethod
    def from_json(cls, raw: Any) -> Acl:
        if not isinstance(raw, list) or len(raw) != 6 or not all(isinstance(x, str) for x in raw):
            raise InvalidRequestError(f"ACL {raw!r} is not six strings")
        return cls(*raw).validate()

    def to_proto(self) -> api_pb2.AclBinding:
        return to_binding(self.principal, self.resource, self.name, self.pattern, self.operation, self.permission)

    @classmethod
    def from_proto(cls, binding: api_pb2.AclBinding) -> Acl:
        """Raises InvalidRequestError for a binding with an unset or unknown field."""
        try:
            return cls(*from_binding(binding)).validate()
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None


class Authorizer:
    def __init__(self, acls: Callable[[], tuple[int, Iterable[Acl]]], *, super_users: Iterable[str] = (),
                 super_prefix: str | None = None, enabled: bool = False) -> None:
        """`acls` returns the current (version, ACLs); the version changes whenever the ACLs do.
        Principals starting with `super_prefix` are super-users too (the brokers' certificates,
        `Broker:<id>`, when mutual TLS authenticates them)."""
        self._acls = acls
        self.super_users = set(super_users)
        self._super_prefix = super_prefix
        self.enabled = enabled
        self._version = -1
        self._cache: dict[tuple[str, str, str, str], bool] = {}

    def is_super(self, principal: str) -> bool:
        return principal in self.super_users or (self._super_prefix is not None
                                                 and principal.startswith(self._super_prefix))

    def allowed(self, principal: str, resource: str, name: str, operation: str) -> bool:
        if not self.enabled or self.is_super(principal):
            return True
        version, acls = self._acls()
        if version != self._version:
            self._cache, self._version = {}, version
        key = (principal, resource, name, operation)
        decision = self._cache.get(key)
        if decision is None:
            matching = [acl for acl in acls if acl.matches(principal, resource, name, operation)]
            decision = bool(matching) and all(acl.permission == ALLOW for acl in matching)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def allowed_on_some(self, principal: str, resource: str, operation: str) -> bool:
        """Whether some resource of the type may be operated on: an ALLOW matches the principal and
        operation, and no DENY of it covers every name (Kafka's rule for idempotent producers,
        which need WRITE on some topic to get a producer id)."""
        if not self.enabled or self.is_super(principal):
            return True
        _, acls = self._acls()
        relevant = [acl for acl in acls if acl.resource == resource and acl.principal in (WILDCARD, principal)
                    and acl.operation in (ALL, operation)]
        if any(acl.permission == DENY and acl.pattern == LITERAL and acl.name == WILDCARD
               for acl in relevant):
            return False
        return any(acl.permission == ALLOW for acl in relevant)
