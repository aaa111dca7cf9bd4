"""The rebalancing planner: which replicas move where so the cluster is balanced (issue 19).

A pure function of plain data, shared by `balance`, `decommission` and self-healing: it reads the
current replica lists (element 0 = preferred leader), the partitions' sizes in bytes, the registered
brokers (`BrokerSlot`) and the draining ones, and returns a `ReassignmentPlan`: the new replica list
of every partition that changes (Kafka's reassignment JSON) and its figures. The reassignment engine
executes it; nothing here knows of Raft, gRPC or the metadata log.

The rules, in order of priority:

1. Hard constraints, or the plan is refused at once (nothing moves): every partition keeps its
   replication factor, holds no broker twice, and ends only on *eligible* brokers (registered and not
   draining — draining and unregistered brokers end with nothing); every replica set spans
   min(rf, racks of the eligible brokers) distinct racks. Refused when a partition's rf exceeds the
   eligible brokers (InvalidReplicationFactorError) or when draining leaves too few racks, so that a
   partition would span fewer racks than the registered brokers allow (InvalidRequestError).
2. Replicas per eligible broker: max - min <= 1 where the rack constraint allows it.
3. Preferred leaders per eligible broker: max - min <= 1 where the replica sets allow it. Leadership
   is balanced by reordering replica lists only, which moves no data.
4. Bytes per broker: no move is made for bytes alone; they decide *which* replica a move takes (the
   one that leaves donor and receiver closest in bytes, then the smaller one).

Moves are minimal: a replica moves only off an ineligible broker, out of a rack it shares with
another replica of its set (when the set spans too few racks), or to balance, from a broker with at
least two replicas more than the receiver. Balancing first re-routes replicas the plan already moves
(no extra copy), then makes one direct move, and only where racks block every direct move, a chain
of moves through brokers that each give one replica and take one. A partition keeps every replica it
can; a newcomer takes its predecessor's place in the list; each partition gets one target list, so
no replica moves twice. Every step iterates in sorted order, so the same input gives the same plan,
and each phase stops only in a state where it has nothing to do, so planning again on the result
gives an empty plan.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from raftka.cluster.placement import BrokerSlot
from raftka.errors import InvalidReplicationFactorError, InvalidRequestError
from raftka.wire.reassignment import format_reassignment, parse_reassignment
from raftka.wire.structs import TopicPartition

ReplicaLists = Mapping[tuple[str, int], Sequence[int]]
"""Replica lists by (topic, partition), a TopicPartition or a plain tuple; element 0 is the preferred leader."""

_Step = tuple[int, tuple[str, int], int]
"""One replica move inside a chain: (giving broker, partition, taking broker)."""

_SHOWN = 5
"""How many offending partitions an error message names before it says how many more there are."""


@dataclass(frozen=True)
class ReassignmentPlan:
    """New replica lists for the partitions that change, and what the change costs and achieves.

    `targets` holds only partitions whose list differs from the current one. `replicas_moved` counts
    replicas a partition gains (each is one copy of the partition's log over the network);
    `bytes_moved` weighs each by its partition's size. The per-broker counts cover every broker that
    holds a replica before or after, and every eligible broker (with 0), so a drained broker shows 0.
    """

    targets: Mapping[tuple[str, int], tuple[int, ...]]
    replicas_moved: int
    bytes_moved: int
    replicas_before: Mapping[int, int]
    replicas_after: Mapping[int, int]
    leaders_before: Mapping[int, int]
    leaders_after: Mapping[int, int]

    @property
    def empty(self) -> bool:
        return not self.targets

    def apply(self, current: ReplicaLists) -> dict[tuple[str, int], tuple[int, ...]]:
        """The replica lists once the plan is done."""
        return {tp: self.targets.get(tp, tuple(replicas)) for tp, replicas in current.items()}

    def to_json(self) -> str:
        """Kafka's reassignment JSON (`raftka.wire.reassignment`), partitions in (topic, partition) order."""
        return json.dumps(format_reassignment(self.targets))

    @classmethod
    def from_json(cls, text: str, current: ReplicaLists, sizes: Mapping[tuple[str, int], int] | None = None,
                  eligible: Iterable[int] = ()) -> ReassignmentPlan:
        """The plan a reassignment JSON describes, its figures taken against `current`.

        Raises InvalidRequestError naming the first fault (`parse_reassignment`'s, or a partition not
        in `current`). Entries equal to the current list are dropped. Whether the brokers exist is
        the engine's check; `eligible` only adds zero rows to the figures.
        """
        targets, _ = parse_reassignment(text)
        for index, tp in enumerate(targets):
            if tp not in current:
                raise InvalidRequestError(f"partitions[{index}]: {_name(tp)} is not a partition of the cluster")
        return figures(current, targets, sizes, eligible)


def figures(current: ReplicaLists, targets: Mapping[tuple[str, int], Sequence[int]],
            sizes: Mapping[tuple[str, int], int] | None = None, eligible: Iterable[int] = ()) -> ReassignmentPlan:
    """The plan that moves `current` to `targets` (partitions absent from `targets` stay), with its figures."""
    sizes = sizes or {}
    changed = {tp: tuple(replicas) for tp, replicas in sorted(targets.items())
               if tuple(replicas) != tuple(current[tp])}
    after = {tp: changed.get(tp, tuple(replicas)) for tp, replicas in current.items()}
    gained = {tp: set(replicas) - set(current[tp]) for tp, replicas in changed.items()}
    brokers = set(eligible) | {b for lists in (current, after) for replicas in lists.values() for b in replicas}
    return ReassignmentPlan(
        targets=changed,
        replicas_moved=sum(len(new) for new in gained.values()),
        bytes_moved=sum(len(new) * sizes.get(tp, 0) for tp, new in gained.items()),
        replicas_before=_per_broker(brokers, (b for replicas in current.values() for b in replicas)),
        replicas_after=_per_broker(brokers, (b for replicas in after.values() for b in replicas)),
        leaders_before=_per_broker(brokers, (replicas[0] for replicas in current.values())),
        leaders_after=_per_broker(brokers, (replicas[0] for replicas in after.values())))


def plan_balance(current: ReplicaLists, brokers: Sequence[BrokerSlot], *, draining: Set[int] = frozenset(),
                 sizes: Mapping[tuple[str, int], int] | None = None) -> ReassignmentPlan:
    """The minimal plan that empties draining and unregistered brokers and balances the rest (the rules
    in the module docstring). A balanced cluster gives an empty plan. Raises InvalidRequestError for
    malformed input and the refusals the module docstring lists."""
    sizes = dict(sizes or {})
    _check_input(current, brokers, sizes)
    state = _State(current, brokers, draining, sizes)
    state.refuse_impossible()
    state.repair()
    state.balance_replicas()
    state.balance_leaders()
    return figures(current, state.current, sizes, state.eligible)


def plan_replace(current: ReplicaLists, old: int, new: int, brokers: Sequence[BrokerSlot],
                 sizes: Mapping[tuple[str, int], int] | None = None) -> ReassignmentPlan:
    """Broker `new` takes `old`'s place in every replica list (same position, so preferred leadership
    goes with it). Refused (InvalidRequestError) if `new` is not registered, already holds a replica of
    a partition `old` holds, or would leave a replica set spanning fewer racks than it needs and had."""
    sizes = dict(sizes or {})
    _check_input(current, brokers, sizes)
    rack = {b.broker_id: b.rack for b in brokers}
    if new not in rack:
        raise InvalidRequestError(f"broker {new} is not registered")
    if old == new:
        raise InvalidRequestError(f"broker {old} cannot replace itself")
    racks = len(set(rack.values()))
    targets: dict[tuple[str, int], tuple[int, ...]] = {}
    both, narrowed = [], []
    for tp, replicas in sorted(current.items()):
        if old not in replicas:
            continue
        if new in replicas:
            both.append(tp)
            continue
        target = tuple(new if b == old else b for b in replicas)
        need = min(len(target), racks)
        before = len({rack.get(b) for b in replicas})
        if len({rack[b] for b in target}) < min(need, before):
            narrowed.append(tp)
        targets[tp] = target
    if both:
        raise InvalidRequestError(f"broker {new} already holds a replica of {_names(both)}, "
                                  f"where broker {old} has one too")
    if narrowed:
        raise InvalidRequestError(f"replacing broker {old} (rack {rack.get(old, '?')!r}) by broker {new} "
                                  f"(rack {rack[new]!r}) would narrow the rack spread of {_names(narrowed)}")
    return figures(current, targets, sizes, rack)


class _State:
    """The replica lists being planned, with the per-broker counts every decision reads.

    Invariants between phases: `by_broker[b]` is the set of partitions whose list holds b, and
    `replicas`, `leaders` and `bytes` are the per-broker tallies of those lists (eligible brokers
    always present, at 0 if empty); `rack_counts[tp]` counts the racks of tp's eligible replicas
    (known once `repair` has run); `rerouted[b]` holds the partitions where b has a replica this plan
    moved in. `version[b]` grows whenever a list holding b changes, so a (donor, receiver) pair found
    without a valid move stays `blocked` until either version grows.
    """

    def __init__(self, current: ReplicaLists, brokers: Sequence[BrokerSlot], draining: Set[int],
                 sizes: Mapping[tuple[str, int], int]) -> None:
        self.rack = {b.broker_id: b.rack for b in brokers}
        self.draining = set(draining)
        self.eligible = sorted(b for b in self.rack if b not in self.draining)
        self.racks = len({self.rack[b] for b in self.eligible})
        self.sizes = sizes
        self.current = {tp: list(replicas) for tp, replicas in sorted(current.items())}
        self.original = {tp: frozenset(replicas) for tp, replicas in current.items()}
        self.by_broker: dict[int, set[tuple[str, int]]] = {b: set() for b in self.eligible}
        self.replicas: Counter[int] = Counter({b: 0 for b in self.eligible})
        self.leaders: Counter[int] = Counter({b: 0 for b in self.eligible})
        self.bytes: Counter[int] = Counter({b: 0 for b in self.eligible})
        self.rerouted: dict[int, set[tuple[str, int]]] = {b: set() for b in self.eligible}
        self.version: Counter[int] = Counter()
        self.blocked: dict[tuple[int, int], tuple[int, int]] = {}
        self.rack_counts: dict[tuple[str, int], Counter[str]] = {}
        for tp, replicas in self.current.items():
            for broker in replicas:
                self._tally(tp, broker, +1)
            self.leaders[replicas[0]] += 1

    def refuse_impossible(self) -> None:
        """Raise before anything moves if some partition cannot meet the hard constraints."""
        too_big = [tp for tp, replicas in self.current.items() if len(replicas) > len(self.eligible)]
        if too_big:
            rf = max(len(self.current[tp]) for tp in too_big)
            raise InvalidReplicationFactorError(
                f"{len(too_big)} partition(s) ({_names(too_big)}) have replication factor up to {rf} but only "
                f"{len(self.eligible)} broker(s) may hold replicas "
                f"(eligible: {_ids(self.eligible)}; draining: {_ids(self.draining)}; "
                f"unregistered: {_ids(self._unregistered())})")
        all_racks = len(set(self.rack.values()))
        narrowed = [tp for tp, replicas in self.current.items()
                    if min(len(replicas), self.racks) < min(len(replicas), all_racks)]
        if narrowed:
            left = sorted({self.rack[b] for b in self.eligible})
            raise InvalidRequestError(
                f"draining {_ids(self.draining)} leaves {len(left)} rack(s) ({', '.join(map(repr, left))}) of "
                f"{all_racks}: {_names(narrowed)} would span fewer racks than the registered brokers allow")

    def repair(self) -> None:
        """Move every replica off ineligible brokers and out of doubled racks, to the least loaded
        brokers that restore the rack spread; the newcomer takes the leaver's place in the list."""
        for tp, replicas in self.current.items():
            leaving = self._leaving(replicas)
            for position, broker in enumerate(replicas):
                if broker not in leaving:
                    continue
                others = [b for b in replicas if b not in leaving]
                rf = len(replicas)
                receiver = min((b for b in self.eligible if b not in replicas
                                and self._spread_possible(others + [b], rf)), key=self._receiver_order)
                self._move(tp, position, receiver)
                leaving.discard(broker)
            self.rack_counts[tp] = Counter(self.rack[b] for b in replicas)

    def balance_replicas(self) -> None:
        """Move replicas from the fullest brokers to the emptiest while two differ by two or more."""
        while self._move_one_replica():
            pass

    def balance_leaders(self) -> None:
        """Shift preferred leadership along chains of partitions (a leads p1 which b holds, b leads p2
        which c holds, ...) from a broker with most leaders to one with at least two fewer, until no
        chain exists: then max - min is as small as the replica sets allow. Shortest chains first."""
        while self._shift_one_leader_chain():
            pass

    def _leaving(self, replicas: list[int]) -> set[int]:
        """The replicas of a list that must move: those on ineligible brokers, then, while the rest
        cannot reach the rack spread, one from a doubled rack (the most loaded broker's)."""
        leaving = {b for b in replicas if b not in self.by_broker}
        while not self._spread_possible([b for b in replicas if b not in leaving], len(replicas)):
            kept = [b for b in replicas if b not in leaving]
            doubled = Counter(self.rack[b] for b in kept)
            leaving.add(max((b for b in kept if doubled[self.rack[b]] > 1),
                            key=lambda b: (self.replicas[b], self.bytes[b], b)))
        return leaving

    def _spread_possible(self, kept: list[int], rf: int) -> bool:
        """Whether `kept` can be completed to rf replicas spanning min(rf, racks) racks."""
        distinct = len({self.rack[b] for b in kept})
        return distinct + (rf - len(kept)) >= min(rf, self.racks)

    def _receiver_order(self, broker: int) -> tuple[int, int, int, int]:
        return self.replicas[broker], self.leaders[broker], self.bytes[broker], broker

    def _move_one_replica(self) -> bool:
        """One step that takes a replica off a donor and onto a broker with at least two fewer. Tried in
        order of cost: re-routing replicas this plan already moves (no extra copy), possibly through
        intermediate brokers; one direct move; with racks, a chain of moves through brokers the rack
        constraint makes the only way. False when none exists (the replica phase is done)."""
        fewest = min((self.replicas[b] for b in self.eligible), default=0)
        donors = [b for b in sorted(self.eligible, key=lambda b: (-self.replicas[b], -self.bytes[b], b))
                  if self.replicas[b] - fewest >= 2]
        for donor in donors:
            if self._move_along(self._path(donor, rerouted_only=True)):
                return True
        receivers = sorted(self.eligible, key=self._receiver_order)
        for donor in donors:
            for receiver in receivers:
                if self.replicas[donor] - self.replicas[receiver] < 2:
                    break
                versions = self.version[donor], self.version[receiver]
                if self.blocked.get((donor, receiver)) == versions:
                    continue
                candidates = [tp for tp in self.by_broker[donor] if self._can_replace(tp, donor, receiver)]
                if candidates:
                    tp = min(candidates, key=lambda tp: self._byte_order(tp, donor, receiver))
                    return self._move_along([(donor, tp, receiver)])
                self.blocked[donor, receiver] = versions
        return self.racks > 1 and any(self._move_along(self._path(donor, rerouted_only=False)) for donor in donors)

    def _path(self, donor: int, rerouted_only: bool) -> list[_Step]:
        """The shortest chain of moves (giver, partition, taker), each partition once, from `donor` to
        a broker with at least two replicas fewer, every intermediate broker giving one and taking one;
        only replicas this plan moves in if `rerouted_only`. Empty if there is none."""
        via: dict[int, tuple[int, tuple[str, int]] | None] = {donor: None}
        takers = sorted(self.eligible, key=self._receiver_order)
        queue = deque([donor])
        while queue:
            giver = queue.popleft()
            used = self._chain(via, giver)
            for tp in sorted(self.rerouted[giver] if rerouted_only else self.by_broker[giver]):
                if any(tp == step[1] for step in used):
                    continue
                for taker in takers:
                    if taker in via or not self._can_replace(tp, giver, taker):
                        continue
                    via[taker] = (giver, tp)
                    if self.replicas[taker] <= self.replicas[donor] - 2:
                        return self._chain(via, taker)
                    queue.append(taker)
        return []

    @staticmethod
    def _chain(via: Mapping[int, tuple[int, tuple[str, int]] | None], end: int) -> list[_Step]:
        steps = []
        while (step := via[end]) is not None:
            steps.append((step[0], step[1], end))
            end = step[0]
        return steps[::-1]

    def _move_along(self, steps: list[_Step]) -> bool:
        for giver, tp, taker in steps:
            self._move(tp, self.current[tp].index(giver), taker)
        return bool(steps)

    def _can_replace(self, tp: tuple[str, int], old: int, new: int) -> bool:
        replicas = self.current[tp]
        if new in replicas:
            return False
        old_rack, new_rack = self.rack[old], self.rack[new]
        if old_rack == new_rack:
            return True
        racks = self.rack_counts[tp]
        distinct = len(racks) - (racks[old_rack] == 1) + (new_rack not in racks)
        return distinct >= min(len(replicas), self.racks)

    def _byte_order(self, tp: tuple[str, int], donor: int, receiver: int) -> tuple[int, int, tuple[str, int]]:
        """The move leaving donor and receiver closest in bytes first, then the smaller partition."""
        size = self.sizes.get(tp, 0)
        return abs((self.bytes[donor] - size) - (self.bytes[receiver] + size)), size, tp

    def _shift_one_leader_chain(self) -> bool:
        led: dict[int, list[tuple[str, int]]] = {b: [] for b in self.eligible}
        for tp, replicas in self.current.items():
            led[replicas[0]].append(tp)
        for source in sorted(self.eligible, key=lambda b: (-self.leaders[b], b)):
            via: dict[int, tuple[int, tuple[str, int]] | None] = {source: None}
            queue = deque([source])
            while queue:
                broker = queue.popleft()
                for tp in led[broker]:
                    for follower in self.current[tp][1:]:
                        if follower in via:
                            continue
                        via[follower] = (broker, tp)
                        if self.leaders[follower] <= self.leaders[source] - 2:
                            self._shift_chain(via, follower)
                            return True
                        queue.append(follower)
        return False

    def _shift_chain(self, via: Mapping[int, tuple[int, tuple[str, int]] | None], end: int) -> None:
        broker = end
        while (step := via[broker]) is not None:
            previous, tp = step
            replicas = self.current[tp]
            replicas.remove(broker)
            replicas.insert(0, broker)
            self.leaders[broker] += 1
            self.leaders[previous] -= 1
            broker = previous

    def _move(self, tp: tuple[str, int], position: int, receiver: int) -> None:
        replicas = self.current[tp]
        leaver = replicas[position]
        self.version.update(replicas + [receiver])
        if leaver in self.rerouted:
            self.rerouted[leaver].discard(tp)
        if receiver not in self.original[tp]:
            self.rerouted[receiver].add(tp)
        if tp in self.rack_counts:
            racks = self.rack_counts[tp]
            racks[self.rack[receiver]] += 1
            racks[self.rack[leaver]] -= 1
            if not racks[self.rack[leaver]]:
                del racks[self.rack[leaver]]
        self._tally(tp, leaver, -1)
        self._tally(tp, receiver, +1)
        if position == 0:
            self.leaders[leaver] -= 1
            self.leaders[receiver] += 1
        replicas[position] = receiver

    def _tally(self, tp: tuple[str, int], broker: int, sign: int) -> None:
        self.replicas[broker] += sign
        self.bytes[broker] += sign * self.sizes.get(tp, 0)
        holders = self.by_broker.get(broker)
        if holders is not None:
            (holders.add if sign > 0 else holders.discard)(tp)

    def _unregistered(self) -> list[int]:
        return sorted({b for replicas in self.current.values() for b in replicas} - set(self.rack))


def _check_input(current: ReplicaLists, brokers: Sequence[BrokerSlot], sizes: Mapping[tuple[str, int], int]) -> None:
    ids = [b.broker_id for b in brokers]
    if repeated := sorted(b for b, n in Counter(ids).items() if n > 1):
        raise InvalidRequestError(f"broker(s) {_ids(repeated)} listed twice")
    for tp, replicas in current.items():
        if not replicas:
            raise InvalidRequestError(f"{_name(tp)} has no replicas")
        if len(set(replicas)) != len(replicas):
            raise InvalidRequestError(f"{_name(tp)} names a broker twice: {list(replicas)}")
    for tp, size in sizes.items():
        if tp not in current:
            raise InvalidRequestError(f"size given for {_name(tp)}, which is not a partition of the cluster")
        if not isinstance(size, int) or size < 0:
            raise InvalidRequestError(f"size of {_name(tp)} must be a non-negative integer, not {size!r}")


def _per_broker(brokers: Iterable[int], holders: Iterable[int]) -> dict[int, int]:
    counts = Counter(holders)
    return {b: counts[b] for b in sorted(brokers)}


def _name(tp: tuple[str, int]) -> str:
    return str(TopicPartition(*tp))


def _names(tps: Sequence[tuple[str, int]]) -> str:
    shown = ", ".join(_name(tp) for tp in tps[:_SHOWN])
    return shown + (f" and {len(tps) - _SHOWN} more" if len(tps) > _SHOWN else "")


def _ids(brokers: Iterable[int]) -> str:
    return ", ".join(map(str, sorted(brokers))) or "none"
