"""The membership rules of one group, in process: joins, the cooperative revoke → release → grant
protocol, leaves, expiry, static members, failover, subscriptions following topics, commit ownership.
(The same paths on real brokers, through the coordinator's RPCs: tests/cluster/test_groups.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftka.cluster.assignors import TopicPartition
from raftka.cluster.group_log import CommittedOffset, GroupLog, members_command
from raftka.cluster.group_rules import (Assignment, GroupRules, Heartbeat, OffsetCommit, Topic,
                                        MAX_COMMIT_METADATA, RECONCILING_HEARTBEAT_INTERVAL_MS)
from raftka.errors import (GroupNotEmptyError, InvalidRequestError, NotPartitionOwnerError, UnknownMemberIdError,
                           RaftkaError, UnknownPartitionError, UnknownTopicError, UnreleasedInstanceIdError)
from raftka.wire.batch import encode_batch

EVENTS = {"events": Topic(6, "events-id")}
SESSION_MS = 10_000


def events(*partitions: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition("events", p) for p in partitions)


def check_exclusive(rules: GroupRules) -> None:
    """No partition is held by two members, and each member holds what it was last granted."""
    held = [tp for m in rules.members.values() for tp in m.held]
    assert len(held) == len(set(held)), f"a partition is held twice: {sorted(held)}"
    for m in rules.members.values():
        assert m.granted <= m.held, f"{m.member_id} was granted {sorted(m.granted - m.held)} it does not hold"


class Member:
    """A member following the protocol: it reports what it owns and the epoch of the assignment it
    applied. With `apply=False` the answer is not applied (lost, or kept in `pending` for later)."""

    def __init__(self, rules: GroupRules, topics: tuple[str, ...] = ("events",), *, instance_id: str = "",
                 member_id: str = "", pattern: str = "", session_timeout_ms: int = SESSION_MS) -> None:
        self.rules, self.topics, self.instance_id, self.pattern = rules, topics, instance_id, pattern
        self.member_id, self.session_timeout_ms = member_id, session_timeout_ms
        self.owned: frozenset[TopicPartition] = frozenset()
        self.epoch = 0
        self.answer: Assignment | None = None
        self.pending: Assignment | None = None

    def heartbeat(self, now: float, topics: dict[str, Topic] = EVENTS, *, apply: bool = True,
                  leave: bool = False) -> frozenset[TopicPartition]:
        self.answer = self.rules.heartbeat(Heartbeat(
            member_id=self.member_id, member_epoch=self.epoch, instance_id=self.instance_id, client_id="test",
            topics=self.topics, pattern=self.pattern, session_timeout_ms=self.session_timeout_ms,
            owned=self.owned, leave=leave), topics, now)
        check_exclusive(self.rules)
        self.member_id = self.answer.member_id
        if apply:
            self.owned, self.epoch = self.answer.partitions, self.answer.member_epoch
        return self.answer.partitions

    def held(self) -> frozenset[TopicPartition]:
        return self.rules.members[self.member_id].held


def settle(members: list[Member], now: float, topics: dict[str, Topic] = EVENTS, rounds: int = 6) -> None:
    for _ in range(rounds):
        for member in members:
            member.heartbeat(now, topics)


def new_group() -> GroupRules:
    return GroupRules.restore("g", None, now=0.0)


def test_the_first_member_gets_everything_and_a_retried_join_is_the_same_member() -> None:
    rules = new_group()
    first = Member(rules, member_id="member-one")
    assert first.heartbeat(0.0, apply=False) == events(*range(6))
    assert first.heartbeat(0.1) == events(*range(6)), "the retried join is answered like the first"
    assert list(rules.members) == ["member-one"]
    assert (first.epoch, rules.epoch, rules.assignor, rules.state) == (1, 1, "sticky", "stable")
    anonymous = Member(new_group())
    anonymous.heartbeat(0.0)
    assert len(anonymous.member_id) == 32, "a member joining without an id is given one"


def test_a_partition_moves_only_after_its_owner_releases_it() -> None:
    rules = new_group()
    a, b = Member(rules), Member(rules)
    a.heartbeat(0.0)
    b.heartbeat(0.1)
    assert b.owned == frozenset() and rules.epoch == 2, "b's target moved the group epoch; nothing is free yet"
    assert b.answer is not None and b.answer.heartbeat_interval_ms == RECONCILING_HEARTBEAT_INTERVAL_MS
    a.heartbeat(0.2, apply=False)
    assert b.heartbeat(0.3) == frozenset(), "a has not applied its new assignment yet"
    assert len(a.heartbeat(0.4)) == 3, "a applies its shrunk assignment..."
    assert a.held() == events(*range(6)), "...but still holds what it has not reported released"
    assert b.heartbeat(0.5) == frozenset()
    a.heartbeat(0.6)
    assert a.held() == a.owned and len(a.owned) == 3
    assert b.heartbeat(0.7) == events(*range(6)) - a.owned
    settle([a, b], 0.8)
    assert rules.state == "stable" and rules.epoch == 2
    assert a.owned | b.owned == events(*range(6)) and not a.owned & b.owned


def test_a_grant_in_flight_is_not_handed_to_another_member() -> None:
    rules = new_group()
    a, b = Member(rules), Member(rules)
    grant = a.heartbeat(0.0, apply=False)
    assert grant == events(*range(6))
    b.heartbeat(0.1)
    assert len(a.heartbeat(0.2, apply=False)) == 3, "a is answered again before it applied the first grant"
    assert b.heartbeat(0.3) == frozenset(), "a may still apply its first grant: nothing is free"
    a.owned, a.epoch = grant, 1
    assert a.owned <= a.held()
    settle([a, b], 0.4)
    assert len(a.owned) == len(b.owned) == 3


def test_the_heartbeat_interval_is_short_only_while_partitions_move() -> None:
    rules = new_group()
    a = Member(rules, session_timeout_ms=1_500)
    a.heartbeat(0.0)
    assert a.answer is not None and a.answer.heartbeat_interval_ms == 500, "a third of the session"
    b = Member(rules, session_timeout_ms=60_000)
    b.heartbeat(0.1)
    assert b.answer is not None and b.answer.heartbeat_interval_ms == RECONCILING_HEARTBEAT_INTERVAL_MS
    settle([a, b], 0.2)
    assert b.answer.heartbeat_interval_ms == 1_000, "at most a second"


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Steps over members 0..3 (1 is static): heartbeats whose answer is applied at once, kept for a
    later poll to apply ("late", then "apply") or lost; leaves, crashes, time passing, resizing."""
    steps = ["beat", "beat", "beat", "late", "apply", "lost", "leave", "crash", "wait", "resize"]
    return draw(st.lists(st.tuples(st.sampled_from(steps), st.integers(0, 3), st.integers(1, 8)), max_size=60))


def beat(member: Member, now: float, topics: dict[str, Topic], step: str = "beat") -> None:
    """A heartbeat as the consumer sends it. A "late" answer waits for an "apply" (a poll applying
    the answer it has while the next heartbeat is in flight); a member the coordinator no longer
    knows, or that left, drops its partitions and rejoins as a new member."""
    try:
        member.heartbeat(now, topics, apply=step == "beat", leave=step == "leave")
        if step == "late":
            member.pending = member.answer
    except UnknownMemberIdError:
        step = "leave"
    if step == "leave":
        member.owned, member.epoch, member.member_id, member.pending = frozenset(), 0, "", None


@settings(max_examples=200, deadline=None)
@given(scripts())
def test_no_partition_is_ever_held_by_two_members_and_every_partition_finds_an_owner(
        script: list[tuple[str, int, int]]) -> None:
    rules = new_group()
    members = [Member(rules, instance_id="pod-1" if i == 1 else "") for i in range(4)]
    crashed: set[int] = set()
    topics, now = dict(EVENTS), 0.0
    for step, i, n in script:
        now += 0.1
        member = members[i]
        if step == "wait":
            now += n * SESSION_MS / 4000
        elif step == "resize":
            topics = {"events": Topic(n, "events-id")}
        elif step == "crash":
            crashed.add(i)
        elif i in crashed:
            continue
        elif step == "apply":
            if member.pending is not None:
                pending = member.pending
                member.owned, member.epoch, member.pending = pending.partitions, pending.member_epoch, None
        else:
            beat(member, now, topics, step)
        for m in members:
            if m.member_id in rules.members:
                assert m.owned <= m.held(), f"member {m.member_id} owns what it does not hold"
    live = [m for i, m in enumerate(members) if i not in crashed]
    now += SESSION_MS / 1000 + 1
    rules.expire(now)
    for _ in range(5):
        for member in live:
            beat(member, now, topics)
    assert not set(rules.members) - {m.member_id for m in live}, "crashed members expired"
    if live:
        assert rules.state == "stable"
        assert set().union(*(m.owned for m in live)) == {("events", p) for p in range(topics["events"].partitions)}


def test_a_silent_member_expires_and_its_partitions_move() -> None:
    rules = new_group()
    quiet, active = Member(rules), Member(rules)
    quiet.heartbeat(0.0)
    settle([active, quiet], 1.0)
    active.heartbeat(5.0)
    assert len(quiet.owned) == 3
    assert rules.expired(10.9) == [] and rules.expired(11.1) == [quiet.member_id]
    deadline = 11.1
    settle([active], deadline, rounds=2)
    assert active.owned == events(*range(6)), "the silent member's partitions moved"
    with pytest.raises(UnknownMemberIdError):
        quiet.heartbeat(deadline)


def test_expiry_by_the_sweep_retargets_the_others() -> None:
    rules = new_group()
    quiet, active = Member(rules), Member(rules)
    quiet.heartbeat(0.0)
    settle([active, quiet], 1.0)
    active.heartbeat(5.0)
    epoch = rules.epoch
    rules.expire(11.5)
    rules.retarget(EVENTS)
    assert list(rules.members) == [active.member_id] and rules.epoch == epoch + 1
    assert rules.members[active.member_id].target == events(*range(6))


def test_a_member_rejoining_under_its_id_after_it_expired_gets_a_target_again() -> None:
    """A member that applied no assignment yet (member epoch 0) and expired rejoins under its id."""
    rules = new_group()
    frozen = Member(rules)
    assert frozen.heartbeat(0.0, apply=False) == events(*range(6))
    rules.expire(11.0)
    rules.retarget(EVENTS)
    assert rules.members == {}
    assert frozen.heartbeat(11.5) == events(*range(6)), "its partitions were no one's target"

    rules = new_group()
    busy, frozen = Member(rules, session_timeout_ms=60_000), Member(rules)
    busy.heartbeat(0.0)
    assert frozen.heartbeat(0.1) == frozenset() and frozen.epoch == 0
    frozen.heartbeat(10.5)
    assert list(rules.members) == [busy.member_id, frozen.member_id], "expired and rejoined in one heartbeat"
    settle([busy, frozen], 10.6)
    assert busy.owned | frozen.owned == events(*range(6)) and len(frozen.owned) == 3


def test_a_member_leaving_after_max_poll_interval_frees_its_partitions_and_rejoins_as_a_new_member() -> None:
    rules = new_group()
    stuck, other = Member(rules), Member(rules)
    stuck.heartbeat(0.0)
    settle([other, stuck], 0.1)
    left_id = stuck.member_id
    stuck.heartbeat(0.2, leave=True)
    assert list(rules.members) == [other.member_id], "gone at once, not after its session"
    settle([other], 0.3, rounds=2)
    assert other.owned == events(*range(6))
    rejoined = Member(rules)
    rejoined.heartbeat(0.4)
    settle([other, rejoined], 0.5)
    assert rejoined.member_id != left_id and len(rejoined.owned) == 3


def test_a_static_member_keeps_its_partitions_reserved_and_gets_them_back_without_a_rebalance() -> None:
    rules = new_group()
    pod_a, pod_b = Member(rules, instance_id="pod-a"), Member(rules, instance_id="pod-b")
    pod_a.heartbeat(0.0)
    settle([pod_b, pod_a], 0.1)
    before, epoch = pod_a.owned, rules.epoch
    pod_a.heartbeat(0.2, leave=True)
    assert rules.members[pod_a.member_id].left
    settle([pod_b], 0.3)
    assert len(pod_b.owned) == 3, "a static member's partitions stay reserved while it restarts"
    restarted = Member(rules, instance_id="pod-a")
    assert restarted.heartbeat(5.0) == before
    assert restarted.member_id != pod_a.member_id and pod_a.member_id not in rules.members
    assert rules.epoch == epoch and rules.state == "stable", "no rebalance"


def test_a_live_static_instance_id_is_not_taken_over_and_a_left_one_is_freed_by_its_session() -> None:
    rules = new_group()
    first = Member(rules, instance_id="pod-a")
    first.heartbeat(0.0)
    with pytest.raises(UnreleasedInstanceIdError):
        Member(rules, instance_id="pod-a").heartbeat(0.1)
    assert first.heartbeat(0.2) == first.owned == events(*range(6))
    other = Member(rules)
    other.heartbeat(0.3)
    first.heartbeat(0.4, leave=True)
    settle([other], 5.0)
    assert other.owned == frozenset(), "reserved for the static member's session"
    settle([other], 10.5)
    assert other.owned == events(*range(6)), "its session over, the partitions move"


def persisted(rules: GroupRules) -> GroupLog:
    """The group's log after the coordinator wrote the membership (as cluster/coordinator.py does)."""
    group_log = GroupLog(0)
    command = members_command(rules.group_id, rules.epoch, rules.assignor,
                              sorted(rules.members.values(), key=lambda m: m.member_id))
    group_log.apply(0, encode_batch([(rules.group_id.encode(), command, (), 0)]))
    return group_log


def test_rules_rebuilt_after_a_failover_keep_grants_and_holdings_and_start_sessions_afresh() -> None:
    rules = new_group()
    a, b, c = Member(rules), Member(rules), Member(rules)
    a.heartbeat(0.0)
    settle([a, b], 0.1)
    c.heartbeat(0.2)
    a.heartbeat(0.3)
    b.heartbeat(0.4)
    assert len(a.owned) == 2 and a.held() != a.owned, "a move is under way: a has not reported its release"
    held = {m.member_id: m.held for m in rules.members.values()}
    rebuilt = GroupRules.restore("g", persisted(rules).groups["g"], now=100.0)
    assert {m.member_id: m.held for m in rebuilt.members.values()} == held
    assert (rebuilt.epoch, rebuilt.assignor) == (rules.epoch, rules.assignor)
    assert rebuilt.expired(109.9) == [], "the sessions start at the new coordinator's load"
    assert sorted(rebuilt.expired(110.1)) == sorted(held)
    for member in (a, b, c):
        member.rules = rebuilt
    assert c.heartbeat(100.5) == rules.members[c.member_id].granted, "nothing a still holds is granted"
    settle([a, b, c], 101.0)
    assert sorted(len(m.owned) for m in (a, b, c)) == [2, 2, 2]
    assert a.owned | b.owned | c.owned == events(*range(6))


def test_pattern_and_topic_subscriptions_follow_topics_created_and_deleted() -> None:
    rules = new_group()
    by_pattern = Member(rules, (), pattern=r"orders-.*")
    by_name = Member(rules, ("later",))
    topics = {"orders-eu": Topic(2, "eu"), "audit": Topic(1, "audit")}
    by_pattern.heartbeat(0.0, topics)
    by_name.heartbeat(0.1, topics)
    assert by_pattern.owned == {("orders-eu", 0), ("orders-eu", 1)} and by_name.owned == frozenset()
    epoch = rules.epoch
    topics = {**topics, "orders-us": Topic(1, "us"), "later": Topic(2, "later")}
    settle([by_pattern, by_name], 0.2, topics)
    assert by_pattern.owned == {("orders-eu", 0), ("orders-eu", 1), ("orders-us", 0)}
    assert by_name.owned == {("later", 0), ("later", 1)}
    assert rules.epoch == epoch + 1
    del topics["orders-eu"]
    assert by_pattern.heartbeat(0.3, topics) == {("orders-us", 0)}
    assert rules.epoch == epoch + 2
    topics["later"] = Topic(3, "later")
    assert by_name.heartbeat(0.4, topics) == {("later", 0), ("later", 1), ("later", 2)}


def test_commits_need_a_member_holding_the_partition_or_an_empty_group() -> None:
    rules = new_group()
    topics = {**EVENTS, "audit": Topic(1, "audit-id")}

    def commit(member_id: str, *items: OffsetCommit) -> list[CommittedOffset | RaftkaError]:
        return rules.commit(member_id, list(items), topics, 1234)

    assert commit("", OffsetCommit("events", 0, 5, "m")) == [CommittedOffset(5, "m", 1234, "events-id")]
    a = Member(rules)
    a.heartbeat(0.0)
    with pytest.raises(GroupNotEmptyError):
        commit("", OffsetCommit("events", 0, 1, ""))
    with pytest.raises(UnknownMemberIdError):
        commit("nobody", OffsetCommit("events", 0, 1, ""))
    results = commit(a.member_id, OffsetCommit("events", 0, 7, ""), OffsetCommit("missing", 0, 1, ""),
                     OffsetCommit("__consumer_offsets", 0, 1, ""), OffsetCommit("events", 6, 1, ""),
                     OffsetCommit("events", 1, -1, ""), OffsetCommit("events", 2, 1, "x" * (MAX_COMMIT_METADATA + 1)),
                     OffsetCommit("audit", 0, 1, ""))
    assert results[0] == CommittedOffset(7, "", 1234, "events-id")
    assert [type(r) for r in results[1:]] == [UnknownTopicError, UnknownTopicError, UnknownPartitionError,
                                              InvalidRequestError, InvalidRequestError, NotPartitionOwnerError]
    b = Member(rules)
    b.heartbeat(0.1)
    a.heartbeat(0.2)
    revoked = sorted(events(*range(6)) - a.owned)
    assert commit(a.member_id, OffsetCommit(*revoked[0], 8, ""))[0] == CommittedOffset(8, "", 1234, "events-id"), \
        "a revoked partition is still a's until it reports the release (its final commit)"
    a.heartbeat(0.3)
    assert isinstance(commit(a.member_id, OffsetCommit(*revoked[0], 9, ""))[0], NotPartitionOwnerError)
    assert isinstance(commit(b.member_id, OffsetCommit(*revoked[0], 9, ""))[0], NotPartitionOwnerError), \
        "b may commit only once granted"
    b.heartbeat(0.4)
    assert commit(b.member_id, OffsetCommit(*revoked[0], 9, ""))[0] == CommittedOffset(9, "", 1234, "events-id")


@pytest.mark.parametrize("fields, error, message", [
    ({"pattern": "ev(ents"}, InvalidRequestError, "pattern"),
    ({"topics": ("events",), "session_timeout_ms": 10}, InvalidRequestError, "session_timeout_ms"),
    ({"topics": ("events",), "assignor": "best"}, InvalidRequestError, "assignor"),
    ({}, InvalidRequestError, "subscribe"),
    ({"topics": ("events",), "member_id": "m" * 256}, InvalidRequestError, "member id"),
    ({"topics": ("events",), "member_id": "gone", "member_epoch": 3}, UnknownMemberIdError, "rejoin"),
])
def test_bad_heartbeats_are_refused_and_change_no_membership(fields: dict[str, object], error: type[Exception],
                                                             message: str) -> None:
    rules = new_group()
    with pytest.raises(error, match=message):
        rules.heartbeat(Heartbeat(**fields), EVENTS, 0.0)  # type: ignore[arg-type]  # malformed on purpose
    assert rules.members == {} and rules.epoch == 0


def test_the_first_member_chooses_the_assignor() -> None:
    rules = new_group()
    rules.heartbeat(Heartbeat(topics=("events",), assignor="range"), EVENTS, 0.0)
    rules.heartbeat(Heartbeat(topics=("events",), assignor="roundrobin"), EVENTS, 0.1)
    assert rules.assignor == "range"
    assert sorted(sorted(m.target) for m in rules.members.values()) == [
        sorted(events(0, 1, 2)), sorted(events(3, 4, 5))]
