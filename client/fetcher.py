"""The consumer's prefetching fetcher: one background thread per leader broker keeps the assigned
partitions' records fetched, decoded and buffered ahead of `poll()`.

Why: fetching inside poll() asks one leader after another, so data on one broker waits for another
broker's long-poll to expire, and nothing is fetched while the application processes records. Here
each broker leading some of our partitions has a thread (`raftka-fetch-<address>`) long-polling
exactly those, and poll() hands out records already decoded. A thread keeps one FetchStream open to
its broker: a fetch is then one stream message each way, which costs the broker about a third of
the CPU of a Fetch call. Each fetch asks the broker to follow it (`follow_bytes`: the least room
left in the prefetch of its partitions, so none is sent more than one answer beyond it), and while
the next fetch would ask for exactly what the broker continues with (`_Following`), the thread
sends nothing and reads the next answer: a consumer that keeps up costs one message per answer.
When nothing is to be fetched (paused or full partitions), a wake ends the following.

Invariants (every field below is guarded by the one Condition, `_cond`):
- `position` is the offset of the next record poll() returns, `fetch_offset` where the next fetch
  starts, and the buffered chunks hold exactly the records between the two.
- A change of position that does not come from consuming (seek, offset reset, removal) gives the
  partition a new `epoch`, unique across partitions. A fetch records the epoch of each partition it
  asks for and a response whose epoch is no longer current is dropped, so stale records never reach
  the buffer; a long-poll that may be waiting on the old position is cut short (a wake on the
  broker's fetch stream makes it answer at once).
- A partition is in at most one fetch at a time, sent by the thread of its `leader`. None means
  unrouted: poll() routes it again once its backoff has passed (the thread that hit the error tries
  at once). Non-retriable errors wait in `_failed` until poll() raises each one once.
- A partition is fetched only while it has a position, is not paused, has no undelivered error, its
  backoff has passed and less than `prefetch_bytes` of it is buffered.
- `_ready` holds, in round-robin order, the unpaused partitions with buffered records.
- Threads start only while the fetcher is open (checked under the lock), and one exits once no
  assigned partition is routed to its broker.

Incremental `add`/`remove` are the primitives: `Consumer.assign` is a thin wrapper, and consumer
groups apply their partition changes through them.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import Callable, Iterable, Iterator, Mapping

import grpc

from raftka.client.connection import Backoff, ClusterConnection
from raftka.client.records import Record
from raftka.errors import (BatchError, BrokerUnavailableError, ClientClosedError, CorruptBatchError, InternalError,
                           OffsetOutOfRangeError, RaftkaError, from_proto, from_rpc_error)
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import DecodedColumns, decode_columns, split_batches
from raftka.wire.structs import TopicPartition

log = logging.getLogger(__name__)

BACKOFF = Backoff()
_EPOCHS = itertools.count(1)
_new_tuple = tuple.__new__


@dataclass(frozen=True)
class FetchConfig:
    """The consumer's fetch options: `partition_max_bytes` caps one partition in one response,
    `prefetch_bytes` how much of a partition may wait in the buffer before it is no longer fetched."""

    max_wait_ms: int
    min_bytes: int
    max_bytes: int
    partition_max_bytes: int
    prefetch_bytes: int


def decode_records(tp: TopicPartition, data: bytes, offset: int) -> tuple[list[Record], int]:
    """The records of fetched `data` from `offset` on, and the offset after its last batch; data that
    does not continue from `offset` raises CorruptBatchError, so no record is ever skipped. Client
    Records are built straight from the decoder's columns by C-level zips: the per-record cost is
    what bounds a Python consumer's throughput."""
    topic, partition = repeat(tp.topic), repeat(tp.partition)
    chunk: list[Record] = []
    for batch in _decoded_batches(tp, data):
        header = batch.header
        if header.base_offset > offset:
            raise CorruptBatchError(f"fetch from {tp} skipped offsets {offset} to {header.base_offset - 1}")
        skip = max(0, offset - header.base_offset)
        if skip < header.record_count:
            rows = zip(topic, partition, batch.offsets, batch.keys, batch.values, batch.headers,
                       batch.timestamps)
            chunk.extend(map(_new_tuple, repeat(Record), islice(rows, skip, None) if skip else rows))
        offset = max(offset, header.next_offset)
    return chunk, offset


def _decoded_batches(tp: TopicPartition, data: bytes) -> Iterator[DecodedColumns]:
    """The batches of fetched `data`, decoded one by one. A bad batch is CorruptBatchError naming the
    partition, whether the format calls it corrupt or invalid: the broker accepted it, so it was damaged
    since."""
    try:
        view = memoryview(data)
        for start, end in split_batches(data):
            yield decode_columns(view[start:end], verify_crc=False)
    except BatchError as exc:
        raise CorruptBatchError(f"fetch from {tp} returned a bad batch: {exc}") from None


@dataclass(eq=False, slots=True)
class _Chunk:
    """Records of one fetch response; `start` is the first not yet returned, `end` the fetch offset
    after them."""

    records: list[Record]
    start: int
    end: int
    size: int


@dataclass(eq=False, slots=True)
class _Partition:
    tp: TopicPartition
    leader: str | None
    position: int | None = None
    fetch_offset: int | None = None
    epoch: int = field(default_factory=lambda: next(_EPOCHS))
    chunks: deque[_Chunk] = field(default_factory=deque)
    buffered: int = 0
    paused: bool = False
    in_flight: bool = False
    at_end: bool = True
    routing: bool = False
    retry_at: float = 0.0
    failures: int = 0
    error: RaftkaError | None = None


class _FetchStream:
    """One FetchStream call to a broker: fetches go out through a queue that gRPC's thread drains,
    and each is answered, in order, by responses with its correlation id: one, or one after another
    while the broker follows it."""

    def __init__(self, stub: api_pb2_grpc.BrokerStub) -> None:
        self._requests: queue.SimpleQueue[api_pb2.FetchRequest | None] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._abandoned: BrokerUnavailableError | None = None
        self._call = stub.FetchStream(iter(self._requests.get, None))

    def fetch(self, request: api_pb2.FetchRequest) -> int:
        request.correlation_id = next(self._ids)
        self._requests.put(request)
        return request.correlation_id

    def wake(self) -> None:
        """Make the broker answer the fetch it holds now; the empty request's own answer is skipped."""
        self._requests.put(api_pb2.FetchRequest())

    def response(self, correlation_id: int) -> api_pb2.FetchStreamResponse:
        """The next answer to fetch `correlation_id` (answers to fetches given up on are skipped);
        raises grpc.RpcError or BrokerUnavailableError."""
        try:
            for response in self._call:
                if response.correlation_id == correlation_id:
                    return response
        except grpc.RpcError:
            if self._abandoned is not None:
                raise self._abandoned from None
            raise
        raise BrokerUnavailableError("the broker ended the fetch stream")

    def abandon(self, error: BrokerUnavailableError) -> None:
        """End the stream because the broker stopped answering; the waiting fetch raises `error`."""
        self._abandoned = error
        self.close()

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


@dataclass(frozen=True)
class _Following:
    """A fetch the broker goes on answering (FetchStreamResponse.follows): its correlation id and,
    for each partition, the epoch and the offset its next answer starts from. That offset is the
    partition's fetch offset after the answer: where its data ended, as the broker computes too (a
    partition whose epoch changed since no longer matches, whatever its offset)."""

    correlation_id: int
    starts: dict[TopicPartition, tuple[int, int | None]]


@dataclass(eq=False)
class _Worker:
    """The fetch thread of one broker and its fetch stream. `may_wait`: every partition of the
    outstanding fetch had reached its high watermark, so the broker may hold it for max_wait;
    `answered`: its response arrived, so it is not waiting any more; `interrupted`: a wake was sent
    for it (one is enough); `sent_at`: when it was sent, or when the broker went on following it
    (monotonic), None while none is out; `following`: the fetch the broker goes on answering, which
    the next fetch awaits instead of sending one when it would ask for exactly the same;
    `throttled_until`: no new fetch before then (monotonic), as the last answer's throttle_time_ms
    asked (the caller is over its fetch quota)."""

    address: str
    stub: api_pb2_grpc.BrokerStub
    thread: threading.Thread | None = None
    stream: _FetchStream | None = None
    may_wait: bool = False
    answered: bool = False
    interrupted: bool = False
    sent_at: float | None = None
    following: _Following | None = None
    throttled_until: float = 0.0

    def interrupt(self) -> None:
        """Cut the broker's wait short; the wake is a newer request, so the broker stops following."""
        if self.stream is not None and not self.interrupted:
            self.interrupted = True
            self.following = None
            self.stream.wake()

    def stop_following(self) -> None:
        """Make the broker stop answering the followed fetch: nothing of it is wanted for now (paused
        or full partitions), and its answers would wait unread in the stream."""
        if self.following is not None and self.stream is not None:
            self.following = None
            self.stream.wake()


FETCH_GRACE_S = 1.0
"""How long past max_wait plus request_timeout a fetch's answer may take before its stream is given up."""

Sent = dict[TopicPartition, tuple[_Partition, int, int]]
"""A fetch in flight: each partition's state, the epoch it was sent with and the offset asked for."""


class Fetcher:
    """Thread-safe. `reset_offset` gives a partition without a position its starting offset (the
    consumer's auto_offset_reset); None means "error": such a partition, or an offset out of range,
    raises OffsetOutOfRangeError from poll()."""

    def __init__(self, conn: ClusterConnection, config: FetchConfig,
                 reset_offset: Callable[[TopicPartition], int] | None) -> None:
        self._conn = conn
        self._config = config
        self._reset_offset = reset_offset
        self._cond = threading.Condition()
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._ready: deque[_Partition] = deque()
        self._failed: list[_Partition] = []
        self._workers: dict[str, _Worker] = {}
        self._closed = False

    def add(self, offsets: Mapping[TopicPartition, int | None]) -> None:
        """Start reading these partitions, each from its offset (None: from auto_offset_reset). A
        partition already assigned keeps its position unless an offset is given. Raises for an unknown
        topic or partition before changing anything."""
        with self._cond:
            new = [tp for tp in offsets if tp not in self._partitions]
        leaders = {tp: self._lookup(tp) for tp in new}
        with self._cond:
            if self._closed:
                raise ClientClosedError("consumer is closed")
            for tp, offset in offsets.items():
                state = self._partitions.get(tp)
                if state is None:
                    state = self._partitions[tp] = _Partition(tp, leaders.get(tp), offset, offset)
                    self._routed(state)
                elif offset is not None:
                    self._set_position(state, offset)

    def remove(self, tps: Iterable[TopicPartition]) -> None:
        """Stop reading these partitions, dropping what is buffered or in flight for them."""
        with self._cond:
            for tp in tps:
                state = self._partitions.pop(tp, None)
                if state is not None:
                    self._set_position(state, None)

    def assignment(self) -> set[TopicPartition]:
        with self._cond:
            return set(self._partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        with self._cond:
            self._set_position(self._state(tp), offset)

    def position(self, tp: TopicPartition) -> int:
        with self._cond:
            state = self._state(tp)
            if state.position is not None:
                return state.position
        return self._resolve(state)

    def positions(self) -> dict[TopicPartition, int]:
        """The positions known now (none is resolved here): what a commit would record."""
        with self._cond:
            return {tp: state.position for tp, state in self._partitions.items() if state.position is not None}

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        with self._cond:
            for state in [self._state(tp) for tp in tps]:
                if not state.paused and state.chunks:
                    self._ready.remove(state)
                state.paused = True

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        with self._cond:
            for state in [self._state(tp) for tp in tps]:
                if state.paused:
                    state.paused = False
                    if state.chunks:
                        self._ready.append(state)
                    self._wake(state)

    def paused(self) -> set[TopicPartition]:
        with self._cond:
            return {tp for tp, state in self._partitions.items() if state.paused}

    def poll(self, timeout_s: float, max_records: int | None) -> list[Record]:
        """Buffered records at once, or wait up to timeout_s for some. Resolves missing positions first
        (raising OffsetOutOfRangeError under the "error" policy) and raises each fetch error once."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._maintain()
            with self._cond:
                if self._failed:
                    raise self._next_error()
                if self._ready:
                    return self._take(max_records)
                now = time.monotonic()
                wake_at = min(deadline, self._maintenance_due())
                if now >= deadline or self._closed:
                    return []
                if wake_at > now:
                    self._cond.wait(wake_at - now)

    def close(self) -> None:
        """Stop every fetch thread, cancelling outstanding long-polls (a broker that stopped
        answering cannot hold them), and wait for the threads to end."""
        with self._cond:
            self._closed = True
            workers = list(self._workers.values())
            streams = [worker.stream for worker in workers if worker.stream is not None]
            self._cond.notify_all()
        for stream in streams:
            stream.close()
        for worker in workers:
            assert worker.thread is not None
            worker.thread.join(timeout=self._conn.request_timeout_s)

    def _state(self, tp: TopicPartition) -> _Partition:
        state = self._partitions.get(tp)
        if state is None:
            raise ValueError(f"{tp} is not assigned to this consumer")
        return state

    def _set_position(self, state: _Partition, offset: int | None) -> None:
        """Move the partition to `offset` (None: unresolved), dropping its buffer, error and fetch."""
        state.epoch = next(_EPOCHS)
        state.position = state.fetch_offset = offset
        if state.chunks and not state.paused:
            self._ready.remove(state)
        state.chunks.clear()
        state.buffered = 0
        state.at_end = True
        if state.error is not None:
            state.error = None
            self._failed.remove(state)
        self._wake(state)

    def _wake(self, state: _Partition) -> None:
        """The partition may have become fetchable: wake its thread, interrupting a long-poll that
        could otherwise hold it back for max_wait."""
        self._cond.notify_all()
        worker = self._workers.get(state.leader) if state.leader is not None else None
        if worker is not None and worker.may_wait and not worker.answered:
            worker.interrupt()

    def _fail(self, state: _Partition, error: RaftkaError) -> None:
        if state.error is None:
            self._failed.append(state)
        state.error = error
        self._cond.notify_all()

    def _next_error(self) -> RaftkaError:
        """The oldest undelivered error, now delivered for every partition it was raised for."""
        error = self._failed[0].error
        assert error is not None
        for state in [s for s in self._failed if s.error is error]:
            state.error = None
            self._failed.remove(state)
            self._wake(state)
        return error

    def _take(self, max_records: int | None) -> list[Record]:
        records: list[Record] = []
        bound = self._config.prefetch_bytes
        ready = self._ready
        while ready and (max_records is None or len(records) < max_records):
            state = ready[0]
            chunk = state.chunks[0]
            if max_records is not None and len(chunk.records) - chunk.start > max_records - len(records):
                take = max_records - len(records)
                records.extend(chunk.records[chunk.start:chunk.start + take])
                chunk.start += take
                state.position = chunk.records[chunk.start].offset
                break
            records.extend(chunk.records[chunk.start:] if chunk.start else chunk.records)
            state.chunks.popleft()
            state.position = chunk.end
            was_full = state.buffered >= bound
            state.buffered -= chunk.size
            ready.popleft()
            if state.chunks:
                ready.append(state)
            if was_full and state.buffered < bound:
                self._wake(state)
        return records

    def _maintenance_due(self) -> float:
        """When poll() must next resolve positions, route partitions or give up on a fetch (monotonic;
        inf: never)."""
        due = min((self._answer_due(worker) for worker in self._workers.values()), default=float("inf"))
        for state in self._partitions.values():
            if state.position is None:
                return 0.0
            if state.leader is None and not state.routing:
                due = min(due, state.retry_at)
        return due

    def _answer_due(self, worker: _Worker) -> float:
        """When the worker's outstanding fetch is overdue: the broker holds it at most max_wait, then
        gets request_timeout and `FETCH_GRACE_S` to answer (inf: none is out)."""
        if worker.sent_at is None or worker.stream is None:
            return float("inf")
        return worker.sent_at + self._config.max_wait_ms / 1000 + self._conn.request_timeout_s + FETCH_GRACE_S

    def _maintain(self) -> None:
        """Abandon overdue fetches, route the unrouted partitions whose backoff has passed, then
        resolve missing positions.

        A frozen broker keeps its connections open: its partitions' leaders move on, but the fetch
        thread waits until the channel's pings end the connection (5-15 s) or this gives up."""
        with self._cond:
            now = time.monotonic()
            for worker in self._workers.values():
                if worker.stream is not None and self._answer_due(worker) <= now:
                    error = BrokerUnavailableError(f"no answer from {worker.address} to a fetch within "
                                                   f"{now - (worker.sent_at or now):.1f} s; abandoning the stream")
                    log.warning("%s", error)
                    self._conn.suspect(worker.address)
                    worker.stream.abandon(error)
                    worker.sent_at = None
            due = [s for s in self._partitions.values() if s.leader is None and not s.routing and s.retry_at <= now]
            for state in due:
                state.routing = True
            unresolved = [s for s in self._partitions.values() if s.position is None]
        self._route(due)
        for state in unresolved:
            self._resolve(state)

    def _resolve(self, state: _Partition) -> int:
        """The partition's position, from auto_offset_reset unless something set it meanwhile."""
        epoch = state.epoch
        if self._reset_offset is None:
            raise OffsetOutOfRangeError(f"{state.tp} has no position and auto_offset_reset is 'error'; seek first")
        offset = self._reset_offset(state.tp)
        with self._cond:
            if state.epoch == epoch and state.position is None:
                self._set_position(state, offset)
            return offset if state.position is None else state.position

    def _lookup(self, tp: TopicPartition) -> str | None:
        """The partition's leader, or None when it has none right now; raises non-retriable errors."""
        try:
            return self._conn.leader(tp.topic, tp.partition)
        except RaftkaError as exc:
            if not exc.retriable:
                raise
            log.info("no leader for %s yet: %s", tp, exc)
            return None

    def _route(self, states: list[_Partition]) -> None:
        """Look up the leaders of partitions claimed for routing (`routing` set) and hand each to its
        broker's thread."""
        for state in states:
            error = None
            try:
                address = self._lookup(state.tp)
            except RaftkaError as exc:
                address, error = None, exc
            with self._cond:
                state.routing = False
                state.leader = address
                if self._partitions.get(state.tp) is not state:
                    continue
                if error is not None:
                    self._fail(state, error)
                if address is None:
                    state.failures += 1
                    state.retry_at = time.monotonic() + BACKOFF.delay(state.failures)
                self._routed(state)

    def _routed(self, state: _Partition) -> None:
        """The partition's leader is set: make sure its broker has a running thread (lock held)."""
        if state.leader is None or self._closed:
            return
        if state.leader not in self._workers:
            worker = self._workers[state.leader] = _Worker(state.leader, self._conn.broker(state.leader))
            worker.thread = threading.Thread(target=self._run, args=(worker,), name=f"raftka-fetch-{state.leader}",
                                             daemon=True)
            worker.thread.start()
        self._wake(state)

    def _run(self, worker: _Worker) -> None:
        config = self._config
        try:
            while True:
                with self._cond:
                    sent = self._next_fetch(worker)
                    if sent is None:
                        return
                    starts = {tp: (epoch, offset) for tp, (_, epoch, offset) in sent.items()}
                    following, worker.following = worker.following, None
                    stream = worker.stream
                    if stream is not None and following is not None and following.starts == starts:
                        correlation_id = following.correlation_id
                    else:
                        if stream is None:
                            stream = worker.stream = _FetchStream(worker.stub)
                        room = min(config.prefetch_bytes - state.buffered for state, _, _ in sent.values())
                        correlation_id = stream.fetch(api_pb2.FetchRequest(
                            partitions=[api_pb2.FetchPartition(topic=tp.topic, partition=tp.partition, offset=offset,
                                                               max_bytes=config.partition_max_bytes)
                                        for tp, (_, _, offset) in sent.items()],
                            max_wait_ms=config.max_wait_ms, min_bytes=config.min_bytes, max_bytes=config.max_bytes,
                            follow_bytes=room))
                    worker.sent_at = time.monotonic()
                lost = self._receive(worker, stream, correlation_id, sent)
                if lost:
                    self._reroute(lost)
        finally:
            with self._cond:
                stream, worker.stream = worker.stream, None
            if stream is not None:
                stream.close()

    def _next_fetch(self, worker: _Worker) -> Sent | None:
        """Wait until some partition of the worker's broker is fetchable and mark it in flight; None
        when the fetcher closes or the broker leads none of our partitions any more (lock held)."""
        while not self._closed:
            now = time.monotonic()
            if worker.throttled_until > now:
                self._cond.wait(worker.throttled_until - now)
                continue
            owned = [s for s in self._partitions.values() if s.leader == worker.address]
            if not owned:
                del self._workers[worker.address]
                return None
            bound = self._config.prefetch_bytes
            sent = {s.tp: (s, s.epoch, offset) for s in owned
                    if (offset := s.fetch_offset) is not None and not s.paused and not s.in_flight
                    and s.error is None and s.retry_at <= now and s.buffered < bound}
            if sent:
                for state, _, _ in sent.values():
                    state.in_flight = True
                worker.may_wait = all(state.at_end for state, _, _ in sent.values())
                worker.answered = worker.interrupted = False
                return sent
            worker.stop_following()
            backoffs = [s.retry_at for s in owned if s.retry_at > now]
            self._cond.wait(min(backoffs) - now if backoffs else None)
        return None

    def _receive(self, worker: _Worker, stream: _FetchStream, correlation_id: int,
                 sent: Sent) -> dict[_Partition, RaftkaError]:
        """Apply the fetch's responses; the partitions to route again, with the error that says why.
        A failed stream is dropped, and the worker's next fetch opens a new one."""
        lost: dict[_Partition, RaftkaError] = {}
        try:
            answer = stream.response(correlation_id)
            if answer.throttle_time_ms:
                worker.throttled_until = time.monotonic() + answer.throttle_time_ms / 1000
            for response in answer.partitions:
                self._apply(worker, response, sent, lost)
            if answer.follows:
                with self._cond:
                    if not worker.interrupted and worker.stream is stream:
                        worker.following = _Following(correlation_id, {
                            tp: (epoch, state.fetch_offset) for tp, (state, epoch, _) in sent.items()})
        except (grpc.RpcError, BrokerUnavailableError) as exc:
            with self._cond:
                if worker.stream is stream:
                    worker.stream = None
                if not self._closed:
                    error = from_rpc_error(exc) if isinstance(exc, grpc.RpcError) else exc
                    for state, epoch, _ in sent.values():
                        if state.epoch != epoch:
                            continue
                        if error.retriable:
                            lost[state] = error
                        else:
                            self._fail(state, error)
                    log.log(logging.INFO if error.retriable else logging.WARNING,
                            "fetch from %s failed: %s", worker.address, error)
            stream.close()
        except Exception as exc:
            log.exception("fetch from %s failed unexpectedly", worker.address)
            with self._cond:
                for state, epoch, _ in sent.values():
                    if state.epoch == epoch:
                        self._fail(state, InternalError(f"consumer could not handle a fetch response: {exc}"))
        finally:
            with self._cond:
                worker.sent_at = None
                for state, _, _ in sent.values():
                    state.in_flight = False
                self._cond.notify_all()
        return lost

    def _apply(self, worker: _Worker, response: api_pb2.FetchResponse, sent: Sent,
               lost: dict[_Partition, RaftkaError]) -> None:
        tp = TopicPartition(response.topic, response.partition)
        state, epoch, offset = sent[tp]
        error = from_proto(response.error)
        records: list[Record] = []
        end, size = offset, 0
        if error is None and state.epoch == epoch:
            data = response.batches
            size = len(data)
            try:
                records, end = decode_records(tp, data, offset)
            except CorruptBatchError as exc:
                error = exc
        with self._cond:
            worker.answered = True
            if state.epoch != epoch:
                return
            if error is None:
                self._buffer(state, records, end, size, response.high_watermark)
            elif isinstance(error, OffsetOutOfRangeError) and self._reset_offset is not None:
                log.warning("offset of %s out of range (%s); resetting it", tp, error.message)
                self._set_position(state, None)
            elif error.retriable:
                lost[state] = error
            else:
                self._fail(state, error)

    def _buffer(self, state: _Partition, records: list[Record], end: int, size: int, high_watermark: int) -> None:
        state.failures = 0
        state.at_end = end >= high_watermark
        state.fetch_offset = end
        if records:
            state.chunks.append(_Chunk(records, 0, end, size))
            state.buffered += size
            if len(state.chunks) == 1 and not state.paused:
                self._ready.append(state)
            self._cond.notify_all()
        elif state.chunks:
            state.chunks[-1].end = end
        else:
            state.position = end

    def _reroute(self, lost: dict[_Partition, RaftkaError]) -> None:
        """Partitions whose fetch failed retriably: tell the connection, back off, route them again."""
        for state, error in lost.items():
            self._conn.learned(state.tp.topic, state.tp.partition, error)
        with self._cond:
            if self._closed:
                return
            claimed = []
            for state in lost:
                if self._partitions.get(state.tp) is not state:
                    continue
                state.failures += 1
                state.retry_at = time.monotonic() + BACKOFF.delay(state.failures)
                state.leader = None
                state.routing = True
                claimed.append(state)
        self._route(claimed)
