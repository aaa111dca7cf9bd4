"""Consumer-group assignment: which member of a group reads which partition.

The group coordinator recomputes the target whenever members, subscriptions or partition counts
change, and every coordinator must reach the same answer, so the result depends on the input's
content only: members are taken in member_id order and partitions in (topic, partition) order,
never in the order of a set, a dict or the `members` sequence.

- "range" (Kafka's RangeAssignor): each topic on its own is cut into contiguous ranges over its
  subscribers in member_id order, the first ones getting one partition more.
- "roundrobin" (Kafka's RoundRobinAssignor): all subscribed partitions in (topic, partition) order
  are dealt to the members in turn, passing over members not subscribed to the partition's topic.
- "sticky", the coordinator's default, moves as little as balance allows, because every moved
  partition pauses its consumers. Each member's quota is its load in an assignment that ignores
  ownership, except that among members with the same subscription the larger loads go to those
  owning the most (ties by member_id): with identical subscriptions, the floor or the ceiling of the
  fair share. Each member keeps what it may still read of what it owns, up to its quota. The rest
  goes to the least-loaded eligible member (one that owned it, then the lowest member_id, on
  ties), partitions of the topics with the fewest subscribers first. Then, while a member holds two
  more than a member eligible for one of its partitions, that partition moves. With identical
  subscriptions the loads are already even by then, so a join moves only partitions of members over
  their new quota and a leave only the leaver's.

Invariants:
- every partition of an existing topic someone subscribes to goes to exactly one member subscribed
  to it, and nothing else is assigned; every member is in the result, possibly with nothing;
- members with identical subscriptions hold within one partition of each other; "range" guarantees
  it per topic, and "roundrobin" only when all members subscribe to the same topics (when they do
  not, Kafka's dealing can leave two members with the same subscription two apart);
- "sticky" gives a partition owned by several members to at most one of them, drops owned
  partitions of topics the member left or that no longer exist, and moves nothing when nothing
  changed: always with identical subscriptions, and at least after a first assignment otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from raftka.wire.structs import TopicPartition

_Targets = dict[str, set[TopicPartition]]


@dataclass(frozen=True)
class MemberSpec:
    member_id: str
    topics: frozenset[str]
    owned: frozenset[TopicPartition] = frozenset()


ASSIGNORS = ("sticky", "range", "roundrobin")


def assign(strategy: str, members: Sequence[MemberSpec],
           partitions: Mapping[str, int]) -> dict[str, frozenset[TopicPartition]]:
    """Target assignment: member_id -> partitions. `partitions` maps each existing topic to its partition count
    (topics subscribed by nobody, or not existing, are simply ignored). Raises ValueError for an unknown strategy
    or a member_id given twice."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown assignor {strategy!r}; expected one of {', '.join(ASSIGNORS)}")
    ordered = sorted(members, key=lambda m: m.member_id)
    ids = [m.member_id for m in ordered]
    duplicates = sorted(member_id for member_id, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"member ids appear more than once: {', '.join(duplicates)}")
    subscribers: dict[str, list[str]] = {}
    for topic in sorted(partitions):
        topic_members = [m.member_id for m in ordered if topic in m.topics]
        if partitions[topic] > 0 and topic_members:
            subscribers[topic] = topic_members
    counts = {topic: partitions[topic] for topic in subscribers}
    targets = _STRATEGIES[strategy](ordered, counts, subscribers)
    return {member_id: frozenset(targets[member_id]) for member_id in ids}


def _range(members: list[MemberSpec], counts: dict[str, int], subscribers: dict[str, list[str]]) -> _Targets:
    targets: _Targets = {m.member_id: set() for m in members}
    for topic, topic_members in subscribers.items():
        share, extra = divmod(counts[topic], len(topic_members))
        start = 0
        for i, member_id in enumerate(topic_members):
            end = start + share + (i < extra)
            targets[member_id].update(TopicPartition(topic, p) for p in range(start, end))
            start = end
    return targets


def _roundrobin(members: list[MemberSpec], counts: dict[str, int], subscribers: dict[str, list[str]]) -> _Targets:
    targets: _Targets = {m.member_id: set() for m in members}
    turn = 0
    for topic in subscribers:
        for p in range(counts[topic]):
            while topic not in members[turn % len(members)].topics:
                turn += 1
            targets[members[turn % len(members)].member_id].add(TopicPartition(topic, p))
            turn += 1
    return targets


def _sticky(members: list[MemberSpec], counts: dict[str, int], subscribers: dict[str, list[str]]) -> _Targets:
    owned = {m.member_id: {TopicPartition(topic, p) for topic, p in m.owned
                           if topic in m.topics and topic in counts and 0 <= p < counts[topic]}
             for m in members}
    claims = Counter(tp for tps in owned.values() for tp in tps)
    quotas = _quotas(members, counts, subscribers, owned)
    targets: _Targets = {m.member_id: set() for m in members}
    taken: set[TopicPartition] = set()
    for member_id, target in targets.items():
        for tp in sorted(owned[member_id], key=lambda tp: (claims[tp] > 1, len(subscribers[tp[0]]), tp)):
            if len(target) == quotas[member_id]:
                break
            if tp not in taken:
                taken.add(tp)
                target.add(tp)
    return _spread(targets, counts, subscribers, owned)


def _quotas(members: list[MemberSpec], counts: dict[str, int], subscribers: dict[str, list[str]],
            owned: dict[str, set[TopicPartition]]) -> dict[str, int]:
    """The loads an assignment ignoring ownership gives, the larger ones of each subscription
    going to the members owning the most (ties by member_id)."""
    fresh = _spread({m.member_id: set() for m in members}, counts, subscribers, {m.member_id: set() for m in members})
    alike: dict[frozenset[str], list[str]] = {}
    for m in members:
        alike.setdefault(frozenset(t for t in m.topics if t in counts), []).append(m.member_id)
    quotas: dict[str, int] = {}
    for ids in alike.values():
        loads = sorted((len(fresh[member_id]) for member_id in ids), reverse=True)
        quotas.update(zip(sorted(ids, key=lambda member_id: (-len(owned[member_id]), member_id)), loads))
    return quotas


def _spread(targets: _Targets, counts: dict[str, int], subscribers: dict[str, list[str]],
            owned: dict[str, set[TopicPartition]]) -> _Targets:
    """Add the partitions no target holds, then even out the loads."""
    taken = set().union(*targets.values())
    every = (TopicPartition(topic, p) for topic, n in counts.items() for p in range(n))
    free = sorted((tp for tp in every if tp not in taken), key=lambda tp: (len(subscribers[tp[0]]), tp))
    for tp in free:
        targets[min(subscribers[tp[0]], key=lambda m: (len(targets[m]), tp not in owned[m], m))].add(tp)
    while (move := next(_improving_moves(targets, subscribers, owned), None)) is not None:
        tp, giver, taker = move
        targets[giver].remove(tp)
        targets[taker].add(tp)
    return targets


def _improving_moves(targets: _Targets, subscribers: dict[str, list[str]],
                     owned: dict[str, set[TopicPartition]]) -> Iterator[tuple[TopicPartition, str, str]]:
    """(partition, giver, taker) where the taker may read the partition and holds at least two fewer;
    fullest givers first, and partitions the giver did not own before preferred."""
    for giver in sorted(targets, key=lambda m: (-len(targets[m]), m)):
        for tp in sorted(targets[giver], key=lambda tp: (tp in owned[giver], tp)):
            taker = min(subscribers[tp[0]], key=lambda m: (len(targets[m]), m))
            if len(targets[taker]) + 2 <= len(targets[giver]):
                yield tp, giver, taker


_STRATEGIES: dict[str, Callable[[list[MemberSpec], dict[str, int], dict[str, list[str]]], _Targets]] = {
    "sticky": _sticky,
    "range": _range,
    "roundrobin": _roundrobin,
}
