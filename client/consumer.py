"""`Consumer`: reads partitions from any offset, in order within each partition; alone or in a group.

    consumer = Consumer("127.0.0.1:9092", auto_offset_reset="earliest")
    consumer.assign([TopicPartition("orders", 0)])
    for record in consumer:
        print(record.offset, record.value)

    consumer = Consumer("127.0.0.1:9092", group_id="billing", topics=["orders"])
    for record in consumer:          # partitions come from the group; offsets are committed
        handle(record)

In a group (`group_id` with `topics` or `pattern`), the group's coordinator decides which partitions
this consumer owns (raftka.client.membership); `poll()` applies its decisions between batches:
revoked partitions are committed (with auto-commit) and handed to `on_revoked` before they are
released, new ones start from their committed offset (else `auto_offset_reset`) and are handed to
`on_assigned`.

Delivery is at least once. A record counts as consumed once `poll()` has returned it, or, for the
iterator, once the application comes back for the next record (or calls `poll()` or `commit()`): the
record in hand when a `for` loop is left (by `break`, an exception, or `close()`) is not consumed. What
is committed for the application (auto-commit, every 5 s by default, at the start of a poll; on
revocation; on close) is, per partition, the offset after the last consumed record, so an unconsumed
record is delivered again: to the next iteration or poll() of this consumer, or to the partition's
next owner. `commit()` without offsets commits the consumed records and the one in hand (committing
says the application is done with it). The iterator takes a batch (up to ITERATOR_BATCH records) from
the fetcher and hands it out one record at a time; records it has not handed out yet come first in
the next iteration or poll(), go back to the fetcher when their partition is paused, and are dropped
by a seek.

A partition's position is the offset of the next record `poll()` will return. Without a `seek`, the
first poll resolves it from `auto_offset_reset` ("earliest", "latest" or "error"). Fetching happens in
the background (`raftka.client.fetcher`): each leader broker's partitions are long-polled by a thread
of their own and up to `prefetch_bytes` per partition is decoded ahead of `poll()`, so an idle
consumer costs one open request per broker and a busy one rarely waits. `pause` stops fetching and
returning a partition's records, keeping what is buffered for `resume`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from raftka.client.connection import ClusterConnection
from raftka.client.credentials import TokenProvider, token_source
from raftka.client.fetcher import FetchConfig, Fetcher
from raftka.client.membership import GroupCoordinatorClient, GroupMembership
from raftka.client.records import Record, first_offsets
from raftka.errors import (ClientClosedError, RaftkaError, UnknownMemberIdError, UnknownPartitionError,
                           UnknownTopicError)
from raftka.proto import api_pb2
from raftka.wire.structs import TopicPartition
from raftka.wire.tls import ClientTls

log = logging.getLogger(__name__)

RESETS = ("earliest", "latest", "error")
RESET_SPECS = {"earliest": api_pb2.EARLIEST, "latest": api_pb2.LATEST}
GROUP_POLL_SLICE_S = 0.2
"""A group consumer waiting in poll() looks for assignment changes at least this often."""
ITERATOR_POLL_MS = 1000
"""How long the iterator waits for records in one poll before it checks whether it was closed."""
ITERATOR_BATCH = 500
"""The most records the iterator takes in one poll (Kafka's max.poll.records default): between its
polls it applies no rebalance and commits nothing, so this bounds how long a revoked partition waits."""

Rebalance = Callable[[set[TopicPartition]], None]


class Consumer:
    def __init__(self, bootstrap: str | Sequence[str], *, auto_offset_reset: str = "latest",
                 fetch_max_wait_ms: int = 500, fetch_min_bytes: int = 1,
                 fetch_max_bytes: int = 16 * 1024 * 1024, max_partition_fetch_bytes: int = 4 * 1024 * 1024,
                 prefetch_bytes: int = 8 * 1024 * 1024, request_timeout_ms: int = 30_000,
                 group_id: str | None = None, topics: Sequence[str] | None = None, pattern: str | None = None,
                 group_instance_id: str | None = None, client_id: str = "", assignor: str = "sticky",
                 enable_auto_commit: bool = True, auto_commit_interval_ms: int = 5_000,
                 session_timeout_ms: int = 45_000, max_poll_interval_ms: int = 300_000,
                 on_assigned: Rebalance | None = None, on_revoked: Rebalance | None = None,
                 on_lost: Rebalance | None = None,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, tls_server_name: str | None = None,
                 token: str | None = None, token_file: str | Path | None = None,
                 token_provider: TokenProvider | None = None) -> None:
        """`group_id` alone lets a manually assigned consumer commit offsets; with `topics` (names) or
        `pattern` (a regular expression over topic names, following topics created later) the
        consumer joins the group. `group_instance_id` makes it a static member: restarted within
        `session_timeout_ms`, it gets its partitions back without a rebalance. A consumer that does
        not poll for `max_poll_interval_ms` leaves the group (its partitions move; it rejoins at its
        next poll). `on_lost` (default: `on_revoked`) is told of partitions taken away without a
        chance to commit. `client_id` names the application on every call (quotas may be set per
        client id) and in its group membership."""
        if auto_offset_reset not in RESETS:
            raise ValueError(f"auto_offset_reset must be one of {', '.join(RESETS)}, not {auto_offset_reset!r}")
        if (topics or pattern) and not group_id:
            raise ValueError("subscribing to topics or a pattern needs a group_id")
        if topics and pattern:
            raise ValueError("give topics or a pattern, not both")
        self._conn = ClusterConnection(bootstrap, request_timeout_s=request_timeout_ms / 1000,
                                       tls=ClientTls.of(tls_ca, tls_cert, tls_key, tls_server_name),
                                       token=token_source(token, token_file, token_provider), client_id=client_id)
        config = FetchConfig(max_wait_ms=fetch_max_wait_ms, min_bytes=fetch_min_bytes, max_bytes=fetch_max_bytes,
                             partition_max_bytes=max_partition_fetch_bytes, prefetch_bytes=prefetch_bytes)
        spec = RESET_SPECS.get(auto_offset_reset)
        self._reset_spec = spec
        self._fetcher = Fetcher(self._conn, config,
                                None if spec is None else functools.partial(self._list_offset, spec=spec))
        self._closed = False
        self._group = GroupCoordinatorClient(self._conn, group_id) if group_id else None
        self._membership: GroupMembership | None = None
        self._owned: frozenset[TopicPartition] = frozenset()
        self._on_assigned, self._on_revoked, self._on_lost = on_assigned, on_revoked, on_lost or on_revoked
        self._auto_commit_s = auto_commit_interval_ms / 1000 if enable_auto_commit and group_id else None
        self._next_auto_commit = time.monotonic() + (self._auto_commit_s or 0)
        self._committed: dict[TopicPartition, int] = {}
        self._commits: ThreadPoolExecutor | None = None
        self._batch: deque[Record] = deque()
        """Records the iterator took from the fetcher and has not handed out: per partition, exactly
        those after the last one handed out and before the fetcher's position. The iterator polls
        only when it is empty, so assignment changes (applied in polls) never find records in it."""
        self._in_hand: Record | None = None
        self._batch_valid_until = math.inf
        """A group member hands out batched records until then without asking its membership."""
        """The record the iterator handed out last, until the application comes back for the next."""
        if self._group is not None and (topics or pattern):
            self._membership = GroupMembership(
                self._group, topics=list(topics or ()), pattern=pattern or "", instance_id=group_instance_id or "",
                client_id=client_id, assignor=assignor, session_timeout_ms=session_timeout_ms,
                max_poll_interval_ms=max_poll_interval_ms)
            self._membership.start()

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly these partitions (replacing any earlier assignment); partitions that stay
        assigned keep their position and buffered records."""
        if self._membership is not None:
            raise ValueError("a subscribed consumer gets its partitions from its group; assign() is for "
                             "consumers without topics or pattern")
        wanted = dict.fromkeys(p if isinstance(p, TopicPartition) else TopicPartition(*p) for p in partitions)
        self._fetcher.add(dict.fromkeys(wanted))
        removed = self._fetcher.assignment() - wanted.keys()
        self._forget(removed)
        self._fetcher.remove(removed)

    def assignment(self) -> set[TopicPartition]:
        return self._fetcher.assignment()

    def partitions_for(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(self._conn.partition_count(topic))]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Make `offset` the next record poll() returns for `tp`."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        self._fetcher.seek(tp, offset)
        self._forget({tp})

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps or tuple(self._fetcher.assignment()):
            self.seek(tp, self._list_offset(tp, api_pb2.EARLIEST))

    def seek_to_end(self, *tps: TopicPartition) -> None:
        for tp in tps or tuple(self._fetcher.assignment()):
            self.seek(tp, self._list_offset(tp, api_pb2.LATEST))

    def seek_to_timestamp(self, tp: TopicPartition, timestamp_ms: int) -> None:
        """Make the first batch with records at or after `timestamp_ms` the next poll() returns
        (the partition's end when there is none yet)."""
        offset = self.offset_for_time(tp, timestamp_ms)
        self.seek(tp, self._list_offset(tp, api_pb2.LATEST) if offset is None else offset)

    def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """Base offset of the first batch with records at or after `timestamp_ms`, or None."""
        offset = self._list_offset(tp, api_pb2.TIMESTAMP, timestamp_ms)
        return None if offset < 0 else offset

    def position(self, tp: TopicPartition) -> int:
        batched = first_offsets(self._batch, {tp})
        return batched[tp] if tp in batched else self._fetcher.position(tp)

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._list_offset(tp, api_pb2.LATEST) for tp in tps}

    def pause(self, *tps: TopicPartition) -> None:
        """Stop fetching these partitions and returning their records; what is buffered stays (the
        iterator's records of them go back to the fetcher)."""
        self._fetcher.pause(tps)
        for tp, offset in self._unbatch(set(tps)).items():
            self._fetcher.seek(tp, offset)

    def resume(self, *tps: TopicPartition) -> None:
        self._fetcher.resume(tps)

    def paused(self) -> set[TopicPartition]:
        return self._fetcher.paused()

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[Record]:
        """Records after each partition's position: those already fetched at once, otherwise waiting up
        to timeout_ms for some to arrive. In a group, also applies assignment changes and auto-commits.
        The records returned, and the iterator's record in hand, count as consumed."""
        if self._closed:
            raise ClientClosedError("consumer is closed")
        self._in_hand = None
        if self._batch:
            if self._membership is not None:
                self._membership.polled()
            count = len(self._batch) if max_records is None else min(max_records, len(self._batch))
            return [self._batch.popleft() for _ in range(count)]
        return self._poll(timeout_ms, max_records)

    def _poll(self, timeout_ms: int, max_records: int | None) -> list[Record]:
        membership = self._membership
        if membership is None:
            if not self._fetcher.assignment():
                raise ValueError("no partition is assigned; call assign() first")
            self._maybe_auto_commit()
            return self._fetcher.poll(timeout_ms / 1000, max_records)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            membership.polled()
            self._reconcile(membership)
            self._maybe_auto_commit()
            remaining = deadline - time.monotonic()
            try:
                records = self._fetcher.poll(max(0.0, min(remaining, GROUP_POLL_SLICE_S)), max_records)
            except (UnknownTopicError, UnknownPartitionError) as exc:
                log.info("group %s: %s; the group will revoke it", membership.coordinator.group_id, exc)
                records = []
            if records or remaining <= GROUP_POLL_SLICE_S:
                return records

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None, *, metadata: str = "",
               asynchronous: bool = False) -> Future[None] | None:
        """Commit offsets (the next record to read, per partition) to the group; by default, for every
        partition read so far, the offset after the last record handed to the application, the
        iterator's record in hand included (which then counts as consumed). Synchronous by default,
        raising the refusal (e.g. NotPartitionOwnerError for a partition revoked meanwhile);
        `asynchronous=True` returns a Future instead. All commits of a consumer are sent in the order
        they were made."""
        if self._group is None:
            raise ValueError("committing needs a group_id")
        if offsets is None:
            self._in_hand = None
            offsets = self._consumed()
        future = self._submit_commit(dict(offsets), metadata)
        if asynchronous:
            return future
        future.result()
        return None

    def committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of these partitions (None where nothing was committed)."""
        if self._group is None:
            raise ValueError("committed offsets belong to a group; give a group_id")
        wanted = list(tps)
        found = self._group.committed(wanted)
        return {tp: found[tp].offset if tp in found else None for tp in wanted}

    def __iter__(self) -> Consumer:
        """Records one at a time, until the consumer is closed. Leaving a loop and entering another
        continues with the next record."""
        return self

    def __next__(self) -> Record:
        record = self._next_batched()
        while record is None:
            if not self._fill_batch(ITERATOR_POLL_MS):
                raise StopIteration
            record = self._next_batched()
        return record

    def _next_batched(self) -> Record | None:
        """The iterator's step that never waits (the asyncio consumer runs it on its loop): the record
        in hand is consumed, the application having come back; the next batched record is handed out
        (None when the batch is empty: then `_fill_batch`). A group member whose batch outlived its
        membership's limits (the process was suspended past its session) first applies what the
        group decided meanwhile, so it hands out no record of a partition given to another member."""
        if self._membership is not None and self._batch and time.monotonic() > self._batch_valid_until:
            self._in_hand = None
            self._membership.polled()
            self._reconcile(self._membership)
            self._batch_valid_until = self._membership.valid_until()
        self._in_hand = self._batch.popleft() if self._batch else None
        return self._in_hand

    def _fill_batch(self, timeout_ms: int) -> bool:
        """Poll up to timeout_ms for the iterator's next batch; False once the consumer is closed."""
        if self._closed:
            return False
        self._batch.extend(self._poll(timeout_ms, ITERATOR_BATCH))
        if self._membership is not None:
            self._batch_valid_until = self._membership.valid_until()
        return True

    def close(self) -> None:
        """Commit (with auto-commit) what was consumed, hand the partitions back to the group, and stop.
        The iterator's record in hand goes back to its batch first: it was not finished, so not even a
        commit() from `on_revoked` covers it."""
        if self._closed:
            return
        self._closed = True
        if self._in_hand is not None:
            self._batch.appendleft(self._in_hand)
            self._in_hand = None
        try:
            if self._membership is not None and self._owned:
                self._commit_quietly(self._owned)
                if self._on_revoked is not None:
                    self._on_revoked(set(self._owned))
            elif self._auto_commit_s is not None:
                self._commit_quietly(self._fetcher.assignment())
        finally:
            self._batch.clear()
            self._in_hand = None
            if self._membership is not None:
                self._membership.close()
            if self._commits is not None:
                self._commits.shutdown(wait=True)
            self._fetcher.close()
            self._conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _list_offset(self, tp: TopicPartition, spec: api_pb2.OffsetSpec, timestamp_ms: int = 0) -> int:
        return self._conn.list_offset(tp.topic, tp.partition, spec, timestamp_ms)

    def _forget(self, tps: set[TopicPartition]) -> None:
        """The application moved or dropped these partitions: their records in the iterator's batch and
        hand no longer count."""
        self._unbatch(tps)
        if self._in_hand is not None and TopicPartition(self._in_hand.topic, self._in_hand.partition) in tps:
            self._in_hand = None

    def _unbatch(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Take the partitions' records out of the iterator's batch; returns the offset of the first
        batched record of each."""
        firsts = first_offsets(self._batch, tps)
        if firsts:
            self._batch = deque(r for r in self._batch if TopicPartition(r.topic, r.partition) not in firsts)
        return firsts

    def _consumed(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last consumed record: what commits for the application
        record. That is the fetcher's position, except for partitions with records in the iterator's
        batch or hand, which start there."""
        positions = self._fetcher.positions()
        pending = self._batch if self._in_hand is None else itertools.chain((self._in_hand,), self._batch)
        positions.update(first_offsets(pending, set(positions)))
        return positions

    def _reconcile(self, membership: GroupMembership) -> None:
        """Apply the coordinator's latest decision: release revoked partitions, take new ones.

        Exception-safe: if taking the new partitions fails (their committed offsets or metadata are
        unavailable for now), what was released stays released and the rest of the change is
        offered again at the next poll. An exception from a rebalance callback is raised once the
        change is applied, so the consumer's state never depends on user code succeeding."""
        if membership.error is not None:
            error, membership.error = membership.error, None
            raise error
        change = membership.take_change()
        if change is None:
            return
        failures: list[BaseException] = []
        if change.lost:
            lost, self._owned = self._owned, frozenset()
            self._fetcher.remove(lost)
            self._forget(set(lost))
            log.warning("group %s: lost %d partition(s) without committing", membership.coordinator.group_id,
                        len(lost))
            membership.rejoin()
            if lost:
                self._callback(self._on_lost, lost, failures)
            self._raise_first(failures)
            return
        revoked = self._owned - change.partitions
        added = change.partitions - self._owned
        if revoked:
            self._commit_quietly(revoked)
            self._callback(self._on_revoked, revoked, failures)
            self._fetcher.remove(revoked)
            self._forget(set(revoked))
            self._owned -= revoked
        if added:
            try:
                committed = self.committed(sorted(added))
                reset = self._reset_uncommitted(committed)
                self._fetcher.add(committed)
            except RaftkaError as exc:
                log.info("group %s: cannot take %d partition(s) yet, retrying: %s",
                         membership.coordinator.group_id, len(added), exc)
                membership.defer(change)
                self._raise_first(failures)
                return
            self._committed.update((tp, o) for tp, o in committed.items() if o is not None)
        self._owned = change.partitions
        membership.applied(self._owned, change.member_epoch, change.generation)
        if added and reset:
            self._commit_reset(reset)
        log.debug("group %s: assignment applied epoch=%d owned=%d revoked=%d added=%d",
                 membership.coordinator.group_id, change.member_epoch, len(self._owned), len(revoked), len(added))
        if added:
            self._callback(self._on_assigned, added, failures)
        self._raise_first(failures)

    def _reset_uncommitted(self, committed: dict[TopicPartition, int | None]) -> dict[TopicPartition, int]:
        """With auto-commit, resolve `auto_offset_reset` now for granted partitions the group never
        committed, in place, and return them. They are committed as soon as the assignment is applied
        (`_commit_reset`): a member killed before its first auto-commit would otherwise leave its
        successor to resolve "latest" afresh, past every record written in between, and those would
        never reach any member (at-least-once, not "at most the latest")."""
        if self._auto_commit_s is None or self._reset_spec is None:
            return {}
        reset = {tp: self._list_offset(tp, self._reset_spec) for tp, offset in committed.items() if offset is None}
        committed.update(reset)
        return reset

    def _commit_reset(self, reset: dict[TopicPartition, int]) -> None:
        future = self._submit_commit(reset, "")

        def warn(done: Future[None]) -> None:
            if done.exception() is not None:
                log.warning("commit of %d reset position(s) failed: %s", len(reset), done.exception())
        future.add_done_callback(warn)
        self._committed.update(reset)

    @staticmethod
    def _callback(callback: Rebalance | None, tps: frozenset[TopicPartition], failures: list[BaseException]) -> None:
        if callback is None:
            return
        try:
            callback(set(tps))
        except Exception as exc:  # noqa: BLE001 - raised by poll() once the rebalance step is done
            failures.append(exc)

    @staticmethod
    def _raise_first(failures: list[BaseException]) -> None:
        if failures:
            raise failures[0]

    def _maybe_auto_commit(self) -> None:
        if self._auto_commit_s is None or time.monotonic() < self._next_auto_commit:
            return
        self._next_auto_commit = time.monotonic() + self._auto_commit_s
        self._commit_quietly(self._owned if self._membership is not None else self._fetcher.assignment())

    def _commit_quietly(self, tps: Iterable[TopicPartition]) -> None:
        """Auto-commit the consumed positions of `tps` that moved since their last commit; a failure is
        logged (the records will be read again, never skipped)."""
        if self._group is None or self._auto_commit_s is None:
            return
        if self._membership is not None and not self._membership.member_id:
            return
        positions = self._consumed()
        moved = {tp: positions[tp] for tp in tps if tp in positions and self._committed.get(tp) != positions[tp]}
        if not moved:
            return
        try:
            self._submit_commit(moved, "").result()
        except RaftkaError as exc:
            log.warning("auto-commit of %d partition(s) failed: %s", len(moved), exc)

    def _submit_commit(self, offsets: dict[TopicPartition, int], metadata: str) -> Future[None]:
        """Queue a commit on the consumer's one commit thread, so commits land in the order made. The
        member id is taken now: a commit made as one member is never sent as another."""
        group = self._group
        assert group is not None
        member_id = ""
        if self._membership is not None:
            member_id = self._membership.member_id
            if not member_id:
                raise UnknownMemberIdError(f"this consumer is not a member of group {group.group_id!r} right now "
                                           "(it is joining or rejoining); its partitions are not its to commit")
        if self._commits is None:
            self._commits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raftka-commit")

        def commit() -> None:
            group.commit({tp: (offset, metadata) for tp, offset in offsets.items()}, member_id)
            self._committed.update(offsets)
        return self._commits.submit(commit)
