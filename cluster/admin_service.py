"""The `raftka.v1.Admin` gRPC service: create, delete, list and describe topics."""

from __future__ import annotations

import grpc

from raftka.cluster.broker_service import BrokerState, unary
from raftka.cluster.group_commit import GroupCommitter
from raftka.cluster.topics import TopicConfig, validate_topic_name
from raftka.errors import InvalidTopicError
from raftka.proto import api_pb2, api_pb2_grpc

DEFAULT_PARTITIONS = 1
DEFAULT_REPLICATION_FACTOR = 3


class AdminService(api_pb2_grpc.AdminServicer):
    def __init__(self, state: BrokerState, committer: GroupCommitter) -> None:
        self._state = state
        self._committer = committer

    async def CreateTopic(self, request: api_pb2.CreateTopicRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.CreateTopicResponse:
        return await unary(context, lambda: self._create(request))

    async def _create(self, request: api_pb2.CreateTopicRequest) -> api_pb2.CreateTopicResponse:
        validate_topic_name(request.name)
        config = TopicConfig.parse(dict(request.config))
        replication_factor = request.replication_factor or min(
            DEFAULT_REPLICATION_FACTOR, self._state.partitions.broker_count)
        record = self._state.partitions.create_topic(
            request.name, request.partitions or DEFAULT_PARTITIONS, replication_factor, config)
        self._state.metrics.partitions.set(len(self._state.partitions.replicas()))
        return api_pb2.CreateTopicResponse(topic=self._state.topic_metadata(record))

    async def DeleteTopic(self, request: api_pb2.DeleteTopicRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.DeleteTopicResponse:
        return await unary(context, lambda: self._delete(request))

    async def _delete(self, request: api_pb2.DeleteTopicRequest) -> api_pb2.DeleteTopicResponse:
        validate_topic_name(request.name, allow_internal=True)
        if self._state.metadata.get(request.name).internal:
            raise InvalidTopicError(f"internal topic {request.name!r} cannot be deleted")
        self._state.partitions.delete_topic(request.name)
        await self._committer.durable()
        self._state.metrics.partitions.set(len(self._state.partitions.replicas()))
        return api_pb2.DeleteTopicResponse()

    async def ListTopics(self, request: api_pb2.ListTopicsRequest, context: grpc.aio.ServicerContext
                         ) -> api_pb2.ListTopicsResponse:
        return await unary(context, lambda: self._list(request))

    async def _list(self, request: api_pb2.ListTopicsRequest) -> api_pb2.ListTopicsResponse:
        return api_pb2.ListTopicsResponse(topics=[
            self._state.topic_metadata(record) for record in self._state.metadata.topics()
            if request.include_internal or not record.internal])

    async def DescribeTopic(self, request: api_pb2.DescribeTopicRequest, context: grpc.aio.ServicerContext
                            ) -> api_pb2.DescribeTopicResponse:
        return await unary(context, lambda: self._describe(request))

    async def _describe(self, request: api_pb2.DescribeTopicRequest) -> api_pb2.DescribeTopicResponse:
        validate_topic_name(request.name, allow_internal=True)
        record = self._state.metadata.get(request.name)
        offsets = []
        for partition in range(record.partitions):
            replica = self._state.partitions.replica(record.name, partition)
            offsets.append(api_pb2.PartitionOffsets(
                partition=partition, log_start_offset=replica.log_start_offset,
                high_watermark=replica.high_watermark, size_bytes=replica.size_bytes))
        return api_pb2.DescribeTopicResponse(topic=self._state.topic_metadata(record), offsets=offsets)
