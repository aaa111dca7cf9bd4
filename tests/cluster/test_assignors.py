"""Consumer-group assignors: complete and exclusive, order-independent, balanced, and sticky moves little."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftka.cluster.assignors import ASSIGNORS, MemberSpec, assign
from raftka.wire.structs import TopicPartition


def tps(topic: str, *partitions: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in partitions)


def member(member_id: str, topics: str, owned: frozenset[TopicPartition] = frozenset()) -> MemberSpec:
    return MemberSpec(member_id, frozenset(topics.split()), owned)


def rejoin(result: dict[str, frozenset[TopicPartition]], topics: str, *new: str) -> list[MemberSpec]:
    """The members of `result` owning what it gave them, plus `new` members owning nothing."""
    return [member(m, topics, owned) for m, owned in result.items()] + [member(m, topics) for m in new]


def moved(before: dict[str, frozenset[TopicPartition]],
          after: dict[str, frozenset[TopicPartition]]) -> set[TopicPartition]:
    return {tp for m, owned in before.items() for tp in owned if tp not in after.get(m, frozenset())}


@st.composite
def groups(draw: st.DrawFn, same_topics: bool = False) -> tuple[list[MemberSpec], dict[str, int]]:
    """Members subscribe to a..d (d does not exist; e exists but nobody subscribes) and may own anything."""
    counts = draw(st.dictionaries(st.sampled_from("abce"), st.integers(0, 8)))
    ids = draw(st.lists(st.text("xyz", min_size=1, max_size=3), unique=True, max_size=6))
    shared = draw(st.frozensets(st.sampled_from("abcd")))
    owned = st.frozensets(st.builds(TopicPartition, st.sampled_from("abcde"), st.integers(-1, 9)), max_size=10)
    return [MemberSpec(m, shared if same_topics else draw(st.frozensets(st.sampled_from("abcd"))), draw(owned))
            for m in ids], counts


def test_unknown_strategy_and_duplicate_members_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown assignor 'cooperative'"):
        assign("cooperative", [member("a", "t")], {"t": 1})
    with pytest.raises(ValueError, match="more than once: a"):
        assign("range", [member("a", "t"), member("a", "u")], {"t": 1})


def test_range_cuts_each_topic_over_its_own_subscribers() -> None:
    result = assign("range", [member("b", "t u"), member("a", "t u"), member("c", "u")], {"t": 3, "u": 5})
    assert result == {"a": tps("t", 0, 1) | tps("u", 0, 1), "b": tps("t", 2) | tps("u", 2, 3), "c": tps("u", 4)}


def test_roundrobin_deals_in_turn_skipping_members_not_subscribed() -> None:
    members = [member("c0", "t0"), member("c1", "t0 t1"), member("c2", "t0 t1 t2")]
    assert assign("roundrobin", members, {"t0": 1, "t1": 2, "t2": 3}) == {
        "c0": tps("t0", 0), "c1": tps("t1", 0), "c2": tps("t1", 1) | tps("t2", 0, 1, 2)}
    assert assign("roundrobin", [member("a", "t u"), member("b", "t u")], {"t": 3, "u": 3}) == {
        "a": tps("t", 0, 2) | tps("u", 1), "b": tps("t", 1) | tps("u", 0, 2)}


def test_roundrobin_can_leave_members_with_one_subscription_two_apart() -> None:
    members = [member("a", "t1 t3"), member("b", "t0 t1 t2 t3"), member("c", "t1 t3")]
    result = assign("roundrobin", members, {"t0": 1, "t1": 1, "t2": 1, "t3": 1})
    assert result == {"a": frozenset(), "b": {("t0", 0), ("t2", 0)}, "c": {("t1", 0), ("t3", 0)}}


def test_sticky_spreads_a_new_group_evenly_and_keeps_it() -> None:
    members = [member(m, "t u") for m in "abc"]
    first = assign("sticky", members, {"t": 8, "u": 4})
    assert sorted(len(owned) for owned in first.values()) == [4, 4, 4]
    assert assign("sticky", rejoin(first, "t u"), {"t": 8, "u": 4}) == first


def test_sticky_keeps_the_extra_partition_where_it_is() -> None:
    members = [member("a", "t"), member("b", "t", tps("t", 0, 1))]
    assert assign("sticky", members, {"t": 3}) == {"a": tps("t", 2), "b": tps("t", 0, 1)}


def test_sticky_join_moves_one_partition_from_each_old_member() -> None:
    before = assign("sticky", [member(m, "t") for m in "abc"], {"t": 12})
    after = assign("sticky", rejoin(before, "t", "d"), {"t": 12})
    assert moved(before, after) == after["d"]
    assert len(after["d"]) == 3
    assert all(len(after[m]) == 3 and after[m] < before[m] for m in "abc")


def test_sticky_leave_moves_only_the_leavers_partitions() -> None:
    before = assign("sticky", [member(m, "t") for m in "abcd"], {"t": 12})
    after = assign("sticky", rejoin({m: before[m] for m in "abd"}, "t"), {"t": 12})
    assert all(len(after[m]) == 4 and after[m] > before[m] for m in "abd")
    assert set().union(*(after[m] - before[m] for m in "abd")) == before["c"]


def test_sticky_gives_a_doubly_owned_partition_to_one_owner() -> None:
    members = [member("a", "t", tps("t", 0, 1)), member("b", "t", tps("t", 1))]
    assert assign("sticky", members, {"t": 2}) == {"a": tps("t", 0), "b": tps("t", 1)}


def test_sticky_drops_partitions_a_member_may_no_longer_read() -> None:
    owned = tps("t", 0) | tps("t", 5) | tps("gone", 0) | tps("u", 0)
    result = assign("sticky", [member("a", "t", owned), member("b", "t u")], {"t": 2, "u": 1})
    assert result == {"a": tps("t", 0, 1), "b": tps("u", 0)}


def test_sticky_fills_members_with_few_choices_first() -> None:
    members = [member("a", "t1"), member("b", "t1 t2")]
    result = assign("sticky", members, {"t1": 10, "t2": 10})
    assert result == {"a": tps("t1", *range(10)), "b": tps("t2", *range(10))}
    again = [MemberSpec(m.member_id, m.topics, result[m.member_id]) for m in members]
    assert assign("sticky", again, {"t1": 10, "t2": 10}) == result


def test_sticky_sheds_the_partitions_others_can_take() -> None:
    members = [member("a", "t1", tps("t1", 0, 1)), member("b", "t1"),
               member("c", "t1 t2", tps("t1", 2, 3, 4, 5) | tps("t2", 0, 1, 2))]
    result = assign("sticky", members, {"t1": 6, "t2": 3})
    assert result == {"a": tps("t1", 0, 1, 4), "b": tps("t1", 2, 3, 5), "c": tps("t2", 0, 1, 2)}


def test_sticky_gives_an_owned_partition_up_to_a_member_with_nothing_else() -> None:
    members = [member("x", "t"), member("y", "t u", tps("t", 0))]
    assert assign("sticky", members, {"t": 1, "u": 1}) == {"x": tps("t", 0), "y": tps("u", 0)}


def test_sticky_prefers_the_owner_among_equally_loaded_members() -> None:
    members = [member("x", "t u"), member("y", "u"), member("z", "t", tps("t", 0))]
    assert assign("sticky", members, {"t": 1, "u": 1}) == {"x": tps("u", 0), "y": frozenset(), "z": tps("t", 0)}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ASSIGNORS), groups())
def test_every_subscribed_partition_goes_to_exactly_one_subscriber(strategy, group) -> None:
    members, counts = group
    result = assign(strategy, members, counts)
    assert list(result) == sorted(m.member_id for m in members)
    topics = {m.member_id: m.topics for m in members}
    given_out = Counter(tp for owned in result.values() for tp in owned)
    wanted = {(t, p) for t, n in counts.items() if any(t in m.topics for m in members) for p in range(n)}
    assert set(given_out) == wanted and all(n == 1 for n in given_out.values())
    assert all(t in topics[m] for m, owned in result.items() for t, _ in owned)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ASSIGNORS), groups(), st.data())
def test_order_of_members_does_not_matter(strategy, group, data) -> None:
    members, counts = group
    assert assign(strategy, data.draw(st.permutations(members)), counts) == assign(strategy, members, counts)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ASSIGNORS), st.booleans(), st.data())
def test_members_with_the_same_subscription_are_within_one(strategy, same_topics, data) -> None:
    members, counts = data.draw(groups(same_topics=same_topics or strategy == "roundrobin"))
    result = assign(strategy, members, counts)
    alike: dict[frozenset[str], list[str]] = {}
    for m in members:
        alike.setdefault(m.topics, []).append(m.member_id)
    slices = [(lambda owned, t=t: sum(topic == t for topic, _ in owned)) for t in counts] \
        if strategy == "range" else [len]
    for size in slices:
        for ids in alike.values():
            sizes = [size(result[m]) for m in ids]
            assert max(sizes) - min(sizes) <= 1


@settings(max_examples=100, deadline=None)
@given(groups(same_topics=True))
def test_roundrobin_with_one_subscription_deals_sorted_partitions_in_turn(group) -> None:
    members, counts = group
    result = assign("roundrobin", members, counts)
    ids = sorted(m.member_id for m in members)
    subscribed = sorted((t, p) for t, n in counts.items() for p in range(n) if members and t in members[0].topics)
    assert all(tp in result[ids[i % len(ids)]] for i, tp in enumerate(subscribed))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(0, 30), st.integers(0, 12))
def test_sticky_moves_only_what_a_join_or_leave_forces(size, t_count, u_count) -> None:
    counts = {"t": t_count, "u": u_count}
    ids = [f"m{i}" for i in range(size)]
    before = assign("sticky", [member(m, "t u") for m in ids], counts)
    assert assign("sticky", rejoin(before, "t u"), counts) == before
    joined = assign("sticky", rejoin(before, "t u", "new"), counts)
    assert moved(before, joined) == joined["new"]
    assert len(joined["new"]) == (t_count + u_count) // (size + 1)
    for leaver in joined:
        stay = {m: owned for m, owned in joined.items() if m != leaver}
        left = assign("sticky", rejoin(stay, "t u"), counts)
        assert all(left[m] >= owned for m, owned in stay.items())


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.data())
def test_sticky_moves_nothing_when_nothing_changed(same_topics, data) -> None:
    members, counts = data.draw(groups(same_topics=same_topics))
    if not same_topics:
        members = [MemberSpec(m.member_id, m.topics, frozenset()) for m in members]
    first = assign("sticky", members, counts)
    again = [MemberSpec(m.member_id, m.topics, first[m.member_id]) for m in members]
    assert assign("sticky", again, counts) == first
