"""The `raftka.v1.Admin` gRPC service: topics, leader elections, broker registration, producer ids.

Topic changes go through the metadata log, whose leader alone may propose them; any broker accepts
them and forwards to that leader, so clients need not know which broker it is. Reads are served
from the broker's own applied metadata.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import grpc

from raftka.cluster.broker_service import BrokerState, unary
from raftka.cluster.leadership import LeaderBalancer
from raftka.cluster.metadata import BrokerRegistration
from raftka.cluster.topics import TopicConfig, validate_topic_name
from raftka.errors import BrokerUnavailableError, NotLeaderError, from_rpc_error
from raftka.proto import api_pb2, api_pb2_grpc

DEFAULT_PARTITIONS = 1
DEFAULT_REPLICATION_FACTOR = 3
FORWARD_TIMEOUT_S = 30.0


class AdminService(api_pb2_grpc.AdminServicer):
    def __init__(self, state: BrokerState, balancer: LeaderBalancer) -> None:
        self._state = state
        self._balancer = balancer
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def CreateTopic(self, request: api_pb2.CreateTopicRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.CreateTopicResponse:
        return await unary(context, lambda: self.on_controller("CreateTopic", request, lambda: self._create(request)))

    async def _create(self, request: api_pb2.CreateTopicRequest) -> api_pb2.CreateTopicResponse:
        validate_topic_name(request.name)
        config = TopicConfig.parse(dict(request.config))
        replication_factor = request.replication_factor or min(DEFAULT_REPLICATION_FACTOR,
                                                                len(self._state.config.brokers))
        record = await self._state.controller.create_topic(
            request.name, request.partitions or DEFAULT_PARTITIONS, replication_factor, config)
        return api_pb2.CreateTopicResponse(topic=self._state.topic_metadata(record))

    async def DeleteTopic(self, request: api_pb2.DeleteTopicRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.DeleteTopicResponse:
        return await unary(context, lambda: self.on_controller("DeleteTopic", request, lambda: self._delete(request)))

    async def _delete(self, request: api_pb2.DeleteTopicRequest) -> api_pb2.DeleteTopicResponse:
        validate_topic_name(request.name, allow_internal=True)
        await self._state.controller.delete_topic(request.name)
        return api_pb2.DeleteTopicResponse()

    async def ListTopics(self, request: api_pb2.ListTopicsRequest, context: grpc.aio.ServicerContext
                         ) -> api_pb2.ListTopicsResponse:
        return await unary(context, lambda: self._list(request))

    async def _list(self, request: api_pb2.ListTopicsRequest) -> api_pb2.ListTopicsResponse:
        await self._state.catch_up_metadata()
        return api_pb2.ListTopicsResponse(topics=[
            self._state.topic_metadata(record) for record in self._state.metadata.topics()
            if request.include_internal or not record.internal])

    async def DescribeTopic(self, request: api_pb2.DescribeTopicRequest, context: grpc.aio.ServicerContext
                            ) -> api_pb2.DescribeTopicResponse:
        return await unary(context, lambda: self._describe(request))

    async def _describe(self, request: api_pb2.DescribeTopicRequest) -> api_pb2.DescribeTopicResponse:
        """The topic, with offsets of the partitions this broker holds a replica of."""
        validate_topic_name(request.name, allow_internal=True)
        if self._state.metadata.find(request.name) is None:
            await self._state.catch_up_metadata()
        record = self._state.metadata.get(request.name)
        offsets = []
        for partition in range(record.partitions):
            replica = self._state.partitions.find(record.name, partition)
            if replica is not None:
                offsets.append(api_pb2.PartitionOffsets(
                    partition=partition, log_start_offset=replica.log_start_offset,
                    high_watermark=replica.high_watermark, size_bytes=replica.size_bytes))
        return api_pb2.DescribeTopicResponse(topic=self._state.topic_metadata(record), offsets=offsets)

    async def ElectPreferredLeaders(self, request: api_pb2.ElectPreferredLeadersRequest,
                                    context: grpc.aio.ServicerContext) -> api_pb2.ElectPreferredLeadersResponse:
        return await unary(context, lambda: self._elect(request))

    async def _elect(self, request: api_pb2.ElectPreferredLeadersRequest) -> api_pb2.ElectPreferredLeadersResponse:
        if request.topic:
            self._state.metadata.get(request.topic)
        return api_pb2.ElectPreferredLeadersResponse(moves=self._balancer.elect_preferred(request.topic))

    async def RegisterBroker(self, request: api_pb2.RegisterBrokerRequest, context: grpc.aio.ServicerContext
                             ) -> api_pb2.RegisterBrokerResponse:
        return await unary(context, lambda: self.register(request))

    async def register(self, request: api_pb2.RegisterBrokerRequest) -> api_pb2.RegisterBrokerResponse:
        """Record a broker's address and rack in the metadata log (forwarded to its leader)."""
        info = request.broker
        registration = BrokerRegistration(info.id, info.address, info.rack)

        async def locally() -> api_pb2.RegisterBrokerResponse:
            await self._state.controller.register_broker(registration)
            return api_pb2.RegisterBrokerResponse()

        return await self.on_controller("RegisterBroker", request, locally)

    async def InitProducerId(self, request: api_pb2.InitProducerIdRequest, context: grpc.aio.ServicerContext
                             ) -> api_pb2.InitProducerIdResponse:
        async def locally() -> api_pb2.InitProducerIdResponse:
            return api_pb2.InitProducerIdResponse(producer_id=await self._state.controller.allocate_producer_id(),
                                                  producer_epoch=0)

        return await unary(context, lambda: self.on_controller("InitProducerId", request, locally))

    async def on_controller(self, method: str, request: Any, locally: Callable[[], Awaitable[Any]],
                             stub: Callable[[grpc.aio.Channel], Any] = api_pb2_grpc.AdminStub) -> Any:
        """Run a metadata change here if this broker leads the metadata log, else forward the call
        (`stub(channel).<method>`) to the leader."""
        try:
            return await locally()
        except NotLeaderError as exc:
            if not exc.leader_address:
                raise
            address = exc.leader_address
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        try:
            return await getattr(stub(channel), method)(request, timeout=FORWARD_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, BrokerUnavailableError):
                raise NotLeaderError(f"the metadata leader at {address} is unreachable; a new one is being "
                                     "elected, retry") from None
            raise error from None
