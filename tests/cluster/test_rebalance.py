"""The rebalancing planner: the issue's figures, refusals, the reassignment JSON, and invariants over
many seeded random clusters."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from raftka.cluster.placement import BrokerSlot, assign_replicas
from raftka.cluster.rebalance import ReassignmentPlan, figures, plan_balance, plan_replace
from raftka.errors import InvalidReplicationFactorError, InvalidRequestError

Lists = Mapping[tuple[str, int], Sequence[int]]


def topic(name: str, replica_lists: Sequence[Sequence[int]]) -> dict[tuple[str, int], tuple[int, ...]]:
    return {(name, p): tuple(replicas) for p, replicas in enumerate(replica_lists)}


def slots(*ids: int, racks: str = "") -> list[BrokerSlot]:
    """Brokers `ids`, racks assigned round-robin from the letters of `racks` (none if empty)."""
    return [BrokerSlot(b, racks[i % len(racks)] if racks else "") for i, b in enumerate(ids)]


def replica_counts(lists: Lists) -> Counter[int]:
    return Counter(b for replicas in lists.values() for b in replicas)


def leader_counts(lists: Lists) -> Counter[int]:
    return Counter(replicas[0] for replicas in lists.values())


def spread(counts: Counter[int], brokers: Sequence[int]) -> int:
    return max(counts[b] for b in brokers) - min(counts[b] for b in brokers)


def three_broker_topic() -> dict[tuple[str, int], tuple[int, ...]]:
    """30 partitions x RF 3 on brokers 1, 2, 3, 10 preferred leaders each."""
    return topic("t", assign_replicas(30, 3, slots(1, 2, 3)))


def test_scaling_3_to_5_brokers_balances_replicas_and_leaders_with_few_moves() -> None:
    current = three_broker_topic()
    assert leader_counts(current) == {1: 10, 2: 10, 3: 10}
    plan = plan_balance(current, slots(1, 2, 3, 4, 5))
    after = plan.apply(current)
    assert all(17 <= plan.replicas_after[b] <= 19 for b in range(1, 6))
    assert all(5 <= plan.leaders_after[b] <= 7 for b in range(1, 6))
    assert plan.replicas_after == dict(replica_counts(after)) and plan.leaders_after == dict(leader_counts(after))
    assert plan.replicas_before == {1: 30, 2: 30, 3: 30, 4: 0, 5: 0}
    assert plan.leaders_before == {1: 10, 2: 10, 3: 10, 4: 0, 5: 0}
    assert 36 <= plan.replicas_moved <= 40
    assert plan_balance(after, slots(1, 2, 3, 4, 5)).empty


def test_a_balanced_cluster_gives_an_empty_plan() -> None:
    current = topic("t", assign_replicas(30, 3, slots(1, 2, 3, 4, 5)))
    plan = plan_balance(current, slots(1, 2, 3, 4, 5))
    assert plan.empty and plan.replicas_moved == 0 and plan.to_json() == '{"version": 1, "partitions": []}'


def test_a_cluster_without_topics_or_eligible_brokers_gives_an_empty_plan() -> None:
    assert plan_balance({}, [BrokerSlot(1, "")], draining={1}).empty
    assert plan_balance({}, []).empty


def test_leaders_are_balanced_by_reordering_without_moving_replicas() -> None:
    current = topic("t", [[1, 2, 3]] * 6)
    plan = plan_balance(current, slots(1, 2, 3))
    assert plan.replicas_moved == 0 and plan.bytes_moved == 0
    assert plan.leaders_after == {1: 2, 2: 2, 3: 2}
    assert all(sorted(replicas) == [1, 2, 3] for replicas in plan.targets.values())


def test_every_replica_set_spans_three_racks_after_balancing_an_unbalanced_start() -> None:
    brokers = slots(1, 2, 3, 4, 5, 6, racks="ABC")
    rack = {b.broker_id: b.rack for b in brokers}
    current = topic("t", [[1, 4, 2]] * 12 + [[2, 3, 1]] * 6)
    assert not all(len({rack[b] for b in replicas}) == 3 for replicas in current.values())
    plan = plan_balance(current, brokers)
    after = plan.apply(current)
    assert all(len({rack[b] for b in replicas}) == 3 for replicas in after.values())
    assert spread(replica_counts(after), range(1, 7)) <= 1
    assert spread(leader_counts(after), range(1, 7)) <= 1
    assert plan_balance(after, brokers).empty


def test_decommissioning_broker_3_of_5_empties_it_and_balances_the_rest() -> None:
    brokers = slots(1, 2, 3, 4, 5)
    current = topic("t", assign_replicas(30, 3, brokers))
    plan = plan_balance(current, brokers, draining={3})
    after = plan.apply(current)
    assert plan.replicas_after[3] == 0 and plan.leaders_after[3] == 0
    assert all(22 <= plan.replicas_after[b] <= 23 for b in (1, 2, 4, 5))
    assert spread(leader_counts(after), (1, 2, 4, 5)) <= 1
    assert plan.replicas_moved == 18
    assert all(len(set(replicas)) == 3 for replicas in after.values())
    assert plan_balance(after, brokers, draining={3}).empty


def test_decommissioning_one_of_three_brokers_with_rf_3_is_refused() -> None:
    with pytest.raises(InvalidReplicationFactorError,
                       match=r"30 partition\(s\) \(t/0, .* and 25 more\) have replication factor up to 3 but only 2"):
        plan_balance(three_broker_topic(), slots(1, 2, 3), draining={3})


def test_draining_a_whole_rack_that_narrows_the_spread_is_refused() -> None:
    brokers = slots(1, 2, 3, 4, 5, 6, racks="ABC")
    current = topic("t", assign_replicas(6, 3, brokers))
    with pytest.raises(InvalidRequestError, match=r"draining 3, 6 leaves 2 rack\(s\) \('A', 'B'\) of 3"):
        plan_balance(current, brokers, draining={3, 6})
    rf2 = topic("t", assign_replicas(6, 2, brokers))
    after = plan_balance(rf2, brokers, draining={3, 6}).apply(rf2)
    assert all({b for b in replicas} <= {1, 2, 4, 5} for replicas in after.values())


def test_replicas_on_unregistered_brokers_move_off() -> None:
    current = topic("t", assign_replicas(8, 2, slots(1, 2, 3, 9)))
    plan = plan_balance(current, slots(1, 2, 3))
    assert plan.replicas_after[9] == 0 and plan.replicas_moved == 4
    assert spread(replica_counts(plan.apply(current)), (1, 2, 3)) <= 1
    with pytest.raises(InvalidReplicationFactorError,
                       match=r"may hold replicas \(eligible: 1; draining: none; unregistered: 2, 3, 9"):
        plan_balance(current, slots(1))


def test_a_plan_replacing_broker_1_by_broker_4_everywhere() -> None:
    current = three_broker_topic()
    plan = plan_replace(current, 1, 4, slots(1, 2, 3, 4))
    after = plan.apply(current)
    assert plan.replicas_after == {1: 0, 2: 30, 3: 30, 4: 30}
    assert plan.leaders_after == {1: 0, 2: 10, 3: 10, 4: 10}
    assert all(after[tp] == tuple(4 if b == 1 else b for b in replicas) for tp, replicas in current.items())
    assert plan.replicas_moved == 30


def test_replacing_is_refused_where_it_cannot_happen() -> None:
    current = topic("t", [[1, 2], [2, 3]])
    with pytest.raises(InvalidRequestError, match="broker 2 already holds a replica of t/0"):
        plan_replace(current, 1, 2, slots(1, 2, 3))
    with pytest.raises(InvalidRequestError, match="broker 7 is not registered"):
        plan_replace(current, 1, 7, slots(1, 2, 3))
    racked = slots(1, 2, 3, 4, racks="AB")
    with pytest.raises(InvalidRequestError, match="would narrow the rack spread of t/0"):
        plan_replace(current, 1, 4, racked)


def test_bytes_decide_which_replicas_move() -> None:
    current = topic("t", [[1, 2]] * 4)
    sizes = {("t", p): size for p, size in enumerate([100, 5, 40, 60])}
    plan = plan_balance(current, slots(1, 2, 3, 4), sizes=sizes)
    after = plan.apply(current)
    per_broker = Counter({b: 0 for b in range(1, 5)})
    for tp, replicas in after.items():
        for b in replicas:
            per_broker[b] += sizes[tp]
    assert plan.replicas_moved == 4
    assert plan.bytes_moved == sum(sizes[tp] * len(set(r) - set(current[tp])) for tp, r in plan.targets.items())
    assert max(per_broker.values()) - min(per_broker.values()) <= 60


def test_the_same_input_gives_the_same_plan() -> None:
    current = topic("a", assign_replicas(20, 3, slots(1, 2, 3))) | topic("b", assign_replicas(7, 2, slots(2, 3)))
    brokers = slots(1, 2, 3, 4, 5, 6, racks="AB")
    assert plan_balance(current, brokers, draining={2}).to_json() == \
        plan_balance(dict(reversed(list(current.items()))), list(reversed(brokers)), draining={2}).to_json()


def test_reassignment_json_round_trips() -> None:
    current = three_broker_topic()
    plan = plan_balance(current, slots(1, 2, 3, 4, 5))
    text = plan.to_json()
    document = json.loads(text)
    assert document["version"] == 1
    assert document["partitions"][0] == {"topic": "t", "partition": document["partitions"][0]["partition"],
                                         "replicas": list(plan.targets[("t", document["partitions"][0]["partition"])])}
    assert ReassignmentPlan.from_json(text, current, eligible=range(1, 6)) == plan


@pytest.mark.parametrize(("text", "message"), [
    ("{", "reassignment is not JSON"),
    ("[]", "must be a JSON object"),
    ('{"version": 2, "partitions": []}', "version must be 1, not 2"),
    ('{"version": true, "partitions": []}', "version must be 1, not True"),
    ('{"version": 1}', "'partitions' must be a list"),
    ('{"version": 1, "partitions": [], "x": 1}', "unknown field\\(s\\) 'x'"),
    ('{"version": 1, "partitions": [3]}', r"partitions\[0\] must be an object"),
    ('{"version": 1, "partitions": [{"topic": "t", "partition": 0}]}', r"partitions\[0\] lacks 'replicas'"),
    ('{"version": 1, "partitions": [{"topic": "t", "partition": 0, "replicas": [1], "log_dirs": []}]}',
     r"partitions\[0\] has unknown field\(s\) 'log_dirs'"),
    ('{"version": 1, "partitions": [{"topic": "", "partition": 0, "replicas": [1]}]}',
     r"partitions\[0\]\.topic must be a non-empty string"),
    ('{"version": 1, "partitions": [{"topic": "t", "partition": -1, "replicas": [1]}]}',
     r"partitions\[0\]\.partition must be a non-negative integer, not -1"),
    ('{"version": 1, "partitions": [{"topic": "t", "partition": 0, "replicas": []}]}',
     r"partitions\[0\]\.replicas must be a non-empty list of broker ids"),
    ('{"version": 1, "partitions": [{"topic": "t", "partition": 0, "replicas": [1, "2"]}]}',
     r"partitions\[0\]\.replicas must be a non-empty list of broker ids, not \[1, '2'\]"),
    ('{"version": 1, "partitions": [{"topic": "t", "partition": 0, "replicas": [1, 1]}]}',
     r"partitions\[0\]\.replicas names a broker twice"),
    ('{"version": 1, "partitions": [{"topic": "t", "partition": 0, "replicas": [1]},'
     ' {"topic": "t", "partition": 0, "replicas": [2]}]}', r"partitions\[1\]: t/0 is listed twice"),
    ('{"version": 1, "partitions": [{"topic": "u", "partition": 0, "replicas": [1]}]}',
     r"partitions\[0\]: u/0 is not a partition of the cluster"),
])
def test_bad_reassignment_json_is_refused_precisely(text: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        ReassignmentPlan.from_json(text, topic("t", [[1, 2]]))


def test_bad_planner_input_is_refused_precisely() -> None:
    with pytest.raises(InvalidRequestError, match="t/0 names a broker twice"):
        plan_balance(topic("t", [[1, 1]]), slots(1, 2))
    with pytest.raises(InvalidRequestError, match="t/0 has no replicas"):
        plan_balance(topic("t", [[]]), slots(1, 2))
    with pytest.raises(InvalidRequestError, match=r"broker\(s\) 2 listed twice"):
        plan_balance(topic("t", [[1]]), slots(1, 2, 2))
    with pytest.raises(InvalidRequestError, match="size of t/0 must be a non-negative integer"):
        plan_balance(topic("t", [[1]]), slots(1, 2), sizes={("t", 0): -1})


def test_figures_of_a_given_target() -> None:
    current = topic("t", [[1, 2], [2, 3]])
    plan = figures(current, {("t", 0): [3, 2], ("t", 1): [2, 3]}, {("t", 0): 7})
    assert plan.targets == {("t", 0): (3, 2)}
    assert (plan.replicas_moved, plan.bytes_moved) == (1, 7)
    assert plan.replicas_after == {1: 0, 2: 2, 3: 2} and plan.leaders_after == {1: 0, 2: 1, 3: 1}


def random_cluster(seed: int) -> tuple[dict[tuple[str, int], tuple[int, ...]], list[BrokerSlot], set[int], int]:
    """A seeded random cluster: brokers, racks (round-robin), one RF, replica lists drawn at random
    (rack spread ignored), some brokers draining, some replicas on a broker that left."""
    rng = random.Random(seed)
    count = rng.randint(3, 9)
    brokers = slots(*range(1, count + 1), racks="ABC"[:rng.randint(1, 3)])
    rf = rng.randint(1, 3)
    pool = [b.broker_id for b in brokers] + ([99] if rng.random() < 0.2 else [])
    draining = set(rng.sample(range(1, count + 1), rng.randint(0, count - 3))) if rng.random() < 0.4 else set()
    current = {(f"t{rng.randint(0, 2)}", p): tuple(rng.sample(pool, rf)) for p in range(rng.randint(1, 40))}
    return current, brokers, draining, rf


def fewest_moves_off_eligible(current: Lists, eligible: Sequence[int]) -> int:
    """The fewest replicas that must leave eligible brokers for max - min <= 1 (racks aside): every
    broker above the ceiling of the mean sheds down to it, and of the brokers at or above the ceiling
    only as many as the remainder may stay there."""
    counts = replica_counts(current)
    low, extra = divmod(sum(counts.values()), len(eligible))
    high = low + (1 if extra else 0)
    shed = sum(max(0, counts[b] - high) for b in eligible)
    return shed + (max(0, sum(1 for b in eligible if counts[b] >= high) - extra) if extra else 0)


@pytest.mark.parametrize("seed", range(300))
def test_invariants_hold_over_random_clusters(seed: int) -> None:
    current, brokers, draining, rf = random_cluster(seed)
    sizes = {tp: random.Random(seed * 7 + tp[1]).randint(0, 1000) for tp in current}
    eligible = [b.broker_id for b in brokers if b.broker_id not in draining]
    rack = {b.broker_id: b.rack for b in brokers}
    racks = Counter(rack[b] for b in eligible)
    all_racks = len(set(rack.values()))
    if rf > len(eligible) or min(rf, len(racks)) < min(rf, all_racks):
        with pytest.raises((InvalidReplicationFactorError, InvalidRequestError)):
            plan_balance(current, brokers, draining=draining, sizes=sizes)
        return
    plan = plan_balance(current, brokers, draining=draining, sizes=sizes)
    after = plan.apply(current)
    for tp, replicas in after.items():
        assert len(replicas) == rf and len(set(replicas)) == rf, tp
        assert set(replicas) <= set(eligible), tp
        assert len({rack[b] for b in replicas}) == min(rf, len(racks)), tp
    forced = sum(1 for replicas in current.values() for b in replicas if b not in eligible)
    if len(racks) == 1 and not forced:
        assert plan.replicas_moved == fewest_moves_off_eligible(current, eligible)
        gained = {b for tp, replicas in after.items() for b in set(replicas) - set(current[tp])}
        lost = {b for tp, replicas in after.items() for b in set(current[tp]) - set(replicas)}
        assert not gained & lost
    elif len(racks) == 1:
        assert forced <= plan.replicas_moved <= forced + fewest_moves_off_eligible(current, eligible) + 1
    replicas_after, leaders_after = replica_counts(after), leader_counts(after)
    assert plan.replicas_after == {b: replicas_after[b] for b in plan.replicas_after}
    if len(racks) == 1 or len(set(racks.values())) == 1:
        assert spread(replicas_after, eligible) <= 1
        assert spread(leaders_after, eligible) <= 1
    assert plan_balance(after, brokers, draining=draining, sizes=sizes).empty
    assert plan_balance(after, [b for b in brokers if b.broker_id not in draining], sizes=sizes).empty
