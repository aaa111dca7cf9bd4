"""A consumer group under randomized churn on real brokers: the group protocol end to end.

Members are group_worker.py processes (Python `Consumer`s that commit after every poll). While a
producer writes throughout, a plan of faults drawn from a seed runs: members SIGKILLed, SIGTERMed
(no handler: no commit, no leave) or stopped gracefully, new members joining, members frozen
(SIGSTOP) briefly or past their session timeout, members stalled in processing past
max_poll_interval (SIGUSR1), the coordinator's broker SIGKILLed and restarted, and the coordinator's
partition handed back to its preferred leader (a graceful leadership transfer). Then:

- every acknowledged record was processed by some member: at least once, never lost (a crashed,
  expired or stalled member's uncommitted records may be processed again by another);
- within each stretch a member owns a partition, it processes that partition's records in order
  and without gaps, and only records of partitions it owns;
- no partition is held by two members at once as the coordinator reports it (DescribeGroup, polled
  throughout), and no two members process the same partition at the same time, except for the one
  batch a member frozen past max_poll_interval may process as it thaws (`_first_line_after`);
- within the session timeout and SETTLE_S of the last fault, every partition is owned by a live
  member and committed up to its high watermark (lag 0).

The plan is a function of the seed and the number of steps (timings still vary between runs): a
failure prints the command that replays it, `RAFTKA_CHURN_SEED=N scripts/test <test id> ...`. The
slow test replays REGRESSION_SEEDS and draws fresh seeds, unless RAFTKA_CHURN_SEED is set; the
default suite runs one fixed seed whose six steps kill a member, stall one, freeze one past its
session, add one, kill the coordinator's broker and hand its partition back.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raftka import Admin
from raftka.client.local import LocalBroker
from raftka.cluster.coordinator import group_partition
from raftka.errors import RaftkaError

WORKER = Path(__file__).with_name("group_worker.py")
TOPIC, GROUP, OFFSETS = "churn", "churners", "__consumer_offsets"
PARTITIONS = 6
SESSION_MS = 6_000
MAX_POLL_MS = 3_000
STALL_MS = MAX_POLL_MS + 2_000
SETTLE_S = 15.0
"""Allowance past the session timeout for the group to settle after the last fault: the last expiry,
then a revoke-release-grant round and the new owners catching up (on two shared cores)."""
INITIAL_MEMBERS = 3
MAX_MEMBERS = 5
MIN_MEMBERS = 2
SEED_ENV = "RAFTKA_CHURN_SEED"


@dataclass(frozen=True)
class Step:
    kind: str
    gap_s: float
    """Pause before the step."""
    pick: float
    """Which live member it hits: index int(pick * number of live members)."""
    hold_s: float
    """How long a member stays frozen or the coordinator's broker stays down."""


def make_plan(seed: int, steps: int) -> list[Step]:
    """The faults, in order: a function of the seed. At least MIN_MEMBERS members stay live (not
    killed or stopped), at most MAX_MEMBERS run, and a graceful hand-back of the coordinator's
    partition only follows a coordinator kill (which leaves it on a non-preferred broker)."""
    rng = random.Random(seed)
    live, handback_due, plan = INITIAL_MEMBERS, False, []
    for _ in range(steps):
        kinds = ["freeze_short", "freeze_mid", "freeze_long", "stall", "coordinator_kill"]
        if live < MAX_MEMBERS:
            kinds += ["join", "join"]
        if live > MIN_MEMBERS:
            kinds += ["kill", "terminate", "stop"]
        if handback_due:
            kinds += ["coordinator_handback"] * 3
        kind = rng.choice(kinds)
        live += {"join": 1, "kill": -1, "terminate": -1, "stop": -1}.get(kind, 0)
        handback_due = kind == "coordinator_kill" or handback_due and kind != "coordinator_handback"
        hold = {"freeze_short": rng.uniform(0.3, MAX_POLL_MS / 2000),
                "freeze_mid": rng.uniform(MAX_POLL_MS / 1000 + 0.5, SESSION_MS / 1000 - 0.5),
                "freeze_long": rng.uniform(SESSION_MS / 1000 + 2, SESSION_MS / 1000 + 5),
                "coordinator_kill": rng.uniform(0.5, 3.0)}.get(kind, 0.0)
        plan.append(Step(kind, rng.uniform(0.3, 2.5), rng.random(), hold))
    return plan


@dataclass
class Member:
    """A group_worker.py process, the lines it printed, and what the test did to it."""

    name: str
    process: subprocess.Popen[str]
    lines: list[dict] = field(default_factory=list)
    ended_at: float | None = None
    """When it was killed or terminated (it can process nothing after)."""
    stopping: bool = False
    frozen: list[tuple[float, float]] = field(default_factory=list)
    """(SIGSTOP, SIGCONT) times of freezes past max_poll_interval (the member may have been dropped),
    each taken before its signal, so no line the member printed awake falls inside one."""
    thaws_at: float = 0.0
    """When its current freeze ends (a frozen member is not frozen or stalled again meanwhile)."""

    @classmethod
    def start(cls, name: str, bootstrap: str) -> Member:
        process = subprocess.Popen(
            [sys.executable, str(WORKER), bootstrap, TOPIC, GROUP, "--session-ms", str(SESSION_MS),
             "--max-poll-ms", str(MAX_POLL_MS), "--stall-ms", str(STALL_MS)],
            stdout=subprocess.PIPE, text=True)
        member = cls(name, process)
        threading.Thread(target=member._read, daemon=True).start()
        return member

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    @property
    def live(self) -> bool:
        return self.ended_at is None and not self.stopping and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)


class Churn:
    """Runs a plan against a cluster and a group, recording what the checks need."""

    def __init__(self, brokers: list[LocalBroker]) -> None:
        self.brokers = brokers
        self.bootstrap = ",".join(b.address for b in brokers)
        self.members: list[Member] = []
        self.timers: list[threading.Timer] = []
        self.snapshots: list[tuple[float, int, dict[str, frozenset[int]]]] = []
        """DescribeGroup answers: (time, coordinator, member -> partitions it holds)."""
        self.log: list[str] = []
        self._watching = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def say(self, text: str) -> None:
        self.log.append(f"{time.monotonic():.2f} {text}")

    def join(self) -> Member:
        member = Member.start(f"m{len(self.members)}", self.bootstrap)
        self.members.append(member)
        self.say(f"join {member.name}")
        return member

    def live(self) -> list[Member]:
        return [m for m in self.members if m.live]

    def start_watching(self) -> None:
        self._watching.set()
        self._watcher.start()

    def stop_watching(self) -> None:
        if self._watching.is_set():
            self._watching.clear()
            self._watcher.join(timeout=30)

    def _watch(self) -> None:
        with Admin(self.bootstrap, request_timeout_ms=3000) as admin:
            while self._watching.is_set():
                try:
                    info = admin.describe_group(GROUP)
                except RaftkaError:
                    pass
                else:
                    self.snapshots.append((time.monotonic(), info.coordinator, {
                        m.member_id: frozenset(tp.partition for tp in m.owned) for m in info.members}))
                time.sleep(0.2)

    def run(self, step: Step) -> None:
        time.sleep(step.gap_s)
        kind = step.kind
        live = self.live()
        if kind.startswith("freeze") or kind == "stall":
            live = [m for m in live if m.thaws_at < time.monotonic()]
        victim = live[int(step.pick * len(live))] if live else None
        if kind == "join":
            self.join()
        elif kind in ("kill", "terminate") and victim is not None:
            victim.signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            victim.ended_at = time.monotonic()
            self.say(f"{kind} {victim.name}")
        elif kind == "stop" and victim is not None:
            victim.signal(signal.SIGINT)
            victim.stopping = True
            self.say(f"stop {victim.name}")
        elif kind.startswith("freeze") and victim is not None:
            victim.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            victim.thaws_at = stopped + step.hold_s
            self.say(f"{kind} {victim.name} for {step.hold_s:.1f}s")

            def thaw(member: Member = victim, dropped: bool = kind != "freeze_short") -> None:
                if dropped:
                    member.frozen.append((stopped, time.monotonic()))
                member.signal(signal.SIGCONT)
            timer = threading.Timer(step.hold_s, thaw)
            timer.start()
            self.timers.append(timer)
        elif kind == "stall" and victim is not None:
            victim.signal(signal.SIGUSR1)
            self.say(f"stall {victim.name}")
        elif kind == "coordinator_kill":
            broker = self.coordinator_broker()
            broker.kill()
            self.say(f"coordinator_kill broker {broker.broker_id}")
            time.sleep(step.hold_s)
            broker.start()
            self.say(f"restarted broker {broker.broker_id}")
        elif kind == "coordinator_handback":
            with Admin(self.bootstrap) as admin:
                moves = [(m.from_broker, m.to_broker) for m in admin.elect_preferred_leaders(OFFSETS)
                         if m.partition == self.offsets_partition()]
            self.say(f"coordinator_handback {moves}")

    def offsets_partition(self) -> int:
        with Admin(self.bootstrap) as admin:
            return group_partition(GROUP, len(admin.describe_topic(OFFSETS).partitions))

    def coordinator_broker(self) -> LocalBroker:
        deadline = time.monotonic() + 30
        while True:
            try:
                with Admin(self.bootstrap, request_timeout_ms=5000) as admin:
                    leader = admin.describe_topic(OFFSETS).partitions[self.offsets_partition()].leader
            except RaftkaError:
                leader = -1
            found = [b for b in self.brokers if b.broker_id == leader and b.alive()]
            if found:
                return found[0]
            assert time.monotonic() < deadline, "the coordinator's partition has no leader"
            time.sleep(0.2)

    def finish(self) -> float:
        """Thaw every frozen member; the time of the last fault."""
        for timer in self.timers:
            timer.join()
        return time.monotonic()


def settled(churn: Churn) -> str:
    """Why the group has not settled yet ('' once it has): every partition held by a live member
    and committed up to its high watermark."""
    with Admin(churn.bootstrap, request_timeout_ms=5000) as admin:
        info = admin.describe_group(GROUP)
    if len(info.members) != len(churn.live()):
        return f"{len(info.members)} members, {len(churn.live())} live processes"
    lags = {lag.tp.partition: lag for lag in info.partitions if lag.tp.topic == TOPIC}
    unowned = sorted(p for p in range(PARTITIONS) if p not in lags or lags[p].owner is None)
    behind = {p: (lag.committed, lag.log_end_offset) for p, lag in lags.items() if lag.committed != lag.log_end_offset}
    if unowned or behind:
        return f"unowned partitions {unowned}; (committed, end) behind: {behind}"
    return ""


def stints(member: Member) -> list[tuple[int, list[dict]]]:
    """Each stretch the member owned a partition: (partition, its records in order), checking on the
    way that every record is of a partition the member owns."""
    owned: dict[int, list[dict]] = {}
    done: list[tuple[int, list[dict]]] = []
    for line in list(member.lines):
        if "assigned" in line:
            owned.update((p, []) for p in line["assigned"])
        elif "revoked" in line:
            done.extend((p, owned.pop(p)) for p in line["revoked"] if p in owned)
        elif "p" in line:
            assert line["p"] in owned, f"{member.name} processed {line['p']}/{line['o']} without owning it"
            owned[line["p"]].append(line)
    return done + list(owned.items())


def check(churn: Churn, acked: list[tuple[int, int, bytes]]) -> None:
    processed = {(line["p"], line["o"], line["v"]) for m in churn.members for line in list(m.lines) if "p" in line}
    lost = [(p, o, v) for p, o, v in acked if (p, o, v.decode()) not in processed]
    assert not lost, f"{len(lost)} acknowledged records were never processed, first {lost[:5]}"
    spans: dict[int, list[tuple[float, float, str]]] = {}
    for member in churn.members:
        zombie = [(thawed, _first_line_after(member, thawed)) for _, thawed in member.frozen]
        for partition, records in stints(member):
            offsets = [r["o"] for r in records]
            assert all(b == a + 1 for a, b in zip(offsets, offsets[1:])), \
                f"{member.name} read {TOPIC}/{partition} out of order or with gaps: {offsets[:50]}"
            awake = [r["t"] for r in records if not any(start <= r["t"] <= end for start, end in zombie)]
            if awake:
                spans.setdefault(partition, []).append((awake[0], awake[-1], member.name))
    by_name = {m.name: m for m in churn.members}
    for partition, stretches in spans.items():
        stretches.sort()
        for (_, end, a), (start, _, b) in zip(stretches, stretches[1:]):
            assert start > end, f"{a} and {b} both processed {TOPIC}/{partition} at {start:.2f}-{end:.2f}:\n" + \
                "\n".join(f"{name} (frozen {by_name[name].frozen}): {line}" for name in (a, b)
                          for line in _lines_about(by_name[name], partition, start - 1, end + 1))
    for when, coordinator, held in churn.snapshots:
        taken = [p for ps in held.values() for p in ps]
        assert len(taken) == len(set(taken)), f"at {when:.2f} coordinator {coordinator} let two members hold " \
                                              f"one partition: {held}"


def _lines_about(member: Member, partition: int, since: float, until: float) -> list[dict]:
    """The member's rebalance and commit lines, and its first and last record of `partition`, in
    a time window (what an overlap report needs)."""
    lines = [line for line in list(member.lines) if since <= line["t"] <= until]
    records = [line for line in lines if line.get("p") == partition]
    return [line for line in lines if "p" not in line][:12] + records[:1] + records[-1:]


def _first_line_after(member: Member, moment: float) -> float:
    """The end of the batch a member frozen past max_poll_interval processed when it thawed: its first
    commit or rebalance line after `moment`. That batch may have been fetched before the freeze, and
    the group may have dropped the member meanwhile, so another member may be processing the same
    records (they are read again, never lost); the member's next poll must learn it was dropped."""
    return next((line["t"] for line in list(member.lines) if line["t"] > moment
                 and line.keys() & {"commit", "commit_failed", "revoked", "assigned"}), float("inf"))


def run_churn(start_cluster, ack_recorder, seed: int, steps: int, request) -> None:
    replay = f"{SEED_ENV}={seed} scripts/test '{request.node.nodeid}'" + (" -m slow" if "slow" in request.keywords
                                                                           else "")
    print(f"churn seed {seed}, {steps} steps; replay: {replay}")
    plan = make_plan(seed, steps)
    brokers = start_cluster(3)
    churn = Churn(brokers)
    with Admin(churn.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS)
    producer = ack_recorder(churn.bootstrap, TOPIC, workers=1, pace_s=0.2, keyed=True, linger_ms=5)
    try:
        for _ in range(INITIAL_MEMBERS):
            churn.join()
        churn.start_watching()
        for step in plan:
            churn.run(step)
        last_fault = churn.finish()
        acked = producer.stop()
        churn.say(f"last fault; {len(acked)} records acknowledged")
        deadline = last_fault + SESSION_MS / 1000 + SETTLE_S
        why = "not checked yet"
        while why and time.monotonic() < deadline:
            try:
                why = settled(churn)
            except RaftkaError as exc:
                why = str(exc)
            time.sleep(0.2)
        churn.say(f"settled after {time.monotonic() - last_fault:.1f}s" if not why else f"not settled: {why}")
        churn.stop_watching()
        assert not why, f"the group did not settle within the session timeout + {SETTLE_S}s: {why}"
        check(churn, acked)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nplan: {plan}\nevents:\n" + "\n".join(churn.log) + f"\nreplay: {replay}") \
            from None
    finally:
        print("events:", *churn.log, sep="\n")
        producer.stop()
        churn.stop_watching()
        for member in churn.members:
            member.signal(signal.SIGCONT)
            member.signal(signal.SIGKILL)
            member.process.wait(timeout=30)


def seeds(default: list[int]) -> list[int]:
    chosen = os.environ.get(SEED_ENV)
    return [int(chosen)] if chosen else default


@pytest.mark.parametrize("seed", seeds([208]))
def test_a_short_churn_loses_nothing_and_settles(start_cluster, ack_recorder, request, seed: int) -> None:
    run_churn(start_cluster, ack_recorder, seed, 6, request)


REGRESSION_SEEDS = [644507324]
"""Seeds that found a bug, replayed by every slow run. 644507324 freezes members past their session
again and again: a thawed member went on processing partitions already given to others, a batch
after another, until its heartbeat thread learnt it had been dropped (5 of 9 runs), before poll()
checked the session itself."""


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds(REGRESSION_SEEDS + [random.randrange(1 << 30) for _ in range(2)]))
def test_churn_loses_nothing_and_settles(start_cluster, ack_recorder, request, seed: int) -> None:
    run_churn(start_cluster, ack_recorder, seed, 30, request)
