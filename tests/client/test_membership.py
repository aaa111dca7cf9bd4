"""In-process rules of a group member's view of its own session (client/membership.py)."""

from __future__ import annotations

import time

from raftka.client.membership import GroupMembership
from raftka.proto import api_pb2


class SlowToAnswer:
    """A coordinator whose heartbeat answer is read some time after it was sent."""

    group_id = "g"

    def __init__(self) -> None:
        self.sent_at = 0.0

    def call(self, method, request, deadline_s=None):
        self.sent_at = time.monotonic()
        time.sleep(0.05)
        return api_pb2.GroupHeartbeatResponse(member_epoch=1, heartbeat_interval_ms=1000)


def test_a_heartbeat_answer_read_late_renews_the_session_only_from_when_it_was_sent() -> None:
    coordinator = SlowToAnswer()
    membership = GroupMembership(coordinator, topics=["t"], pattern="", instance_id="", client_id="c",  # type: ignore[arg-type]
                                 assignor="uniform", session_timeout_ms=6000, max_poll_interval_ms=300_000)
    membership._heartbeat()
    assert membership.valid_until() <= coordinator.sent_at + 6.0
