"""A partition replica: one member of the partition's Raft group, serving appends and reads.

The partition log IS the group's Raft log (`replication.log_storage.PartitionStorage`): the leader
stamps each produced batch with its base offset and term and proposes it as one entry; the batch is
acknowledged (acks=all) once its entry is committed, i.e. fsynced by a majority. The high watermark
is the end offset of the committed entries; consumers never read at or past it.

Invariants:
- offsets are dense: the leader stamps batch k with the end offset of everything before it in its
  log (persisted or in flight), and storage refuses any batch whose base offset is not its end;
- a leader starts stamping only once its log holds every entry of its term so far, so its idea of
  the end offset is exact;
- a request's batches are validated as a whole before any is proposed, so a bad batch in a request
  leaves no trace;
- `high_watermark` only grows while the process runs (the committed prefix never shrinks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from raftka.cluster.topics import TopicConfig
from raftka.errors import (BatchTooLargeError, CorruptBatchError, InvalidBatchError, NotEnoughReplicasError,
                           NotLeaderError, OffsetOutOfRangeError, RequestTimedOutError)
from raftka.partition import batch as batch_format
from raftka.partition import errors as log_errors
from raftka.partition.log import PartitionLog
from raftka.replication import errors as raft_errors
from raftka.replication.driver import MultiRaft
from raftka.replication.entries import Entry, EntryType
from raftka.replication.log_storage import PartitionStorage
from raftka.replication.raft import RaftConfig, RaftNode, Role

log = logging.getLogger(__name__)

ELECTION_TICKS = 10


@dataclass(frozen=True)
class AppendOutcome:
    base_offset: int
    last_offset: int
    append_time_ms: int


@dataclass(frozen=True)
class ReadResult:
    batches: bytes
    high_watermark: int
    log_start_offset: int


OnCommitted = Callable[[int, bytes], None]
"""Called with (base offset, batch) for every committed batch, in order (the metadata log uses it)."""


class RaftReplica:
    def __init__(self, group_id: str, log: PartitionLog, storage: PartitionStorage, driver: MultiRaft,
                 config: TopicConfig, address_of: Callable[[int], str], *, replay: bool = False,
                 on_committed: OnCommitted | None = None) -> None:
        """`replay` re-applies every committed entry after a restart (for state machines such as the
        metadata log); without it the replica resumes from its persisted commit index."""
        self.group_id = group_id
        self._log = log
        self._storage = storage
        self._driver = driver
        self._config = config
        self._address_of = address_of
        self._on_committed = on_committed
        hard_state, snapshot = storage.initial_state()
        applied = snapshot.index if replay else max(hard_state.commit, snapshot.index)
        self._hw = storage.end_offset_at(applied)
        self._grown: asyncio.Future[None] | None = None
        self._stamp_term = 0
        self._next_offset = 0
        self.node: RaftNode = driver.add_group(
            group_id, storage, self._apply, RaftConfig(id=driver.broker_id, election_ticks=ELECTION_TICKS,
                                                       applied=applied))

    @property
    def high_watermark(self) -> int:
        return self._hw

    @property
    def log_start_offset(self) -> int:
        return self._log.start_offset

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self._log.segments())

    @property
    def leader_id(self) -> int:
        """The leader's broker id, or -1 when none is known."""
        return self.node.leader_id or -1

    def in_sync_replicas(self) -> list[int]:
        """On the leader: itself and the followers that are active and hold every committed entry."""
        if self.node.role != Role.LEADER:
            return []
        commit = self.node.commit_index
        return sorted(broker for broker, progress in self.node.progress().items()
                      if broker == self._driver.broker_id or (progress.recent_active and progress.match >= commit))

    def transfer_leadership(self, target: int) -> None:
        """Ask the group to make `target` leader (it campaigns at once when caught up)."""
        self.node.transfer_leadership(target)
        self._driver.mark(self.group_id)

    def campaign(self) -> None:
        """Start an election now (a new group's preferred leader does, instead of waiting a timeout)."""
        self.node.campaign()
        self._driver.mark(self.group_id)

    def validate(self, batches: bytes) -> list[tuple[int, int]]:
        """The (start, end) spans of the request's batches; raises on any bad one."""
        if not batches:
            raise InvalidBatchError("produce request holds no record batch")
        try:
            spans = batch_format.split_batches(batches)
        except log_errors.CorruptBatchError as exc:
            raise CorruptBatchError(str(exc)) from None
        except log_errors.BatchError as exc:
            raise InvalidBatchError(str(exc)) from None
        limit = self._config.max_message_bytes
        for start, end in spans:
            if end - start > limit:
                raise BatchTooLargeError(f"record batch of {end - start} bytes exceeds max.message.bytes={limit}")
        return spans

    async def append(self, batches: bytes, *, durable: bool, timeout_s: float) -> AppendOutcome:
        """Propose the request's batches; with `durable`, return once they are committed."""
        spans = self.validate(batches)
        self._check_leader()
        view = memoryview(batches)
        base = self._next_offset
        futures = []
        for start, end in spans:
            header = batch_format.read_header(view[start:end], verify_crc=False)
            stamped = batch_format.stamp_replicated(view[start:end], self._next_offset, self._stamp_term)
            try:
                futures.append(self._driver.propose(self.group_id, stamped))
            except raft_errors.NotLeaderError:
                raise self._not_leader() from None
            except raft_errors.RaftError as exc:
                raise NotEnoughReplicasError(f"{self.group_id}: proposal refused for now: {exc}") from None
            self._next_offset += header.record_count
        outcome = AppendOutcome(base, self._next_offset - 1, int(time.time() * 1000))
        if durable:
            try:
                await asyncio.wait_for(asyncio.shield(futures[-1]), timeout_s)
            except TimeoutError:
                raise RequestTimedOutError(
                    f"batch at offset {base} was not committed by a majority within {timeout_s:.3f}s; "
                    "it may still commit") from None
            except raft_errors.RaftError as exc:
                raise self._not_leader(f"{exc}; ") from None
        return outcome

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one holding `offset`, below the high watermark (leader only)."""
        self.require_leader()
        hw, start, end = self._hw, self._log.start_offset, self._log.end_offset
        if offset < start or offset > end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range: the log runs from {start} to {end} (high watermark {hw})")
        if offset >= hw:
            return ReadResult(b"", hw, start)
        try:
            data = self._log.read(offset, max_bytes, upper_bound=hw)
        except log_errors.OffsetOutOfRangeError as exc:
            raise OffsetOutOfRangeError(str(exc)) from None
        return ReadResult(data, hw, start)

    def data_after(self, offset: int) -> asyncio.Future[None]:
        """A future that resolves when the high watermark passes `offset` (at once if it has)."""
        loop = asyncio.get_running_loop()
        if self._hw > offset:
            future = loop.create_future()
            future.set_result(None)
            return future
        if self._grown is None or self._grown.done():
            self._grown = loop.create_future()
        return self._grown

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        return self._log.offset_for_timestamp(timestamp_ms, upper_bound=self._hw)

    def apply_retention(self, now_ms: int) -> int:
        return self._storage.apply_retention(now_ms, self.node.applied_index, self.node.conf_state_at)

    def require_leader(self) -> None:
        if self.node.role != Role.LEADER:
            raise self._not_leader()

    def _check_leader(self) -> None:
        self.require_leader()
        node = self.node
        if self._stamp_term != node.term:
            if self._storage.last_index() != node.last_index:
                raise NotEnoughReplicasError(
                    f"{self.group_id}: the new leader is still writing its first entry; retry shortly")
            self._stamp_term, self._next_offset = node.term, self._storage.end_offset

    def _not_leader(self, prefix: str = "") -> NotLeaderError:
        leader = self.leader_id
        address = self._address_of(leader) if leader >= 0 and leader != self._driver.broker_id else ""
        return NotLeaderError(f"{prefix}broker {self._driver.broker_id} does not lead {self.group_id}"
                              + (f"; broker {leader} does" if address else ""),
                              leader if address else -1, address)

    def _apply(self, entries: Sequence[Entry]) -> None:
        hw = self._hw
        for entry in entries:
            if entry.type != EntryType.NORMAL:
                continue
            header = batch_format.read_header(entry.data, verify_crc=False)
            if self._on_committed is not None:
                self._on_committed(header.base_offset, entry.data)
            hw = header.next_offset
        if hw != self._hw:
            self._hw = hw
            grown, self._grown = self._grown, None
            if grown is not None and not grown.done():
                grown.set_result(None)
