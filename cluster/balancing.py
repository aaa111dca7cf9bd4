"""The planner fed from a broker's state, and the cluster's opt-in self-healing.

`plan` runs the rebalancing planner (`cluster/rebalance.py`) on what this broker knows: every
partition's replicas from the metadata, the registered brokers with their racks, and partition sizes
as its own replicas know them (sizes only break ties, so a partial view is enough).

Self-healing (off unless configured) runs on the metadata leader, with the same planner and the
same move engine an operator's `raftka cluster balance` uses:

* `self_heal_after_s` > 0: the replicas of a broker the leader has not reached for that long move to
  the other brokers (the broker stays registered: it is not decommissioned, and if it returns it
  simply holds fewer replicas until the next balance). One broker's failure at a time: a partition
  with a majority of its replicas down cannot change its members anyway.
* `balance_on_join`: once a newly registered broker is reachable, the cluster is balanced onto it.

Either acts only when no move is in progress, so it never fights an operator's moves or its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from raftka.cluster.broker_service import BrokerState
from raftka.cluster.placement import BrokerSlot
from raftka.cluster.rebalance import ReassignmentPlan, plan_balance
from raftka.errors import RaftkaError
from raftka.replication.raft import Role

log = logging.getLogger(__name__)


def plan(state: BrokerState, draining: Collection[int] = ()
         ) -> tuple[dict[tuple[str, int], tuple[int, ...]], ReassignmentPlan]:
    """(every partition's replicas, the planner's plan) with the registered draining brokers and
    `draining` emptied. Raises the planner's typed errors when it cannot be done."""
    registered = state.metadata.brokers()
    current = {(topic.name, p): replicas for topic in state.metadata.topics()
               for p, replicas in enumerate(topic.replicas)}
    slots = [BrokerSlot(b, state.directory.rack_of(b)) for b in sorted(registered)]
    sizes = {(topic, p): replica.size_bytes for topic, p, replica in state.partitions.replicas()}
    emptied = {b for b, r in registered.items() if r.draining} | set(draining)
    return current, plan_balance(current, slots, draining=emptied, sizes=sizes)


class SelfHealer:
    def __init__(self, state: BrokerState, *, self_heal_after_s: float, balance_on_join: bool) -> None:
        self._state = state
        self._after_s = self_heal_after_s
        self._balance_on_join = balance_on_join
        self._known: set[int] | None = None
        self._joined: set[int] = set()

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.step()
            except RaftkaError as exc:
                log.warning("self-healing step failed, will retry: %s", exc)

    async def step(self) -> None:
        """One look at the cluster, on the metadata leader only."""
        state = self._state
        registered = set(state.metadata.brokers())
        self._joined = (self._joined | (registered - (self._known if self._known is not None else registered))) \
            & registered
        self._known = registered
        if state.controller.replica.node.role != Role.LEADER or state.metadata.moves():
            return
        if self._after_s > 0:
            now = time.time()
            gone = {b for b in registered if b != state.config.broker_id
                    and (since := state.down_since(b)) is not None and now - since >= self._after_s
                    and state.metadata.hosting(b)}
            if gone:
                await self._move(min(gone), f"broker unreachable for over {self._after_s:.0f}s")
                return
        if self._balance_on_join and self._joined:
            joined, self._joined = self._joined, set()
            await self._move(None, f"broker(s) {sorted(joined)} joined")

    async def _move(self, dead: int | None, why: str) -> None:
        current, planned = plan(self._state, {dead} if dead is not None else set())
        moves = {tp: target for tp, target in planned.targets.items() if dead is None or dead in current[tp]}
        if not moves:
            return
        log.info("self-healing moves=%d reason=%s", len(moves), why)
        await self._state.controller.reassign(moves, 0, self._state.metadata.placement_offset)
