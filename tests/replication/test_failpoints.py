"""Failpoint specifications (RAFTKA_FAILPOINTS) parse strictly and fire as many times as armed."""

from __future__ import annotations

import pytest

from raftka.replication import failpoints


def test_a_failpoint_fails_its_matching_targets_as_often_as_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", failpoints.parse("partition-append:2:/13$"))
    assert failpoints.armed("partition-append") and not failpoints.armed("other")
    failpoints.hit("partition-append", "abc/1")
    for _ in range(2):
        with pytest.raises(failpoints.InjectedFaultError):
            failpoints.hit("partition-append", "abc/13")
    failpoints.hit("partition-append", "abc/13")


def test_count_zero_fails_every_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_ARMED", failpoints.parse("partition-append:0:."))
    for _ in range(5):
        with pytest.raises(failpoints.InjectedFaultError):
            failpoints.hit("partition-append", "x/0")


@pytest.mark.parametrize("spec", ["partition-append", "partition-append:x:/1$", "partition-append:1:", ":1:a"])
def test_a_malformed_spec_is_refused_with_the_item(spec: str) -> None:
    with pytest.raises(ValueError, match="NAME:COUNT:PATTERN"):
        failpoints.parse(spec)
