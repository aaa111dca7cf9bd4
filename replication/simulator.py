"""The seeded fault simulator: the proof that the Raft core is safe under faults and live after them.

One run (one seed) builds a :class:`~raftka.replication.simcluster` cluster of ``nodes`` voters
plus spare nodes (so membership can grow), then for ``steps`` ticks injects faults drawn from a
per-seed fault profile: message drop, delay, duplication and reordering, symmetric and asymmetric
partitions, crashes that lose every unpersisted write, restarts, disk losses (a node restarts
empty under its old id and rejoins by the rule of design note 14 in ``raft.py``; at most a minority
of every configuration's voters is ever without its state, since a majority that lost its state
has lost data whatever the protocol does), snapshots with log compaction,
membership changes (learners, promotions, demotions, removals), leadership transfers, ReadIndex
reads, quiescence, and a client proposing throughout. The safety checker runs after every event.
Then every fault heals, the client stops its background load, and the run must elect a leader
and commit a new "probe" proposal: replication may never stall for ``stall_ticks`` ticks, and the
probe must commit within ``liveness_cap`` ticks (a backlog built up under faults may take a while
to drain through a deliberately narrow flow-control window).

Every random choice comes from ``random.Random(seed)``, so a seed replays exactly; a failing run
prints the command that replays it with a trace.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from raftka.replication.entries import Entry
from raftka.replication.errors import RaftError
from raftka.replication.membership import ConfChange, ConfChangeOp, apply_conf_change, next_move_step
from raftka.replication.messages import Message
from raftka.replication.raft import RaftConfig, Role
from raftka.replication.simcluster import Network, SafetyChecker, SimNode, Violation
from raftka.replication.state import ConfState

PROBE = b"probe"


@dataclass(frozen=True)
class SimParams:
    nodes: int = 3
    steps: int = 300
    spares: int = 1
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    stall_ticks: int = 300
    """After healing, replication must progress at least once every ``stall_ticks`` ticks (30
    election timeouts: split votes are resolved by randomization, so a streak of them has a small
    geometric probability, highest when the configuration has shrunk to two voters)..."""
    liveness_cap: int = 3000
    """...and the post-heal probe must commit within ``liveness_cap`` ticks in all."""
    rejoin_rule: bool = True
    """False restarts a node that lost its disk as an ordinary empty node: the runs then show what
    the rejoin rule prevents (committed entries lost)."""


@dataclass(frozen=True)
class FaultProfile:
    """Per-tick probabilities (or bounds) of each fault; drawn per seed so runs differ in kind."""

    drop: float
    duplicate: float
    max_delay: int
    slow_persist: float
    crash: float
    crash_leader: float
    isolate_leader: float
    depose_unproven_leader: float
    """Per tick, chance to crash or isolate a leader that has not yet committed in its term."""
    restart: float
    partition: float
    heal: float
    snapshot: float
    conf_change: float
    transfer: float
    read: float
    propose: float
    quiesce: float
    move: float
    """Per tick, chance to start moving the group to another voter set, walked by `next_move_step`
    (as partition leaders do) and sometimes cancelled back to the voters it started from."""
    hold: float
    """Per tick, chance the leader's driver holds back or releases a learner's appends (the move
    throttle's flow control, `RaftNode.throttle`)."""
    lose_disk: float
    defer: float
    """Per tick, chance a node defers its next election timeout (`RaftNode.defer_election`, what a new
    group's non-preferred replicas do)."""

    @classmethod
    def draw(cls, rng: random.Random) -> FaultProfile:
        return cls(
            drop=rng.choice([0.0, 0.02, 0.1, 0.25]),
            duplicate=rng.choice([0.0, 0.02, 0.1]),
            max_delay=rng.choice([1, 2, 4, 8]),
            slow_persist=rng.choice([0.0, 0.3, 0.6]),
            crash=rng.choice([0.0, 0.01, 0.03]),
            crash_leader=rng.choice([0.0, 0.02, 0.05]),
            isolate_leader=rng.choice([0.0, 0.02, 0.05]),
            depose_unproven_leader=rng.choice([0.0, 0.1, 0.3]),
            restart=rng.choice([0.05, 0.2]),
            partition=rng.choice([0.0, 0.01, 0.03]),
            heal=rng.choice([0.02, 0.1]),
            snapshot=rng.choice([0.0, 0.02, 0.1]),
            conf_change=rng.choice([0.0, 0.01, 0.05]),
            transfer=rng.choice([0.0, 0.01, 0.03]),
            read=rng.choice([0.0, 0.05, 0.2]),
            propose=rng.choice([0.1, 0.4, 0.9]),
            quiesce=rng.choice([0.0, 0.05]),
            move=rng.choice([0.0, 0.01, 0.03]),
            hold=rng.choice([0.0, 0.05, 0.2]),
            lose_disk=rng.choice([0.0, 0.005, 0.02]),
            defer=rng.choice([0.0, 0.02, 0.1]),
        )


@dataclass
class SeedResult:
    seed: int
    violations: list[str]
    trace: list[str]
    stats: Counter[str] = field(default_factory=Counter)


class Simulation:
    def __init__(self, seed: int, params: SimParams, trace: bool = False) -> None:
        self.seed = seed
        self.params = params
        self.rng = random.Random(seed)
        self.faults = FaultProfile.draw(self.rng)
        self.trace: list[str] | None = [] if trace else None
        self.stats: Counter[str] = Counter()
        self.checker = SafetyChecker()
        self.net = Network()
        self.now = 0
        self.healed = False
        self.probe_committed = False
        self._probed_terms: set[int] = set()
        self._proposals = 0
        self._reads = 0
        self._move: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        """(target, the voters it started from) of the move in progress."""
        self._held: set[tuple[int, int]] = set()
        """(leader, learner) pairs whose appends that leader holds back."""
        voters = tuple(range(1, params.nodes + 1))
        inflight = self.rng.choice([1, 1, 2, 4, 64])
        msg_bytes = self.rng.choice([64, 64, 256, 1 << 20])
        broadcast_commit = self.rng.random() < 0.5
        self.nodes: dict[int, SimNode] = {}
        for i in range(1, params.nodes + params.spares + 1):
            config = RaftConfig(
                i,
                election_ticks=params.election_ticks,
                heartbeat_ticks=params.heartbeat_ticks,
                max_msg_bytes=msg_bytes,
                max_inflight_msgs=inflight,
                max_inflight_bytes=inflight * msg_bytes,
                broadcast_commit=broadcast_commit,
            )
            conf = ConfState(voters) if i <= params.nodes else ConfState()
            self.nodes[i] = SimNode(i, conf, config, seed)
        self._log(f"faults {self.faults}; inflight={inflight} max_msg_bytes={msg_bytes} "
                  f"broadcast_commit={broadcast_commit}")

    # ------------------------------------------------------------------ the run

    def run(self) -> SeedResult:
        try:
            for _ in range(self.params.steps):
                self.step()
            self.heal_all()
            self._check_liveness()
        except Violation as v:
            self._log(f"VIOLATION {v}")
        except Exception as exc:  # noqa: BLE001 - any crash of the core is a finding, reported with its trace
            what = f"exception in the core: {type(exc).__name__}: {exc}"
            self.checker.violations.append(what)
            self._log(what)
            if self.trace is not None:
                self.trace.extend(traceback.format_exc().splitlines())
        return SeedResult(self.seed, self.checker.violations, self.trace or [], self.stats)

    def step(self) -> None:
        self.now += 1
        if not self.healed:
            self._inject_faults()
        self._client()
        roles = self._roles() if self.trace is not None else None
        for n in self._live():
            assert n.core is not None
            n.core.tick()
        for m in self.net.take_due(self.now):
            self._deliver(m)
        for n in self._live():
            self._pump(n)
        if roles is not None:
            self._log_role_changes(roles)
        self.checker.check_leaders(self._live())

    def _check_liveness(self) -> None:
        """After healing the group never stalls for ``stall_ticks`` (see :meth:`_progress_marker`)
        and the probe proposed to the first leader commits within ``liveness_cap`` ticks."""
        p, healed_at = self.params, self.now
        marker, last_progress = self._progress_marker(), self.now
        while not self.probe_committed:
            self.step()
            now_marker = self._progress_marker()
            if self._advanced(marker, now_marker):
                self.stats["worst_stall"] = max(self.stats["worst_stall"], self.now - last_progress)
                last_progress = self.now
            marker = now_marker
            if self.now - last_progress > p.stall_ticks:
                self.checker.fail(f"liveness: no replication progress for {p.stall_ticks} ticks after healing")
            if self.now - healed_at > p.liveness_cap:
                self.checker.fail(f"liveness: the probe did not commit within {p.liveness_cap} ticks of healing")
        self.stats["liveness_ticks"] = self.now - healed_at

    def _progress_marker(self) -> tuple[int, int, int, int]:
        """(highest commit, leader id, leader term, sum of the leader's match indexes).

        A new leader commits nothing until a majority holds its no-op (Raft §5.4.2), so while it
        brings lagging followers up to date progress shows in their match indexes, not in commits.
        """
        leader = self._leader()
        if leader is None or leader.core is None:
            return self.checker.max_committed, 0, 0, 0
        matched = sum(pr.match for pr in leader.core.progress().values())
        return self.checker.max_committed, leader.id, leader.core.term, matched

    @staticmethod
    def _advanced(before: tuple[int, int, int, int], after: tuple[int, int, int, int]) -> bool:
        return after[0] > before[0] or (after[1:3] == before[1:3] and after[1] != 0 and after[3] > before[3])

    def heal_all(self) -> None:
        self.healed = True
        self.net.heal()
        for held_by, member in sorted(self._held):
            core = self.nodes[held_by].core
            if core is not None:
                core.throttle(member, 0, paused=False)
        self._held.clear()
        for n in self.nodes.values():
            if not n.alive:
                n.start()
        self._wake_all()
        self._log("heal everything; liveness phase")

    # ------------------------------------------------------------------ driver duties

    def _live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.core is not None]

    def _send(self, m: Message) -> None:
        if not self.healed and self.rng.random() < self.faults.drop:
            self._log(f"drop {m.describe()}")
            return
        delay = self.rng.randint(1, 2 if self.healed else self.faults.max_delay)
        self.net.send(m, self.now + delay)

    def _deliver(self, m: Message) -> None:
        dst = self.nodes[m.dst]
        if dst.core is None or (m.src, m.dst) in self.net.blocked:
            return
        if not self.healed and self.rng.random() < self.faults.duplicate:
            self.net.send(m, self.now + self.rng.randint(1, self.faults.max_delay))
        self.stats[m.type.name] += 1
        if self.trace is not None:
            self._log(f"deliver {m.describe()}")
        dst.core.step(m)

    def _pump(self, n: SimNode) -> None:
        """Complete a due Ready (persist, send, apply, advance) and start the next one."""
        for _ in range(8):
            if n.pending is not None:
                if n.pending_due > self.now:
                    return
                for m in n.complete_ready(self.checker, self._on_apply):
                    self._send(m)
            if n.take_ready() is None:
                return
            for m in n.send_early():
                self._send(m)
            slow = not self.healed and self.rng.random() < self.faults.slow_persist
            n.pending_due = self.now + (self.rng.randint(1, 3) if slow else 0)

    def _on_apply(self, node: SimNode, e: Entry) -> None:
        if self.healed and e.data.startswith(PROBE):
            self.probe_committed = True

    def _wake_all(self) -> None:
        """The driver's failure detector: any membership or connectivity event wakes idle groups."""
        for n in self._live():
            assert n.core is not None
            n.core.wake()

    def _leader(self) -> SimNode | None:
        leaders = [n for n in self._live() if n.core is not None and n.core.role == Role.LEADER]
        return max(leaders, key=lambda n: n.core.term if n.core else 0) if leaders else None

    # ------------------------------------------------------------------ the client

    def _client(self) -> None:
        leader = self._leader()
        if (self.healed and leader is not None and leader.core is not None
                and leader.core.term not in self._probed_terms):
            try:
                index = leader.core.propose(PROBE + b"-%d" % self.now)
                self._probed_terms.add(leader.core.term)
                self._log(f"client: liveness probe on {leader.id} at {index}")
            except RaftError:
                pass
        if not self.healed and self.rng.random() < self.faults.propose:
            believers = [n for n in self._live() if n.core is not None and n.core.role == Role.LEADER]
            target = self.rng.choice(believers if believers and self.rng.random() < 0.9 else self._live())
            assert target.core is not None
            self._proposals += 1
            data = b"c%d-%d" % (self.seed, self._proposals)
            try:
                index = target.core.propose(data * self.rng.choice([1, 1, 4, 20]))
                self.stats["proposed"] += 1
                self._log(f"client: propose on {target.id} at {index}")
            except RaftError as exc:
                self._log(f"client: propose on {target.id} refused ({type(exc).__name__})")
        if self.rng.random() < self.faults.read:
            node = self.rng.choice(self._live())
            assert node.core is not None
            self._reads += 1
            context = b"r%d" % self._reads
            self.checker.on_read_started(context)
            try:
                node.core.read_index(context)
                self.stats["reads"] += 1
                self._log(f"client: read {context.decode()} on {node.id}")
            except RaftError:
                self.checker.read_floor.pop(context, None)

    # ------------------------------------------------------------------ faults

    def _inject_faults(self) -> None:
        f, rng = self.faults, self.rng
        live = self._live()
        if rng.random() < f.crash and len(live) > 1:
            victim = rng.choice(live)
            victim.crash()
            self.stats["crashes"] += 1
            self._log(f"crash {victim.id}")
            self._wake_all()
        if rng.random() < f.lose_disk:
            self._lose_disk()
        for n in self.nodes.values():
            if not n.alive and rng.random() < f.restart:
                n.start()
                self._log(f"restart {n.id}")
                self._wake_all()
        self._depose_unproven_leaders()
        leader = self._leader()
        if leader is not None and len(self._live()) > 1 and rng.random() < f.crash_leader:
            leader.crash()
            self.stats["crashes"] += 1
            self._log(f"crash leader {leader.id}")
            self._wake_all()
        if leader is not None and rng.random() < f.isolate_leader:
            self.net.partition([[leader.id], [i for i in self.nodes if i != leader.id]])
            self._log(f"isolate leader {leader.id}")
            self._wake_all()
        elif rng.random() < f.partition:
            self._partition()
            self._wake_all()
        elif self.net.blocked and rng.random() < f.heal:
            self.net.heal()
            self._log("heal network")
            self._wake_all()
        if rng.random() < f.defer:
            node = rng.choice(self._live())
            if node.core is not None:
                ticks = rng.randint(1, 30)
                node.core.defer_election(ticks)
                self.stats["deferrals"] += 1
                self._log(f"defer election {node.id} by {ticks} ticks")
        if rng.random() < f.snapshot:
            node = rng.choice(self._live())
            if node.snapshot_and_compact(keep=rng.randint(0, 3)):
                self.stats["snapshots"] += 1
                self._log(f"snapshot {node.id} at {node.sm_index}")
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        self._throttle(leader)
        if self._move is None and rng.random() < f.move:
            voters = leader.core.conf_state.voters
            self._move = (tuple(rng.sample(sorted(self.nodes), len(voters))), voters)
            self.stats["moves"] += 1
            self._log(f"move started: {list(voters)} -> {list(self._move[0])}")
        if self._move is not None:
            self._step_move(leader)
        elif rng.random() < f.conf_change:
            self._conf_change(leader)
        if rng.random() < f.transfer:
            target = rng.choice(leader.core.conf_state.voters)
            try:
                leader.core.transfer_leadership(target)
                self.stats["transfers"] += 1
                self._log(f"transfer leadership {leader.id} -> {target}")
            except RaftError:
                pass
        if rng.random() < f.quiesce and leader.core.quiesce():
            self.stats["quiesced"] += 1
            self._log(f"quiesce group at leader {leader.id}")

    def _step_move(self, leader: SimNode) -> None:
        """The leader's move executor (cluster/reassignment.py), one step per tick; a cancel (2% a
        tick) turns the target back to the voters the move started from."""
        core = leader.core
        assert core is not None and self._move is not None
        target, original = self._move
        if target != original and self.rng.random() < 0.02:
            self._move = (original, original)
            self._log(f"move cancelled: back to {list(original)}")
            return
        conf = core.conf_state
        if conf != core.conf_state_at(core.commit_index):
            return
        in_sync = [i for i, pr in core.progress().items()
                   if i == leader.id or (pr.recent_active and pr.match >= core.commit_index)]
        step = next_move_step(leader.id, target, set(conf.voters), set(conf.learners), in_sync)
        if isinstance(step, ConfChange) and not self._keeps_lost_state_minority(conf, step):
            return
        try:
            if isinstance(step, ConfChange):
                index = core.propose_conf_change(step)
                self._log(f"move step on {leader.id}: {step} at {index}")
            elif step is not None:
                core.transfer_leadership(step)
                self._log(f"move step: transfer leadership {leader.id} -> {step}")
            elif set(conf.voters) == set(target) and not conf.learners:
                self.stats["moves_completed"] += 1
                self._log(f"move completed: voters {list(conf.voters)}")
                self._move = None
        except RaftError as exc:
            self._log(f"move step on {leader.id}: {step} refused ({type(exc).__name__})")

    def _throttle(self, leader: SimNode) -> None:
        """The move throttle's flow control: hold or release a learner's appends at random; a member
        that became a voter is released (the driver throttles learners only)."""
        core = leader.core
        assert core is not None
        learners = core.conf_state.learners
        for held_by, member in sorted(self._held):
            if held_by == leader.id and member not in learners:
                core.throttle(member, 0, paused=False)
                self._held.discard((held_by, member))
        if learners and self.rng.random() < self.faults.hold:
            member = self.rng.choice(learners)
            paused = (leader.id, member) not in self._held
            core.throttle(member, self.rng.choice([0, 64, 1024]), paused=paused)
            (self._held.add if paused else self._held.discard)((leader.id, member))
            self.stats["holds"] += paused
            self._log(f"{'hold' if paused else 'release'} learner {member} on {leader.id}")

    def _lose_disk(self) -> None:
        """Crash a node (live or not, but never the last live one) and lose its disk, unless that
        could leave a majority of some voter configuration without its state
        (:meth:`_lost_state_minority`)."""
        spare_live = len(self._live()) > 1
        candidates = [
            n
            for n in self.nodes.values()
            if not n.lost_state and (spare_live or not n.alive) and self._lost_state_minority({n.id})
        ]
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        victim.lose_disk(self.checker.max_committed, self.params.rejoin_rule)
        self.stats["disk_losses"] += 1
        self._log(f"lose the disk of {victim.id}")
        self._wake_all()

    def _lost_state_minority(self, also: set[int], conf: ConfState | None = None) -> bool:
        """Whether the nodes without their state (plus ``also``) stay a minority of the voters of
        every configuration any node holds (and of ``conf``, a change about to be proposed)."""
        lost = also | {n.id for n in self.nodes.values() if n.lost_state}
        confs = [n.latest_conf() for n in self.nodes.values()] + ([conf] if conf is not None else [])
        return all(2 * len(lost.intersection(c.voters)) < len(c.voters) for c in confs if c.voters)

    def _keeps_lost_state_minority(self, conf: ConfState, change: ConfChange) -> bool:
        try:
            return self._lost_state_minority(set(), apply_conf_change(conf, change))
        except RaftError:
            return True

    def _depose_unproven_leaders(self) -> None:
        """Crash or isolate leaders that have not yet committed an entry of their own term.

        That window (a new leader still bringing others up to its log) is where the histories of
        the paper's Figures 7 and 8 arise: divergent uncommitted suffixes of different terms.
        """
        for n in self._live():
            core = n.core
            if core is None or core.role != Role.LEADER or core.term_of(core.commit_index) == core.term:
                continue
            if self.rng.random() >= self.faults.depose_unproven_leader:
                continue
            if self.rng.random() < 0.5 and len(self._live()) > 1:
                n.crash()
                self.stats["crashes"] += 1
                self._log(f"crash new leader {n.id}")
            else:
                self.net.partition([[n.id], [i for i in self.nodes if i != n.id]])
                self._log(f"isolate new leader {n.id}")
            self._wake_all()

    def _partition(self) -> None:
        ids = list(self.nodes)
        self.rng.shuffle(ids)
        kind = self.rng.choice(["split", "isolate", "one-way", "one-link"])
        cut = self.rng.randint(1, len(ids) // 2)
        a, b = ids[:cut], ids[cut:]
        if kind == "split":
            self.net.partition([a, b])
        elif kind == "isolate":
            self.net.partition([[ids[0]], ids[1:]])
        elif kind == "one-way":
            self.net.blocked = {(x, y) for x in a for y in b}
        else:
            self.net.blocked = {(ids[0], ids[1])}
        self._log(f"partition {kind}: blocked {sorted(self.net.blocked)}")

    def _conf_change(self, leader: SimNode) -> None:
        assert leader.core is not None
        conf = leader.core.conf_state
        outsiders = [i for i in self.nodes if i not in conf.voters and i not in conf.learners]
        n, rng = self.params.nodes, self.rng
        options: list[ConfChange] = [ConfChange(ConfChangeOp.ADD_LEARNER, i) for i in outsiders]
        if len(conf.voters) <= n:
            options += [ConfChange(ConfChangeOp.ADD_VOTER, i) for i in conf.learners]
        if len(conf.voters) >= n:
            options += [ConfChange(ConfChangeOp.REMOVE, i) for i in conf.voters]
            options += [ConfChange(ConfChangeOp.ADD_LEARNER, i) for i in conf.voters]
        options += [ConfChange(ConfChangeOp.REMOVE, i) for i in conf.learners]
        options = [c for c in options if self._keeps_lost_state_minority(conf, c)]
        if not options:
            return
        change = rng.choice(options)
        try:
            index = leader.core.propose_conf_change(change)
            self.stats["conf_changes"] += 1
            self._log(f"conf change on {leader.id}: {change} at {index}")
        except RaftError as exc:
            self._log(f"conf change on {leader.id}: {change} refused ({type(exc).__name__})")

    # ------------------------------------------------------------------ tracing

    def _log(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(f"t={self.now} {line}")

    def _roles(self) -> dict[int, tuple[Role, int] | None]:
        return {i: (n.core.role, n.core.term) if n.core else None for i, n in self.nodes.items()}

    def _log_role_changes(self, before: dict[int, tuple[Role, int] | None]) -> None:
        for i, now in self._roles().items():
            if now is not None and now != before.get(i):
                self._log(f"node {i} is {now[0].value} at term {now[1]}")


def run_seed(seed: int, params: SimParams, trace: bool = False) -> SeedResult:
    return Simulation(seed, params, trace).run()


def replay_command(seed: int, params: SimParams) -> str:
    rule = "" if params.rejoin_rule else " --no-rejoin-rule"
    return f"scripts/raft-sim --seeds 1 --first-seed {seed} --nodes {params.nodes} --steps {params.steps}{rule} --trace"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raft-sim", description="Seeded fault simulator for the Raftka Raft core.")
    parser.add_argument("--seeds", type=int, required=True, help="number of seeds (runs)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--steps", type=int, default=SimParams.steps, help="fault-injection ticks per run")
    parser.add_argument("--trace", action="store_true", help="print the full event trace of every run")
    parser.add_argument(
        "--no-rejoin-rule",
        action="store_true",
        help="restart nodes that lost their disk without the rejoin rule (shows what it prevents)",
    )
    args = parser.parse_args(argv)
    params = SimParams(nodes=args.nodes, steps=args.steps, rejoin_rule=not args.no_rejoin_rule)
    started = time.monotonic()
    failed = 0
    totals: Counter[str] = Counter()
    worst: Counter[str] = Counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        result = run_seed(seed, params, trace=args.trace)
        for key in ("liveness_ticks", "worst_stall"):
            worst[key] = max(worst[key], result.stats.pop(key, 0))
        totals.update(result.stats)
        if args.trace:
            print("\n".join(result.trace))
        if result.violations:
            failed += 1
            print(f"seed {seed}: VIOLATION: {'; '.join(result.violations)}")
            print(f"  replay: {replay_command(seed, params)}")
            if not args.trace:
                tail = run_seed(seed, params, trace=True).trace[-40:]
                print("\n".join("  | " + line for line in tail))
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{k}={v}" for k, v in sorted(totals.items()))
    print(
        f"# {elapsed:.1f}s; after healing: probe committed within {worst['liveness_ticks']} ticks at worst, "
        f"longest stall {worst['worst_stall']} ticks; totals: {summary}"
    )
    print(f"{args.seeds} runs, {failed} violations")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
