"""At-least-once delivery, end to end: whatever way a group member stops handing out records (break,
an exception in the handler, close(), a rebalance, an explicit commit(), auto-commit, a `raftka
consume` stopped by a signal), the next member of the group receives exactly the records the first
did not finish: none lost, and none it finished read again.

A record counts as finished once the application came back for the next one (`finished` below
collects exactly those); the record in hand when the loop is left is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any, Callable, Iterable

import pytest

from raftka import Admin, Consumer, Producer, Record, TopicPartition
from raftka.aio import AIOConsumer
from raftka.errors import UnknownGroupError
from waiting import wait_until

TOPIC = "jobs"
GROUP = "crew"
PARTITIONS = 3

Ids = set[tuple[int, int]]


class HandlerFailed(Exception):
    """What the application's handler raises for the record it cannot process."""


def produce(bootstrap: str, count: int, start: int = 0) -> Ids:
    """`count` keyed records spread over the topic's partitions; their (partition, offset)."""
    with Producer(bootstrap, linger_ms=2) as producer:
        futures = [producer.send(TOPIC, str(i).encode(), key=str(i).encode()) for i in range(start, start + count)]
        return {(meta.partition, meta.offset) for meta in (future.result(timeout=60) for future in futures)}


def topic_with_records(bootstrap: str, count: int = 300, partitions: int = PARTITIONS) -> Ids:
    with Admin(bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=partitions)
    return produce(bootstrap, count)


def member(bootstrap: str, **options: Any) -> Consumer:
    return Consumer(bootstrap, group_id=GROUP, topics=[TOPIC], auto_offset_reset="earliest", **options)


def async_member(bootstrap: str, **options: Any) -> AIOConsumer:
    return AIOConsumer(bootstrap, group_id=GROUP, topics=[TOPIC], auto_offset_reset="earliest", **options)


def ids(records: Iterable[Record]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


class Member(threading.Thread):
    """Another member of the group, polling in its own thread and keeping what it receives."""

    def __init__(self, bootstrap: str, **options: Any) -> None:
        super().__init__(daemon=True)
        self.received: list[tuple[int, int]] = []
        self.owned = 0
        self._consumer = member(bootstrap, **options)
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.received += ids(self._consumer.poll(timeout_ms=100))
            self.owned = len(self._consumer.assignment())
        self._consumer.close()

    def stop(self) -> list[tuple[int, int]]:
        self._stopping.set()
        self.join(timeout=60)
        return self.received


def take_over(bootstrap: str, expected: Ids, other: Member | None = None) -> list[tuple[int, int]]:
    """Everything a second member (`other`, else a new one) receives until it has every expected record."""
    other = other or Member(bootstrap)
    wait_until(lambda: set(other.received) >= expected,
               f"the second member to receive the {len(expected)} records the first did not finish")
    return other.stop()


def assert_exactly_the_rest(produced: Ids, finished: list[tuple[int, int]], received: list[tuple[int, int]]) -> None:
    assert len(set(finished)) == len(finished), "the first member handed each record out once"
    assert sorted(received) == sorted(produced - set(finished)), \
        "the second member receives exactly what the first did not finish, each record once"


def assert_the_next_member_gets_the_rest(bootstrap: str, produced: Ids, finished: list[tuple[int, int]],
                                         other: Member | None = None) -> None:
    assert_exactly_the_rest(produced, finished, take_over(bootstrap, produced - set(finished), other))


def assert_next_in_partition(finished: list[tuple[int, int]], record: Record) -> None:
    """A member hands out each partition's records in order, without a gap (the topic starts at 0)."""
    before = [o for p, o in finished if p == record.partition]
    expected = before[-1] + 1 if before else 0
    assert record.offset == expected, f"partition {record.partition}: got offset {record.offset} after {expected - 1}"


# The synchronous Consumer.

def leaving(how: str) -> Any:
    """The context a loop left by `how` ("break", or an "exception ..." out of the handler) runs in."""
    return contextlib.nullcontext() if how == "break" else pytest.raises(HandlerFailed)


@pytest.mark.parametrize("how", ["break", "exception", "exception, commit() in on_revoked"])
def test_leaving_the_loop_commits_only_the_finished_records(broker, how: str) -> None:
    """The record in hand when a `break` or an exception from the handler leaves the loop inside
    `with Consumer(...)` is not committed by close(), nor by a commit() in `on_revoked`, which close()
    calls."""
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []
    options: dict[str, Any] = {}
    consumer: Consumer
    if "on_revoked" in how:
        options = {"enable_auto_commit": False, "on_revoked": lambda tps: consumer.commit()}
    with leaving(how), member(broker.address, **options) as consumer:
        for record in consumer:
            if len(finished) == 40:
                if how == "break":
                    break
                raise HandlerFailed(record)
            finished.append((record.partition, record.offset))
    assert_the_next_member_gets_the_rest(broker.address, produced, finished)


def test_pause_and_seek_while_iterating_keep_each_partition_in_order(broker) -> None:
    """A paused partition's records already taken by the iterator wait for resume(); a seek drops
    them, so the partition continues at the offset sought (here: the record in hand, again)."""
    produced = topic_with_records(broker.address)
    seen: list[tuple[int, int]] = []
    paused: TopicPartition | None = None
    retried = False
    with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
        consumer.assign(consumer.partitions_for(TOPIC))
        for record in consumer:
            tp = TopicPartition(record.topic, record.partition)
            assert tp not in consumer.paused(), f"{tp} is paused"
            assert_next_in_partition(seen, record)
            if tp == paused and not retried:
                retried = True
                consumer.seek(tp, record.offset)
                continue
            seen.append((record.partition, record.offset))
            if paused is None and len(seen) == 10:
                paused = tp
                consumer.pause(tp)
            elif (paused is not None and paused in consumer.paused()
                  and {(p, o) for p, o in produced if p != paused.partition} <= set(seen)):
                consumer.resume(paused)
            if set(seen) == produced:
                break
    assert retried and sorted(seen) == sorted(produced)


def test_close_while_handling_a_record_commits_only_those_before_it(broker) -> None:
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []
    consumer = member(broker.address)
    for record in consumer:
        if len(finished) == 40:
            consumer.close()
        else:
            finished.append((record.partition, record.offset))
    assert len(finished) == 40, "the loop ends once the consumer is closed"
    assert_the_next_member_gets_the_rest(broker.address, produced, finished)


def test_commit_covers_the_record_in_hand_and_nothing_after_it(broker) -> None:
    """Without auto-commit, only commit() commits (close does not): commit() called while handling a
    record commits it and everything handed out before it, not the rest of the fetched batch; a
    later poll() hands out the rest of the batch first."""
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []
    with member(broker.address, enable_auto_commit=False) as consumer:
        for record in consumer:
            finished.append((record.partition, record.offset))
            if len(finished) == 30:
                consumer.commit()
                break
        finished += ids(consumer.poll(timeout_ms=5000, max_records=10))
        consumer.commit()
    assert_the_next_member_gets_the_rest(broker.address, produced, finished)


def test_auto_commit_commits_only_finished_records(broker) -> None:
    """After a loop is left, poll() goes on with the rest of the iterator's batch, and auto-commit never
    covers a record the application did not finish. The consumer then gets stuck on a record: it leaves
    the group after max_poll_interval without committing, so its auto-commits are all the next member
    starts from."""
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []
    consumer = member(broker.address, auto_commit_interval_ms=0, max_poll_interval_ms=2_000)
    try:
        for record in consumer:
            finished.append((record.partition, record.offset))
            if len(finished) == 30:
                break
        deadline = time.monotonic() + 60
        while set(finished) != produced:
            assert time.monotonic() < deadline, f"only {len(finished)} of {len(produced)} records arrived"
            for record in consumer.poll(timeout_ms=200):
                assert_next_in_partition(finished, record)
                finished.append((record.partition, record.offset))
        later = produce(broker.address, 30, start=len(produced))
        stuck = next(consumer)
        assert (stuck.partition, stuck.offset) in later
        received = take_over(broker.address, later)
    finally:
        consumer.close()
    assert_exactly_the_rest(produced | later, finished, received)


def test_a_rebalance_moves_partitions_from_where_the_first_member_finished(broker, ack_recorder) -> None:
    """A second member joins while the first is reading a stream; the first commits each revoked
    partition where it finished, goes on with the others for 100 records, then stops in the middle
    of its records."""
    with Admin(broker.address) as admin:
        admin.create_topic(TOPIC, partitions=4)
    recorder = ack_recorder(broker.address, TOPIC, workers=1, linger_ms=2, batch_size=2048)
    revoked: list[tuple[set[Any], int]] = []
    finished: list[tuple[int, int]] = []
    other: Member | None = None
    with member(broker.address, on_revoked=lambda tps: revoked.append((tps, len(finished)))) as consumer:
        for record in consumer:
            if revoked and len(finished) == revoked[0][1] + 100:
                break
            finished.append((record.partition, record.offset))
            if len(finished) == 100:
                other = Member(broker.address)
    assert other is not None and len(revoked[0][0]) == 2, "the second member took half the partitions"
    produced = {(p, o) for p, o, _ in recorder.stop()}
    assert_the_next_member_gets_the_rest(broker.address, produced, finished, other)


# The asyncio consumer: `async for` follows the same rule.

def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 120))


@pytest.mark.parametrize("how", ["break", "exception"])
def test_async_leaving_the_loop_commits_only_the_finished_records(broker, how: str) -> None:
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []

    async def scenario() -> None:
        async with async_member(broker.address) as consumer:
            async for record in consumer:
                if len(finished) == 40:
                    if how == "break":
                        break
                    raise HandlerFailed(record)
                finished.append((record.partition, record.offset))
    with leaving(how):
        run(scenario)
    assert_the_next_member_gets_the_rest(broker.address, produced, finished)


def test_async_close_while_handling_a_record_commits_only_those_before_it(broker) -> None:
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []

    async def scenario() -> None:
        consumer = async_member(broker.address)
        async for record in consumer:
            if len(finished) == 40:
                await consumer.close()
            else:
                finished.append((record.partition, record.offset))
    run(scenario)
    assert len(finished) == 40, "the loop ends once the consumer is closed"
    assert_the_next_member_gets_the_rest(broker.address, produced, finished)


def test_async_commit_covers_the_record_in_hand_and_nothing_after_it(broker) -> None:
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []

    async def scenario() -> None:
        async with async_member(broker.address, enable_auto_commit=False) as consumer:
            async for record in consumer:
                finished.append((record.partition, record.offset))
                if len(finished) == 30:
                    await consumer.commit()
                    break
    run(scenario)
    assert_the_next_member_gets_the_rest(broker.address, produced, finished)


def test_async_auto_commit_commits_only_finished_records(broker) -> None:
    produced = topic_with_records(broker.address)
    finished: list[tuple[int, int]] = []

    async def scenario() -> tuple[Ids, list[tuple[int, int]]]:
        consumer = async_member(broker.address, auto_commit_interval_ms=0, max_poll_interval_ms=2_000)
        try:
            async for record in consumer:
                finished.append((record.partition, record.offset))
                if len(finished) == 30:
                    break
            deadline = time.monotonic() + 60
            while set(finished) != produced:
                assert time.monotonic() < deadline, f"only {len(finished)} of {len(produced)} records arrived"
                for record in await consumer.poll(timeout_ms=200):
                    assert_next_in_partition(finished, record)
                    finished.append((record.partition, record.offset))
            later = produce(broker.address, 30, start=len(produced))
            stuck = await anext(consumer)
            assert (stuck.partition, stuck.offset) in later
            return later, await asyncio.to_thread(take_over, broker.address, later)
        finally:
            await consumer.close()
    later, received = run(scenario)
    assert_exactly_the_rest(produced | later, finished, received)


def test_async_rebalance_moves_partitions_from_where_the_first_member_finished(broker, ack_recorder) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic(TOPIC, partitions=4)
    recorder = ack_recorder(broker.address, TOPIC, workers=1, linger_ms=2, batch_size=2048)
    revoked: list[tuple[set[Any], int]] = []
    finished: list[tuple[int, int]] = []
    others: list[Member] = []

    async def scenario() -> None:
        async with async_member(broker.address, on_revoked=lambda tps: revoked.append((tps, len(finished)))
                                ) as consumer:
            async for record in consumer:
                if revoked and len(finished) == revoked[0][1] + 100:
                    break
                finished.append((record.partition, record.offset))
                if len(finished) == 100:
                    others.append(Member(broker.address))
    run(scenario)
    assert others and len(revoked[0][0]) == 2, "the second member took half the partitions"
    produced = {(p, o) for p, o, _ in recorder.stop()}
    assert_the_next_member_gets_the_rest(broker.address, produced, finished, others[0])


# `raftka consume --group`, stopped by a signal in the middle of a stream.

CLI_SESSION_MS = 120_000


def unread_bytes(pipe: Any) -> int:
    """How many bytes wait in an OS pipe for its reader."""
    return struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_cli_consumer_stopped_by_a_signal_commits_what_it_printed_and_leaves_at_once(broker, ack_recorder,
                                                                                        signum) -> None:
    """The consumer starts behind a stream, so it writes large batches; its reader stops reading (as
    a slow pipeline would), and the signal comes while it is blocked in the middle of a batch. It
    writes no more, commits only what it wrote and leaves: its partitions reach the other member long
    before its two-minute session could expire, and the two print every record once between them."""
    with Admin(broker.address) as admin:
        admin.create_topic(TOPIC, partitions=4)
    recorder = ack_recorder(broker.address, TOPIC, workers=1, linger_ms=2, batch_size=2048)
    recorder.wait_for(20_000)
    cli = subprocess.Popen([sys.executable, "-m", "raftka", "consume", TOPIC, "--group", GROUP, "--from-beginning",
                            "--format", "json", "--session-timeout-ms", str(CLI_SESSION_MS),
                            "--bootstrap", broker.address], stdout=subprocess.PIPE, text=True)
    assert cli.stdout is not None
    printed: list[tuple[int, int]] = []
    reading = threading.Event()
    reading.set()

    stdout = cli.stdout

    def read() -> None:
        for line in stdout:
            reading.wait()
            record = json.loads(line)
            printed.append((record["partition"], record["offset"]))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(printed) >= 500, "the CLI consumer to print records")
        reading.clear()
        wait_until(lambda: unread_bytes(cli.stdout) >= 60_000, "the CLI consumer's output pipe to fill up")
        other = Member(broker.address, session_timeout_ms=CLI_SESSION_MS)
        cli.send_signal(signum)
        reading.set()
        wait_until(lambda: other.owned == 4, "the stopped CLI consumer's partitions to move",
                   timeout_s=CLI_SESSION_MS / 1000 / 2)
        assert cli.wait(timeout=30) == 128 + signum
    finally:
        cli.kill()
    reader.join(timeout=30)
    produced = {(p, o) for p, o, _ in recorder.stop()}
    assert_the_next_member_gets_the_rest(broker.address, produced, printed, other)


def test_a_member_killed_before_its_first_commit_leaves_its_reset_position_committed(broker) -> None:
    """A member that starts at "latest" commits where it started as soon as it owns the partitions (not
    at its first auto-commit, here ten minutes away): a successor (also "latest") then starts there,
    not at a later end past the records written in between."""
    with Admin(broker.address) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS)
    first = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom raftka import Consumer\n"
        f"consumer = Consumer({broker.address!r}, group_id={GROUP!r}, topics=[{TOPIC!r}], "
        "auto_offset_reset='latest', auto_commit_interval_ms=600_000, session_timeout_ms=6_000)\n"
        "while True:\n    consumer.poll(timeout_ms=500)\n")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def committed(admin: Admin) -> list[int | None]:
        try:
            return [p.committed for p in admin.describe_group(GROUP).partitions]
        except UnknownGroupError:
            return []

    try:
        with Admin(broker.address) as admin:
            wait_until(lambda: committed(admin) == [0] * PARTITIONS, "the first member committed where it starts")
    finally:
        first.kill()
        first.wait()
    written = produce(broker.address, 60)
    successor = Consumer(broker.address, group_id=GROUP, topics=[TOPIC], auto_offset_reset="latest")
    received: set[tuple[int, int]] = set()
    deadline = time.monotonic() + 90
    while received != written:
        assert time.monotonic() < deadline, f"the successor received {len(received)} of {len(written)} records"
        received |= set(ids(successor.poll(timeout_ms=500)))
    successor.close()


THAWING_MEMBER = """
import json, sys, time
from raftka import Consumer
def emit(kind, **fields):
    print(json.dumps({"kind": kind, "t": time.monotonic(), **fields}), flush=True)
consumer = Consumer(sys.argv[1], group_id=sys.argv[2], topics=[sys.argv[3]], auto_offset_reset="earliest",
                    session_timeout_ms=6000, on_assigned=lambda tps: emit("assigned"),
                    on_lost=lambda tps: emit("lost"))
for record in consumer:
    emit("record", p=record.partition, o=record.offset)
    time.sleep(0.05)
"""


def test_a_member_thawed_past_its_session_hands_out_no_batched_record_of_its_lost_partitions(broker) -> None:
    """Suspended (SIGSTOP) in the middle of an iterator batch for longer than its session, a member's
    partitions go to others; thawed, it must not hand out the rest of that batch before it has learnt
    so, i.e. before it is assigned partitions again."""
    topic_with_records(broker.address, count=600)
    thawing = subprocess.Popen([sys.executable, "-c", THAWING_MEMBER, broker.address, GROUP, TOPIC],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert thawing.stdout is not None
        lines = iter(thawing.stdout)
        while json.loads(next(lines))["kind"] != "record":
            pass
        thawing.send_signal(signal.SIGSTOP)
        with Admin(broker.address) as admin:
            wait_until(lambda: not admin.describe_group(GROUP).members, "the frozen member's session expired")
        thawed_at = time.monotonic()
        thawing.send_signal(signal.SIGCONT)
        after = []
        deadline = time.monotonic() + 60
        while not any(event["kind"] == "assigned" for event in after):
            assert time.monotonic() < deadline, after[-5:]
            event = json.loads(next(lines))
            if event["t"] >= thawed_at:
                after.append(event)
        handed_out = [e for e in after[:next(i for i, e in enumerate(after) if e["kind"] == "assigned")]
                      if e["kind"] == "record"]
        assert handed_out == [], f"records handed out after the thaw, before a new assignment: {handed_out[:5]}"
    finally:
        thawing.kill()
        thawing.wait()
