"""raftka.errors: one class per error code, and an error travels to the client as that same class."""

from __future__ import annotations

import pytest

from raftka import errors
from raftka.errors import ErrorCode, RaftkaError

CODES = [code for code in ErrorCode.values() if code != ErrorCode.NONE]


def classes_naming(code: int) -> list[type[RaftkaError]]:
    found, todo = [], RaftkaError.__subclasses__()
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "code" in vars(cls) and cls.code == code:
            found.append(cls)
    return found


@pytest.mark.parametrize("code", CODES, ids=ErrorCode.Name)
def test_every_error_code_has_exactly_one_class(code: int) -> None:
    assert len(classes_naming(code)) == 1, (ErrorCode.Name(code), classes_naming(code))


@pytest.mark.parametrize("code", CODES, ids=ErrorCode.Name)
def test_an_error_comes_back_as_its_own_class_with_its_message(code: int) -> None:
    (cls,) = classes_naming(code)
    received = errors.from_proto(cls("what went wrong").to_proto())
    assert type(received) is cls and received.message == "what went wrong"
