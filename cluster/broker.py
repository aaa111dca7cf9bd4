"""The broker process: storage, services, health, reflection and metrics, started and stopped together.

Shutdown on SIGTERM or SIGINT is graceful: health turns NOT_SERVING, the server stops taking calls and
gives in-flight ones a grace period, staged appends are flushed, and the store is closed, so a
restart serves exactly what was acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from raftka.cluster.admin_service import AdminService
from raftka.cluster.broker_service import BrokerService, BrokerState
from raftka.cluster.config import BrokerConfig
from raftka.cluster.group_commit import GroupCommitter
from raftka.cluster.handlers import add_servicer
from raftka.cluster.metadata import MetadataStore
from raftka.cluster.metrics import BrokerMetrics
from raftka.cluster.partitions import PartitionManager
from raftka.cluster.topics import MAX_BATCH_BYTES_LIMIT
from raftka.partition.store import LogStore
from raftka.proto import api_pb2

log = logging.getLogger(__name__)

GRPC_MAX_MESSAGE_BYTES = 2 * MAX_BATCH_BYTES_LIMIT
SHUTDOWN_GRACE_S = 5.0


async def _enforce_retention(partitions: PartitionManager, committer: GroupCommitter, interval_s: float) -> None:
    """Delete expired segments now and then; the deletions are made durable by one group commit."""
    while True:
        await asyncio.sleep(interval_s)
        now_ms = int(time.time() * 1000)
        deleted_any = False
        for topic, partition, replica in partitions.replicas():
            deleted = replica.apply_retention(now_ms)
            if deleted:
                deleted_any = True
                log.info("retention deleted segments topic=%s partition=%d segments=%d", topic, partition, deleted)
        if deleted_any:
            await committer.durable()


async def serve(config: BrokerConfig) -> None:
    """Run one broker until SIGTERM/SIGINT."""
    config.validate()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = BrokerMetrics()
    store = LogStore(config.data_dir / "log")
    committer = GroupCommitter(store, on_flushed=metrics.observe_flush)
    metadata = MetadataStore(config.data_dir / "metadata.json")
    partitions = PartitionManager(store, metadata, committer)
    metrics.partitions.set(len(partitions.replicas()))
    state = BrokerState(config, metadata, partitions, metrics)

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    add_servicer(server, api_pb2.DESCRIPTOR.services_by_name["Broker"], BrokerService(state))
    add_servicer(server, api_pb2.DESCRIPTOR.services_by_name["Admin"], AdminService(state, committer))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [api_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("Broker", "Admin")]
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if server.add_insecure_port(config.listen) == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_port is not None:
        metrics.serve(config.metrics_host, config.metrics_port)
    log.info("broker started id=%d listen=%s advertise=%s data_dir=%s metrics_port=%s", config.broker_id,
             config.listen, config.advertised_address, config.data_dir, config.metrics_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    retention = asyncio.create_task(_enforce_retention(partitions, committer, config.retention_check_interval_s))
    await stop.wait()

    log.info("broker stopping id=%d", config.broker_id)
    retention.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(SHUTDOWN_GRACE_S)
    await committer.close()
    store.close()
    log.info("broker stopped id=%d", config.broker_id)

