"""The `raftka broker` command: its flags (each also a RAFTKA_* environment variable) and the broker
they configure (`raftka.cluster.broker.run`).

`raftka.cli`, the `raftka` entry point, adds this command to the client's (`raftka.client.cli`), so
the client never imports the broker. The broker itself is imported only when the command runs.

`--tls-cert`, `--tls-key` and `--tls-ca` are the client's connection flags (`raftka.client.cli`), which
`raftka broker` shares: a broker's certificate is both its server and its client certificate, so
`raftka broker decommission N` run with a broker's flags connects as that broker would.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from raftka.cluster.authentication import AuthSettings, JwtSettings
from raftka.cluster.config import BrokerConfig, parse_peers
from raftka.cluster.principal_rules import PrincipalRule, parse_rules
from raftka.partition.segments import DEFAULT_CACHE_BYTES
from raftka.wire.settings import env, flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", type=int, default=env("ID", None, int), help="broker id (env RAFTKA_ID)")
    parser.add_argument("--id-from-hostname", action="store_true", default=env("ID_FROM_HOSTNAME", False, flag),
                        help="take the id from the number at the end of the host name plus --id-offset, as a "
                             "StatefulSet's pod ordinal (raftka-0 is broker 1 by default) "
                             "(env RAFTKA_ID_FROM_HOSTNAME=1)")
    parser.add_argument("--id-from-name", metavar="NAME", default=env("ID_FROM_NAME", ""),
                        help="take the id from the number at the end of NAME plus --id-offset, as "
                             "--id-from-hostname does, for when the host name is not the pod's name (host "
                             "networking gives a pod the node's): pass the pod name from the downward API "
                             "(env RAFTKA_ID_FROM_NAME)")
    parser.add_argument("--id-offset", type=int, default=env("ID_OFFSET", 1, int),
                        help="added to the name's number with --id-from-hostname or --id-from-name "
                             "(env RAFTKA_ID_OFFSET; default 1)")
    parser.add_argument("--join", default=env("JOIN", ""),
                        help="HOST:PORT[,...] of brokers of a running cluster: start a broker that is not a "
                             "founding controller; it registers and follows the metadata log as a learner "
                             "(env RAFTKA_JOIN)")
    parser.add_argument("--replace", action="store_true", default=env("REPLACE", False, flag),
                        help="this broker's data directory is new (its disk was lost or replaced): take over "
                             "its id; refused without it (env RAFTKA_REPLACE=1)")
    parser.add_argument("--listen", default=env("LISTEN", "127.0.0.1:9092"),
                        help="HOST:PORT to serve on (env RAFTKA_LISTEN; default 127.0.0.1:9092)")
    parser.add_argument("--advertise", default=env("ADVERTISE", ""),
                        help="HOST:PORT clients should use, if not --listen (env RAFTKA_ADVERTISE)")
    parser.add_argument("--raft-listen", default=env("RAFT_LISTEN", ""),
                        help="HOST:PORT for inter-broker Raft connections (env RAFTKA_RAFT_LISTEN; default the "
                             "--listen host and any free port, which peers learn over gRPC)")
    parser.add_argument("--data-dir", type=Path, default=env("DATA_DIR", None, Path),
                        help="directory for this broker's data (env RAFTKA_DATA_DIR)")
    parser.add_argument("--peers", default=env("PEERS", ""),
                        help="the founding controllers as ID=HOST:PORT[@RACK],...; a broker they do not name "
                             "joins the running cluster through them, as with --join; omitted: a one-broker "
                             "cluster (env RAFTKA_PEERS)")
    parser.add_argument("--rack", default=env("RACK", ""),
                        help="this broker's rack or zone; replicas of a partition are spread over racks "
                             "(env RAFTKA_RACK)")
    parser.add_argument("--cluster-id", default=env("CLUSTER_ID", "raftka"),
                        help="brokers refuse Raft traffic from another cluster id (env RAFTKA_CLUSTER_ID)")
    parser.add_argument("--metrics-port", type=int, default=env("METRICS_PORT", None, int),
                        help="serve Prometheus /metrics on this port (env RAFTKA_METRICS_PORT)")
    parser.add_argument("--metrics-host", default=env("METRICS_HOST", ""),
                        help="address for /metrics (env RAFTKA_METRICS_HOST; default the --listen host, so "
                             "metrics are as reachable as the client API; 127.0.0.1 keeps them local)")
    parser.add_argument("--metrics-per-topic", action=argparse.BooleanOptionalAction,
                        default=env("METRICS_PER_TOPIC", True, flag),
                        help="label traffic, storage and partition-health metrics by topic; "
                             "--no-metrics-per-topic exports one series each for the whole broker "
                             "(env RAFTKA_METRICS_PER_TOPIC=0; default on)")
    parser.add_argument("--leader-balance-delay-ms", type=int, default=env("LEADER_BALANCE_DELAY_MS", 30_000, int),
                        help="hand leadership back to an in-sync preferred leader after this long "
                             "(env RAFTKA_LEADER_BALANCE_DELAY_MS; default 30000)")
    parser.add_argument("--retention-check-ms", type=int, default=env("RETENTION_CHECK_MS", 60_000, int),
                        help="how often expired segments are deleted (env RAFTKA_RETENTION_CHECK_MS; default 60000)")
    parser.add_argument("--offsets-partitions", type=int, default=env("OFFSETS_PARTITIONS", 8, int),
                        help="partitions of __consumer_offsets, the consumer groups' topic, when it is created "
                             "(env RAFTKA_OFFSETS_PARTITIONS; default 8)")
    parser.add_argument("--snapshot-bytes", type=int, default=env("SNAPSHOT_BYTES", 4 << 20, int),
                        help="snapshot the metadata and group state once this many bytes of their log "
                             "(and twice the last snapshot's size) were applied since the last snapshot, and "
                             "truncate the log behind it (env RAFTKA_SNAPSHOT_BYTES; default 4194304)")
    parser.add_argument("--segment-cache-bytes", type=int, default=env("SEGMENT_CACHE_BYTES", DEFAULT_CACHE_BYTES, int),
                        help="how many of the newest fsynced segment bytes stay in the OS page cache; older "
                             "ones are dropped, so readers further behind read the disk (env "
                             f"RAFTKA_SEGMENT_CACHE_BYTES; default {DEFAULT_CACHE_BYTES})")
    parser.add_argument("--self-heal-after-s", type=float, default=env("SELF_HEAL_AFTER_S", 0.0, float),
                        help="move the replicas of a broker unreachable this long to the others "
                             "(env RAFTKA_SELF_HEAL_AFTER_S; default 0: off)")
    parser.add_argument("--max-moves-per-broker", type=int, default=env("MAX_MOVES_PER_BROKER", 5, int),
                        help="partition moves copying data to one broker at once; more wait, queued "
                             "(env RAFTKA_MAX_MOVES_PER_BROKER; default 5; 0: no limit)")
    parser.add_argument("--max-moves", type=int, default=env("MAX_MOVES", 100, int),
                        help="partition moves copying data in the cluster at once (env RAFTKA_MAX_MOVES; "
                             "default 100; 0: no limit)")
    parser.add_argument("--balance-on-join", action="store_true", default=env("BALANCE_ON_JOIN", False, flag),
                        help="balance the cluster onto each broker that joins (env RAFTKA_BALANCE_ON_JOIN=1)")
    parser.add_argument("--tls-client-auth", choices=("required", "none"), default=env("TLS_CLIENT_AUTH", "required"),
                        help="client certificates on the gRPC port: required (verified against --tls-ca) or none "
                             "(env RAFTKA_TLS_CLIENT_AUTH; default required)")
    parser.add_argument("--tls-principal-rule", action="append", metavar="RULE",
                        help="how a verified client certificate names its principal User:<name>: DEFAULT (its CN), "
                             "RULE:pattern/replacement/[L|U] (Kafka's, against the subject DN in RFC 2253 form) or "
                             "SAN:URI|DNS|EMAIL|IP:pattern/replacement/[L|U] (against its SANs of that type); "
                             "repeatable, tried in order, the first that applies wins; a certificate none applies "
                             "to is refused; broker certificates are always Broker:<id> (env "
                             "RAFTKA_TLS_PRINCIPAL_RULES, rules separated by commas or newlines; default DEFAULT)")
    parser.add_argument("--metrics-tls", action="store_true", default=env("METRICS_TLS", False, flag),
                        help="serve /metrics over TLS with the broker's certificate (env RAFTKA_METRICS_TLS=1)")
    parser.add_argument("--auth-jwks", type=Path, default=env("AUTH_JWKS", None, Path),
                        help="verify bearer JWTs against the keys of this JWKS file (env RAFTKA_AUTH_JWKS)")
    parser.add_argument("--auth-jwt-key", type=Path, default=env("AUTH_JWT_KEY", None, Path),
                        help="verify bearer JWTs against this PEM public key, RSA (RS256) or EC P-256 (ES256) "
                             "(env RAFTKA_AUTH_JWT_KEY)")
    parser.add_argument("--auth-issuer", default=env("AUTH_ISSUER", ""),
                        help="JWTs must have this issuer (env RAFTKA_AUTH_ISSUER)")
    parser.add_argument("--auth-audience", default=env("AUTH_AUDIENCE", ""),
                        help="JWTs must have this audience (env RAFTKA_AUTH_AUDIENCE)")
    parser.add_argument("--auth-clock-skew-s", type=float, default=env("AUTH_CLOCK_SKEW_S", 30.0, float),
                        help="leeway for JWT exp and nbf (env RAFTKA_AUTH_CLOCK_SKEW_S; default 30)")
    parser.add_argument("--auth-principal-claim", default=env("AUTH_PRINCIPAL_CLAIM", "sub"),
                        help="the JWT claim naming the principal User:<claim> (env RAFTKA_AUTH_PRINCIPAL_CLAIM; "
                             "default sub)")
    parser.add_argument("--auth-token-file", type=Path, default=env("AUTH_TOKEN_FILE", None, Path),
                        help="static bearer tokens, one 'TOKEN User:NAME' per line (env RAFTKA_AUTH_TOKEN_FILE)")
    parser.add_argument("--allow-anonymous", action="store_true", default=env("ALLOW_ANONYMOUS", False, flag),
                        help="with an authenticator configured, still accept calls without credentials as "
                             "User:ANONYMOUS (env RAFTKA_ALLOW_ANONYMOUS=1)")
    parser.add_argument("--authorizer", default=env("AUTHORIZER", ""), choices=["", "acl"],
                        help="'acl': check every call against the ACLs (raftka acl add); default: allow all "
                             "(env RAFTKA_AUTHORIZER)")
    parser.add_argument("--super-users", default=env("SUPER_USERS", ""),
                        help="principals allowed everything, comma-separated, e.g. User:admin "
                             "(env RAFTKA_SUPER_USERS)")
    parser.add_argument("--broker-token-file", type=Path, default=env("BROKER_TOKEN_FILE", None, Path),
                        help="the bearer token this broker presents to other brokers; its principal is a "
                             "super-user (env RAFTKA_BROKER_TOKEN_FILE)")


def auth_settings(args: argparse.Namespace) -> AuthSettings:
    return AuthSettings(jwks=args.auth_jwks, jwt_key=args.auth_jwt_key, token_file=args.auth_token_file,
                        jwt=JwtSettings(issuer=args.auth_issuer, audience=args.auth_audience,
                                        clock_skew_s=args.auth_clock_skew_s,
                                        principal_claim=args.auth_principal_claim),
                        allow_anonymous=args.allow_anonymous, principal_rules=principal_rules(args))


def principal_rules(args: argparse.Namespace) -> tuple[PrincipalRule, ...]:
    """The `--tls-principal-rule` flags in order, else RAFTKA_TLS_PRINCIPAL_RULES (the flags replace it)."""
    texts = args.tls_principal_rule or [env("TLS_PRINCIPAL_RULES", "")]
    try:
        return tuple(rule for text in texts for rule in parse_rules(text))
    except ValueError as exc:
        raise ValueError(f"--tls-principal-rule: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from raftka.cluster.broker import run as run_broker

    name = args.id_from_name or (socket.gethostname() if args.id_from_hostname else "")
    broker_id = id_from_name(name, args.id_offset) if name else args.id
    if broker_id is None or args.data_dir is None:
        raise ValueError("raftka broker needs --id (or --id-from-hostname or --id-from-name) and --data-dir (or "
                         "RAFTKA_ID and RAFTKA_DATA_DIR)")
    if args.segment_cache_bytes < 0:
        raise ValueError(f"--segment-cache-bytes must be 0 or more, not {args.segment_cache_bytes}")
    peers, racks = parse_peers(args.peers)
    join = tuple(seed.strip() for seed in args.join.split(",") if seed.strip())
    return run_broker(BrokerConfig(broker_id=broker_id, listen=args.listen, advertise=args.advertise, join=join,
                                   replace=args.replace,
                                   raft_listen=args.raft_listen, data_dir=args.data_dir, peers=peers, racks=racks,
                                   rack=args.rack, cluster_id=args.cluster_id, metrics_port=args.metrics_port,
                                   metrics_host=args.metrics_host, metrics_per_topic=args.metrics_per_topic,
                                   retention_check_interval_s=args.retention_check_ms / 1000,
                                   leader_balance_delay_s=args.leader_balance_delay_ms / 1000,
                                   offsets_partitions=args.offsets_partitions, snapshot_bytes=args.snapshot_bytes,
                                   segment_cache_bytes=args.segment_cache_bytes,
                                   self_heal_after_s=args.self_heal_after_s, balance_on_join=args.balance_on_join,
                                   max_moves_per_broker=args.max_moves_per_broker, max_moves=args.max_moves,
                                   tls_cert=_path(args.tls_cert), tls_key=_path(args.tls_key),
                                   tls_ca=_path(args.tls_ca), tls_client_auth=args.tls_client_auth,
                                   metrics_tls=args.metrics_tls,
                                   auth=auth_settings(args), authorizer=args.authorizer,
                                   super_users=tuple(u.strip() for u in args.super_users.split(",") if u.strip()),
                                   broker_token_file=args.broker_token_file))


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def id_from_name(hostname: str, offset: int) -> int:
    """`raftka-2` (a StatefulSet's pod 2) with offset 1 is broker 3."""
    digits = len(hostname) - len(hostname.rstrip("0123456789"))
    if not digits:
        raise ValueError(f"--id-from-hostname/--id-from-name: {hostname!r} does not end in a number")
    return int(hostname[-digits:]) + offset
