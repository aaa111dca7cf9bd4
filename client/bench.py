"""`raftka bench`: the throughput and latency figures README's "Benchmark" section reports, through the
public client API only.

    scripts/bench [--quick] [--bootstrap HOST:PORT] [--output bench-results.json]

Without `--bootstrap` the bench starts its own cluster of `raftka broker` processes on 127.0.0.1,
with data on a real disk (never tmpfs: acks=all means fsynced, and fsync on tmpfs costs nothing), and
deletes it afterwards. Every measurement is one JSON line (`RESULT_FIELDS`) appended to the output
file as soon as it is taken, so an interrupted run keeps what it measured, and a table is printed
at the end. Figures vary from run to run on a shared machine: compare ratios taken in one run.

Workloads: windowed publish (every record acknowledged; the window is the producer's buffer), consume
(drain what was published), sync publish (one record at a time, each awaited), end-to-end latency
(paced sends, send time in the payload, measured at poll), failover (SIGKILL the leader while
publishing; with one broker that includes restarting it), consumer groups (time for a joining member
to receive partitions, records read again per rebalance, and commit latency), the two forms of a
produce request side by side (`produce_paths`: the same records as client-encoded batches and as
protobuf records the leader encodes, with the brokers' CPU per record), and the baseline: the same
windowed publish through a minimal log replicated by pysyncobj (3 processes), the approach we chose
not to take. `--tls` adds, in the same run, the publish, sync publish and end-to-end workloads on
a second cluster with security on: TLS on every port, client certificates required, and ACL
authorization (`--authorizer acl`), the workloads running as a principal that is not a super-user, so
every call is authenticated and checked against its ACLs (system `raftka+tls+acl`); the cost of
security reads off one table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grpc

from raftka.client.admin import AclEntry, Admin
from raftka.client.certs import CLIENT_NAME, local_pki
from raftka.client.consumer import Consumer
from raftka.client.local import LocalBroker, free_port, plan
from raftka.client.producer import Producer
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import encode_batch
from raftka.wire.structs import TopicPartition

RESULT_FIELDS = ("system", "workload", "msg_size", "msgs_per_s", "MB_per_s", "p50_ms", "p99_ms",
                 "broker_cpu_us_per_msg", "write_amp", "notes")
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
PARTITIONS = 3
"""Partitions of the throughput topics: one per broker of the 3-broker cluster the figures aim at."""


@dataclass(frozen=True)
class Plan:
    """How much each workload does; `QUICK` is a smoke run of about a minute."""

    publish_count: int
    sizes: tuple[int, ...]
    sync_count: int
    e2e_rate: int
    e2e_seconds: float
    baseline_count: int
    rebalances: int
    commits: int
    sustained_s: float
    sustained_window_s: float


FULL = Plan(publish_count=200_000, sizes=(100, 1024), sync_count=5_000, e2e_rate=1_000, e2e_seconds=10.0,
            baseline_count=200_000, rebalances=10, commits=2_000, sustained_s=120.0, sustained_window_s=10.0)
QUICK = Plan(publish_count=20_000, sizes=(100, 1024), sync_count=500, e2e_rate=1_000, e2e_seconds=2.0,
             baseline_count=0, rebalances=2, commits=200, sustained_s=8.0, sustained_window_s=2.0)


@dataclass
class Result:
    system: str
    workload: str
    msg_size: int | None
    msgs_per_s: float | None = None
    MB_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    broker_cpu_us_per_msg: float | None = None
    """CPU time (user + system) of every broker process per record, where the bench owns the brokers
    and the workload measures it."""
    write_amp: float | None = None
    """Bytes the broker processes wrote (the sum of their /proc/<pid>/io write_bytes: what they handed
    the block layer, WAL, flushes and compactions alike) per byte of replicated payload (record values
    times the replication factor), where the bench owns the brokers and the workload measures it."""
    notes: str = ""


class BenchError(Exception):
    """The bench could not run (bad arguments, a cluster that would not start)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options, shared by scripts/bench and `raftka bench`."""
    parser.add_argument("--bootstrap", default=argparse.SUPPRESS,
                        help="HOST:PORT[,...] of an existing cluster; by default the bench starts its own "
                             "(RAFTKA_BOOTSTRAP is deliberately ignored: the bench writes a lot)")
    parser.add_argument("--brokers", type=int, default=3,
                        help="brokers of the cluster the bench starts (default 3; topics get "
                             "replication factor min(3, brokers))")
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"),
                        help="JSON-lines file of results (default bench-results.json; overwritten)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of about a minute: smaller counts, no pysyncobj baseline")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out the pysyncobj baseline")
    parser.add_argument("--tls", action="store_true",
                        help="also run publish, sync publish and end-to-end on a cluster with TLS on every port, "
                             "client certificates and ACL authorization, reported as raftka+tls+acl")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="parent directory for the brokers' data (must not be tmpfs; default: a "
                             "temporary directory on disk, deleted afterwards)")
    parser.add_argument("--sustained-seconds", type=float, default=None,
                        help="how long the sustained workload publishes (default 120, 8 with --quick; 0 leaves "
                             "it out)")
    parser.add_argument("--only-sustained", action="store_true",
                        help="run the sustained workload alone (to compare storage engines side by side)")


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(prog="bench", description="Raftka throughput and latency benchmark.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run every workload, write `args.output`, print the table; 0 on success, 2 on bad arguments."""
    plan = QUICK if args.quick else FULL
    if args.sustained_seconds is not None:
        plan = replace(plan, sustained_s=args.sustained_seconds)
    args.bootstrap = getattr(args, "bootstrap", None)
    try:
        if args.bootstrap is None and not 1 <= args.brokers <= 9:
            raise BenchError(f"--brokers must be between 1 and 9, not {args.brokers}")
        if args.tls and args.bootstrap is not None:
            raise BenchError("--tls starts its own TLS cluster: leave out --bootstrap")
        if args.only_sustained and plan.sustained_s <= 0:
            raise BenchError("--only-sustained needs --sustained-seconds above 0")
        results: list[Result] = []
        args.output.write_text("")
        with _cluster(args) as cluster:
            workloads = _sustained_workload(cluster, plan) if args.only_sustained else _workloads(cluster, plan)
            for result in workloads:
                results.append(result)
                with args.output.open("a") as out:
                    out.write(json.dumps(asdict(result)) + "\n")
                print(f"bench: {result.system} {result.workload} {result.msg_size or ''} done",
                      file=sys.stderr, flush=True)
        if args.tls and not args.only_sustained:
            with _cluster(args, tls=True) as cluster:
                for result in _tls_workloads(cluster, plan):
                    results.append(result)
                    with args.output.open("a") as out:
                        out.write(json.dumps(asdict(result)) + "\n")
        if not (args.quick or args.skip_baseline or args.only_sustained):
            for result in baseline(plan.baseline_count, plan.sizes):
                results.append(result)
                with args.output.open("a") as out:
                    out.write(json.dumps(asdict(result)) + "\n")
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    print(f"results: {args.output}")
    return 0


def table(results: Sequence[Result]) -> str:
    header = ["SYSTEM", "WORKLOAD", "SIZE", "MSGS/S", "MB/S", "P50 MS", "P99 MS", "CPU US/MSG", "WRITE AMP", "NOTES"]
    rows = [[r.system, r.workload, _cell(r.msg_size), _cell(r.msgs_per_s, "{:,.0f}"), _cell(r.MB_per_s, "{:.1f}"),
             _cell(r.p50_ms, "{:.2f}"), _cell(r.p99_ms, "{:.2f}"), _cell(r.broker_cpu_us_per_msg, "{:.2f}"),
             _cell(r.write_amp, "{:.2f}"), r.notes]
            for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
                     for row in [header, *rows]).rstrip()


def _cell(value: float | int | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


BENCH_ADMIN = "bench-admin"
"""Common name of the certificate the bench administers the secure cluster with (its one super-user)."""
SECURE_SYSTEM = "raftka+tls+acl"


class BenchCluster:
    """Brokers the bench started (or none, for `--bootstrap`), able to SIGKILL and restart them."""

    def __init__(self, bootstrap: str, processes: list[LocalBroker], filesystem: str,
                 client: dict[str, Any] | None = None, admin: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.processes = processes
        self.filesystem = filesystem
        self.client = client or {}
        """The client API's TLS arguments (`tls_ca`, ...) of the workloads' principal when the cluster
        runs with TLS."""
        self.admin = admin or self.client
        """The same for the bench's super-user, which creates topics and grants the workloads' ACLs."""

    @property
    def owned(self) -> bool:
        return bool(self.processes)


class _cluster:
    """Context manager: the cluster to measure, started and torn down when the bench owns it."""

    def __init__(self, args: argparse.Namespace, *, tls: bool = False) -> None:
        self._args = args
        self._tls = tls
        self._root: Path | None = None
        self._cluster: BenchCluster | None = None

    def __enter__(self) -> BenchCluster:
        if self._args.bootstrap is not None:
            return BenchCluster(self._args.bootstrap, [], "unknown (existing cluster)")
        parent = self._args.data_dir or _disk_directory()
        filesystem = filesystem_type(parent)
        if filesystem in MEMORY_FILESYSTEMS:
            raise BenchError(f"{parent} is on {filesystem}: fsync there costs nothing; choose --data-dir on a disk")
        self._root = Path(tempfile.mkdtemp(prefix="raftka-bench-", dir=parent))
        client: dict[str, Any] = {}
        admin: dict[str, Any] = {}
        secure: tuple[str, ...] = ()
        pki = local_pki(self._root / "tls", self._args.brokers) if self._tls else None
        if pki is not None:
            admin_cert, admin_key = pki.issue_client(BENCH_ADMIN)
            client = {"tls_ca": pki.ca, "tls_cert": pki.client[0], "tls_key": pki.client[1]}
            admin = {"tls_ca": pki.ca, "tls_cert": admin_cert, "tls_key": admin_key}
            secure = ("--authorizer", "acl", "--super-users", f"User:{BENCH_ADMIN}")
        processes = plan(self._args.brokers, self._root, [free_port() for _ in range(self._args.brokers)],
                         cluster_id="raftka-bench", extra_args=secure, pki=pki)
        self._cluster = BenchCluster(",".join(p.address for p in processes), processes, filesystem, client, admin)
        for process in processes:
            process.spawn()
        for process in processes:
            try:
                process.wait(timeout_s=60)
            except RuntimeError as exc:
                raise BenchError(str(exc)) from None
        return self._cluster

    def __exit__(self, *exc: object) -> None:
        if self._cluster is not None:
            for process in self._cluster.processes:
                process.stop()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` lives on, from the longest matching mount in /proc/mounts."""
    target = str(path.resolve())
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def _disk_directory() -> Path:
    """The first of $TMPDIR, /var/tmp, /tmp and the working directory that is not in memory."""
    for candidate in (os.environ.get("TMPDIR"), "/var/tmp", "/tmp", os.getcwd()):
        if candidate and os.path.isdir(candidate) and filesystem_type(Path(candidate)) not in MEMORY_FILESYSTEMS:
            return Path(candidate)
    raise BenchError("found no directory on disk for the brokers' data; pass --data-dir")


def _workloads(cluster: BenchCluster, plan: Plan) -> Iterator[Result]:
    run_id = f"{os.getpid()}-{int(time.time())}"
    setup = f"{PARTITIONS} partitions, acks=all, fsync before ack, data on {cluster.filesystem}"
    with Admin(cluster.bootstrap) as admin:
        topics = {size: f"bench-{run_id}-{size}" for size in plan.sizes}
        for topic in topics.values():
            admin.create_topic(topic, partitions=PARTITIONS)
        for name in ("sync", "e2e", "failover", "paths"):
            admin.create_topic(f"bench-{run_id}-{name}", partitions=1)
        admin.create_topic(f"bench-{run_id}-group", partitions=GROUP_PARTITIONS)
    for size, topic in topics.items():
        yield publish(cluster.bootstrap, topic, plan.publish_count, size, setup)
    for size, topic in topics.items():
        yield consume(cluster.bootstrap, topic, plan.publish_count, size)
    yield from produce_paths(cluster, f"bench-{run_id}-paths", plan.publish_count, 100)
    yield sync_publish(cluster.bootstrap, f"bench-{run_id}-sync", plan.sync_count)
    yield end_to_end(cluster.bootstrap, f"bench-{run_id}-e2e", plan.e2e_rate, plan.e2e_seconds)
    yield from consumer_group(cluster.bootstrap, f"bench-{run_id}-group", plan.rebalances, plan.commits)
    yield failover(cluster, f"bench-{run_id}-failover")
    yield from _sustained_workload(cluster, plan)


def _sustained_workload(cluster: BenchCluster, plan: Plan) -> Iterator[Result]:
    if plan.sustained_s <= 0:
        return
    topic = f"bench-{os.getpid()}-{int(time.time())}-sustained"
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic(topic, partitions=PARTITIONS)
        replication = admin.describe_topic(topic).replication_factor
    yield sustained(cluster, topic, plan.sustained_s, plan.sustained_window_s, replication)


def _tls_workloads(cluster: BenchCluster, plan: Plan) -> Iterator[Result]:
    """The workloads whose cost security could change, on the TLS cluster with ACL authorization:
    reported as `raftka+tls+acl`. The bench's super-user creates the topics and grants the workloads'
    principal (`User:client`, not a super-user) write and read on them by prefix, the way an operator
    would, so each produce and fetch is checked against ACLs."""
    run_id = f"{os.getpid()}-{int(time.time())}"
    prefix = f"bench-tls-{run_id}-"
    setup = (f"{PARTITIONS} partitions, acks=all, fsync before ack, TLS 1.3 + client certificates, "
             f"ACLs (principal User:{CLIENT_NAME}, prefixed topic ACLs)")
    topics = {size: f"{prefix}{size}" for size in plan.sizes}
    with Admin(cluster.bootstrap, **cluster.admin) as admin:
        for topic in topics.values():
            admin.create_topic(topic, partitions=PARTITIONS)
        for name in ("sync", "e2e"):
            admin.create_topic(f"{prefix}{name}", partitions=1)
        admin.add_acls([AclEntry(f"User:{CLIENT_NAME}", "topic", prefix, operation, pattern="prefixed")
                        for operation in ("write", "read")])
    results = [publish(cluster.bootstrap, topic, plan.publish_count, size, setup, cluster.client)
               for size, topic in topics.items()]
    results.append(sync_publish(cluster.bootstrap, f"{prefix}sync", plan.sync_count, cluster.client))
    results.append(end_to_end(cluster.bootstrap, f"{prefix}e2e", plan.e2e_rate, plan.e2e_seconds,
                              cluster.client))
    for result in results:
        print(f"bench: {SECURE_SYSTEM} {result.workload} {result.msg_size or ''} done", file=sys.stderr, flush=True)
        yield replace(result, system=SECURE_SYSTEM)


DISTINCT_VALUES = 4096
"""More than a producer batch (256 KiB) holds records of 100 B."""


def publish(bootstrap: str, topic: str, count: int, size: int, setup: str,
            client: dict[str, Any] | None = None) -> Result:
    """Windowed publish: `count` unkeyed records, one `send` each, timed until all are acknowledged.

    The values are incompressible: DISTINCT_VALUES random values in turn, so no batch holds one twice
    (one value repeated, as kafka-producer-perf-test sends, would let any compressing layer shrink
    it). The futures are dropped, as a fire-and-forget publisher does (holding 200,000 of them mostly
    measures the garbage collector); the topic's end offsets afterwards prove every record landed.
    """
    values = [os.urandom(size) for _ in range(DISTINCT_VALUES)]
    client = client or {}
    with Producer(bootstrap, **client) as producer:
        send = producer.send
        started = time.perf_counter()
        for i in range(count):
            send(topic, values[i % DISTINCT_VALUES])
        producer.flush()
        elapsed = time.perf_counter() - started
    with Consumer(bootstrap, **client) as consumer:
        stored = sum(consumer.end_offsets(consumer.partitions_for(topic)).values())
    if stored != count:
        raise BenchError(f"published {count} records to {topic} but it holds {stored}")
    return Result("raftka", "publish", size, count / elapsed, count * size / elapsed / 1e6,
                  notes=f"{count:,} records of {DISTINCT_VALUES:,} distinct random values, unkeyed, linger 5 ms, "
                        f"window = 64 MiB producer buffer; {setup}")


PATHS_RECORDS_PER_REQUEST = 500
PATHS_IN_FLIGHT = 8


def produce_paths(cluster: BenchCluster, topic: str, count: int, size: int) -> Iterator[Result]:
    """The same `count` records published to one partition's leader twice, over ProduceStream with
    PATHS_IN_FLIGHT requests of PATHS_RECORDS_PER_REQUEST records in flight: first as batches the client
    encoded (the batch path), then as protobuf records the leader turns into one batch per request.
    Requests are built before the clock starts, so the figures are the brokers' and the wire's; the
    brokers' CPU per record (/proc) is the cost each path puts on the cluster."""
    value = os.urandom(size)
    rows = [(None, value, (), 1_767_225_600_000 + i // 100) for i in range(PATHS_RECORDS_PER_REQUEST)]
    requests = count // PATHS_RECORDS_PER_REQUEST
    batch = encode_batch(rows)
    records = [api_pb2.Record(value=value, timestamp_ms=timestamp) for _, _, _, timestamp in rows]
    shapes = {
        "publish-batches": [api_pb2.ProduceRequest(topic=topic, batches=batch) for _ in range(requests)],
        "publish-records": [api_pb2.ProduceRequest(topic=topic, records=records) for _ in range(requests)],
    }
    leader = _leader_address(cluster.bootstrap.split(",")[0], topic)
    for workload, batch_requests in shapes.items():
        cpu_before = _brokers_cpu_s(cluster)
        started = time.perf_counter()
        _produce_stream(leader, batch_requests)
        elapsed = time.perf_counter() - started
        cpu_after = _brokers_cpu_s(cluster)
        written = requests * PATHS_RECORDS_PER_REQUEST
        cpu = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / written * 1e6
        yield Result("raftka", workload, size, written / elapsed, written * size / elapsed / 1e6,
                     broker_cpu_us_per_msg=cpu,
                     notes=f"{written:,} records to 1 partition, {PATHS_RECORDS_PER_REQUEST} per ProduceStream "
                           f"request, {PATHS_IN_FLIGHT} requests in flight; broker CPU summed over all brokers")


def _leader_address(bootstrap: str, topic: str) -> str:
    with grpc.insecure_channel(bootstrap) as channel:
        stub = api_pb2_grpc.BrokerStub(channel)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metadata = stub.Metadata(api_pb2.MetadataRequest(topics=[topic]), timeout=10)
            leader = metadata.topics[0].partitions[0].leader_id if metadata.topics else -1
            addresses = {broker.id: broker.address for broker in metadata.brokers}
            if leader in addresses:
                return addresses[leader]
            time.sleep(0.1)
    raise BenchError(f"no leader for {topic}/0 within 30 s")


def _produce_stream(address: str, requests: list[api_pb2.ProduceRequest]) -> None:
    """Send `requests` on one ProduceStream with PATHS_IN_FLIGHT unanswered at most; raise on any error."""
    window = threading.Semaphore(PATHS_IN_FLIGHT)

    def paced() -> Iterator[api_pb2.ProduceRequest]:
        for correlation_id, request in enumerate(requests):
            window.acquire()
            request.correlation_id = correlation_id
            yield request

    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        for response in api_pb2_grpc.BrokerStub(channel).ProduceStream(paced(), timeout=300):
            if response.error.code != api_pb2.NONE:
                raise BenchError(f"produce failed: {api_pb2.ErrorCode.Name(response.error.code)} "
                                 f"{response.error.message}")
            window.release()


SUSTAINED_SIZE = 1024


def sustained(cluster: BenchCluster, topic: str, seconds: float, window_s: float, replication: int) -> Result:
    """Publish distinct incompressible 1 KiB values (`sustained_values`) as fast as acknowledgements
    allow for `seconds`, sampling every `window_s` how many records the topic holds (its end offsets:
    acknowledged, replicated records) and how many bytes the brokers wrote (`_brokers_written_bytes`).

    This is the workload that shows what storage costs: a repeated value fits in memtables and
    compresses at flush, distinct random ones do neither, and a longer run lets flushes and
    compactions catch up with the ingest. Write amplification is brokers' bytes written per replicated
    payload byte (values x `replication`), per window and over the run. The brokers' CPU per record
    (user plus system, every thread) over the run says what the rate costs when the cores, not the
    disk, are what caps it."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def publish_loop(producer: Producer) -> None:
        send, values = producer.send, sustained_values()
        try:
            while not stop.is_set():
                for _ in range(1_000):
                    send(topic, next(values))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    with Consumer(cluster.bootstrap) as watcher, Producer(cluster.bootstrap) as producer:
        partitions = watcher.partitions_for(topic)

        def sample() -> tuple[float, int, int | None]:
            return (time.perf_counter(), sum(watcher.end_offsets(partitions).values()),
                    _brokers_written_bytes(cluster))

        publisher = threading.Thread(target=publish_loop, args=(producer,), name="bench-sustained", daemon=True)
        samples = [sample()]
        cpu_before = _brokers_cpu_s(cluster)
        publisher.start()
        while samples[-1][0] - samples[0][0] < seconds and not errors:
            time.sleep(window_s)
            samples.append(sample())
        cpu_after = _brokers_cpu_s(cluster)
        stop.set()
        publisher.join(timeout=120)
        producer.flush()
    if errors:
        raise BenchError(f"sustained: publishing failed: {errors[0]!r}")
    payload_per_record = SUSTAINED_SIZE * replication
    windows = [_rate_and_amp(before, after, payload_per_record) for before, after in zip(samples, samples[1:])]
    rate, amp = _rate_and_amp(samples[0], samples[-1], payload_per_record)
    records = samples[-1][1] - samples[0][1]
    cpu_us = (None if cpu_before is None or cpu_after is None or not records
              else (cpu_after - cpu_before) * 1e6 / records)
    rates = " ".join(f"{window_rate / 1000:.1f}k" for window_rate, _ in windows)
    amps = " ".join(_cell(window_amp, "{:.2f}") for _, window_amp in windows)
    return Result("raftka", "sustained", SUSTAINED_SIZE, rate, rate * SUSTAINED_SIZE / 1e6,
                  broker_cpu_us_per_msg=cpu_us, write_amp=amp,
                  notes=f"{records:,} distinct random values in {samples[-1][0] - samples[0][0]:.0f} s, "
                        f"{PARTITIONS} partitions, replication {replication}; per {window_s:.0f} s window msgs/s: "
                        f"{rates}; write amp: {amps}; write amp = brokers' /proc/<pid>/io write_bytes / "
                        "(payload x replication)")


SUSTAINED_POOL_BYTES = (64 << 20) + SUSTAINED_SIZE
SUSTAINED_STRIDE = 1031


def sustained_values() -> Iterator[bytes]:
    """Distinct incompressible `SUSTAINED_SIZE`-byte values, endlessly: windows of one random pool,
    each starting `SUSTAINED_STRIDE` bytes after the last (modulo the pool's 64 MiB of starts).
    The stride is prime and longer than a value, so consecutive values share no byte and the starts
    cycle through all 2**26 positions before any value repeats (longer than any run publishes); a
    batch or a storage block never holds two overlapping values. Why not `os.urandom` per value: the
    kernel's generator took 22% of the bench process's CPU, 7% of both cores, at 65,000 values/s
    (perf), CPU the brokers under test compete for."""
    pool = os.urandom(SUSTAINED_POOL_BYTES)
    starts = SUSTAINED_POOL_BYTES - SUSTAINED_SIZE
    start = 0
    while True:
        yield pool[start:start + SUSTAINED_SIZE]
        start = (start + SUSTAINED_STRIDE) % starts


def _rate_and_amp(before: tuple[float, int, int | None], after: tuple[float, int, int | None],
                  payload_per_record: int) -> tuple[float, float | None]:
    """Records per second between two samples (time, records stored, bytes written) and the bytes
    written per payload byte (None when either sample has no byte count or nothing was stored)."""
    (t0, n0, w0), (t1, n1, w1) = before, after
    payload = (n1 - n0) * payload_per_record
    amp = None if w0 is None or w1 is None or payload == 0 else (w1 - w0) / payload
    return (n1 - n0) / (t1 - t0), amp


def _brokers_written_bytes(cluster: BenchCluster) -> int | None:
    """Bytes the bench's broker processes have written so far (/proc/<pid>/io write_bytes: charged when
    a page is dirtied, to the process that dirtied it, background RocksDB threads included); None for
    --bootstrap."""
    pids = [broker.process.pid for broker in cluster.processes if broker.process is not None]
    if not cluster.owned or len(pids) < len(cluster.processes):
        return None
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                total += int(line.split()[1])
    return total


def _brokers_cpu_s(cluster: BenchCluster) -> float | None:
    """User plus system CPU seconds of the bench's broker processes so far (None for --bootstrap)."""
    pids = [broker.process.pid for broker in cluster.processes if broker.process is not None]
    if not cluster.owned or len(pids) < len(cluster.processes):
        return None
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def consume(bootstrap: str, topic: str, count: int, size: int) -> Result:
    """Drain `count` records from the beginning of every partition of `topic`."""
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(consumer.partitions_for(topic))
        for tp in consumer.assignment():
            consumer.position(tp)
        received = 0
        started = time.perf_counter()
        deadline = time.monotonic() + 120
        while received < count and time.monotonic() < deadline:
            received += len(consumer.poll(timeout_ms=1000))
        elapsed = time.perf_counter() - started
    if received < count:
        raise BenchError(f"consumed {received} of {count} records of {topic} within 120s")
    return Result("raftka", "consume", size, received / elapsed, received * size / elapsed / 1e6,
                  notes=f"{received:,} records from {PARTITIONS} partitions, from the beginning")


def sync_publish(bootstrap: str, topic: str, count: int, client: dict[str, Any] | None = None) -> Result:
    """One record at a time, each awaited before the next: the latency of one durable write."""
    value = os.urandom(100)
    latencies = []
    with Producer(bootstrap, linger_ms=0, **(client or {})) as producer:
        producer.send(topic, value).result(timeout=30)
        for _ in range(count):
            started = time.perf_counter()
            producer.send(topic, value).result(timeout=30)
            latencies.append(time.perf_counter() - started)
    elapsed = sum(latencies)
    p50, p99 = _percentiles(latencies)
    return Result("raftka", "sync-publish", 100, count / elapsed, count * 100 / elapsed / 1e6, p50, p99,
                  notes=f"{count:,} records, linger 0, each awaited before the next")


def end_to_end(bootstrap: str, topic: str, rate: int, seconds: float,
               client: dict[str, Any] | None = None) -> Result:
    """Records paced at `rate`/s, their send time in the payload; latency from send to poll."""
    count = int(rate * seconds)
    latencies: list[float] = []
    client = client or {}
    consumer = Consumer(bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=100, **client)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.position(tp)
    done = threading.Event()

    def receive() -> None:
        while len(latencies) < count and not done.is_set():
            for record in consumer.poll(timeout_ms=100):
                latencies.append(time.perf_counter() - struct.unpack_from(">d", record.value or b"")[0])

    receiver = threading.Thread(target=receive, name="bench-e2e-receive", daemon=True)
    receiver.start()
    padding = os.urandom(100 - 8)
    with Producer(bootstrap, linger_ms=0, **client) as producer:
        started = time.perf_counter()
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.send(topic, struct.pack(">d", time.perf_counter()) + padding)
    receiver.join(timeout=30)
    done.set()
    receiver.join()
    consumer.close()
    if len(latencies) < count:
        raise BenchError(f"end-to-end: received {len(latencies)} of {count} records")
    p50, p99 = _percentiles(latencies)
    return Result("raftka", "end-to-end", 100, rate, rate * 100 / 1e6, p50, p99,
                  notes=f"{count:,} records paced at {rate}/s, linger 0; send to poll, one process")


GROUP_PARTITIONS = 6


def consumer_group(bootstrap: str, topic: str, rebalances: int, commits: int) -> Iterator[Result]:
    """A member keeps consuming while a second one joins and leaves `rebalances` times: how long the
    joiner waits for its partitions, and how many records the two read twice (auto-commit on
    revocation should make that zero). Then the latency of synchronous commits."""
    with Producer(bootstrap, linger_ms=1) as producer:
        for i in range(GROUP_PARTITIONS * 200):
            producer.send(topic, b"x" * 100, partition=i % GROUP_PARTITIONS)
    group = f"{topic}-members"
    seen: set[tuple[int, int]] = set()
    repeated = 0
    joins = []
    member = partial(Consumer, bootstrap, group_id=group, topics=[topic], auto_offset_reset="earliest",
                     session_timeout_ms=10_000)

    def read(consumer: Consumer) -> bool:
        """Poll once, counting records read twice; always True, so a wait condition can poll first."""
        nonlocal repeated
        for record in consumer.poll(timeout_ms=20, max_records=20):
            key = (record.partition, record.offset)
            repeated += key in seen
            seen.add(key)
        return True

    with member() as steady:
        _wait_for(lambda: read(steady) and len(steady.assignment()) == GROUP_PARTITIONS, 30)
        for _ in range(rebalances):
            started = time.perf_counter()
            with member() as joiner:
                _wait_for(lambda: read(steady) and read(joiner) and bool(joiner.assignment()), 30)
                joins.append(time.perf_counter() - started)
                for _ in range(10):
                    read(steady)
                    read(joiner)
            _wait_for(lambda: read(steady) and len(steady.assignment()) == GROUP_PARTITIONS, 30)
        p50, p99 = _percentiles(joins * 2 if len(joins) == 1 else joins)
        yield Result("raftka", "group-join", None, None, None, p50, p99,
                     notes=f"{rebalances} joins of a 2nd member to a 6-partition group; {repeated} records read "
                           "twice in all")
        tp = TopicPartition(topic, 0)
        latencies = []
        for i in range(commits):
            started = time.perf_counter()
            steady.commit({tp: i})
            latencies.append(time.perf_counter() - started)
        p50, p99 = _percentiles(latencies)
        yield Result("raftka", "commit", None, commits / sum(latencies), None, p50, p99,
                     notes=f"{commits:,} synchronous commits of one partition, each awaited")


def failover(cluster: BenchCluster, topic: str) -> Result:
    """SIGKILL the partition leader while publishing; time from the kill to the next acknowledged write.

    The leader is frozen (SIGSTOP) 200 ms before the kill so that every acknowledgement it sent has
    reached the producer: an acknowledgement counted afterwards can only come from the new leader.
    """
    if not cluster.owned:
        return Result("raftka", "failover", 100, notes="skipped: needs a cluster the bench started")
    value = os.urandom(100)
    acked: list[float] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def publish_loop(producer: Producer) -> None:
        try:
            while not stop.is_set():
                futures = [producer.send(topic, value) for _ in range(50)]
                for future in futures:
                    future.result(timeout=60)
                acked.append(time.monotonic())
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    with Producer(cluster.bootstrap, linger_ms=1, retry_backoff_max_ms=100) as producer:
        publisher = threading.Thread(target=publish_loop, args=(producer,), name="bench-failover", daemon=True)
        publisher.start()
        _wait_for(lambda: len(acked) >= 20 or bool(errors), 30)
        with Admin(cluster.bootstrap) as admin:
            leader_id = admin.describe_topic(topic).partitions[0].leader
        leader = next(p for p in cluster.processes if p.broker_id == leader_id)
        leader.pause()
        time.sleep(0.2)
        before = len(acked)
        killed = time.monotonic()
        leader.kill()
        if len(cluster.processes) == 1:
            leader.start()
        _wait_for(lambda: len(acked) > before or bool(errors), 60)
        stop.set()
        publisher.join(timeout=70)
        if not leader.alive():
            leader.start()
    if errors:
        raise BenchError(f"failover: publishing failed: {errors[0]!r}")
    if len(acked) <= before:
        raise BenchError("failover: no write was acknowledged within 60s of the kill")
    restart = " (one broker: includes restarting it)" if len(cluster.processes) == 1 else ""
    return Result("raftka", "failover", 100, p50_ms=(acked[before] - killed) * 1000,
                  notes=f"one SIGKILL of the partition leader; p50 = kill to next ack{restart}")


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


def _percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def baseline(count: int, sizes: Sequence[int], *, budget_s: float = 30.0) -> list[Result]:
    """The windowed publish through a 3-node pysyncobj log; a note instead when pysyncobj is missing.

    Each size publishes `count` records or for `budget_s`, whichever comes first (stock pysyncobj
    managed 9-17k small commands/s on the development machine), and reports the rate of what was
    acknowledged.
    """
    if importlib.util.find_spec("pysyncobj") is None:
        return [Result("pysyncobj", "publish", size, notes="skipped: pysyncobj is not installed "
                       "(pip install -e '.[bench]')") for size in sizes]
    ports = [free_port() for _ in range(3)]
    with tempfile.TemporaryDirectory(prefix="raftka-bench-syncobj-") as scratch:
        outputs = [Path(scratch) / f"node-{i}.json" for i in range(3)]
        nodes = []
        for i, output in enumerate(outputs):
            with open(output, "wb") as out:
                nodes.append(subprocess.Popen(
                    [sys.executable, "-c", "import sys; from raftka.client.bench import syncobj_node; "
                     "syncobj_node(sys.argv[1:])", str(count), ",".join(map(str, sizes)), str(budget_s),
                     *[str(p) for p in ports[i:] + ports[:i]]], stdout=out, stderr=subprocess.DEVNULL))
        lines: list[str] = []
        try:
            deadline = time.monotonic() + 30 + len(sizes) * (budget_s + 15)
            while len(lines) < len(sizes) and time.monotonic() < deadline:
                time.sleep(0.5)
                lines = [line for output in outputs for line in output.read_text().splitlines()
                         if line.startswith("{") and line.endswith("}")]
        finally:
            for node in nodes:
                node.kill()
                node.wait()
    results = [Result(**json.loads(line)) for line in lines]
    done = {r.msg_size for r in results}
    return results + [Result("pysyncobj", "publish", size, notes="failed: no result in time")
                      for size in sizes if size not in done]


def syncobj_node(argv: Sequence[str]) -> None:
    """One pysyncobj node: COUNT SIZES BUDGET_S MY_PORT PEER_PORT...; the leader publishes and prints results.

    The log is deliberately minimal (append to a list, nothing on disk): that is what wrapping the
    library gives, and its figures are an upper bound for a design built on it.
    """
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    count, sizes, budget_s = int(argv[0]), [int(s) for s in argv[1].split(",")], float(argv[2])
    me, *peers = [f"127.0.0.1:{port}" for port in argv[3:]]

    class ReplicatedLog(SyncObj):
        def __init__(self) -> None:
            super().__init__(me, peers, SyncObjConf(bindAddress=me, dynamicMembershipChange=False))
            self.records: list[bytes] = []

        @replicated
        def append(self, record: bytes) -> int:
            self.records.append(record)
            return len(self.records)

    node = ReplicatedLog()
    while not (node.isReady() and node._getLeader() is not None):
        time.sleep(0.05)
    time.sleep(1)
    if not node._isLeader():
        while True:
            time.sleep(3600)
    window_size = 1_000
    for size in sizes:
        window = threading.Semaphore(window_size)
        acked = [0]

        def acknowledged(result: Any, error: int, window: threading.Semaphore = window, acked: list[int] = acked
                         ) -> None:
            if error == FAIL_REASON.SUCCESS:
                acked[0] += 1
            window.release()

        value = os.urandom(size)
        started = time.perf_counter()
        stop_at = started + budget_s
        sent = 0
        while sent < count and time.perf_counter() < stop_at:
            window.acquire()
            node.append(value, callback=acknowledged)
            sent += 1
        for _ in range(window_size):
            window.acquire(timeout=max(0.0, stop_at + 10 - time.perf_counter()))
        elapsed = time.perf_counter() - started
        print(json.dumps(asdict(Result(
            "pysyncobj", "publish", size, acked[0] / elapsed, acked[0] * size / elapsed / 1e6,
            notes=f"{acked[0]:,} of {count:,} records acknowledged within the {budget_s:.0f} s budget; 3 nodes "
                  f"on 127.0.0.1, window {window_size:,}, stock config, no fsync, in-memory log"))), flush=True)
