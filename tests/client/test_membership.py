"""In-process rules of a group member's view of its own session (client/membership.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raftka.client import membership as membership_module
from raftka.client.membership import GroupMembership
from raftka.proto import api_pb2


class SlowToAnswer:
    """A coordinator whose heartbeat answer is read 7 s (of a fake clock) after it was sent, as when
    the member's process was suspended while the heartbeat was in flight."""

    group_id = "g"

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.sent_at = 0.0

    def call(self, method, request, deadline_s=None):
        self.sent_at = self.clock[0]
        self.clock[0] += 7.0
        return api_pb2.GroupHeartbeatResponse(member_epoch=1, heartbeat_interval_ms=1000)


def test_a_heartbeat_answer_read_late_renews_the_session_only_from_when_it_was_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(membership_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    coordinator = SlowToAnswer(clock)
    membership = GroupMembership(coordinator, topics=["t"], pattern="", instance_id="", client_id="c",  # type: ignore[arg-type]
                                 assignor="uniform", session_timeout_ms=6000, max_poll_interval_ms=300_000)
    membership._heartbeat()
    assert membership.valid_until() == coordinator.sent_at + 6.0 < clock[0], "the session lapsed meanwhile"
