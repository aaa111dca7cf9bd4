"""The `raftka` command's client side: manage topics and groups, produce and consume from a shell, and
run `raftka local` and `raftka bench`. `raftka.cli`, the entry point, adds `raftka broker`
(`raftka.cluster.cli`), so that the client never imports the broker.

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
import binascii
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypedDict

from raftka.client.local import DEFAULT_LOCAL_BROKERS
from raftka.client.records import Record, first_offsets
from raftka.errors import InvalidRequestError, RaftkaError, TopicExistsError, UnknownTopicError
from raftka.wire.logs import configure as configure_logging
from raftka.wire.settings import env, flag
from raftka.wire.structs import TopicPartition

if TYPE_CHECKING:
    from raftka.client.consumer import Consumer

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CLIENT_ID = "raftka-cli"
TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_CHECK_MS = 200
"""`raftka consume` notices a stop signal within this long while it waits for records."""


def _client_options(parser: argparse.ArgumentParser, *, suppress: bool, client_id: bool = True) -> None:
    """--bootstrap, --format and the connection's options, accepted before or after the subcommand
    (--client-id only before it where the subcommand has a --client-id of its own, as `quota` does)."""
    default = argparse.SUPPRESS if suppress else None
    if client_id:
        parser.add_argument("--client-id", default=default,
                            help="the client id every call carries, for quotas per client id and group "
                                 f"membership (env RAFTKA_CLIENT_ID; default {DEFAULT_CLIENT_ID})")
    parser.add_argument("--bootstrap", default=default,
                        help=f"HOST:PORT[,HOST:PORT...] of brokers (env RAFTKA_BOOTSTRAP; default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--format", choices=("text", "json"), default=default,
                        help="output format (env RAFTKA_FORMAT; default text)")
    parser.add_argument("--request-timeout-ms", dest="timeout_ms", type=int, default=default,
                        help="how long requests may take, retries included (env RAFTKA_REQUEST_TIMEOUT_MS; "
                             "default 30000)")
    parser.add_argument("--tls-ca", default=default,
                        help="CA bundle (PEM) that verifies the brokers: turns TLS on (env RAFTKA_TLS_CA); for "
                             "`raftka broker`, the cluster CA, which also verifies clients")
    parser.add_argument("--tls-cert", default=default,
                        help="certificate (PEM) to present (env RAFTKA_TLS_CERT); for `raftka broker`, its own, "
                             "naming its id as SAN URI raftka://broker/ID; with --tls-key and --tls-ca it turns TLS "
                             "on for every port; the broker re-reads the three files when they change")
    parser.add_argument("--tls-key", default=default, help="the certificate's key (PEM) (env RAFTKA_TLS_KEY)")
    parser.add_argument("--tls-server-name", default=default,
                        help="name to verify in the brokers' certificates instead of the address's host "
                             "(env RAFTKA_TLS_SERVER_NAME)")
    parser.add_argument("--token-file", type=Path, default=default,
                        help="send the bearer token in this file with every call (re-read when it changes) "
                             "(env RAFTKA_TOKEN_FILE)")


class ConnectionArguments(TypedDict):
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_server_name: str | None
    token_file: Path | None
    client_id: str


def _connection(args: argparse.Namespace) -> ConnectionArguments:
    """The client API's TLS, credential and client id arguments from --tls-*, --token-file and
    --client-id (or RAFTKA_*)."""
    return ConnectionArguments(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                               tls_server_name=args.tls_server_name, token_file=args.token_file,
                               client_id=args.client_id)


@dataclass(frozen=True)
class Command:
    """A `raftka` command defined outside the client (`raftka.cli` adds the broker's): its help line,
    what adds its flags to its parser, and what runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def build_parser(extra: Mapping[str, Command]) -> argparse.ArgumentParser:
    """The `raftka` parser: the `extra` commands first, then the client's."""
    # No abbreviations of the global flags: `raftka local --tls` would be an ambiguous `--tls-*`.
    parser = argparse.ArgumentParser(prog="raftka", description="Raftka: a Raft-replicated, durable log.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action=_Version, help="print the client's version and, when a broker at "
                        "--bootstrap answers within 2 s, the cluster's; then exit")
    _client_options(parser, suppress=False)
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"), help="env RAFTKA_LOG_LEVEL")
    parser.add_argument("--log-format", choices=("text", "json"), default=env("LOG_FORMAT", "text"),
                        help="text, or json: one object per line with the key=value fields as keys, for log "
                             "shippers (env RAFTKA_LOG_FORMAT; default text)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in extra.items():
        command.add_arguments(commands.add_parser(name, help=command.help))

    local = commands.add_parser("local", help="run a local development cluster in the foreground")
    local.add_argument("--brokers", type=int, default=env("LOCAL_BROKERS", DEFAULT_LOCAL_BROKERS, int),
                       help="number of brokers (env RAFTKA_LOCAL_BROKERS; default 3)")
    local.add_argument("--data-dir", type=Path, default=env("LOCAL_DATA_DIR", Path("raftka-data"), Path),
                       help="where the brokers keep data (env RAFTKA_LOCAL_DATA_DIR; default ./raftka-data)")
    local.add_argument("--base-port", type=int, default=env("LOCAL_BASE_PORT", 9092, int),
                       help="broker i listens on base-port + i (env RAFTKA_LOCAL_BASE_PORT; default 9092)")
    local.add_argument("--tls", action="store_true", default=env("LOCAL_TLS", False, flag),
                       help="make a local CA and certificates in DATA_DIR/tls and run every port with TLS "
                            "(env RAFTKA_LOCAL_TLS=1)")

    topic = commands.add_parser("topic", help="create, list, describe and delete topics")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True, metavar="ACTION")
    create = topic_commands.add_parser("create", help="create a topic")
    create.add_argument("name")
    create.add_argument("--partitions", type=_positive, default=1, help="number of partitions (default 1)")
    create.add_argument("--replication-factor", type=_positive, default=None,
                        help="replicas per partition (default: the cluster's, min(3, brokers))")
    create.add_argument("--if-not-exists", action="store_true",
                        help="succeed, changing nothing, when the topic already exists")
    create.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="topic config such as retention.ms=86400000 (repeatable)")
    alter = topic_commands.add_parser("alter-config", help="change a live topic's settings (all or none)")
    alter.add_argument("name")
    alter.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting such as retention.ms=86400000 (repeatable)")
    alter.add_argument("--reset", action="append", default=[], metavar="KEY",
                       help="return a setting to its default (repeatable)")
    add_partitions = topic_commands.add_parser(
        "add-partitions", help="raise a topic's partition count (keys may map to other partitions afterwards)")
    add_partitions.add_argument("name")
    add_partitions.add_argument("--partitions", type=_positive, required=True, metavar="N",
                                help="the new total, more than the topic has")
    delete_records = topic_commands.add_parser("delete-records",
                                               help="delete a partition's records below an offset")
    delete_records.add_argument("name")
    delete_records.add_argument("--offset", action="append", default=[], required=True, metavar="PARTITION=OFFSET",
                                help="delete the partition's records below OFFSET, at most its end (repeatable)")
    for name, text in (("list", "list topics"), ("describe", "show partitions, leaders and offsets"),
                       ("describe-config", "show every setting of a topic and whether it is the default"),
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

    cluster = commands.add_parser("cluster", help="the cluster's brokers and controllers")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    cluster_commands.add_parser("status", help="every broker: address, rack, role, state, replicas, leaders")
    cluster_commands.add_parser("describe", help="the cluster id, the controller (metadata leader), the "
                                "controllers, and every broker as `status` shows it")
    controllers = cluster_commands.add_parser("controllers", help="add or remove a voter of the metadata log")
    controllers.add_argument("change", choices=("add", "remove"))
    controllers.add_argument("broker_id", type=int)
    balance = cluster_commands.add_parser("balance", help="plan (and execute) moves that balance replicas and "
                                          "preferred leaders over the brokers")
    balance_action = balance.add_mutually_exclusive_group(required=True)
    balance_action.add_argument("--dry-run", action="store_true", help="print the plan; move nothing")
    balance_action.add_argument("--execute", action="store_true", help="start the plan's moves")
    balance.add_argument("--plan-out", type=Path, metavar="FILE",
                         help="also write the plan as reassignment JSON (for `raftka reassign --plan FILE`)")
    balance.add_argument("--throttle", type=_rate, default=0, metavar="RATE",
                         help="with --execute: limit what each new replica is sent while it catches up")
    balance.add_argument("--wait", action="store_true", help="with --execute: follow the moves until done")
    scale_check = cluster_commands.add_parser(
        "scale-check", help="exit non-zero while a broker that a scale-down to N brokers removes (an id above N) "
                            "is still in the cluster; decommission those first")
    scale_check.add_argument("--brokers", type=_positive, required=True, metavar="N",
                             help="brokers left after the scale-down: ids 1..N (a StatefulSet's N pods)")
    for sub in cluster_commands.choices.values():
        _client_options(sub, suppress=True)

    partition = commands.add_parser("partition", help="move a partition to other brokers")
    partition_commands = partition.add_subparsers(dest="partition_command", required=True, metavar="ACTION")
    move = partition_commands.add_parser("move", help="move one partition's replicas (the first listed is the "
                                         "preferred leader)")
    move.add_argument("topic")
    move.add_argument("partition", type=int)
    move.add_argument("--replicas", required=True, type=_broker_ids, metavar="ID,ID,...",
                      help="the partition's new replicas")
    _move_options(move)

    reassign = commands.add_parser("reassign", help="execute, follow or cancel partition moves (Kafka's "
                                   "reassignment JSON)")
    reassign_action = reassign.add_mutually_exclusive_group(required=True)
    reassign_action.add_argument("--execute", action="store_true", help="start the moves of --plan")
    reassign_action.add_argument("--status", action="store_true",
                                 help="every move in progress: phase, bytes remaining, rate, ETA")
    reassign_action.add_argument("--cancel", action="store_true",
                                 help="send unfinished moves (of --plan, or all) back to their original replicas")
    reassign.add_argument("--plan", type=Path, help='the plan: {"version":1,"partitions":[{"topic":...,'
                          '"partition":...,"replicas":[...]}]} (with "placement_offset", refused once stale)')
    _move_options(reassign)

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
    target.add_argument("--to-datetime", type=_timestamp_ms, metavar="ISO8601|AGE",
                        help="the first offset at or after this time: 2026-11-23T10:00:00Z (no zone: UTC), or "
                             "that long ago: 1h, 30m")
    target.add_argument("--shift-by", type=int, metavar="N", help="move each committed offset by N (+ or -)")
    reset.add_argument("--execute", action="store_true", help="commit the new offsets (refused while the group "
                       "has members)")
    for sub in group_commands.choices.values():
        _client_options(sub, suppress=True)

    acl = commands.add_parser("acl", help="add, list and remove ACLs (enforced by brokers run with --authorizer acl)")
    acl_commands = acl.add_subparsers(dest="acl_command", required=True, metavar="ACTION")
    for name, text in (("add", "add an ACL"), ("remove", "remove an ACL"), ("list", "list ACLs")):
        sub = acl_commands.add_parser(name, help=text)
        sub.add_argument("--principal", required=name != "list", default="",
                         help="User:NAME, or '*' for every principal" + (" (list: only its ACLs)" if name == "list"
                                                                          else ""))
        if name != "list":
            target = sub.add_mutually_exclusive_group(required=True)
            target.add_argument("--topic", help="a topic name ('*': every topic)")
            target.add_argument("--group", help="a consumer group id ('*': every group)")
            target.add_argument("--cluster", action="store_true", help="the cluster itself")
            sub.add_argument("--prefixed", action="store_true", help="the name is a prefix of the resources' names")
            sub.add_argument("--operation", required=True, choices=("read", "write", "create", "delete", "alter",
                                                                     "describe", "cluster-admin", "all"))
            sub.add_argument("--deny", action="store_true", help="a deny ACL (deny wins over allow)")
        _client_options(sub, suppress=True)

    quota = commands.add_parser("quota", help="set, list and remove quotas per principal and client id")
    quota_commands = quota.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    quota_set = quota_commands.add_parser("set", help="set the quota of a principal, a client id or both "
                                          "(unnamed rates are not limited by it)")
    quota_remove = quota_commands.add_parser("remove", help="remove the quota of exactly this principal, client "
                                             "id or both")
    for sub in (quota_set, quota_remove):
        entity = sub.add_mutually_exclusive_group()
        entity.add_argument("principal", nargs="?", default="", help="the same as --principal")
        entity.add_argument("--principal", dest="principal_option", default="", metavar="PRINCIPAL",
                            help="User:NAME, or '*' for principals without a quota of their own")
        sub.add_argument("--client-id", dest="quota_client_id", default="", metavar="CLIENT_ID",
                         help="a client id, or '*' for client ids without a quota of their own (the CLI's own "
                              "client id goes before `quota`: raftka --client-id ID quota ...)")
    quota_set.add_argument("--produce-rate", type=_rate, default=0, metavar="RATE",
                           help="bytes per second of produced batches, e.g. 1MB/s")
    quota_set.add_argument("--fetch-rate", type=_rate, default=0, metavar="RATE",
                           help="bytes per second of fetched batches")
    quota_set.add_argument("--requests-per-s", type=int, default=0, help="requests per second of any kind")
    quota_commands.add_parser("list", help="list quotas")
    for name, sub in quota_commands.choices.items():
        _client_options(sub, suppress=True, client_id=name == "list")

    produce = commands.add_parser("produce", help="publish stdin, one record per line")
    produce.add_argument("topic")
    keys = produce.add_mutually_exclusive_group()
    keys.add_argument("--key-separator", help="split each line into KEY<SEP>VALUE at the first SEP")
    keys.add_argument("--key", help="give every record this key")
    produce.add_argument("--on-missing-key", choices=("error", "keyless"), default="error",
                         help="with --key-separator, a line without the separator is an error (default), or "
                              "is sent without a key")
    produce.add_argument("--value-format", choices=("text", "base64"), default="text",
                         help="text: the line is the value; base64: the line (after any key) is base64 of "
                              "the value, for binary values")
    produce.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                         help="add this header to every record (repeatable; a key may repeat)")
    produce.add_argument("--partition", type=int, help="write every record to this partition")
    produce.add_argument("--acks", choices=("all", "leader"), default="all")
    produce.add_argument("--compression", choices=("none", "zstd", "lz4"), default="none")
    _client_options(produce, suppress=True)

    consume = commands.add_parser("consume", help="print records to stdout")
    consume.add_argument("topic")
    start = consume.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    start.add_argument("--offset", type=_start_offset, metavar="start|end|N",
                       help="start every partition at its start or end, or at offset N (N needs --partition)")
    start.add_argument("--from-timestamp", type=_timestamp_ms, metavar="ISO8601|AGE",
                       help="start at the first record at or after this time: 2026-11-23T10:00:00Z (no zone: "
                            "UTC), or that long ago: 5m, 2h, 30s, 1d, 500ms")
    consume.add_argument("--partition", type=int, help="read only this partition")
    consume.add_argument("--max-messages", type=int, help="exit after this many records")
    consume.add_argument("--timeout-ms", dest="idle_timeout_ms", type=int,
                         help="exit when no record arrives for this long (default: never)")
    consume.add_argument("--print-key", action="store_true", help="text format: print KEY<TAB>VALUE")
    consume.add_argument("--print-headers", action="store_true",
                         help="text format: print the headers as K=V,K=V<TAB> before the value (after the key)")
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


def main(extra: Mapping[str, Command], argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names (the client's, or one of `extra`); the exit status."""
    args = build_parser(extra).parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    if args.command != "bench":
        args.bootstrap = args.bootstrap or env("BOOTSTRAP", DEFAULT_BOOTSTRAP)
        args.format = args.format or env("FORMAT", "text")
        args.timeout_ms = args.timeout_ms or env("REQUEST_TIMEOUT_MS", 30_000, int)
        for name in TLS_OPTIONS:
            setattr(args, name, getattr(args, name, None) or env(name.upper()))
        args.token_file = getattr(args, "token_file", None) or (Path(path) if (path := env("TOKEN_FILE", "")) else None)
        args.client_id = getattr(args, "client_id", None) or env("CLIENT_ID", DEFAULT_CLIENT_ID)
    try:
        return extra[args.command].run(args) if args.command in extra else COMMANDS[args.command](args)
    except RaftkaError as exc:
        print(f"raftka: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _output_closed()
    except (ValueError, OSError) as exc:
        print(f"raftka: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _output_closed() -> int:
    """The reader of our output went away (`raftka consume ... | head`): stop without a word, with the
    status a process killed by SIGPIPE has, as `cat` or `seq` would. Standard output is pointed at
    /dev/null first, so flushing it at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def add_broker_admin_arguments(parser: argparse.ArgumentParser) -> None:
    """The client's part of `raftka broker`: `raftka broker decommission|recommission N` (`raftka.cli`
    adds the flags that run a broker)."""
    parser.add_argument("action", nargs="?", choices=("decommission", "recommission"),
                        help="instead of running a broker: mark broker TARGET draining (no new replicas go to "
                             "it), or not any more")
    parser.add_argument("target", nargs="?", type=int, help="the broker id to decommission or recommission")
    parser.add_argument("--wait", action="store_true",
                        help="with decommission: follow the moves until the broker holds nothing and has left")
    parser.add_argument("--throttle", type=_rate, default=0, metavar="RATE",
                        help="with decommission: limit what each new replica is sent while it catches up")
    _client_options(parser, suppress=True)


def cmd_broker_admin(args: argparse.Namespace) -> int:
    """`raftka broker decommission|recommission N`; `raftka.cli` sends the `broker` command here when it
    names an action instead of running a broker."""
    from raftka.client.admin import Admin

    if args.target is None:
        raise ValueError(f"raftka broker {args.action} needs a broker id")
    draining = args.action == "decommission"
    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
        moves = admin.decommission_broker(args.target, draining=draining, throttle_bytes_per_s=args.throttle)
        _emit(args, {args.action: args.target, "moves": [{"topic": tp.topic, "partition": tp.partition,
                                                          "replicas": replicas} for tp, replicas in moves.items()]},
              f"broker {args.target} is draining: {len(moves)} partition(s) moving off it" if draining
              else f"broker {args.target} takes new replicas again")
        if not (draining and args.wait):
            return 0
        _follow(args, admin, quiet=True)
        while args.target in {b.broker_id for b in admin.describe_cluster()}:
            time.sleep(0.5)
    _emit(args, {"decommissioned": args.target},
          f"broker {args.target} is decommissioned: it holds no replica and left the cluster")
    return 0


def _move_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--throttle", type=_rate, default=0, metavar="RATE",
                        help="limit what the new replicas are sent while they catch up, e.g. 50MB/s or 512KiB/s "
                             "(lifted when the move ends or is cancelled; default: unlimited)")
    parser.add_argument("--wait", action="store_true",
                        help="follow the moves until none is left (live progress on a terminal); exit 0 then")
    _client_options(parser, suppress=True)


def _rate(text: str) -> int:
    from raftka.client.reassignment import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _broker_ids(text: str) -> list[int]:
    try:
        ids = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected broker ids such as 4,5,6, not {text!r}") from None
    if not ids or min(ids) < 1:
        raise argparse.ArgumentTypeError(f"expected broker ids (>= 1) such as 4,5,6, not {text!r}")
    return ids


def cmd_partition(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
        admin.reassign_partitions({TopicPartition(args.topic, args.partition): args.replicas},
                                  throttle_bytes_per_s=args.throttle)
        if args.format != "json" or not args.wait:
            _emit(args, {"moving": [{"topic": args.topic, "partition": args.partition, "replicas": args.replicas}]},
                  f"moving {args.topic}/{args.partition} to {','.join(map(str, args.replicas))}")
        return _follow(args, admin) if args.wait else 0


def cmd_reassign(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin
    from raftka.wire.reassignment import format_reassignment, parse_reassignment

    targets: dict[tuple[str, int], tuple[int, ...]] = {}
    offset = None
    if args.plan is not None:
        try:
            targets, offset = parse_reassignment(args.plan.read_text())
        except InvalidRequestError as exc:
            raise ValueError(f"{args.plan}: {exc.message}") from None
        if not targets:
            raise ValueError(f"{args.plan}: the plan moves no partition")
    elif args.execute:
        raise ValueError("raftka reassign --execute needs --plan FILE")
    moves = {TopicPartition(topic, partition): list(replicas) for (topic, partition), replicas in targets.items()}
    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
        if args.execute:
            admin.reassign_partitions(moves, throttle_bytes_per_s=args.throttle, expected_placement_offset=offset)
            if args.format != "json" or not args.wait:
                _emit(args, {"moving": format_reassignment(targets)["partitions"]},
                      f"moving {len(moves)} partition(s); follow with `raftka reassign --status --wait`")
        elif args.cancel:
            cancelled = admin.cancel_reassignments(list(moves))
            if args.format != "json" or not args.wait:
                _emit(args, {"cancelled": [{"topic": tp.topic, "partition": tp.partition} for tp in cancelled]},
                      f"cancelled {len(cancelled)} move(s): "
                      + (", ".join(f"{tp.topic}/{tp.partition}" for tp in cancelled) or "none was unfinished"))
        elif not args.wait:
            _print_moves(args, admin)
            return 0
        return _follow(args, admin) if args.wait else 0


def _print_moves(args: argparse.Namespace, admin: Any) -> None:
    from raftka.client.reassignment import ProgressTracker

    tracker = ProgressTracker()
    rows = [tracker.row(move) for move in admin.list_reassignments().moves]
    _emit(args, rows, _moves_table(rows))


def _moves_table(rows: list[dict[str, Any]]) -> str:
    from raftka.client.reassignment import human_bytes

    if not rows:
        return "no partition is moving"
    table = _table(["TOPIC", "PARTITION", "PHASE", "FROM", "TO", "LEADER", "REMAINING", "RATE", "ETA"], [
        [r["topic"], str(r["partition"]), r["phase"] + (" (cancelled)" if r["cancelled"] else ""),
         ",".join(map(str, r["original"])), ",".join(map(str, r["target"])), _dash(r["leader"]),
         "-" if r["bytes_remaining"] is None else human_bytes(r["bytes_remaining"]),
         "-" if r["rate_bytes_per_s"] is None else human_bytes(r["rate_bytes_per_s"]) + "/s",
         "-" if r["eta_s"] is None else f"{r['eta_s']:.0f}s"] for r in rows])
    warnings = [f"WARNING {r['topic']}/{r['partition']}: {r['warning']}" for r in rows if r["warning"]]
    return "\n".join([table, *warnings])


def _follow(args: argparse.Namespace, admin: Any, interval_s: float = 1.0, *, quiet: bool = False) -> int:
    """`--wait`: poll the moves until none is left; on a terminal redraw their progress table
    (`quiet`: print nothing when done)."""
    from raftka.client.reassignment import ProgressTracker

    tracker = ProgressTracker()
    drawn = 0
    live = sys.stdout.isatty() and args.format != "json"
    while True:
        rows = [tracker.row(move) for move in admin.list_reassignments().moves]
        if live:
            text = _moves_table(rows)
            sys.stdout.write((f"\x1b[{drawn}F\x1b[J" if drawn else "") + text + "\n")
            sys.stdout.flush()
            drawn = text.count("\n") + 1
        if not rows:
            break
        time.sleep(interval_s)
    if not quiet:
        _emit(args, {"moving": []}, "" if live else "no partition is moving")
    return 0


def _balance(args: argparse.Namespace, admin: Any) -> int:
    from raftka.client.reassignment import human_bytes
    from raftka.wire.reassignment import format_reassignment

    plan = admin.plan_balance()
    document = format_reassignment({(tp.topic, tp.partition): replicas for tp, replicas in plan.moves.items()},
                                   plan.placement_offset)
    if args.plan_out is not None:
        args.plan_out.write_text(json.dumps(document, indent=2) + "\n")
    rows = [[str(b), f"{before} -> {after}", f"{lead_before} -> {lead_after}"]
            for b, (before, after, lead_before, lead_after) in sorted(plan.brokers.items())]
    summary = (f"{len(plan.moves)} partition(s) change, {plan.replicas_moved} replica(s) move "
               f"({human_bytes(plan.bytes_moved)})" if plan.moves else "balanced: nothing to move")
    if args.execute and plan.moves:
        admin.reassign_partitions(plan.moves, throttle_bytes_per_s=args.throttle,
                                  expected_placement_offset=plan.placement_offset)
        summary += "; moving"
    _emit(args, {**document, "replicas_moved": plan.replicas_moved, "bytes_moved": plan.bytes_moved,
                 "brokers": [{"id": b, "replicas_before": v[0], "replicas_after": v[1], "leaders_before": v[2],
                              "leaders_after": v[3]} for b, v in sorted(plan.brokers.items())],
                 "executed": bool(args.execute and plan.moves)},
          "\n".join([_table(["BROKER", "REPLICAS", "PREFERRED LEADERS"], rows), summary]))
    return _follow(args, admin, quiet=True) if args.execute and args.wait else 0


def _scale_check(args: argparse.Namespace, admin: Any) -> int:
    """`raftka cluster scale-check --brokers N`: a scale-down to N brokers is safe once no broker above N
    is in the cluster any more, which `raftka broker decommission ID --wait` ensures (its replicas
    moved away, then it left). Removing one earlier takes its replicas, or a controller's vote, with it.
    The Helm chart runs this as its pre-upgrade hook; exit status 1 while something is left."""
    kept = args.brokers
    above = [b for b in admin.describe_cluster() if b.broker_id > kept]
    held: dict[int, list[str]] = {b.broker_id: [] for b in above}
    if above:
        for topic in admin.list_topics(include_internal=True):
            for p in topic.partitions:
                for broker in held.keys() & set(p.replicas):
                    held[broker].append(f"{topic.name}/{p.partition}")
    remaining = [{"id": b.broker_id, "role": b.role, "draining": b.draining, "replicas": b.replicas,
                  "partitions": held[b.broker_id]} for b in above]
    if args.format == "json":
        print(json.dumps({"brokers": kept, "safe": not above, "remaining": remaining}))
    elif above:
        lines = [f"broker {r['id']}: {r['role'] or 'no role'}, {'draining' if r['draining'] else 'not draining'}, "
                 f"{r['replicas']} replica(s){': ' + ', '.join(r['partitions']) if r['partitions'] else ''}"
                 for r in remaining]
        print("\n".join([f"raftka: a scale-down to {kept} broker(s) would remove brokers still in the cluster:",
                         *lines, "decommission each first: "
                         + "; ".join(f"raftka broker decommission {r['id']} --wait" for r in remaining)]),
              file=sys.stderr)
    else:
        print(f"a scale-down to {kept} broker(s) is safe: no broker above {kept} is in the cluster")
    return 1 if above else 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
        if args.cluster_command == "controllers":
            change = admin.add_controller if args.change == "add" else admin.remove_controller
            voters, learners = change(args.broker_id)
            _emit(args, {"voters": voters, "learners": learners},
                  f"voters {','.join(map(str, voters))}  learners {','.join(map(str, learners)) or '-'}")
            return 0
        if args.cluster_command == "balance":
            return _balance(args, admin)
        if args.cluster_command == "scale-check":
            return _scale_check(args, admin)
        cluster = admin.describe_cluster_info()
    brokers = cluster.brokers
    now_ms = time.time() * 1000

    def state(b: Any) -> str:
        if b.draining:
            return "draining"
        return "alive" if b.reachable else f"unreachable {int((now_ms - b.unreachable_since_ms) / 1000)}s"

    rows = [[str(b.broker_id), b.address, b.rack or "-", b.role or "-", state(b), str(b.replicas), _dash(b.leaders)]
            for b in brokers]
    listing = [{"id": b.broker_id, "address": b.address, "rack": b.rack, "role": b.role, "draining": b.draining,
                "reachable": b.reachable, "unreachable_since_ms": b.unreachable_since_ms or None,
                "replicas": b.replicas, "leaders": b.leaders} for b in brokers]
    table = _table(["ID", "ADDRESS", "RACK", "ROLE", "STATE", "REPLICAS", "LEADERS"], rows)
    if args.cluster_command == "status":
        _emit(args, listing, table)
        return 0
    _emit(args, {"cluster_id": cluster.cluster_id, "controller": cluster.controller_id,
                 "controller_epoch": cluster.controller_epoch, "controllers": list(cluster.voters),
                 "learners": list(cluster.learners), "brokers": listing},
          f"cluster {cluster.cluster_id}  controller {_dash(cluster.controller_id)} (epoch "
          f"{cluster.controller_epoch})  controllers {','.join(map(str, cluster.voters))}  learners "
          f"{','.join(map(str, cluster.learners)) or '-'}\n{table}")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    from raftka.client.local import run

    return run(args.brokers, args.data_dir, args.base_port, tls=args.tls)


def cmd_topic(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
        if args.topic_command == "create":
            config = dict(_key_value(item, "--config") for item in args.config)
            try:
                topic = admin.create_topic(args.name, args.partitions, args.replication_factor, config)
            except TopicExistsError:
                if not args.if_not_exists:
                    raise
                topic = admin.describe_topic(args.name)
                _emit(args, {"exists": _topic_json(topic)}, f"topic {topic.name} already exists with "
                      f"{len(topic.partitions)} partition(s), replication factor {topic.replication_factor}; "
                      "left as it is")
            else:
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
        elif args.topic_command in ("alter-config", "describe-config"):
            if args.topic_command == "alter-config":
                entries = admin.alter_topic_config(args.name, dict(_key_value(item, "--set") for item in args.set),
                                                   args.reset)
            else:
                entries = admin.describe_topic_config(args.name)
            _emit(args, [{"name": e.name, "value": e.value, "default": e.is_default} for e in entries],
                  _table(["KEY", "VALUE", "SOURCE"], [[e.name, e.value, "default" if e.is_default else "topic"]
                                                      for e in entries]))
        elif args.topic_command == "add-partitions":
            topic = admin.create_partitions(args.name, args.partitions)
            _emit(args, {"altered": _topic_json(topic)},
                  f"topic {topic.name} now has {len(topic.partitions)} partition(s)")
        elif args.topic_command == "delete-records":
            offsets = {int(p): int(o) for p, o in (_key_value(item, "--offset") for item in args.offset)}
            starts = admin.delete_records(args.name, offsets)
            _emit(args, [{"partition": p, "log_start_offset": o} for p, o in sorted(starts.items())],
                  _table(["PARTITION", "START"], [[str(p), str(o)] for p, o in sorted(starts.items())]))
        elif args.topic_command == "list":
            topics = admin.list_topics(include_internal=args.internal)
            rows = [[t.name, str(len(t.partitions)), str(t.replication_factor)] for t in topics]
            _emit(args, [_topic_json(t) for t in topics], _table(["TOPIC", "PARTITIONS", "REPLICATION"], rows))
        else:
            info = admin.describe_topic(args.name)
            rows = [[str(p.partition), str(p.leader), ",".join(map(str, p.replicas)),
                     ",".join(map(str, p.in_sync_replicas)), str(p.log_start_offset), str(p.high_watermark),
                     str(p.size_bytes)] for p in info.partitions]
            settings = " ".join(f"{k}={v}" for k, v in sorted(info.config.items()))
            text = (f"topic {info.name}  partitions {len(info.partitions)}  replication factor "
                    f"{info.replication_factor}\nconfig {settings}\n"
                    + _table(["PARTITION", "LEADER", "REPLICAS", "IN-SYNC", "START", "END", "BYTES"], rows))
            _emit(args, _topic_json(info), text)
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
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
            rows = [[tp.topic, str(tp.partition), _dash(r.current), str(r.new),
                     f"{r.requested} is outside the log, clamped" if r.clamped else ""]
                    for tp, r in sorted(plan.items())]
            verdict = "committed" if args.execute else "dry run: add --execute to commit"
            _emit(args, {"executed": args.execute, "offsets": [
                {"topic": tp.topic, "partition": tp.partition, "current": r.current, "requested": r.requested,
                 "new": r.new, "clamped": r.clamped} for tp, r in sorted(plan.items())]},
                _table(["TOPIC", "PARTITION", "CURRENT", "NEW", "NOTE"], rows) + f"\n({verdict})")
    return 0


def _reset_target(args: argparse.Namespace) -> tuple[str, int | None]:
    if args.to_earliest:
        return "earliest", None
    if args.to_latest:
        return "latest", None
    if args.to_offset is not None:
        return "offset", args.to_offset
    if args.shift_by is not None:
        return "shift", args.shift_by
    return "datetime", args.to_datetime


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def cmd_acl(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin, AclEntry

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
        if args.acl_command == "list":
            acls = admin.list_acls(args.principal)
            _emit(args, [vars(acl) for acl in acls], "\n".join(_acl_text(acl) for acl in acls) or "(no ACLs)")
            return 0
        resource, name = (("topic", args.topic) if args.topic is not None else ("group", args.group)
                          if args.group is not None else ("cluster", ""))
        acl = AclEntry(args.principal, resource, name, args.operation, "deny" if args.deny else "allow",
                       "prefixed" if args.prefixed else "literal")
        if args.acl_command == "add":
            admin.add_acls([acl])
            _emit(args, {"added": vars(acl)}, f"added: {_acl_text(acl)}")
        else:
            removed = admin.remove_acls([acl])
            _emit(args, {"removed": [vars(a) for a in removed]},
                  f"removed: {_acl_text(acl)}" if removed else f"no such ACL: {_acl_text(acl)}")
    return 0


def _acl_text(acl: Any) -> str:
    target = "cluster" if acl.resource == "cluster" else f"{acl.resource} {acl.name}" + (
        "*" if acl.pattern == "prefixed" else "")
    return f"{acl.permission} {acl.principal} {acl.operation} on {target}"


def cmd_quota(args: argparse.Namespace) -> int:
    from raftka.client.admin import Admin

    with Admin(args.bootstrap, request_timeout_ms=args.timeout_ms, **_connection(args)) as admin:
        if args.quota_command == "list":
            quotas = [{"principal": q.principal, "client_id": q.client_id, "produce_bytes_per_s": q.produce_bytes_per_s,
                       "fetch_bytes_per_s": q.fetch_bytes_per_s, "requests_per_s": q.requests_per_s}
                      for q in admin.list_quotas()]
            _emit(args, quotas, "\n".join(" ".join(f"{k}={v}" for k, v in q.items() if v != "") for q in quotas)
                  or "(no quotas)")
            return 0
        entity = {"principal": args.principal or args.principal_option, "client_id": args.quota_client_id}
        if not any(entity.values()):
            raise ValueError("name a principal (--principal), a client id (--client-id) or both")
        named = " ".join(f"{k}={v}" for k, v in entity.items() if v)
        if args.quota_command == "set":
            admin.set_quota(entity["principal"], client_id=entity["client_id"], produce_bytes_per_s=args.produce_rate,
                            fetch_bytes_per_s=args.fetch_rate, requests_per_s=args.requests_per_s)
            _emit(args, {"set": entity}, f"quota of {named} set")
        else:
            admin.remove_quota(entity["principal"], client_id=entity["client_id"])
            _emit(args, {"removed": entity}, f"quota of {named} removed")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from raftka.client.producer import Producer

    failures: list[RaftkaError] = []
    lock = threading.Lock()
    headers = [(key, value.encode()) for key, value in (_key_value(item, "--header") for item in args.header)]
    key = None if args.key is None else args.key.encode()
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    sent = 0

    def check(future: Any) -> None:
        error = future.exception()
        if error is not None:
            with lock:
                failures.append(error)

    with Producer(args.bootstrap, acks=args.acks, compression=args.compression,
                  request_timeout_ms=args.timeout_ms, **_connection(args)) as producer:
        for number, raw in enumerate(sys.stdin.buffer, start=1):
            line_key, value = _parse_line(raw.rstrip(b"\r\n"), number, args)
            producer.send(args.topic, value, key=key if line_key is None else line_key, headers=headers,
                          partition=args.partition).add_done_callback(check)
            sent += 1
            if progress is not None:
                progress.count(len(raw))
            if failures:
                break
        producer.flush()
    if progress is not None:
        progress.done()
    if failures:
        print(f"raftka: {len(failures)} record(s) failed; first: {type(failures[0]).__name__}: "
              f"{failures[0].message}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"acknowledged": sent}))
    return 0


def _parse_line(line: bytes, number: int, args: argparse.Namespace) -> tuple[bytes | None, bytes]:
    """(key, value) of one input line of `raftka produce`, as its flags say; ValueError names the line."""
    key = None
    if args.key_separator is not None:
        key, sep, value = line.partition(args.key_separator.encode())
        if not sep:
            if args.on_missing_key == "error":
                raise ValueError(f"line {number} has no key separator {args.key_separator!r} (nothing was sent "
                                 "from it on; --on-missing-key keyless sends such lines without a key)")
            key, value = None, line
    else:
        value = line
    if args.value_format == "base64":
        try:
            value = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"line {number}: the value is not base64 ({exc})") from None
    return key, value


class _Progress:
    """Records and bytes read so far, redrawn on one terminal line at most once a second."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._records = self._bytes = 0
        self._started = self._drawn = time.monotonic()

    def count(self, size: int) -> None:
        self._records += 1
        self._bytes += size
        if time.monotonic() - self._drawn >= 1.0:
            self._draw("\r")

    def done(self) -> None:
        self._draw("\r")
        self._out.write("\n")

    def _draw(self, prefix: str) -> None:
        self._drawn = time.monotonic()
        elapsed = max(self._drawn - self._started, 1e-9)
        self._out.write(f"{prefix}sent {self._records:,} records, {self._bytes / 1e6:,.1f} MB "
                        f"({self._records / elapsed:,.0f} records/s)")
        self._out.flush()


def cmd_consume(args: argparse.Namespace) -> int:
    from raftka.client.consumer import Consumer

    if isinstance(args.offset, int) and args.partition is None:
        raise ValueError("--offset needs --partition for an offset N (start and end apply to every partition)")
    if args.idle_timeout_ms is not None and args.idle_timeout_ms < 0:
        raise ValueError(f"--timeout-ms must be 0 or more, not {args.idle_timeout_ms} (leave it out to run "
                         "until stopped)")
    if args.group is not None and not args.group.strip():
        raise ValueError("--group needs a group name")
    if args.group and (args.partition is not None or args.offset is not None or args.from_timestamp is not None):
        raise ValueError("--group shares the topic's partitions among the group; it excludes --partition, "
                         "--offset and --from-timestamp (use `raftka group reset-offsets` to move the group)")
    reset = "earliest" if args.from_beginning else "latest"
    render = _record_renderer(args)
    group = ({"group_id": args.group, "topics": [args.topic],
              "session_timeout_ms": args.session_timeout_ms} if args.group else {})
    with _StopSignals() as stop, Consumer(args.bootstrap, auto_offset_reset=reset,
                                          request_timeout_ms=args.timeout_ms, **_connection(args), **group) as consumer:
        if args.group:
            try:
                consumer.partitions_for(args.topic)
            except UnknownTopicError:
                print(f"raftka: topic {args.topic!r} does not exist (yet); waiting for it to be created",
                      file=sys.stderr, flush=True)
        else:
            partitions = ([TopicPartition(args.topic, args.partition)] if args.partition is not None
                          else consumer.partitions_for(args.topic))
            consumer.assign(partitions)
            if args.offset == "start":
                consumer.seek_to_beginning(*partitions)
            elif args.offset == "end":
                consumer.seek_to_end(*partitions)
            elif args.offset is not None:
                consumer.seek(partitions[0], args.offset)
            elif args.from_timestamp is not None:
                for tp in partitions:
                    consumer.seek_to_timestamp(tp, args.from_timestamp)
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
            "headers": [[k, _json_bytes(v)] for k, v in record.headers]}) + "\n"

    def text(record: Record) -> str:
        fields = [(record.key or b"").decode(errors="replace")] if args.print_key else []
        if args.print_headers:
            fields.append(",".join(f"{k}={(v or b'').decode(errors='replace')}" for k, v in record.headers))
        fields.append((record.value or b"").decode(errors="replace"))
        return "\t".join(fields) + "\n"
    return text


def cmd_bench(args: argparse.Namespace) -> int:
    from raftka.client.bench import run

    return run(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "local": cmd_local, "topic": cmd_topic, "cluster": cmd_cluster, "partition": cmd_partition,
    "reassign": cmd_reassign, "group": cmd_group, "produce": cmd_produce, "consume": cmd_consume,
    "acl": cmd_acl, "quota": cmd_quota,
    "bench": cmd_bench,
}


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
    return key, value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _start_offset(text: str) -> str | int:
    if text in ("start", "end"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected start, end or an offset >= 0, not {text!r}")


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _timestamp_ms(text: str, now: Callable[[], float] = time.time) -> int:
    """ISO 8601 (no zone: UTC), or an age such as 5m (also -5m, as `--flag=-5m`: a bare -5m reads as an
    option to argparse), as milliseconds since the epoch."""
    age = text.removeprefix("-")
    number = age.rstrip("smhd")
    unit = age[len(number):]
    if number and unit:
        if number.replace(".", "", 1).isdigit() and unit in _DURATION_UNITS:
            return int((now() - float(number) * _DURATION_UNITS[unit]) * 1000)
        raise argparse.ArgumentTypeError(f"expected an age such as 5m, 2h, 30s, 1d, 500ms, not {text!r}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ISO 8601 such as 2026-11-23T10:00:00Z, not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class _Version(argparse.Action):
    """`raftka --version`: this client's version, and the cluster's when a broker answers quickly."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        import grpc

        from raftka import __version__
        from raftka.wire.settings import parse_bootstrap
        from raftka.wire.tls import ClientTls, open_channel
        from raftka.proto import api_pb2, api_pb2_grpc

        print(f"raftka {__version__} (client)")
        bootstrap = getattr(namespace, "bootstrap", None) or env("BOOTSTRAP", DEFAULT_BOOTSTRAP)
        tls = ClientTls.of(*(getattr(namespace, name, None) or env(name.upper()) for name in TLS_OPTIONS))
        for address in parse_bootstrap(bootstrap):
            try:
                with open_channel(address, tls) as channel:
                    answer = api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=2)
            except grpc.RpcError:
                continue
            print(f"raftka {answer.broker_version or 'unknown'} (cluster {answer.cluster_id}, broker at {address})")
            break
        else:
            print(f"cluster: no broker answered at {bootstrap}")
        parser.exit()


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

