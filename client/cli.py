"""The `raftka` command: run brokers, manage topics, produce and consume from a shell.

Every flag has an environment variable (`--bootstrap` is RAFTKA_BOOTSTRAP, `raftka broker --data-dir`
is RAFTKA_DATA_DIR, ...), so containers are configured without a wrapper script. `--format json` turns
every table into JSON for scripts. Errors print one line naming what went wrong and exit non-zero.

`raftka consume` stops cleanly on SIGINT or SIGTERM (as Kafka's console consumer does): it writes no
further record, flushes its output, commits (with --group) exactly the records it has written, leaves
the group at once (its partitions move to the other members without waiting for the session
timeout) and exits with 128 + the signal's number. A second signal acts as it would without this.
Whatever ends it, a group consumer never commits a record it has not written: records it polled but
did not write and flush are sought back before anything is committed, so they go to the next reader.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Sequence

from raftka.client.local import DEFAULT_LOCAL_BROKERS
from raftka.client.records import Record, TopicPartition, first_offsets
from raftka.errors import RaftkaError

if TYPE_CHECKING:
    from raftka.client.consumer import Consumer

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_CHECK_MS = 200
"""`raftka consume` notices a stop signal within this long while it waits for records."""


def _env(name: str, default: Any = None, cast: Callable[[str], Any] = str) -> Any:
    value = os.environ.get(f"RAFTKA_{name}")
    return default if value is None else cast(value)


def _client_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--bootstrap and --format, accepted before or after the subcommand."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--bootstrap", default=default,
                        help=f"HOST:PORT[,HOST:PORT...] of brokers (env RAFTKA_BOOTSTRAP; default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--format", choices=("text", "json"), default=default,
                        help="output format (env RAFTKA_FORMAT; default text)")
    parser.add_argument("--request-timeout-ms", dest="timeout_ms", type=int, default=default,
                        help="how long requests may take, retries included (env RAFTKA_REQUEST_TIMEOUT_MS; "
                             "default 30000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftka", description="Raftka: a Raft-replicated, durable log.")
    _client_options(parser, suppress=False)
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="env RAFTKA_LOG_LEVEL")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = commands.add_parser("broker", help="run one broker in the foreground")
    broker.add_argument("--id", type=int, default=_env("ID", None, int), help="broker id (env RAFTKA_ID)")
    broker.add_argument("--listen", default=_env("LISTEN", "127.0.0.1:9092"),
                        help="HOST:PORT to serve on (env RAFTKA_LISTEN; default 127.0.0.1:9092)")
    broker.add_argument("--advertise", default=_env("ADVERTISE", ""),
                        help="HOST:PORT clients should use, if not --listen (env RAFTKA_ADVERTISE)")
    broker.add_argument("--raft-listen", default=_env("RAFT_LISTEN", ""),
                        help="HOST:PORT for inter-broker Raft connections (env RAFTKA_RAFT_LISTEN; default the "
                             "--listen host and any free port, which peers learn over gRPC)")
    broker.add_argument("--data-dir", type=Path, default=_env("DATA_DIR", None, Path),
                        help="directory for this broker's data (env RAFTKA_DATA_DIR)")
    broker.add_argument("--peers", default=_env("PEERS", ""),
                        help="every broker of the cluster as ID=HOST:PORT[@RACK],... including this one; "
                             "omitted: a one-broker cluster (env RAFTKA_PEERS)")
    broker.add_argument("--rack", default=_env("RACK", ""),
                        help="this broker's rack or zone; replicas of a partition are spread over racks "
                             "(env RAFTKA_RACK)")
    broker.add_argument("--cluster-id", default=_env("CLUSTER_ID", "raftka"),
                        help="brokers refuse Raft traffic from another cluster id (env RAFTKA_CLUSTER_ID)")
    broker.add_argument("--metrics-port", type=int, default=_env("METRICS_PORT", None, int),
                        help="serve Prometheus /metrics on this port (env RAFTKA_METRICS_PORT)")
    broker.add_argument("--metrics-host", default=_env("METRICS_HOST", "127.0.0.1"),
                        help="address for /metrics (env RAFTKA_METRICS_HOST; default 127.0.0.1)")
    broker.add_argument("--leader-balance-delay-ms", type=int, default=_env("LEADER_BALANCE_DELAY_MS", 30_000, int),
                        help="hand leadership back to an in-sync preferred leader after this long "
                             "(env RAFTKA_LEADER_BALANCE_DELAY_MS; default 30000)")
    broker.add_argument("--retention-check-ms", type=int, default=_env("RETENTION_CHECK_MS", 60_000, int),
                        help="how often expired segments are deleted (env RAFTKA_RETENTION_CHECK_MS; default 60000)")
    broker.add_argument("--offsets-partitions", type=int, default=_env("OFFSETS_PARTITIONS", 8, int),
                        help="partitions of __consumer_offsets, the consumer groups' topic, when it is created "
                             "(env RAFTKA_OFFSETS_PARTITIONS; default 8)")
    broker.add_argument("--snapshot-bytes", type=int, default=_env("SNAPSHOT_BYTES", 4 << 20, int),
                        help="snapshot the metadata and group state once this many bytes of their log "
                             "(and twice the last snapshot's size) were applied since the last snapshot, and "
                             "truncate the log behind it (env RAFTKA_SNAPSHOT_BYTES; default 4194304)")

    local = commands.add_parser("local", help="run a local development cluster in the foreground")
    local.add_argument("--brokers", type=int, default=_env("LOCAL_BROKERS", DEFAULT_LOCAL_BROKERS, int),
                       help="number of brokers (env RAFTKA_LOCAL_BROKERS; default 3)")
    local.add_argument("--data-dir", type=Path, default=_env("LOCAL_DATA_DIR", Path("raftka-data"), Path),
                       help="where the brokers keep data (env RAFTKA_LOCAL_DATA_DIR; default ./raftka-data)")
    local.add_argument("--base-port", type=int, default=_env("LOCAL_BASE_PORT", 9092, int),
                       help="broker i listens on base-port + i (env RAFTKA_LOCAL_BASE_PORT; default 9092)")

    topic = commands.add_parser("topic", help="create, list, describe and delete topics")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True, metavar="ACTION")
    create = topic_commands.add_parser("create", help="create a topic")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    create.add_argument("--replication-factor", type=int, default=0,
                        help="replicas per partition (default min(3, brokers))")
    create.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="topic config such as retention.ms=86400000 (repeatable)")
    for name, text in (("list", "list topics"), ("describe", "show partitions, leaders and offsets"),
                       ("delete", "delete a topic and its records"),
                       ("elect-leaders", "hand leadership back to preferred leaders that are in sync")):
        sub = topic_commands.add_parser(name, help=text)
        if name == "list":
            sub.add_argument("--internal", action="store_true", help="include internal topics")
        elif name == "elect-leaders":
            sub.add_argument("name", nargs="?", default="", help="only this topic (default: all)")
        else:
            sub.add_argument("name")
    for sub in topic_commands.choices.values():
        _client_options(sub, suppress=True)

    group = commands.add_parser("group", help="list, describe, delete consumer groups and reset their offsets")
    group_commands = group.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    group_commands.add_parser("list", help="list consumer groups")
    group_commands.add_parser("describe", help="members, assignment, committed offsets and lag").add_argument("group")
    group_commands.add_parser("delete", help="delete a group without members").add_argument("group")
    reset = group_commands.add_parser("reset-offsets", help="move a group's committed offsets on a topic "
                                      "(a dry run unless --execute)")
    reset.add_argument("group")
    reset.add_argument("--topic", required=True)
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-earliest", action="store_true")
    target.add_argument("--to-latest", action="store_true")
    target.add_argument("--to-offset", type=int, metavar="N")
    target.add_argument("--to-datetime", metavar="ISO8601", help="e.g. 2026-11-23T10:00:00Z (no zone: UTC)")
    target.add_argument("--shift-by", type=int, metavar="N", help="move each committed offset by N (+ or -)")
    reset.add_argument("--execute", action="store_true", help="commit the new offsets (refused while the group "
                       "has members)")
    for sub in group_commands.choices.values():
        _client_options(sub, suppress=True)

    produce = commands.add_parser("produce", help="publish stdin, one record per line")
    produce.add_argument("topic")
    produce.add_argument("--key-separator", help="split each line into KEY<SEP>VALUE at the first SEP")
    produce.add_argument("--partition", type=int, help="write every record to this partition")
    produce.add_argument("--acks", choices=("all", "leader"), default="all")
    produce.add_argument("--compression", choices=("none", "zstd", "lz4"), default="none")
    _client_options(produce, suppress=True)

    consume = commands.add_parser("consume", help="print records to stdout")
    consume.add_argument("topic")
    start = consume.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    consume.add_argument("--partition", type=int, help="read only this partition")
    consume.add_argument("--offset", type=int, help="start at this offset (needs --partition)")
    consume.add_argument("--max-messages", type=int, help="exit after this many records")
    consume.add_argument("--timeout-ms", dest="idle_timeout_ms", type=int,
                         help="exit when no record arrives for this long (default: never)")
    consume.add_argument("--print-key", action="store_true", help="text format: print KEY<TAB>VALUE")
    consume.add_argument("--group", help="consume as a member of this consumer group (partitions shared with "
                         "its other members; offsets committed, so a restart resumes)")
    consume.add_argument("--session-timeout-ms", type=int, default=45_000,
                         help="with --group: a member that stops heartbeating (killed, frozen) loses its "
                              "partitions after this long (default 45000)")
    _client_options(consume, suppress=True)

    from raftka.client.bench import add_arguments as add_bench_arguments

    add_bench_arguments(commands.add_parser(
        "bench", help="measure throughput and latency (starts its own cluster unless --bootstrap)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command != "bench":
        args.bootstrap = args.bootstrap or _env("BOOTSTRAP", DEFAULT_BOOTSTRAP)
        args.format = args.format or _env("FORMAT", "text")
        args.timeout_ms = args.timeout_ms or _env("REQUEST_TIMEOUT_MS", 30_000, int)
    try:
        return COMMANDS[args.command](args)
    except RaftkaError as exc:
        print(f"raftka: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"raftka: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_broker(args: argparse.Namespace) -> int:
    from raftka.cluster.broker import run
    from raftka.cluster.config import BrokerConfig, parse_peers

    if args.id is None or args.data_dir is None:
        raise ValueError("raftka broker needs --id and --data-dir (or RAFTKA_ID and RAFTKA_DATA_DIR)")
    peers, racks = parse_peers(args.peers)
    return run(BrokerConfig(broker_id=args.id, listen=args.listen, advertise=args.advertise,
                            raft_listen=args.raft_listen, data_dir=args.data_dir, peers=peers, racks=racks,
                            rack=args.rack, cluster_id=args.cluster_id, metrics_port=args.metrics_port,
                            metrics_host=args.metrics_host,
                            retention_check_interval_s=args.retention_check_ms / 1000,
                            leader_balance_delay_s=args.leader_balance_delay_ms / 1000,
                            offsets_partitions=args.offsets_partitions, snapshot_bytes=args.snapshot_bytes))


def cmd_local(args: argparse.Namespace) -> int:
    from raftka.client.local import run

    return run(args.brokers, args.data_dir, args.base_port)


def cmd_topic(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin, TopicInfo

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms) as admin:
        if args.topic_command == "create":
            config = dict(_key_value(item) for item in args.config)
            topic = admin.create_topic(args.name, args.partitions, args.replication_factor, config)
            _emit(args, {"created": _topic_json(topic)}, f"created topic {topic.name} with "
                  f"{len(topic.partitions)} partition(s), replication factor {topic.replication_factor}")
        elif args.topic_command == "delete":
            admin.delete_topic(args.name)
            _emit(args, {"deleted": args.name}, f"deleted topic {args.name}")
        elif args.topic_command == "elect-leaders":
            moves = admin.elect_preferred_leaders(args.name)
            rows = [[m.topic, str(m.partition), str(m.from_broker), str(m.to_broker)] for m in moves]
            _emit(args, [{"topic": m.topic, "partition": m.partition, "from": m.from_broker, "to": m.to_broker}
                         for m in moves], _table(["TOPIC", "PARTITION", "FROM", "TO"], rows))
        elif args.topic_command == "list":
            topics = admin.list_topics(include_internal=args.internal)
            rows = [[t.name, str(len(t.partitions)), str(t.replication_factor)] for t in topics]
            _emit(args, [_topic_json(t) for t in topics], _table(["TOPIC", "PARTITIONS", "REPLICATION"], rows))
        else:
            topic: TopicInfo = admin.describe_topic(args.name)
            rows = [[str(p.partition), str(p.leader), ",".join(map(str, p.replicas)),
                     ",".join(map(str, p.in_sync_replicas)), str(p.log_start_offset), str(p.high_watermark),
                     str(p.size_bytes)] for p in topic.partitions]
            config = " ".join(f"{k}={v}" for k, v in sorted(topic.config.items()))
            text = (f"topic {topic.name}  partitions {len(topic.partitions)}  replication factor "
                    f"{topic.replication_factor}\nconfig {config}\n"
                    + _table(["PARTITION", "LEADER", "REPLICAS", "IN-SYNC", "START", "END", "BYTES"], rows))
            _emit(args, _topic_json(topic), text)
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms) as admin:
        if args.group_command == "list":
            groups = admin.list_groups()
            _emit(args, [{"group": g.group_id, "state": g.state, "members": g.members,
                          "coordinator": g.coordinator_id} for g in groups],
                  _table(["GROUP", "STATE", "MEMBERS", "COORDINATOR"],
                         [[g.group_id, g.state, str(g.members), str(g.coordinator_id)] for g in groups]))
        elif args.group_command == "describe":
            info = admin.describe_group(args.group)
            rows = [[p.tp.topic, str(p.tp.partition), _dash(p.committed), str(p.log_end_offset), _dash(p.lag),
                     p.owner or "-"] for p in info.partitions]
            members = [[m.member_id, m.instance_id or "-", m.client_id or "-",
                        " ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(m.owned)) or "-"]
                       for m in info.members]
            text = (f"group {info.group_id}  state {info.state}  coordinator {info.coordinator}  "
                    f"assignor {info.assignor or '-'}\n"
                    + _table(["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "OWNER"], rows) + "\n\n"
                    + _table(["MEMBER", "INSTANCE", "CLIENT", "OWNS"], members))
            _emit(args, {"group": info.group_id, "state": info.state, "coordinator": info.coordinator,
                         "assignor": info.assignor,
                         "members": [{"member_id": m.member_id, "instance_id": m.instance_id,
                                      "client_id": m.client_id, "topics": list(m.topics), "pattern": m.pattern,
                                      "assignment": [list(tp) for tp in sorted(m.assignment)],
                                      "owned": [list(tp) for tp in sorted(m.owned)]} for m in info.members],
                         "partitions": [{"topic": p.tp.topic, "partition": p.tp.partition, "committed": p.committed,
                                         "log_end_offset": p.log_end_offset, "lag": p.lag, "owner": p.owner}
                                        for p in info.partitions]}, text)
        elif args.group_command == "delete":
            admin.delete_group(args.group)
            _emit(args, {"deleted": args.group}, f"deleted group {args.group}")
        else:
            spec, value = _reset_target(args)
            plan = admin.reset_offsets(args.group, args.topic, spec, value, execute=args.execute)
            rows = [[tp.topic, str(tp.partition), _dash(old), str(new)] for tp, (old, new) in sorted(plan.items())]
            verdict = "committed" if args.execute else "dry run: add --execute to commit"
            _emit(args, {"executed": args.execute, "offsets": [
                {"topic": tp.topic, "partition": tp.partition, "current": old, "new": new}
                for tp, (old, new) in sorted(plan.items())]},
                _table(["TOPIC", "PARTITION", "CURRENT", "NEW"], rows) + f"\n({verdict})")
    return 0


def _reset_target(args: argparse.Namespace) -> tuple[str, int | None]:
    from datetime import datetime, timezone

    if args.to_earliest:
        return "earliest", None
    if args.to_latest:
        return "latest", None
    if args.to_offset is not None:
        return "offset", args.to_offset
    if args.shift_by is not None:
        return "shift", args.shift_by
    moment = datetime.fromisoformat(args.to_datetime.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return "datetime", int(moment.timestamp() * 1000)


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def cmd_produce(args: argparse.Namespace) -> int:
    from raftka.client.producer import Producer

    failures: list[RaftkaError] = []
    lock = threading.Lock()
    sent = 0

    def check(future: Any) -> None:
        error = future.exception()
        if error is not None:
            with lock:
                failures.append(error)

    with Producer(args.bootstrap, acks=args.acks, compression=args.compression,
                  request_timeout_ms=args.timeout_ms) as producer:
        for raw in sys.stdin.buffer:
            line = raw.rstrip(b"\r\n")
            key = None
            if args.key_separator is not None:
                key, sep, value = line.partition(args.key_separator.encode())
                if not sep:
                    key, value = None, line
            else:
                value = line
            producer.send(args.topic, value, key=key, partition=args.partition).add_done_callback(check)
            sent += 1
            if failures:
                break
        producer.flush()
    if failures:
        print(f"raftka: {len(failures)} record(s) failed; first: {type(failures[0]).__name__}: "
              f"{failures[0].message}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"acknowledged": sent}))
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    import time

    from raftka.client.consumer import Consumer

    if args.offset is not None and args.partition is None:
        raise ValueError("--offset needs --partition")
    if args.offset is not None and args.from_beginning:
        raise ValueError("--offset and --from-beginning exclude each other")
    if args.group is not None and not args.group.strip():
        raise ValueError("--group needs a group name")
    if args.group and (args.partition is not None or args.offset is not None):
        raise ValueError("--group shares the topic's partitions among the group; it excludes --partition "
                         "and --offset (use `raftka group reset-offsets` to move the group)")
    reset = "earliest" if args.from_beginning else "latest"
    render = _record_renderer(args)
    group = ({"group_id": args.group, "topics": [args.topic], "client_id": "raftka-cli",
              "session_timeout_ms": args.session_timeout_ms} if args.group else {})
    with _StopSignals() as stop, Consumer(args.bootstrap, auto_offset_reset=reset,
                                          request_timeout_ms=args.timeout_ms, **group) as consumer:
        if not args.group:
            partitions = ([TopicPartition(args.topic, args.partition)] if args.partition is not None
                          else consumer.partitions_for(args.topic))
            consumer.assign(partitions)
            if args.offset is not None:
                consumer.seek(partitions[0], args.offset)
        count, last_record = 0, time.monotonic()
        while stop.signum is None and (args.max_messages is None or count < args.max_messages):
            wait_ms = (1000 if args.idle_timeout_ms is None
                       else max(0, args.idle_timeout_ms - int((time.monotonic() - last_record) * 1000)))
            left = None if args.max_messages is None else args.max_messages - count
            records = consumer.poll(timeout_ms=min(wait_ms, STOP_CHECK_MS), max_records=left)
            if records:
                last_record = time.monotonic()
            elif args.idle_timeout_ms is not None and (time.monotonic() - last_record) * 1000 >= args.idle_timeout_ms:
                break
            written = 0
            try:
                written = _write(sys.stdout, records, render, stop)
            finally:
                _unread(consumer, records[written:])
            count += written
    return 0 if stop.signum is None else 128 + stop.signum


class _StopSignals:
    """While entered, SIGINT and SIGTERM set `signum` instead of interrupting the process, so a command
    can finish cleanly; the first one puts the previous handlers back, so a second acts as usual."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        self._previous = {signum: signal.signal(signum, self._stop) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _write(out: Any, records: list[Record], render: Callable[[Record], str], stop: _StopSignals) -> int:
    """Write records until a stop signal, then flush; how many were written (all of them flushed)."""
    written = 0
    for record in records:
        if stop.signum is not None:
            break
        out.write(render(record))
        written += 1
    out.flush()
    return written


def _unread(consumer: Consumer, records: list[Record]) -> None:
    """Seek each partition back to its first of `records` (polled, not written), so what the consumer
    commits (auto-commit, on rebalance, on close) stops at what reached the output."""
    for tp, offset in first_offsets(records).items():
        consumer.seek(tp, offset)


def _record_renderer(args: argparse.Namespace) -> Callable[[Record], str]:
    """A record as the output line `raftka consume` prints: JSON, VALUE, or KEY<TAB>VALUE."""
    if args.format == "json":
        return lambda record: json.dumps({
            "topic": record.topic, "partition": record.partition, "offset": record.offset,
            "timestamp": record.timestamp, "key": _json_bytes(record.key), "value": _json_bytes(record.value),
            "headers": {k: _json_bytes(v) for k, v in record.headers}}) + "\n"
    if args.print_key:
        return lambda record: (f"{(record.key or b'').decode(errors='replace')}\t"
                               f"{(record.value or b'').decode(errors='replace')}\n")
    return lambda record: (record.value or b"").decode(errors="replace") + "\n"


def cmd_bench(args: argparse.Namespace) -> int:
    from raftka.client.bench import run

    return run(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "broker": cmd_broker, "local": cmd_local, "topic": cmd_topic, "group": cmd_group, "produce": cmd_produce,
    "consume": cmd_consume,
    "bench": cmd_bench,
}


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--config expects KEY=VALUE, got {item!r}")
    return key, value


def _json_bytes(data: bytes | None) -> str | dict[str, str] | None:
    """UTF-8 text as a string; other bytes as {"base64": ...}, so JSON output is lossless."""
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _topic_json(topic: Any) -> dict[str, Any]:
    return {"name": topic.name, "replication_factor": topic.replication_factor, "config": topic.config,
            "internal": topic.internal,
            "partitions": [{"partition": p.partition, "leader": p.leader, "replicas": list(p.replicas),
                            "in_sync_replicas": list(p.in_sync_replicas), "log_start_offset": p.log_start_offset,
                            "high_watermark": p.high_watermark, "size_bytes": p.size_bytes}
                           for p in topic.partitions]}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=None) if args.format == "json" else text)


if __name__ == "__main__":
    sys.exit(main())
