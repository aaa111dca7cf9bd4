"""Consumer groups end to end: real brokers, consumers in their own processes where they get killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from commands import raftka
from raftka import Admin, Consumer, Producer, TopicPartition
from raftka.cluster.coordinator import group_partition
from raftka.errors import UnknownGroupError
from waiting import wait_until

WORKER = Path(__file__).with_name("group_worker.py")


class Worker:
    """A group_worker.py process and the lines it printed so far."""

    def __init__(self, bootstrap: str, topic: str, group: str, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(WORKER), bootstrap, topic, group, *args],
                                        stdout=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def processed(self) -> list[tuple[int, int]]:
        return [(line["p"], line["o"]) for line in list(self.lines) if "p" in line]

    def assigned(self) -> bool:
        return any("assigned" in line for line in list(self.lines))

    def last_commits(self) -> dict[int, int]:
        commits: dict[int, int] = {}
        for line in list(self.lines):
            if "commit" in line:
                commits.update((int(p), o) for p, o in line["commit"].items())
        return commits

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=60) == 0
        self._reader.join(timeout=10)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)


class CliMember(Worker):
    """A `raftka consume --group --format json --from-beginning` process and the lines it printed."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "raftka", "consume", topic, "--group", group, "--format", "json",
             "--from-beginning"], env={**os.environ, "RAFTKA_BOOTSTRAP": bootstrap}, stdout=subprocess.PIPE, text=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def processed(self) -> list[tuple[int, int]]:
        return [(line["partition"], line["offset"]) for line in list(self.lines)]


def produce(bootstrap: str, topic: str, count: int, start: int = 0) -> list[tuple[int, int]]:
    acked = []
    with Producer(bootstrap, linger_ms=2) as producer:
        futures = [producer.send(topic, str(i).encode(), key=str(i).encode()) for i in range(start, start + count)]
        for future in futures:
            meta = future.result(timeout=60)
            acked.append((meta.partition, meta.offset))
    return acked


def poll_until(consumers, condition, what: str) -> None:
    """Keep every consumer polling (a group member must, to stay in and to apply its assignment)
    until `condition()` holds."""
    wait_until(lambda: all(c.poll(timeout_ms=100) is not None for c in consumers) and condition(), what=what)


def test_members_come_and_go_and_a_killed_one_loses_nothing(start_cluster) -> None:
    """Three consumers on six partitions; one joins late, one leaves, one is SIGKILLed: every record
    is processed, in order within each partition, and only the killed member's uncommitted records
    are processed twice."""
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("jobs", partitions=6)
    acked = produce(bootstrap, "jobs", 600)
    first, leaving = Worker(bootstrap, "jobs", "crew"), Worker(bootstrap, "jobs", "crew")
    wait_until(lambda: len(first.processed()) + len(leaving.processed()) >= 150, what="first records")
    victim = Worker(bootstrap, "jobs", "crew")
    wait_until(victim.assigned, what="the third member's partitions")
    acked += produce(bootstrap, "jobs", 600, start=600)
    wait_until(lambda: len(victim.processed()) > 0, what="the third member's records")
    leaving.stop()
    acked += produce(bootstrap, "jobs", 600, start=1200)
    wait_until(lambda: len(victim.processed()) > 20, what="more records for the victim")
    victim.kill()
    late = Worker(bootstrap, "jobs", "crew")
    wait_until(late.assigned, what="the late member's partitions")
    acked += produce(bootstrap, "jobs", 600, start=1800)
    workers = [first, leaving, victim, late]
    wait_until(lambda: set(acked) <= {pair for w in workers for pair in w.processed()}, timeout_s=90,
               what="every record to be processed")
    first.stop()
    late.stop()
    seen: dict[tuple[int, int], int] = {}
    for worker in workers:
        by_partition: dict[int, list[int]] = {}
        for partition, offset in worker.processed():
            by_partition.setdefault(partition, []).append(offset)
            seen[(partition, offset)] = seen.get((partition, offset), 0) + 1
        for offsets in by_partition.values():
            assert all(a < b for a, b in zip(offsets, offsets[1:])), "a member reads a partition in order, once"
    victim_seen = set(victim.processed())
    victim_commits = victim.last_commits()
    duplicates = [pair for pair, count in seen.items() if count > 1]
    names = {id(first): "first", id(leaving): "leaving", id(victim): "victim", id(late): "late"}
    for partition, offset in duplicates:
        by = [names[id(w)] for w in workers if (partition, offset) in set(w.processed())]
        failed = {names[id(w)]: [line for line in w.lines if "commit_failed" in line] for w in workers}
        assert (partition, offset) in victim_seen, \
            f"{partition}/{offset} was processed twice by live members {by}; failed commits: {failed}"
        assert offset >= victim_commits.get(partition, 0), f"{partition}/{offset} was committed, then redelivered"


def drain_group(consumer: Consumer, until: int, timeout_s: float = 60) -> list:
    """Poll until `until` records arrived (and return them)."""
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < until:
        assert time.monotonic() < deadline, f"only {len(records)} of {until} records arrived"
        records += consumer.poll(timeout_ms=200)
    return records


def test_killing_the_coordinator_loses_no_committed_offset(start_cluster) -> None:
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("ledger", partitions=3)
    produce(bootstrap, "ledger", 300)
    worker = Worker(bootstrap, "ledger", "auditors")
    wait_until(lambda: len(worker.processed()) >= 300, what="the first records")
    with Admin(bootstrap) as admin:
        wait_until(lambda: sum(p.committed or 0 for p in admin.describe_group("auditors").partitions) == 300,
                   what="commits")
        coordinator = admin.describe_group("auditors").coordinator
    victim = next(b for b in brokers if b.broker_id == coordinator)
    victim.kill()
    survivors = ",".join(b.address for b in brokers if b is not victim)
    produce(survivors, "ledger", 300, start=300)
    wait_until(lambda: len(worker.processed()) >= 600, what="records after the failover")
    worker.stop()
    assert sorted(worker.processed()) == sorted(set(worker.processed())), "nothing was read twice"
    with Admin(survivors) as admin:
        info = admin.describe_group("auditors")
        assert info.coordinator != coordinator
        assert sum(p.committed or 0 for p in info.partitions) == 600
    victim.start()


def test_a_consumer_past_its_poll_interval_loses_only_its_own_partitions(start_cluster) -> None:
    broker = start_cluster(1)[0]
    with Admin(broker.address) as admin:
        admin.create_topic("tasks", partitions=4)
    revoked_from_steady: list[set[TopicPartition]] = []
    steady = Consumer(broker.address, group_id="workers", topics=["tasks"], auto_offset_reset="earliest",
                      session_timeout_ms=6_000, on_revoked=revoked_from_steady.append)
    stuck = Consumer(broker.address, group_id="workers", topics=["tasks"], auto_offset_reset="earliest",
                     session_timeout_ms=6_000, max_poll_interval_ms=1_500)
    try:
        poll_until([steady, stuck], lambda: len(steady.assignment()) == 2 and len(stuck.assignment()) == 2,
                   "an even split")
        revoked_from_steady.clear()
        mine = steady.assignment()
        poll_until([steady], lambda: len(steady.assignment()) == 4, "the stuck consumer's partitions to move")
        assert mine <= steady.assignment() and not revoked_from_steady, "the steady consumer kept its own"
        produce(broker.address, "tasks", 40)
        assert len(drain_group(steady, 40)) == 40
        poll_until([stuck, steady], lambda: len(stuck.assignment()) == 2, "the stuck consumer to rejoin")
    finally:
        stuck.close()
        steady.close()


def test_reset_offsets_replays_exactly_the_range_asked_for(start_cluster) -> None:
    broker = start_cluster(1)[0]
    with Admin(broker.address) as admin:
        admin.create_topic("audit", partitions=1)
    produce(broker.address, "audit", 100)
    with Consumer(broker.address, group_id="replay", topics=["audit"], auto_offset_reset="earliest") as consumer:
        assert len(drain_group(consumer, 100)) == 100
    with Admin(broker.address) as admin:
        assert admin.describe_group("replay").partitions[0].committed == 100
        admin.reset_offsets("replay", "audit", "offset", 40, execute=True)
    with Consumer(broker.address, group_id="replay", topics=["audit"], auto_offset_reset="latest") as consumer:
        records = drain_group(consumer, 60)
        assert [r.offset for r in records] == list(range(40, 100))
        assert consumer.poll(timeout_ms=300) == []


def test_pattern_subscriptions_follow_new_topics_and_static_members_come_back(start_cluster) -> None:
    broker = start_cluster(1)[0]
    with Admin(broker.address) as admin:
        admin.create_topic("logs-web", partitions=2)
        pattern = Consumer(broker.address, group_id="shippers", pattern=r"logs-.*", auto_offset_reset="earliest")
        try:
            produce(broker.address, "logs-web", 10)
            assert len(drain_group(pattern, 10)) == 10
            admin.create_topic("logs-db", partitions=2)
            admin.create_topic("metrics", partitions=1)
            produce(broker.address, "logs-db", 10)
            produce(broker.address, "metrics", 5)
            records = drain_group(pattern, 10)
            assert {r.topic for r in records} == {"logs-db"}
        finally:
            pattern.close()
    options = dict(group_id="pods", topics=["logs-web"], group_instance_id="pod-0", session_timeout_ms=10_000)
    other = Consumer(broker.address, group_id="pods", topics=["logs-web"], group_instance_id="pod-1",
                     session_timeout_ms=10_000)
    pod = Consumer(broker.address, **options)
    try:
        poll_until([pod, other], lambda: len(pod.assignment()) == 1 and len(other.assignment()) == 1,
                   "an even split")
        before = pod.assignment()
        pod.close()
        for _ in range(10):
            other.poll(timeout_ms=100)
        assert len(other.assignment()) == 1, "a static member's partition waits for it"
        pod = Consumer(broker.address, **options)
        poll_until([pod], lambda: pod.assignment() == before, "the restarted static member to get its partition back")
    finally:
        pod.close()
        other.close()


def test_cli_consumes_as_a_group_and_describes_its_lag(start_cluster) -> None:
    broker = start_cluster(1)[0]
    with Admin(broker.address) as admin:
        admin.create_topic("cli-events", partitions=2)
    produce(broker.address, "cli-events", 20)
    env = {**os.environ, "RAFTKA_BOOTSTRAP": broker.address}

    run = partial(raftka, env=env, timeout=120)
    consumed = run("consume", "cli-events", "--group", "cli", "--from-beginning", "--max-messages", "20")
    assert consumed.returncode == 0, consumed.stderr
    assert sorted(consumed.stdout.split(), key=int) == [str(i) for i in range(20)]
    described = run("group", "describe", "cli", "--format", "json")
    assert described.returncode == 0, described.stderr
    info = json.loads(described.stdout)
    assert info["state"] == "empty" and {p["lag"] for p in info["partitions"]} == {0}
    listed = run("group", "list")
    assert "cli" in listed.stdout
    again = run("consume", "cli-events", "--group", "cli", "--timeout-ms", "1500")
    assert again.returncode == 0 and again.stdout == "", "a group resumes from its committed offsets"
    dry = run("group", "reset-offsets", "cli", "--topic", "cli-events", "--to-earliest")
    assert "dry run" in dry.stdout
    assert run("group", "reset-offsets", "cli", "--topic", "cli-events", "--to-earliest", "--execute").returncode == 0
    empty = run("consume", "cli-events", "--group", " ")
    assert empty.returncode != 0 and "--group needs a group name" in empty.stderr
    assert run("group", "delete", "cli").returncode == 0
    assert "cli" not in run("group", "list").stdout


def test_an_idle_cli_member_stays_in_its_group(start_cluster) -> None:
    """`raftka consume --group` without --timeout-ms runs until stopped. It used to take the request
    timeout as its idle timeout (both flags shared one argparse dest), so members without records
    quit after 30 s: the partitions of a crashed member, free only once its 45 s session expired,
    then had no live member left to take them."""
    broker = start_cluster(1)[0]
    with Admin(broker.address) as admin:
        admin.create_topic("quiet", partitions=1)
        env = {**os.environ, "RAFTKA_BOOTSTRAP": broker.address}
        member = subprocess.Popen([sys.executable, "-m", "raftka", "consume", "quiet", "--group", "idlers",
                                   "--request-timeout-ms", "1000"], env=env, stdout=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(member.stdout or ()), daemon=True)
        reader.start()
        try:
            def owns_the_partition() -> bool:
                try:
                    return [m.owned for m in admin.describe_group("idlers").members] == [{TopicPartition("quiet", 0)}]
                except UnknownGroupError:
                    return False
            wait_until(owns_the_partition, what="the member's partition")
            idle_since = time.monotonic()
            wait_until(lambda: member.poll() is not None or time.monotonic() - idle_since > 3,
                       what="three request timeouts without records")
            assert member.poll() is None, "an idle group member quit"
            produce(broker.address, "quiet", 1)
            wait_until(lambda: lines == ["0\n"], what="the record produced after the idle time")
        finally:
            member.send_signal(signal.SIGINT)
            member.wait(timeout=30)


@pytest.mark.slow
def test_cli_members_take_over_crashed_members_partitions_after_the_coordinator_moved(
        start_cluster, ack_recorder, leader_of) -> None:
    """Fault 1 as reported: three `raftka consume --group` members of a 6-partition topic while keyed
    records are produced for about 10 s; one member is SIGKILLed, a fourth joins 5 s later, another
    is SIGTERMed (it dies without leaving), and the coordinator's partition moves to another broker
    (a preferred-leader election). Within the session timeout (the CLI's 45 s) of the move plus 20 s,
    the two live members own every partition, the lag is 0, and every acknowledged record was printed
    by some member. It failed every time while members quit after 30 s without records."""
    brokers = start_cluster(3)
    bootstrap = ",".join(b.address for b in brokers)
    with Admin(bootstrap) as admin:
        admin.create_topic("orders", partitions=6)
        with Consumer(bootstrap, group_id="crew") as consumer:
            consumer.committed([TopicPartition("orders", 0)])
        offsets = admin.describe_topic("__consumer_offsets").partitions
        partition = group_partition("crew", len(offsets))
        preferred = next(b for b in brokers if b.broker_id == offsets[partition].replicas[0])
        if leader_of(bootstrap, "__consumer_offsets", partition, brokers) is preferred:
            preferred.kill()
            leader_of(bootstrap, "__consumer_offsets", partition, brokers)
            preferred.start()
        last_seen = []

        def group(members: int) -> bool:
            """Whether `members` members hold every partition and have committed all of it."""
            try:
                info = admin.describe_group("crew")
            except UnknownGroupError:
                return False
            last_seen[:] = [info]
            return (len(info.members) == members and sum(len(m.owned) for m in info.members) == 6
                    and all(lag.lag == 0 for lag in info.partitions))
        members = [CliMember(bootstrap, "orders", "crew") for _ in range(3)]
        producer = None
        try:
            wait_until(lambda: group(3), what="three members sharing the partitions")
            producer = ack_recorder(bootstrap, "orders", workers=1, pace_s=0.03, keyed=True, linger_ms=5)
            time.sleep(2)
            members[0].process.kill()
            time.sleep(5)
            members.append(CliMember(bootstrap, "orders", "crew"))
            time.sleep(1)
            members[1].process.terminate()
            moves = [m for m in admin.elect_preferred_leaders("__consumer_offsets") if m.partition == partition]
            moved = time.monotonic()
            assert moves, "the coordinator's partition did not move"
            time.sleep(2)
            acked = {(p, o) for p, o, _ in producer.stop()}
            try:
                wait_until(lambda: group(2), timeout_s=moved + 45 + 20 - time.monotonic(),
                           what="the live members to own every partition and catch up")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the group last: {last_seen}") from None
            missing = acked - {pair for member in members for pair in member.processed()}
            assert not missing, f"{len(missing)} acknowledged records were never consumed"
        finally:
            if producer is not None:
                producer.stop()
            for member in members:
                member.process.kill()
                member.process.wait(timeout=30)


def test_deleting_a_subscribed_topic_does_not_break_the_consumer(start_cluster) -> None:
    broker = start_cluster(1)[0]
    with Admin(broker.address) as admin:
        admin.create_topic("feed-a", partitions=1)
        admin.create_topic("feed-b", partitions=1)
        with Consumer(broker.address, group_id="readers", pattern=r"feed-.*", auto_offset_reset="earliest") as consumer:
            produce(broker.address, "feed-a", 5)
            produce(broker.address, "feed-b", 5)
            assert len(drain_group(consumer, 10)) == 10
            admin.delete_topic("feed-a")
            produce(broker.address, "feed-b", 5, start=5)
            records = drain_group(consumer, 5)
            assert {r.topic for r in records} == {"feed-b"}
            poll_until([consumer], lambda: consumer.assignment() == {TopicPartition("feed-b", 0)},
                       "the deleted topic's revocation")
