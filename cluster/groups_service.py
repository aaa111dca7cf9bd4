"""The `raftka.v1.Groups` gRPC service: finds a group's coordinator and hands calls to it.

`FindCoordinator` is answered by any broker. On first use it creates the internal topic
`__consumer_offsets` (replication factor min(3, brokers), `--offsets-partitions` partitions), through
the metadata leader like any topic change. Every other call must reach the coordinator itself, which
answers NOT_COORDINATOR when it is not (any more); clients then find it again.
"""

from __future__ import annotations

import contextlib

import grpc

from raftka.cluster.admin_service import AdminService
from raftka.cluster.broker_service import BrokerState, unary
from raftka.cluster.coordinator import GroupCoordinator, validate_group_id
from raftka.cluster.group_log import OFFSETS_TOPIC
from raftka.cluster.topics import TopicConfig
from raftka.errors import NotCoordinatorError, RaftkaError, TopicExistsError, from_rpc_error
from raftka.proto import NO_LEADER, api_pb2, api_pb2_grpc
from raftka.wire.acl import DESCRIBE, GROUP

OFFSETS_REPLICATION_FACTOR = 3
FORWARD_TIMEOUT_S = 5.0
OFFSETS_CONFIG = TopicConfig(retention_ms=-1, retention_bytes=-1)
"""Kept whole: without log compaction yet, deleting old segments would lose live offsets."""


class GroupsService(api_pb2_grpc.GroupsServicer):
    def __init__(self, state: BrokerState, coordinator: GroupCoordinator, admin: AdminService) -> None:
        self._state = state
        self._coordinator = coordinator
        self._admin = admin

    async def FindCoordinator(self, request: api_pb2.FindCoordinatorRequest, context: grpc.aio.ServicerContext
                              ) -> api_pb2.FindCoordinatorResponse:
        return await unary(context, lambda: self._find(request))

    async def _find(self, request: api_pb2.FindCoordinatorRequest) -> api_pb2.FindCoordinatorResponse:
        validate_group_id(request.group_id)
        if self._state.metadata.find(OFFSETS_TOPIC) is None:
            await self._state.catch_up_metadata()
        if self._state.metadata.find(OFFSETS_TOPIC) is None:
            await self._admin.on_controller("FindCoordinator", request, self._create_offsets_topic,
                                            stub=api_pb2_grpc.GroupsStub)
            await self._state.catch_up_metadata()
        leader, replicas = self._coordinator.coordinator_of(request.group_id)
        if leader is None:
            return await self._ask_replicas(request, replicas)
        address = self._state.address_of(leader) if leader != NO_LEADER else ""
        if not address:
            raise NotCoordinatorError(f"group {request.group_id!r} has no coordinator right now (its "
                                      f"{OFFSETS_TOPIC} partition is electing a leader); retry")
        return api_pb2.FindCoordinatorResponse(coordinator_id=leader, coordinator_address=address)

    async def _ask_replicas(self, request: api_pb2.FindCoordinatorRequest,
                            replicas: tuple[int, ...]) -> api_pb2.FindCoordinatorResponse:
        """Only the group partition's replicas know its leader: ask them in turn (skipping those down)."""
        last: RaftkaError = NotCoordinatorError(f"no replica of group {request.group_id!r}'s partition answered")
        for broker in replicas:
            address = self._state.address_of(broker)
            channel = self._state.channels.cached(address)
            try:
                return await api_pb2_grpc.GroupsStub(channel).FindCoordinator(request, timeout=FORWARD_TIMEOUT_S,
                                                                              metadata=self._state.peer_metadata)
            except grpc.aio.AioRpcError as exc:
                last = from_rpc_error(exc)
        raise NotCoordinatorError(f"cannot locate the coordinator of group {request.group_id!r}: {last.message}")

    async def _create_offsets_topic(self) -> api_pb2.FindCoordinatorResponse:
        """On the metadata leader: create the topic (a concurrent creation is as good)."""
        config = self._state.config
        with contextlib.suppress(TopicExistsError):
            await self._state.controller.create_topic(
                OFFSETS_TOPIC, config.offsets_partitions,
                min(OFFSETS_REPLICATION_FACTOR, len(self._state.directory.ids())), OFFSETS_CONFIG, internal=True)
        return api_pb2.FindCoordinatorResponse()

    async def Heartbeat(self, request: api_pb2.GroupHeartbeatRequest, context: grpc.aio.ServicerContext
                        ) -> api_pb2.GroupHeartbeatResponse:
        return await unary(context, lambda: self._coordinator.heartbeat(request))

    async def CommitOffsets(self, request: api_pb2.CommitOffsetsRequest, context: grpc.aio.ServicerContext
                            ) -> api_pb2.CommitOffsetsResponse:
        return await unary(context, lambda: self._coordinator.commit(request))

    async def FetchOffsets(self, request: api_pb2.FetchOffsetsRequest, context: grpc.aio.ServicerContext
                           ) -> api_pb2.FetchOffsetsResponse:
        return await unary(context, lambda: self._coordinator.fetch_offsets(request))

    async def ListGroups(self, request: api_pb2.ListGroupsRequest, context: grpc.aio.ServicerContext
                         ) -> api_pb2.ListGroupsResponse:
        async def groups() -> api_pb2.ListGroupsResponse:
            return api_pb2.ListGroupsResponse(groups=[
                group for group in self._coordinator.list_groups()
                if self._state.access.may(GROUP, group.group_id, DESCRIBE)])
        return await unary(context, groups)

    async def DescribeGroup(self, request: api_pb2.DescribeGroupRequest, context: grpc.aio.ServicerContext
                            ) -> api_pb2.DescribeGroupResponse:
        return await unary(context, lambda: self._coordinator.describe(request.group_id))

    async def DeleteGroup(self, request: api_pb2.DeleteGroupRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.DeleteGroupResponse:
        async def delete() -> api_pb2.DeleteGroupResponse:
            await self._coordinator.delete(request.group_id)
            return api_pb2.DeleteGroupResponse()
        return await unary(context, delete)
