"""`Producer`: batched, pipelined, durable-by-default publishing.

    with Producer("127.0.0.1:9092") as producer:
        future = producer.send("orders", b"payload", key=b"customer-7")
        print(future.result().offset)

`acks="all"` (the default) acknowledges a record once a majority of its partition's replicas have
fsynced it; `acks="leader"` once the leader has appended it, fsynced or not.

With acks="all" the producer is idempotent unless `enable_idempotence=False`: retries never write a
record twice nor reorder a partition's records, even across leader failovers (as Kafka's
enable.idempotence). Idempotence needs acks="all", as in Kafka, and at most
`IDEMPOTENCE_WINDOW` (16) batches in flight per partition, which the leader remembers.

Batching: a partition's records go out together once the batch is full (`batch_size`), or once it is
`linger_ms` old and the partition has no batch in flight; full batches pipeline up to `max_in_flight`.
So with `linger_ms=0` a lone record leaves at once, and records sent while it is on its way share
the next request.

Partitions: a topic's partition count is looked up at its first record and again once it is
`metadata_max_age_ms` old (Kafka's metadata.max.age.ms, 5 minutes by default), so partitions added
with `Admin.create_partitions` take records from then on. A keyed record goes to murmur2(key) mod
the count, as in Kafka: once the count grows, new records of a key may go to another partition
than its earlier ones, and per-key order holds only among records sent under one count.
"""

from __future__ import annotations

import time
from time import time_ns
from pathlib import Path
from typing import Mapping, Sequence

from raftka.client.accumulator import RecordAccumulator, RecordFuture
from raftka.client.connection import Backoff, ClusterConnection
from raftka.client.credentials import TokenProvider, token_source
from raftka.client.idempotence import Sequences
from raftka.client.sender import Sender
from raftka.errors import ClientClosedError, RequestTimedOutError, UnknownPartitionError
from raftka.proto import api_pb2
from raftka.wire.batch import IDEMPOTENCE_WINDOW, Compression
from raftka.wire.partitioning import partition_for_key
from raftka.wire.structs import TopicPartition
from raftka.wire.tls import ClientTls

ACKS = {"all": api_pb2.ACKS_ALL, "-1": api_pb2.ACKS_ALL, "leader": api_pb2.ACKS_LEADER, "1": api_pb2.ACKS_LEADER}

Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None


def _as_bytes(name: str, data: bytes | str | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"record {name} must be bytes, str or None, not {type(data).__name__}")


def _as_headers(headers: Headers) -> Sequence[tuple[str, bytes]]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), _as_bytes("header value", v) or b"") for k, v in items]


class Producer:
    def __init__(self, bootstrap: str | Sequence[str], *, acks: str | int = "all", linger_ms: float = 5,
                 batch_size: int = 256 * 1024, compression: str = "none", max_in_flight: int = 8,
                 buffer_memory: int = 64 * 1024 * 1024, max_block_ms: int = 60_000,
                 request_timeout_ms: int = 30_000, delivery_timeout_ms: int = 120_000,
                 retry_backoff_ms: int = 50, retry_backoff_max_ms: int = 2_000,
                 enable_idempotence: bool | None = None, metadata_max_age_ms: int = 300_000,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, tls_server_name: str | None = None,
                 token: str | None = None, token_file: str | Path | None = None,
                 token_provider: TokenProvider | None = None, client_id: str = "") -> None:
        """`client_id` names the application on every call (Kafka's `client.id`): quotas may be set per
        client id. The TLS and token options are Admin's."""
        if str(acks) not in ACKS:
            raise ValueError(f"acks must be 'all' or 'leader', not {acks!r}")
        if enable_idempotence is None:
            enable_idempotence = ACKS[str(acks)] == api_pb2.ACKS_ALL
        if enable_idempotence and ACKS[str(acks)] != api_pb2.ACKS_ALL:
            raise ValueError("enable_idempotence needs acks='all'")
        if enable_idempotence and max_in_flight > IDEMPOTENCE_WINDOW:
            raise ValueError(f"an idempotent producer allows max_in_flight <= {IDEMPOTENCE_WINDOW}, "
                             f"not {max_in_flight}")
        if batch_size <= 0 or linger_ms < 0 or max_in_flight < 1 or buffer_memory < batch_size:
            raise ValueError("need batch_size > 0, linger_ms >= 0, max_in_flight >= 1, buffer_memory >= batch_size")
        try:
            codec = Compression[compression.upper()]
        except KeyError:
            raise ValueError(f"compression must be one of none, zstd, lz4; not {compression!r}") from None
        self._conn = ClusterConnection(bootstrap, request_timeout_s=request_timeout_ms / 1000,
                                       tls=ClientTls.of(tls_ca, tls_cert, tls_key, tls_server_name),
                                       token=token_source(token, token_file, token_provider), client_id=client_id)
        self._acc = RecordAccumulator(batch_size=batch_size, linger_s=linger_ms / 1000,
                                      buffer_memory=buffer_memory, max_block_s=max_block_ms / 1000,
                                      max_in_flight=max_in_flight, delivery_timeout_s=delivery_timeout_ms / 1000)
        self._topics: dict[str, tuple[tuple[TopicPartition, ...], float]] = {}
        """Each topic's partitions, and when (monotonic) to look its count up again."""
        self._metadata_max_age_s = metadata_max_age_ms / 1000
        self._closed = False
        self._sender = Sender(self._conn, self._acc, acks=ACKS[str(acks)], compression=codec,
                              request_timeout_ms=request_timeout_ms,
                              backoff=Backoff(retry_backoff_ms / 1000, retry_backoff_max_ms / 1000),
                              sequences=Sequences(self._conn.init_producer_id) if enable_idempotence else None)
        self._sender.start()

    def send(self, topic: str, value: bytes | str | None, key: bytes | str | None = None,
             headers: Headers = None, partition: int | None = None,
             timestamp_ms: int | None = None) -> RecordFuture:
        """Queue a record; the future resolves to its RecordMetadata once acknowledged.

        Raises at once for what can never succeed (a closed producer, an unknown topic or partition,
        a wrong type) and BufferExhaustedError if the buffer stays full for max_block_ms. A topic's
        partitions are cached for metadata_max_age_ms: this is the per-record hot path, so it does no
        more than type checks, one clock read, one lock and one append.
        """
        if self._closed:
            raise ClientClosedError("producer is closed")
        if value.__class__ is not bytes and value is not None:
            value = _as_bytes("value", value)
        if key is not None and key.__class__ is not bytes:
            key = _as_bytes("key", key)
        known = self._topics.get(topic)
        if known is None or known[1] < time.monotonic():
            count = len(self._conn.topic(topic, refresh=known is not None).partitions)
            tps = tuple(TopicPartition(topic, p) for p in range(count))
            self._topics[topic] = (tps, time.monotonic() + self._metadata_max_age_s)
        else:
            tps = known[0]
        if partition is None:
            if key is not None:
                partition = partition_for_key(key, len(tps))
        elif not 0 <= partition < len(tps):
            raise UnknownPartitionError(f"topic {topic!r} has partitions 0 to {len(tps) - 1}; "
                                        f"there is no partition {partition}")
        return self._acc.append(tps, partition, key, value, _as_headers(headers) if headers else (),
                                time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait until it is acknowledged or failed."""
        self._acc.begin_flush()
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            for batch in self._acc.incomplete():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not batch.done.wait(remaining):
                    raise RequestTimedOutError(f"flush did not complete within {timeout}s")
        finally:
            self._acc.end_flush()

    def close(self, timeout: float | None = None) -> None:
        """Flush, then release the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
        finally:
            self._sender.stop()
            self._conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
