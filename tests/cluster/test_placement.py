"""Replica placement spreads replicas, racks and preferred leaders evenly."""

from __future__ import annotations

from collections import Counter

import pytest

from raftka.cluster.placement import BrokerSlot, assign_replicas, rack_alternated
from raftka.errors import InvalidReplicationFactorError


def test_replicas_and_leaders_are_spread_evenly() -> None:
    brokers = [BrokerSlot(i) for i in (1, 2, 3)]
    plan = assign_replicas(6, 3, brokers)
    assert all(len(set(replicas)) == 3 for replicas in plan)
    assert Counter(r[0] for r in plan) == {1: 2, 2: 2, 3: 2}
    assert Counter(b for r in plan for b in r) == {1: 6, 2: 6, 3: 6}


def test_replicas_land_in_different_racks() -> None:
    brokers = [BrokerSlot(1, "a"), BrokerSlot(2, "a"), BrokerSlot(3, "b"), BrokerSlot(4, "b"),
               BrokerSlot(5, "c"), BrokerSlot(6, "c")]
    assert rack_alternated(brokers) == [1, 3, 5, 2, 4, 6]
    racks = {b.broker_id: b.rack for b in brokers}
    for replicas in assign_replicas(12, 3, brokers):
        assert len({racks[b] for b in replicas}) == 3


def test_new_topics_start_on_the_least_loaded_leader() -> None:
    brokers = [BrokerSlot(i) for i in (1, 2, 3)]
    plan = assign_replicas(1, 2, brokers, Counter({1: 4, 2: 1, 3: 3}))
    assert plan == [[2, 3]]


def test_impossible_replication_factor() -> None:
    with pytest.raises(InvalidReplicationFactorError, match="between 1 and 2"):
        assign_replicas(1, 3, [BrokerSlot(1), BrokerSlot(2)])
