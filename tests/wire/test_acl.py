"""The ACL vocabulary both sides of the wire share (raftka.wire.acl)."""

from __future__ import annotations

import itertools

import pytest

from raftka.proto import api_pb2
from raftka.wire.acl import OPERATIONS, RESOURCES, from_binding, to_binding


def test_every_acl_in_words_survives_the_protobuf_both_ways() -> None:
    for resource, pattern, operation, permission in itertools.product(
            RESOURCES, ("literal", "prefixed"), OPERATIONS, ("allow", "deny")):
        words = ("User:a", resource, "n", pattern, operation, permission)
        assert from_binding(to_binding(*words)) == words


def test_unknown_words_and_unset_enums_are_named() -> None:
    with pytest.raises(ValueError, match="operation 'publish' is not one of read, write"):
        to_binding("User:a", "topic", "t", "literal", "publish", "allow")
    with pytest.raises(ValueError, match="ACL has no permission"):
        from_binding(api_pb2.AclBinding(principal="User:a", resource_type=api_pb2.RESOURCE_TYPE_TOPIC, name="t",
                                        pattern_type=api_pb2.PATTERN_TYPE_LITERAL,
                                        operation=api_pb2.ACL_OPERATION_READ))
