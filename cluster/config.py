"""A broker's settings, from `raftka broker` flags or the matching RAFTKA_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raftka.cluster.authentication import AuthSettings
from raftka.partition.segments import DEFAULT_CACHE_BYTES
from raftka.wire.settings import parse_host_port

_WILDCARDS = ("0.0.0.0", "::")


def parse_peers(text: str) -> tuple[dict[int, str], dict[int, str]]:
    """`1=HOST:PORT[@RACK],2=...` as ({broker id: address}, {broker id: rack})."""
    peers: dict[int, str] = {}
    racks: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        broker, sep, target = item.partition("=")
        address, _, rack = target.strip().partition("@")
        if not sep or not broker.strip().isdigit():
            raise ValueError(f"expected ID=HOST:PORT[@RACK] in --peers, got {item!r}")
        parse_host_port(address)
        peers[int(broker)] = address
        if rack:
            racks[int(broker)] = rack
    return peers, racks


@dataclass(frozen=True)
class BrokerConfig:
    broker_id: int
    listen: str
    data_dir: Path
    advertise: str = ""
    raft_listen: str = ""
    """HOST:PORT of the inter-broker Raft listener (`--raft-listen`); empty means the --listen host
    and any free port. Peers ask for it over gRPC, so a port chosen at start-up is fine."""
    peers: dict[int, str] = field(default_factory=dict)
    """The founding controllers: the voters of the metadata log when it is founded, with their
    addresses (used until they have registered). Empty, and no `join`: a one-broker cluster of this
    broker alone. A broker they do not name joins through them, as with `join`: every pod of a
    StatefulSet has the same flags, and the pods beyond the founders are joiners."""
    join: tuple[str, ...] = ()
    """gRPC addresses of brokers of a running cluster (`--join`): this broker is not a founding
    controller; it registers through them and follows the metadata log as a learner."""
    replace: bool = False
    """`--replace`: this broker's data directory is new (its disk was lost or replaced) and it takes
    over the id of a registered broker; without it such a start is refused."""
    racks: dict[int, str] = field(default_factory=dict)
    """Rack of each broker from `--peers ID=HOST:PORT@RACK`; a broker's own `--rack`, which it
    registers in the metadata log, takes precedence. Placement spreads replicas over racks."""
    rack: str = ""
    """This broker's rack (`--rack`)."""
    cluster_id: str = "raftka"
    metrics_port: int | None = None
    metrics_host: str = ""
    """Where /metrics listens (`--metrics-host`); empty: the host of `listen`, so metrics are exactly as
    reachable as the client API (loopback by default, every interface with `--listen 0.0.0.0:9092`,
    the pod IP in the Helm chart). `metrics_bind_host` resolves it."""
    metrics_per_topic: bool = True
    """Label traffic, storage and partition-health series by topic (`--no-metrics-per-topic`: one
    series each for the whole broker, for clusters with very many topics)."""
    request_timeout_ms: int = 30_000
    max_fetch_wait_ms: int = 30_000
    retention_check_interval_s: float = 60.0
    leader_balance_delay_s: float = 30.0
    """How long a partition's in-sync preferred leader waits before leadership is handed back to it."""
    offsets_partitions: int = 8
    """Partitions of `__consumer_offsets` when this broker creates it (the topic's count is what counts)."""
    snapshot_bytes: int = 4 << 20
    """The metadata and group state machines are snapshotted (and their logs truncated behind) once this
    many bytes of log were applied since the last snapshot, and twice that snapshot's size
    (`raftka.cluster.state_machine.SnapshotPolicy`)."""
    segment_cache_bytes: int = DEFAULT_CACHE_BYTES
    """How many of the newest fsynced segment bytes the log store leaves in the OS page cache
    (`raftka.partition.segments` says why it drops the older ones)."""
    self_heal_after_s: float = 0.0
    """When > 0: the metadata leader moves the replicas of a broker unreachable for this long to the
    other brokers (`raftka.cluster.balancing`); 0 leaves them (the default)."""
    balance_on_join: bool = False
    """The metadata leader balances the cluster onto each broker that registers anew."""
    max_moves_per_broker: int = 5
    """Partition moves copying data to one broker at once (0: no limit); more wait, queued."""
    max_moves: int = 100
    """Partition moves copying data in the whole cluster at once (0: no limit)."""
    tls_cert: Path | None = None
    """This broker's certificate (PEM; its chain may follow), which names its id as the SAN URI
    `raftka://broker/<id>` (`raftka.wire.tls`). With `tls_key` and `tls_ca`, turns TLS on for every
    listener: client gRPC, the Raft transport (mutual, always) and broker-to-broker gRPC."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """The cluster CA (PEM bundle): verifies peers' and clients' certificates."""
    tls_client_auth: str = "required"
    """Client certificates on the gRPC listener: `required` (verified against `tls_ca`) or `none`."""
    metrics_tls: bool = False
    """Serve /metrics over TLS with the broker's certificate (`--metrics-tls`)."""

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or parse_host_port(self.listen)[0]

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
    auth: AuthSettings = field(default_factory=AuthSettings)
    """How callers of the client listener are authenticated (none configured: every caller is anonymous)."""
    authorizer: str = ""
    """`acl`: every call is checked against the ACLs of the metadata log; empty: everything is allowed."""
    super_users: tuple[str, ...] = ()
    """Principals allowed everything whatever the ACLs say."""
    broker_token_file: Path | None = None
    """The bearer token this broker sends on its own calls to other brokers (registration, forwarded
    admin calls); the principal it proves is a super-user."""

    @property
    def advertised_address(self) -> str:
        """The address clients are told to use: --advertise, or the listen address."""
        return self.advertise or self.listen

    @property
    def raft_bind(self) -> tuple[str, int, str]:
        """(host, port, host advertised to peers) of the Raft listener."""
        host, port = parse_host_port(self.raft_listen) if self.raft_listen else (parse_host_port(self.listen)[0], 0)
        advertised = parse_host_port(self.advertised_address)[0] if host in _WILDCARDS else host
        return host, port, advertised

    @property
    def founders(self) -> dict[int, str]:
        """The founding controllers and their addresses: `--peers` when they name this broker, or this
        broker alone when it founds a one-broker cluster; nobody for a broker that joins."""
        if self.peers:
            return self.peers if self.broker_id in self.peers else {}
        return {} if self.join else {self.broker_id: self.advertised_address}

    @property
    def seeds(self) -> tuple[str, ...]:
        """The gRPC addresses a joining broker registers through: `--join`, or the founding controllers
        of a `--peers` that does not name this broker; empty for a founding controller."""
        if self.join:
            return self.join
        return () if self.founders else tuple(self.peers.values())

    def validate(self) -> None:
        if self.broker_id < 1:
            raise ValueError(f"broker id must be >= 1 (0 means 'no node' to Raft), not {self.broker_id}")
        parse_host_port(self.listen)
        if self.advertise:
            parse_host_port(self.advertise)
        elif parse_host_port(self.listen)[0] in _WILDCARDS:
            raise ValueError(f"--listen {self.listen} is a wildcard address; give --advertise HOST:PORT "
                             "so clients know where to connect")
        if self.raft_listen:
            parse_host_port(self.raft_listen)
        if self.peers and self.join:
            raise ValueError("give --peers (a founding controller) or --join (a broker joining a running "
                             "cluster), not both")
        for seed in self.join:
            parse_host_port(seed)
        if not self.cluster_id:
            raise ValueError("cluster id must not be empty")
        if self.max_moves_per_broker < 0 or self.max_moves < 0:
            raise ValueError("--max-moves-per-broker and --max-moves must be 0 (no limit) or positive")
        if self.self_heal_after_s < 0:
            raise ValueError(f"--self-heal-after-s must be 0 (off) or positive, not {self.self_heal_after_s}")
        if self.snapshot_bytes < 1:
            raise ValueError(f"snapshot bytes must be positive, not {self.snapshot_bytes}")
        if len({self.tls_cert is None, self.tls_key is None, self.tls_ca is None}) != 1:
            raise ValueError("TLS needs --tls-cert, --tls-key and --tls-ca together (the CA verifies the other "
                             "brokers, whose Raft connections are always mutually authenticated)")
        if self.tls_client_auth not in ("required", "none"):
            raise ValueError(f"--tls-client-auth must be required or none, not {self.tls_client_auth!r}")
        if self.metrics_tls and not self.tls:
            raise ValueError("--metrics-tls needs --tls-cert, --tls-key and --tls-ca")
        if self.auth.principal_rules and not (self.tls and self.tls_client_auth == "required"):
            raise ValueError("--tls-principal-rule maps verified client certificates: it needs --tls-cert, --tls-key "
                             "and --tls-ca with --tls-client-auth required")
        self.auth.validate()
        if self.authorizer not in ("", "acl"):
            raise ValueError(f"--authorizer must be 'acl' (or omitted), not {self.authorizer!r}")
        if (self.authorizer and self.auth.configured and not self.broker_token_file and (self.peers or self.join)
                and not (self.tls and self.tls_client_auth == "required")):
            raise ValueError("with authentication and ACLs, brokers of a cluster call each other as a super-user: "
                             "give --broker-token-file (or turn on TLS: brokers' certificates prove who they are)")
        if not 1 <= self.offsets_partitions <= 1000:
            raise ValueError(f"offsets partitions must be between 1 and 1000, not {self.offsets_partitions}")
