"""The broker process: storage, Raft groups, services, health, reflection and metrics, started and
stopped together.

Start-up opens the log store, hosts the metadata log (founding it on first start), restores the
metadata snapshot and lets the multi-Raft driver replay the log after it, which re-opens every
partition replica this broker holds. A broker started with `--replace` on a new data directory (its
disk was lost) founds nothing: its replicas rejoin their groups (`_replaced`). Health turns
SERVING once the metadata log has a leader, so `raftka local` and orchestrators wait until topic
operations can succeed (gRPC health, and `/healthz/ready` on the metrics port for probes that cannot
speak TLS: `raftka.cluster.health`). Shutdown on SIGTERM or SIGINT is graceful: health turns NOT_SERVING, the
server stops taking calls and gives in-flight ones a grace period, the driver finishes its round,
staged writes are flushed, and the store is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from raftka.cluster.principal import BROKER_PRINCIPAL_PREFIX
from raftka.cluster.access import Access
from raftka.cluster.admin_service import AdminService
from raftka.cluster.authentication import Authentication, authenticators, token_principal
from raftka.cluster.authorizer import Authorizer
from raftka.cluster.balancing import SelfHealer
from raftka.cluster.broker_service import BrokerService, BrokerState
from raftka.cluster.brokers import BrokerDirectory
from raftka.cluster.config import BrokerConfig
from raftka.cluster.controller import METADATA_GROUP, Controller
from raftka.cluster.coordinator import GroupCoordinator
from raftka.cluster.group_commit import GroupCommitter
from raftka.cluster.groups_service import GroupsService
from raftka.cluster.handlers import add_servicer
from raftka.cluster.health import LIVENESS_SERVICE, BrokerHealth
from raftka.cluster.leadership import LeaderBalancer, hand_off_all
from raftka.cluster.metadata import MetadataState, MoveLimits
from raftka.cluster.collectors import GroupCollector, PartitionCollector
from raftka.cluster.metrics import BrokerMetrics
from raftka.cluster.partitions import PartitionManager
from raftka.cluster.quotas import QuotaManager
from raftka.cluster.reassignment import Reassigner
from raftka.cluster.replica import RaftReplica
from raftka.cluster.state_machine import SnapshotPolicy, StateMachineStats
from raftka.cluster.tls import RELOAD_INTERVAL_S, BrokerTls, ClientAuth, PeerChannels, TlsFiles
from raftka.cluster.topics import MAX_BATCH_BYTES_LIMIT
from raftka.errors import BrokerUnavailableError, IncarnationMismatchError, RaftkaError, from_rpc_error
from raftka.partition.store import LogStore
from raftka.proto import NO_LEADER, api_pb2, api_pb2_grpc, raft_pb2
from raftka.replication.driver import MultiRaft
from raftka.replication.messages import Message
from raftka.replication.transport import RaftTransport
from raftka.wire.headers import AUTHORIZATION_HEADER
from raftka.wire.settings import parse_host_port

log = logging.getLogger(__name__)

GRPC_MAX_MESSAGE_BYTES = 2 * MAX_BATCH_BYTES_LIMIT
SHUTDOWN_GRACE_S = 1.0
INCARNATION_FILE = "incarnation"
REPLACED_FILE = "replaced"
"""Present in a data directory that took over the id of a broker whose disk was lost (`--replace`)."""
HAND_OFF_TIMEOUT_S = 5.0
"""How long a stopping broker waits for the groups it leads to elect the followers it chose."""
REASSIGNMENT_INTERVAL_S = 0.2
"""How often each partition leader takes the next step of the moves it leads (cluster/reassignment.py)."""
DECOMMISSION_INTERVAL_S = 1.0
"""How often the metadata leader unregisters draining brokers that host nothing any more."""
SELF_HEAL_INTERVAL_S = 1.0
"""How often the metadata leader looks for brokers to heal or balance onto (when configured)."""


async def _enforce_retention(partitions: PartitionManager, committer: GroupCommitter, interval_s: float,
                             metrics: BrokerMetrics) -> None:
    """Delete expired segments now and then; the deletions are made durable by one group commit."""
    while True:
        await asyncio.sleep(interval_s)
        now_ms = int(time.time() * 1000)
        deleted_any = False
        for topic, partition, replica in partitions.replicas():
            size_before = replica.size_bytes
            deleted = replica.apply_retention(now_ms)
            if deleted:
                deleted_any = True
                freed = size_before - replica.size_bytes
                metrics.retention_deleted(topic, deleted, freed)
                log.info("retention deleted segments topic=%s partition=%d segments=%d bytes=%d", topic, partition,
                         deleted, freed)
        if deleted_any:
            await committer.durable()


async def _serve_when_led(controller: Controller, broker_health: BrokerHealth, services: list[str]) -> None:
    while controller.leader_id == NO_LEADER:
        await asyncio.sleep(0.05)
    for name in ("", *services):
        await broker_health.set(name, True)
    log.info("serving: metadata leader is broker %d", controller.leader_id)


def run(config: BrokerConfig) -> int:
    """Run one broker until SIGTERM/SIGINT, on uvloop where it is installed (every platform but
    Windows): a write crosses about twenty event-loop hops on three brokers, and uvloop's hops are
    cheaper. Measured on the development machine (three alternating runs), it cut the bench's sync
    publish p50/p99 from 1.94-2.04/2.45-2.66 to 1.83-1.91/2.31-2.40 ms and end-to-end from
    3.52-3.55/5.53-5.65 to 3.28-3.36/5.01-5.21 ms."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config))


async def serve(config: BrokerConfig) -> int:
    """Run one broker until SIGTERM/SIGINT (exit status 0), or until its storage fails in a way no
    single Raft group owns (status 1: see `replication.driver`, "Failure contract"), so that its
    supervisor restarts it from its durable state."""
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = BrokerMetrics(per_topic=config.metrics_per_topic)
    store = LogStore(config.data_dir / "log", cache_bytes=config.segment_cache_bytes)
    committer = GroupCommitter(store, on_flushed=metrics.flush_latency.observe)
    driver: MultiRaft
    stop = asyncio.Event()
    fatal: list[BaseException] = []

    refusal: list[RaftkaError] = []

    def fail_stop(exc: BaseException) -> None:
        fatal.append(exc)
        stop.set()

    def refuse(exc: RaftkaError) -> None:
        log.critical("broker refused by its cluster id=%d: %s", config.broker_id, exc.message)
        refusal.append(exc)
        stop.set()

    tls = _tls(config)
    channels = PeerChannels(tls)
    incarnation = _incarnation(config.data_dir)
    replaced = _replaced(config, store, incarnation)
    founders = () if replaced else tuple(config.founders)
    if METADATA_GROUP not in store.log_names() and config.peers and not replaced:
        known = await _registered_elsewhere(config, incarnation, channels)
        if known:
            log.critical("broker refused by its cluster id=%d: it has no metadata log (incarnation %s) but the "
                         "cluster knows broker %d with incarnation %s; if its disk was lost or replaced, start it "
                         "with --replace", config.broker_id, incarnation, config.broker_id, known)
            store.close()
            return 2

    def deliver(src: int, messages: list[tuple[str, Message]]) -> None:
        for group, message in messages:
            driver.step(group, message)

    transport = RaftTransport(
        config.broker_id, config.cluster_id, {}, deliver,
        on_peer_down=lambda peer: driver.wake(peer), on_peer_up=lambda peer: driver.wake(peer), tls=tls)
    driver = MultiRaft(config.broker_id, transport, committer.durable, on_round=metrics.round_groups.observe,
                       on_group_failed=lambda _group, stage: metrics.raft_group_failures.labels(stage).inc(),
                       on_fatal=fail_stop, on_elected=lambda cause: metrics.leaderships_won.labels(cause).inc(),
                       on_committed=metrics.commit_latency.observe)
    metadata = MetadataState()
    directory = BrokerDirectory(config, metadata, transport.add_peer)
    snapshot_policy = SnapshotPolicy(min_bytes=config.snapshot_bytes)
    stats = StateMachineStats()
    metrics.watch_state_machines(stats)
    partitions = PartitionManager(store, metadata, driver, directory.address_of, snapshot_policy=snapshot_policy,
                                  replaced_incarnation=incarnation if replaced else "")
    coordinator = GroupCoordinator(config.broker_id, metadata, partitions,
                                   timeout_s=config.request_timeout_ms / 1000, stats=stats)
    controller = Controller(store, driver, metadata, directory, founders,
                            is_alive=lambda broker: not transport.reported_down(broker), stats=stats,
                            snapshot_policy=snapshot_policy, rejoining=replaced,
                            move_limits=MoveLimits(config.max_moves_per_broker, config.max_moves))
    access = _access_control(config, metadata, metrics)
    state = BrokerState(config, metadata, partitions, controller, metrics, directory, incarnation,
                        transport.down_since, channels, access, _peer_metadata(config))
    metrics.partitions.set_function(lambda: len(partitions.replicas()))
    metrics.leaders.set_function(lambda: sum(r.leader_id == config.broker_id for _, _, r in partitions.replicas()))
    metrics.raft_groups_stopped.set_function(lambda: len(driver.stopped_groups()))
    metrics.watch_transport(transport.stats)
    metrics.topic_counters.topics = lambda: [record.name for record in metadata.topics()]
    loop = asyncio.get_running_loop()
    metrics.watch(PartitionCollector(config.broker_id, partitions, metadata,
                                     is_metadata_leader=lambda: controller.leader_id == config.broker_id,
                                     reported_down=transport.reported_down, data_dir=config.data_dir,
                                     per_topic=config.metrics_per_topic), loop)
    metrics.watch(GroupCollector(coordinator, partitions, per_topic=config.metrics_per_topic), loop)

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    add_servicer(server, api_pb2.DESCRIPTOR.services_by_name["Broker"], BrokerService(state), access)
    balancer = LeaderBalancer(config.broker_id, metadata, partitions)
    metrics.leader_imbalance.set_function(lambda: balancer.imbalanced)
    admin = AdminService(state, balancer)

    async def complete_move(topic: str, partition: int, topic_id: str, replicas: tuple[int, ...]) -> None:
        await admin.complete_move(api_pb2.CompletePartitionMoveRequest(topic=topic, partition=partition,
                                                                       topic_id=topic_id, replicas=replicas))

    admin.reassigner = reassigner = Reassigner(config.broker_id, metadata, partitions, driver, complete_move)
    add_servicer(server, api_pb2.DESCRIPTOR.services_by_name["Admin"], admin, access)
    add_servicer(server, api_pb2.DESCRIPTOR.services_by_name["Groups"], GroupsService(state, coordinator, admin),
                 access)
    add_servicer(server, raft_pb2.DESCRIPTOR.services_by_name["RaftTransport"], transport.servicer, None)
    raft_host, raft_port, raft_advertised = config.raft_bind
    await transport.listen(raft_host, raft_port, advertise_host=raft_advertised)
    broker_health = BrokerHealth()
    health_pb2_grpc.add_HealthServicer_to_server(broker_health.servicer, server)
    services = [api_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("Broker", "Admin", "Groups")]
    for name in ("", *services):
        await broker_health.set(name, False)
    await broker_health.set(LIVENESS_SERVICE, True)
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(config.listen) if tls is None else \
        server.add_secure_port(config.listen, tls.grpc_credentials())
    if bound == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    driver.start()
    if config.metrics_port is not None:
        metrics.serve(config.metrics_bind_host, config.metrics_port,
                      tls.metrics_context() if tls is not None and config.metrics_tls else None,
                      broker_health.http_probes())
    log.info("broker started id=%d listen=%s advertise=%s raft=%s data_dir=%s brokers=%s metrics_port=%s loop=%s "
             "tls=%s", config.broker_id, config.listen, config.advertised_address, transport.address, config.data_dir,
             dict(config.founders) or f"join {','.join(config.seeds)}",
             config.metrics_port, type(asyncio.get_running_loop()).__module__.split(".")[0],
             f"client_auth={tls.client_auth.value}" if tls is not None else "off")
    if tls is None:
        _warn_plaintext(config, raft_host)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background = [
        asyncio.create_task(_enforce_retention(partitions, committer, config.retention_check_interval_s, metrics)),
        asyncio.create_task(_serve_when_led(controller, broker_health, services)),
        asyncio.create_task(_drop_orphans_after_replay(partitions, controller)),
        asyncio.create_task(_register(admin, state, refuse)),
        asyncio.create_task(_reload_files(tls, access)),
        asyncio.create_task(coordinator.run()),
        asyncio.create_task(reassigner.run(REASSIGNMENT_INTERVAL_S)),
        asyncio.create_task(controller.run_decommissions(DECOMMISSION_INTERVAL_S)),
        asyncio.create_task(SelfHealer(state, self_heal_after_s=config.self_heal_after_s,
                                       balance_on_join=config.balance_on_join).run(SELF_HEAL_INTERVAL_S)),
        asyncio.create_task(balancer.run(config.leader_balance_delay_s, min(1.0, config.leader_balance_delay_s))),
    ]
    for task in background:
        task.add_done_callback(_report_failure)
    await stop.wait()

    if fatal:
        log.critical("broker stopping after a storage failure id=%d error=%s: %s", config.broker_id,
                     type(fatal[0]).__name__, fatal[0])
    else:
        log.info("broker stopping id=%d", config.broker_id)
    for task in background:
        task.cancel()
    if not fatal:
        await _hand_off_leadership(config.broker_id, [controller.replica, *(r for _, _, r in partitions.replicas())])
    await broker_health.shut_down()
    await server.stop(SHUTDOWN_GRACE_S)
    await driver.stop()
    await transport.close()
    await committer.close()
    store.close()
    status = 1 if fatal else 2 if refusal else 0
    log.info("broker stopped id=%d exit_status=%d", config.broker_id, status)
    return status


def _broker_token(config: BrokerConfig) -> str | None:
    return config.broker_token_file.read_text().strip() if config.broker_token_file is not None else None


def _peer_metadata(config: BrokerConfig) -> tuple[tuple[str, str], ...]:
    """What this broker's own calls to other brokers carry: its `--broker-token-file` token."""
    token = _broker_token(config)
    return ((AUTHORIZATION_HEADER, f"Bearer {token}"),) if token is not None else ()


def _access_control(config: BrokerConfig, metadata: MetadataState, metrics: BrokerMetrics) -> Access:
    """The broker's access control. The principal of its `--broker-token-file` is a super-user, like
    `--super-users`, and so is every broker's certificate (`Broker:<id>`) when TLS is on."""
    chain = authenticators(config.auth, client_certificates=config.tls and config.tls_client_auth == "required")
    super_users = set(config.super_users)
    token = _broker_token(config)
    if token is not None and chain:
        super_users.add(token_principal(chain, token))
    authorizer = Authorizer(metadata.acls, super_users=super_users, enabled=config.authorizer == "acl",
                            super_prefix=BROKER_PRINCIPAL_PREFIX if config.tls else None)
    quotas = QuotaManager(metadata.quota_for, on_throttled=lambda kind, entity, seconds:
                          metrics.throttle_seconds.labels(kind, entity).inc(seconds))
    log.info("access control authentication=%s anonymous=%s authorizer=%s super_users=%s tls_principal_rules=%s",
             ",".join(type(a).__name__ for a in chain) or "none", config.auth.allow_anonymous or not chain,
             config.authorizer or "allow-all", sorted(super_users),
             [rule.text for rule in config.auth.principal_rules] or ["DEFAULT"])
    return Access(Authentication(chain, allow_anonymous=config.auth.allow_anonymous), authorizer, quotas, metrics)


async def _hand_off_leadership(broker_id: int, replicas: list[RaftReplica]) -> None:
    """Before stopping, move leadership of every group led here to an in-sync follower, so clients
    are redirected at once instead of waiting an election timeout for the survivors to notice."""
    started = time.monotonic()
    led = sum(replica.leader_id == broker_id for replica in replicas)
    remaining, alone = await hand_off_all(broker_id, replicas, HAND_OFF_TIMEOUT_S)
    log.info("leadership handed off broker=%d groups=%d remaining=%d sole_voter=%d elapsed_ms=%d", broker_id, led,
             len(remaining), len(alone), (time.monotonic() - started) * 1000)


def _tls(config: BrokerConfig) -> BrokerTls | None:
    if not config.tls:
        return None
    assert config.tls_cert is not None and config.tls_key is not None and config.tls_ca is not None
    return BrokerTls(TlsFiles(config.tls_cert, config.tls_key, config.tls_ca), ClientAuth(config.tls_client_auth))


async def _reload_files(tls: BrokerTls | None, access: Access) -> None:
    """Take rotated certificate files (`raftka.cluster.tls`) and changed JWKS, key and token files
    (`raftka.cluster.authentication`)."""
    while True:
        await asyncio.sleep(RELOAD_INTERVAL_S)
        if tls is not None:
            tls.refresh()
        access.authentication.refresh()


def _warn_plaintext(config: BrokerConfig, raft_host: str) -> None:
    """Say so when a broker without TLS is reachable from other hosts."""
    exposed = [f"{name}={address}" for name, address, host in (
        ("listen", config.listen, parse_host_port(config.listen)[0]), ("raft", raft_host, raft_host),
        ("metrics", f"{config.metrics_bind_host}:{config.metrics_port}",
         config.metrics_bind_host if config.metrics_port is not None else "localhost"))
        if not _loopback(host)]
    if exposed:
        log.warning("listening without TLS on a non-loopback address %s: anyone who can reach it can read and "
                    "write every topic and speak as a broker; give --tls-cert, --tls-key and --tls-ca",
                    " ".join(exposed))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _incarnation(data_dir: Path) -> str:
    """The id of this data directory, written at its first start: the cluster tells a broker that comes
    back from a lost or wiped disk (a new incarnation) from one that merely restarted."""
    path = data_dir / INCARNATION_FILE
    if not path.exists():
        _write_durably(path, uuid.uuid4().hex + "\n")
        log.info("data directory initialised path=%s incarnation=%s", data_dir, path.read_text().strip())
    return path.read_text().strip()


def _write_durably(path: Path, text: str) -> None:
    """Create `path` holding `text`, all or nothing, synced before this returns."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    with open(temporary, "rb") as written:
        os.fsync(written.fileno())
    temporary.replace(path)


def _replaced(config: BrokerConfig, store: LogStore, incarnation: str) -> bool:
    """Whether this data directory took over the id of a broker whose disk was lost: `--replace` on
    a directory without a metadata log marks it so for good (the flag on a later start, or on a
    directory that has a metadata log, changes nothing). Such a broker founds no group: the metadata
    log and every partition whose topic predates its registration rejoin, voting and counting
    towards commits only once they hold what was committed before (`partitions.open_replica`). The
    mark is durable before any group opens, so a crash before a group has persisted that rule does
    not make the group forget it."""
    path = config.data_dir / REPLACED_FILE
    if not path.exists() and config.replace and METADATA_GROUP not in store.log_names():
        _write_durably(path, incarnation + "\n")
        log.warning("broker replaces one whose disk was lost id=%d incarnation=%s: its replicas rejoin their "
                    "groups and vote once caught up", config.broker_id, incarnation)
    return path.exists()


async def _registered_elsewhere(config: BrokerConfig, incarnation: str, channels: PeerChannels) -> str | None:
    """The incarnation another founding controller says this broker id is registered with, if it is
    not this one: a new data directory must not found the metadata log again (its empty log would
    vote as if it held what the old one acknowledged)."""
    for broker, address in config.peers.items():
        if broker == config.broker_id:
            continue
        try:
            async with channels.open(address) as channel:
                answer = await api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=2,
                                                                         metadata=_peer_metadata(config))
        except grpc.aio.AioRpcError:
            continue
        known = next((b.incarnation for b in answer.brokers if b.id == config.broker_id), "")
        if known and known != incarnation:
            return known
    return None


def _report_failure(task: asyncio.Task[None]) -> None:
    """A background duty that dies must say so: nothing else would notice."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


async def _register(admin: AdminService, state: BrokerState, refused: Callable[[RaftkaError], None]) -> None:
    """Record this broker's address, rack and incarnation in the metadata log, retrying until it is
    applied here. While this broker knows no metadata leader (it is joining), the registration goes
    to its seeds (`--join`, or the founders of a `--peers` that does not name it), which forward it;
    they also say where every broker is, so that the leader's messages can be answered. A
    registration refused for another incarnation stops the broker."""
    config = state.config
    request = api_pb2.RegisterBrokerRequest(broker=api_pb2.BrokerInfo(
        id=config.broker_id, address=config.advertised_address, rack=config.rack, incarnation=state.incarnation),
        replace=config.replace)

    def registered() -> bool:
        mine = state.metadata.brokers().get(config.broker_id)
        return mine is not None and (mine.address, mine.rack, mine.incarnation) == (
            config.advertised_address, config.rack, state.incarnation)

    while not registered():
        try:
            if state.controller.leader_id != NO_LEADER:
                await admin.register(request)
            elif config.seeds:
                await _register_through(config.seeds, request, state.directory, state.channels, state.peer_metadata)
        except IncarnationMismatchError as exc:
            refused(exc)
            return
        except RaftkaError as exc:
            log.info("broker registration will be retried: %s", exc)
        await asyncio.sleep(0.5)


async def _register_through(seeds: tuple[str, ...], request: api_pb2.RegisterBrokerRequest,
                            directory: BrokerDirectory, channels: PeerChannels,
                            peer_metadata: tuple[tuple[str, str], ...]) -> None:
    """Register through the first of `seeds` that answers, after learning every broker's address from it."""
    last: RaftkaError | None = None
    for seed in seeds:
        async with channels.open(seed) as channel:
            try:
                metadata = await api_pb2_grpc.BrokerStub(channel).Metadata(api_pb2.MetadataRequest(), timeout=5,
                                                                           metadata=peer_metadata)
                for broker in metadata.brokers:
                    directory.learn(broker.id, broker.address)
                await api_pb2_grpc.AdminStub(channel).RegisterBroker(request, timeout=30, metadata=peer_metadata)
                return
            except grpc.aio.AioRpcError as exc:
                last = from_rpc_error(exc)
                if not last.retriable and not isinstance(last, BrokerUnavailableError):
                    raise last from None
    raise last or BrokerUnavailableError("no --join broker given")


async def _drop_orphans_after_replay(partitions: PartitionManager, controller: Controller) -> None:
    """Once this broker has applied the whole committed metadata log, drop logs no topic names."""
    replica = controller.replica
    while replica.node.applied_index < replica.node.commit_index or controller.leader_id == NO_LEADER:
        await asyncio.sleep(0.1)
    partitions.drop_orphans({METADATA_GROUP})
