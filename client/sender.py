"""The producer's I/O: drains ready batches and pipelines them over one ProduceStream per broker.

One sender thread encodes each batch once (compression and CRC included) and writes it to the stream
of its partition's leader; one reader thread per stream resolves batches as responses arrive. A
retriable failure (NOT_LEADER, a broker that went away, a timeout) refreshes metadata and requeues the
batch at the head of its partition's queue after a capped, jittered backoff, until the batch's
delivery deadline; any other failure fails the batch's records at once.

An idempotent producer (the default) stamps each batch with its producer id and sequence when it is
first sent (client/idempotence.py): the leader drops a retry of a written batch and refuses a batch
that would skip one, so retries neither duplicate nor reorder records. Without idempotence a retried
batch may be written twice, and with more than one batch in flight a retry can land after a later one.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Iterator

import grpc

from raftka.client.accumulator import ProducerBatch, RecordAccumulator
from raftka.client.connection import Backoff, ClusterConnection
from raftka.client.idempotence import Sequences
from raftka.errors import (BrokerUnavailableError, DuplicateSequenceError, InternalError, OutOfOrderSequenceError,
                           RaftkaError, RequestTimedOutError, UnknownProducerIdError, from_proto, from_rpc_error)
from raftka.proto import api_pb2
from raftka.wire.batch import Compression, encode_batch

log = logging.getLogger(__name__)

_CLOSE = object()

REQUEST_GRACE_S = 1.0
"""How long past a request's own timeout the client waits for the broker's answer to it."""


class BrokerStream:
    """One ProduceStream to one broker, with the batches it has in flight.

    A request unanswered for `REQUEST_GRACE_S` beyond its timeout abandons the whole stream (the
    sender checks at least once a second: `accumulator.IDLE_WAIT_S`), as a Kafka client disconnects
    on request.timeout.ms. A frozen broker's connection stays open; the channel's pings end it
    within 5-15 s (`connection.CHANNEL_OPTIONS`), and a shorter request timeout sooner. The broker
    answers a request that could not commit in time itself, so a live broker is never abandoned for
    slowness alone.

    A response's `throttle_time_ms` (the caller is over its produce quota, KIP-219) holds the
    stream's next request back for that long: the broker would hold it anyway.
    """

    def __init__(self, conn: ClusterConnection, address: str, sender: Sender) -> None:
        self.address = address
        self._conn = conn
        self._sender = sender
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._in_flight: dict[int, ProducerBatch] = {}
        self._sent_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._abandoned: RaftkaError | None = None
        self._throttled_until = 0.0
        self.alive = True
        self._call = conn.broker(address).ProduceStream(self._outgoing())
        self._reader = threading.Thread(target=self._read, name=f"raftka-producer-read-{address}", daemon=True)
        self._reader.start()

    def send(self, batch: ProducerBatch, request: api_pb2.ProduceRequest) -> None:
        with self._lock:
            if not self.alive:
                raise BrokerUnavailableError(f"stream to {self.address} is closed")
            request.correlation_id = next(self._ids)
            self._in_flight[request.correlation_id] = batch
            self._sent_at[request.correlation_id] = time.monotonic()
        self._requests.put(request)

    def abandon_if_overdue(self, now: float, timeout_s: float) -> None:
        """End the stream (its batches fail retriably) if its oldest request is overdue."""
        with self._lock:
            oldest = next(iter(self._sent_at.values()), None)
            if not self.alive or self._abandoned is not None or oldest is None:
                return
            waited = now - oldest
            if waited < timeout_s + REQUEST_GRACE_S:
                return
            self._abandoned = RequestTimedOutError(
                f"no answer from {self.address} within {waited:.1f} s; abandoning the stream")
        log.warning("%s", self._abandoned)
        self._conn.suspect(self.address)
        self._call.cancel()

    def close(self) -> None:
        self._requests.put(_CLOSE)
        self._reader.join(timeout=5)

    def _outgoing(self) -> Iterator[api_pb2.ProduceRequest]:
        while (item := self._requests.get()) is not _CLOSE:
            if (wait := self._throttled_until - time.monotonic()) > 0:
                time.sleep(wait)
            yield item  # type: ignore[misc]  # the queue holds requests and the _CLOSE sentinel

    def _read(self) -> None:
        try:
            for response in self._call:
                if response.throttle_time_ms:
                    self._throttled_until = time.monotonic() + response.throttle_time_ms / 1000
                with self._lock:
                    batch = self._in_flight.pop(response.correlation_id, None)
                    self._sent_at.pop(response.correlation_id, None)
                if batch is None:
                    log.warning("response for unknown correlation id %d from %s", response.correlation_id,
                                self.address)
                    continue
                self._sender.completed(batch, response)
            error: RaftkaError = BrokerUnavailableError(f"stream to {self.address} ended")
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
        with self._lock:
            self.alive = False
            error = self._abandoned or error
            orphans, self._in_flight, self._sent_at = list(self._in_flight.values()), {}, {}
        for batch in orphans:
            self._sender.failed(batch, error)


class Sender(threading.Thread):
    def __init__(self, conn: ClusterConnection, accumulator: RecordAccumulator, *, acks: api_pb2.Acks,
                 compression: Compression, request_timeout_ms: int, backoff: Backoff,
                 sequences: Sequences | None) -> None:
        """`sequences` makes the producer idempotent; None sends batches without a producer id."""
        super().__init__(name="raftka-producer-sender", daemon=True)
        self._conn = conn
        self._acc = accumulator
        self._acks = acks
        self._compression = compression
        self._request_timeout_ms = request_timeout_ms
        self._backoff = backoff
        self._sequences = sequences
        self._streams: dict[str, BrokerStream] = {}
        self._wakeup = threading.Event()
        self._stopping = False
        accumulator.wake = self._wakeup.set

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self.join()
        for stream in self._streams.values():
            stream.close()

    def run(self) -> None:
        """Drain and send until stopped. The wakeup is cleared *before* draining, so a wake that
        arrives while draining or sending is kept and cuts the next wait short, never lost."""
        while not self._stopping:
            self._wakeup.clear()
            now = time.monotonic()
            batches, wait = self._acc.drain(now)
            for batch in batches:
                self._send(batch)
            for stream in self._streams.values():
                stream.abandon_if_overdue(now, self._request_timeout_ms / 1000)
            if not batches:
                self._wakeup.wait(wait)

    def _send(self, batch: ProducerBatch) -> None:
        if time.monotonic() >= batch.deadline:
            self._give_up(batch, RequestTimedOutError(
                f"batch for {batch.tp} not acknowledged within the delivery timeout "
                f"after {batch.attempts} attempt(s)"))
            return
        try:
            if batch.encoded is None:
                self._encode(batch)
            address = self._conn.leader(batch.tp.topic, batch.tp.partition)
            stream = self._streams.get(address)
            if stream is None or not stream.alive:
                stream = self._streams[address] = BrokerStream(self._conn, address, self)
            batch.attempts += 1
            stream.send(batch, api_pb2.ProduceRequest(
                topic=batch.tp.topic, partition=batch.tp.partition, batches=batch.encoded,
                acks=self._acks, timeout_ms=self._request_timeout_ms))
        except RaftkaError as exc:
            self.failed(batch, exc)
        except Exception as exc:
            log.exception("could not send batch for %s", batch.tp)
            self._give_up(batch, InternalError(f"producer could not send the batch: {exc}"))

    def _encode(self, batch: ProducerBatch) -> None:
        if self._sequences is None:
            batch.encoded = encode_batch(batch.records, compression=self._compression)
            return
        producer_id, sequence = self._sequences.stamp(batch.tp, len(batch.records))
        batch.producer_id = producer_id
        batch.encoded = encode_batch(batch.records, compression=self._compression, producer_id=producer_id,
                                     producer_epoch=0, base_sequence=sequence)

    def completed(self, batch: ProducerBatch, response: api_pb2.ProduceResponse) -> None:
        error = from_proto(response.error)
        if error is None:
            batch.complete(response.base_offset)
            self._acc.finished(batch)
        elif isinstance(error, DuplicateSequenceError):
            log.warning("batch for %s was written long before this retry; its offsets are unknown", batch.tp)
            batch.complete(-1)
            self._acc.finished(batch)
        else:
            self.failed(batch, error)

    def failed(self, batch: ProducerBatch, error: RaftkaError) -> None:
        if error.retriable and time.monotonic() < batch.deadline and not self._stopping:
            log.debug("retrying batch for %s after %s: %s", batch.tp, type(error).__name__, error)
            if isinstance(error, (OutOfOrderSequenceError, UnknownProducerIdError)):
                self._resequence(batch, error)
            else:
                self._conn.learned(batch.tp.topic, batch.tp.partition, error)
            self._acc.requeue(batch, time.monotonic() + self._backoff.delay(batch.attempts))
            return
        if error.retriable and not self._stopping:
            error = RequestTimedOutError(f"batch for {batch.tp} not acknowledged within the delivery timeout "
                                         f"after {batch.attempts} attempt(s); last error: {error}")
        self._give_up(batch, error)

    def _resequence(self, batch: ProducerBatch, error: RaftkaError) -> None:
        """The leader refused the batch without writing it. If its producer id was retired on the
        partition (or the leader forgot the producer), stamp it afresh when it is sent again; an
        out-of-order batch under the current id waits for the earlier batch being retried."""
        sequences = self._sequences
        if sequences is None:
            return
        if isinstance(error, UnknownProducerIdError):
            sequences.retire(batch.tp, batch.producer_id)
        if sequences.current(batch.tp) != batch.producer_id:
            batch.encoded = None

    def _give_up(self, batch: ProducerBatch, error: RaftkaError) -> None:
        """Fail the batch for good. Its sequence will never be written, so later batches of the
        partition could never follow it: the partition moves to a fresh producer id."""
        if self._sequences is not None and batch.encoded is not None:
            self._sequences.retire(batch.tp, batch.producer_id)
        batch.fail(error)
        self._acc.finished(batch)
