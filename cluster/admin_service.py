"""The `raftka.v1.Admin` gRPC service: topics, leader elections, broker registration, producer ids.

Topic changes go through the metadata log, whose leader alone may propose them; any broker accepts
them and forwards to that leader, so clients need not know which broker it is. Reads are served
from the broker's own applied metadata.

DeleteRecords is recorded in the metadata log too (a `delete_records` command setting the
partition's log start offset in its topic record), not in the partition's own Raft log: the
metadata log already carries every replica's view of its topic (settings, placement), snapshots
it and restores it, and a command there leaves the partition's batches, and so every consumer's
and producer's view of them, untouched. The check that needs the partition (the offset is at most
its high watermark) is made by its leader, which alone knows the high watermark: any broker
forwards the call there, and the leader, once the offset is checked (the high watermark never
shrinks, so it stays valid), has the metadata leader record it (`AdvanceLogStart`).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Awaitable, Callable

import grpc

from raftka.cluster.broker_service import BrokerState, unary
from raftka.cluster.authorizer import Acl
from raftka.cluster.leadership import LeaderBalancer
from raftka.cluster.metadata import BrokerRegistration
from raftka.cluster import balancing
from raftka.cluster.quotas import Quota
from raftka.cluster.reassignment import Reassigner
from raftka.cluster.topics import TopicConfig, validate_topic_name
from raftka.cluster.config import parse_host_port
from raftka.errors import (BrokerUnavailableError, InvalidRequestError, InvalidTopicError, NotEnoughReplicasError,
                           NotLeaderError, OffsetOutOfRangeError, RaftkaError, ReassignmentInProgressError,
                           from_rpc_error)
from raftka.replication.membership import ConfChange, ConfChangeOp
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.acl import DESCRIBE, TOPIC

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 1
DEFAULT_REPLICATION_FACTOR = 3
FORWARD_TIMEOUT_S = 30.0


class AdminService(api_pb2_grpc.AdminServicer):
    def __init__(self, state: BrokerState, balancer: LeaderBalancer) -> None:
        self._state = state
        self._balancer = balancer
        self.reassigner: Reassigner | None = None
        """Set by the broker once its partitions are managed (ListReassignments reports its progress)."""

    async def CreateTopic(self, request: api_pb2.CreateTopicRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.CreateTopicResponse:
        return await unary(context, lambda: self.on_controller("CreateTopic", request, lambda: self._create(request)))

    async def _create(self, request: api_pb2.CreateTopicRequest) -> api_pb2.CreateTopicResponse:
        validate_topic_name(request.name)
        config = TopicConfig.parse(dict(request.config))
        replication_factor = request.replication_factor or min(DEFAULT_REPLICATION_FACTOR,
                                                                len(self._state.directory.ids()))
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
            if (request.include_internal or not record.internal)
            and self._state.access.may(TOPIC, record.name, DESCRIBE)])

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

    async def AlterTopicConfig(self, request: api_pb2.AlterTopicConfigRequest, context: grpc.aio.ServicerContext
                               ) -> api_pb2.AlterTopicConfigResponse:
        async def locally() -> api_pb2.AlterTopicConfigResponse:
            validate_topic_name(request.name, allow_internal=True)
            record = await self._state.controller.alter_topic_config(request.name, dict(request.set),
                                                                     list(request.reset))
            return api_pb2.AlterTopicConfigResponse(config=_config_entries(record.config))

        return await unary(context, lambda: self.on_controller("AlterTopicConfig", request, locally))

    async def DescribeTopicConfig(self, request: api_pb2.DescribeTopicConfigRequest,
                                  context: grpc.aio.ServicerContext) -> api_pb2.DescribeTopicConfigResponse:
        async def describe() -> api_pb2.DescribeTopicConfigResponse:
            validate_topic_name(request.name, allow_internal=True)
            await self._state.catch_up_metadata()
            return api_pb2.DescribeTopicConfigResponse(
                config=_config_entries(self._state.metadata.get(request.name).config))

        return await unary(context, describe)

    async def CreatePartitions(self, request: api_pb2.CreatePartitionsRequest, context: grpc.aio.ServicerContext
                               ) -> api_pb2.CreatePartitionsResponse:
        async def locally() -> api_pb2.CreatePartitionsResponse:
            validate_topic_name(request.name, allow_internal=True)
            record = await self._state.controller.create_partitions(request.name, request.partitions)
            return api_pb2.CreatePartitionsResponse(topic=self._state.topic_metadata(record))

        return await unary(context, lambda: self.on_controller("CreatePartitions", request, locally))

    async def DeleteRecords(self, request: api_pb2.DeleteRecordsRequest, context: grpc.aio.ServicerContext
                            ) -> api_pb2.DeleteRecordsResponse:
        return await unary(context, lambda: self._delete_records(request))

    async def _delete_records(self, request: api_pb2.DeleteRecordsRequest) -> api_pb2.DeleteRecordsResponse:
        """On the partition's leader (forwarded there): check the offset against the high watermark,
        then record it in the metadata log (see the module docstring)."""
        validate_topic_name(request.topic, allow_internal=True)
        if request.offset < 0:
            raise InvalidRequestError(f"offset must be >= 0 (records below it are deleted), not {request.offset}")
        if self._state.metadata.find(request.topic) is None:
            await self._state.catch_up_metadata()
        record = self._state.metadata.get(request.topic)
        if record.internal:
            raise InvalidTopicError(f"records of internal topic {record.name!r} cannot be deleted")
        try:
            replica = self._state.partitions.replica(request.topic, request.partition)
            replica.require_leader()
        except NotLeaderError as exc:
            if not exc.leader_address:
                raise
            return await self._forward(exc.leader_address, "DeleteRecords", request)
        high_watermark = replica.high_watermark
        if request.offset > high_watermark:
            raise OffsetOutOfRangeError(
                f"cannot delete {request.topic}/{request.partition} below offset {request.offset}: its high "
                f"watermark is {high_watermark}", offset=request.offset, start_offset=replica.log_start_offset,
                end_offset=high_watermark)
        answer = await self.advance_log_start(api_pb2.AdvanceLogStartRequest(
            topic=record.name, topic_id=record.topic_id, partition=request.partition, offset=request.offset))
        log.info("records deleted topic=%s partition=%d offset=%d log_start=%d", record.name, request.partition,
                 request.offset, answer.low_watermark)
        return api_pb2.DeleteRecordsResponse(low_watermark=answer.low_watermark)

    async def AdvanceLogStart(self, request: api_pb2.AdvanceLogStartRequest, context: grpc.aio.ServicerContext
                              ) -> api_pb2.AdvanceLogStartResponse:
        return await unary(context, lambda: self.advance_log_start(request))

    async def advance_log_start(self, request: api_pb2.AdvanceLogStartRequest) -> api_pb2.AdvanceLogStartResponse:
        async def locally() -> api_pb2.AdvanceLogStartResponse:
            return api_pb2.AdvanceLogStartResponse(low_watermark=await self._state.controller.advance_log_start(
                request.topic, request.topic_id, request.partition, request.offset))

        return await self.on_controller("AdvanceLogStart", request, locally)

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
        if info.id < 1:
            raise InvalidRequestError(f"broker id must be >= 1, not {info.id}")
        try:
            parse_host_port(info.address)
        except ValueError as exc:
            raise InvalidRequestError(f"broker {info.id}'s address: {exc}") from None
        registration = BrokerRegistration(info.id, info.address, info.rack, info.incarnation)

        async def locally() -> api_pb2.RegisterBrokerResponse:
            await self._state.controller.register_broker(registration, replace=request.replace)
            return api_pb2.RegisterBrokerResponse()

        return await self.on_controller("RegisterBroker", request, locally)

    async def InitProducerId(self, request: api_pb2.InitProducerIdRequest, context: grpc.aio.ServicerContext
                             ) -> api_pb2.InitProducerIdResponse:
        async def locally() -> api_pb2.InitProducerIdResponse:
            return api_pb2.InitProducerIdResponse(producer_id=await self._state.controller.allocate_producer_id(),
                                                  producer_epoch=0)

        return await unary(context, lambda: self.on_controller("InitProducerId", request, locally))

    async def DescribeCluster(self, request: api_pb2.DescribeClusterRequest, context: grpc.aio.ServicerContext
                              ) -> api_pb2.DescribeClusterResponse:
        return await unary(context, self._describe_cluster)

    async def _describe_cluster(self) -> api_pb2.DescribeClusterResponse:
        state = self._state
        await state.catch_up_metadata()
        me = state.config.broker_id
        members = state.controller.replica.node.conf_state
        registered = state.metadata.brokers()
        hosted = Counter(broker for topic in state.metadata.topics() for replicas in topic.replicas
                         for broker in replicas)
        statuses = []
        for broker in state.directory.ids():
            since = None if broker == me else state.down_since(broker)
            role = (api_pb2.VOTER if broker in members.voters else api_pb2.LEARNER if broker in members.learners
                    else api_pb2.NOT_A_CONTROLLER)
            statuses.append(api_pb2.BrokerStatus(
                broker=state.broker_info(broker), role=role,
                draining=broker in registered and registered[broker].draining, reachable=since is None,
                unreachable_since_ms=int(since * 1000) if since is not None else 0, replicas=hosted[broker],
                leaders=sum(r.leader_id == me for _, _, r in state.partitions.replicas()) if broker == me else -1))
        leader_id, epoch = state.controller.replica.leadership()
        return api_pb2.DescribeClusterResponse(cluster_id=state.config.cluster_id, controller_id=leader_id,
                                               answered_by=me, brokers=statuses, controller_voters=members.voters,
                                               controller_learners=members.learners, controller_epoch=epoch)

    async def ChangeControllers(self, request: api_pb2.ChangeControllersRequest, context: grpc.aio.ServicerContext
                                ) -> api_pb2.ChangeControllersResponse:
        return await unary(context, lambda: self.on_controller("ChangeControllers", request,
                                                               lambda: self._change_controllers(request)))

    async def _change_controllers(self, request: api_pb2.ChangeControllersRequest) -> api_pb2.ChangeControllersResponse:
        """Promote a caught-up learner, or demote a voter (after moving the metadata leadership away
        from it if it leads): the voters change one at a time."""
        if (request.add > 0) == (request.remove > 0):
            raise InvalidRequestError("give exactly one of add (a broker to make a voter) and remove (a voter "
                                      "to make a learner)")
        controller = self._state.controller
        replica = controller.replica
        replica.require_leader()
        members = replica.node.conf_state
        me = self._state.config.broker_id
        if request.add:
            if request.add in members.voters:
                raise InvalidRequestError(f"broker {request.add} is a voter already")
            if request.add not in members.learners or request.add not in replica.in_sync_replicas():
                raise InvalidRequestError(f"broker {request.add} is not a caught-up learner of the metadata log "
                                          "(is it registered and running?)")
            await controller.change_membership(ConfChange(ConfChangeOp.ADD_VOTER, request.add))
        else:
            if request.remove not in members.voters:
                raise InvalidRequestError(f"broker {request.remove} is not a voter")
            if len(members.voters) == 1:
                raise InvalidRequestError(f"broker {request.remove} is the only voter; add another first")
            if request.remove == me:
                others = [b for b in replica.in_sync_replicas() if b != me and b in members.voters]
                if not others:
                    raise NotEnoughReplicasError("no other voter is in sync to take the metadata leadership; retry")
                replica.transfer_leadership(others[0])
                raise NotEnoughReplicasError(f"moving the metadata leadership to broker {others[0]} before demoting "
                                             f"broker {me}; retry")
            await controller.change_membership(ConfChange(ConfChangeOp.ADD_LEARNER, request.remove))
        members = replica.node.conf_state
        return api_pb2.ChangeControllersResponse(voters=members.voters, learners=members.learners)

    async def DrainBroker(self, request: api_pb2.DrainBrokerRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.DrainBrokerResponse:
        return await unary(context, lambda: self.on_controller("DrainBroker", request, lambda: self._drain(request)))

    async def _drain(self, request: api_pb2.DrainBrokerRequest) -> api_pb2.DrainBrokerResponse:
        """Decommission: refused up front (nothing moves) for an unregistered broker, a controller, or
        when the others cannot hold every partition (the planner's hard constraints: replication
        factor, rack spread); else the broker is marked draining and each partition it holds moves
        to the broker the planner picks. The controller unregisters it once it holds nothing."""
        state = self._state
        broker = request.broker_id
        registered = state.metadata.brokers()
        if broker not in registered:
            raise InvalidRequestError(f"broker {broker} is not registered")
        if not request.draining:
            await state.controller.drain_broker(broker, False)
            return api_pb2.DrainBrokerResponse()
        try:
            current, plan = balancing.plan(state, {broker})
        except RaftkaError as exc:
            raise type(exc)(f"cannot decommission broker {broker}: {exc.message}") from None
        if broker in state.controller.replica.node.conf_state.voters:
            raise InvalidRequestError(
                f"broker {broker} is a controller (a voter of the metadata log): first make another broker one "
                f"(`raftka cluster controllers add ID`), then `raftka cluster controllers remove {broker}`")
        moves = {tp: target for tp, target in plan.targets.items() if broker in current[tp]}
        await state.controller.drain_broker(broker, True)
        if moves:
            await state.controller.reassign(moves, request.throttle_bytes_per_s, None)
        return api_pb2.DrainBrokerResponse(moves=[
            api_pb2.PartitionReplicas(topic=topic, partition=partition, replicas=target)
            for (topic, partition), target in sorted(moves.items())])

    async def PlanBalance(self, request: api_pb2.PlanBalanceRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.PlanBalanceResponse:
        return await unary(context, self._plan_balance)

    async def _plan_balance(self) -> api_pb2.PlanBalanceResponse:
        state = self._state
        await state.catch_up_metadata()
        if state.metadata.moves():
            raise ReassignmentInProgressError("partitions are being moved; plan once they are done (raftka "
                                              "reassign --status --wait) or cancel them")
        offset = state.metadata.placement_offset
        _, plan = balancing.plan(state)
        brokers = sorted(set(plan.replicas_before) | set(plan.replicas_after))
        return api_pb2.PlanBalanceResponse(
            partitions=[api_pb2.PartitionReplicas(topic=topic, partition=partition, replicas=target)
                        for (topic, partition), target in sorted(plan.targets.items())],
            placement_offset=offset, replicas_moved=plan.replicas_moved, bytes_moved=plan.bytes_moved,
            brokers=[api_pb2.BrokerLoad(broker_id=b, replicas_before=plan.replicas_before.get(b, 0),
                                        replicas_after=plan.replicas_after.get(b, 0),
                                        leaders_before=plan.leaders_before.get(b, 0),
                                        leaders_after=plan.leaders_after.get(b, 0)) for b in brokers])

    async def ReassignPartitions(self, request: api_pb2.ReassignPartitionsRequest, context: grpc.aio.ServicerContext
                                 ) -> api_pb2.ReassignPartitionsResponse:
        return await unary(context, lambda: self.on_controller("ReassignPartitions", request,
                                                               lambda: self._reassign(request)))

    async def _reassign(self, request: api_pb2.ReassignPartitionsRequest) -> api_pb2.ReassignPartitionsResponse:
        moves: dict[tuple[str, int], tuple[int, ...]] = {}
        for item in request.partitions:
            key = (item.topic, item.partition)
            if key in moves:
                raise InvalidRequestError(f"{item.topic}/{item.partition} appears twice in the request")
            moves[key] = tuple(item.replicas)
        if not moves:
            raise InvalidRequestError("the request names no partition to move")
        expected = request.expected_placement_offset if request.has_expected_placement_offset else None
        offset = await self._state.controller.reassign(moves, request.throttle_bytes_per_s, expected)
        return api_pb2.ReassignPartitionsResponse(placement_offset=offset)

    async def CancelReassignments(self, request: api_pb2.CancelReassignmentsRequest,
                                  context: grpc.aio.ServicerContext) -> api_pb2.CancelReassignmentsResponse:
        async def locally() -> api_pb2.CancelReassignmentsResponse:
            cancelled = await self._state.controller.cancel_reassignments(
                [(item.topic, item.partition) for item in request.partitions])
            return api_pb2.CancelReassignmentsResponse(cancelled=[
                api_pb2.PartitionReplicas(topic=topic, partition=partition) for topic, partition in cancelled])

        return await unary(context, lambda: self.on_controller("CancelReassignments", request, locally))

    async def ListReassignments(self, request: api_pb2.ListReassignmentsRequest, context: grpc.aio.ServicerContext
                                ) -> api_pb2.ListReassignmentsResponse:
        return await unary(context, self._list_reassignments)

    async def _list_reassignments(self) -> api_pb2.ListReassignmentsResponse:
        state = self._state
        await state.catch_up_metadata()
        reassigner = self.reassigner
        statuses = [] if reassigner is None else [
            reassigner.status(topic, partition, move)
            for (topic, partition), move in sorted(state.metadata.moves().items())]
        return api_pb2.ListReassignmentsResponse(reassignments=statuses,
                                                 placement_offset=state.metadata.placement_offset,
                                                 answered_by=state.config.broker_id)

    async def CompletePartitionMove(self, request: api_pb2.CompletePartitionMoveRequest,
                                    context: grpc.aio.ServicerContext) -> api_pb2.CompletePartitionMoveResponse:
        return await unary(context, lambda: self.complete_move(request))

    async def complete_move(self, request: api_pb2.CompletePartitionMoveRequest
                            ) -> api_pb2.CompletePartitionMoveResponse:
        """Record that a partition's voters reached its move's target (forwarded to the metadata leader)."""
        async def locally() -> api_pb2.CompletePartitionMoveResponse:
            await self._state.controller.complete_move(request.topic, request.partition, request.topic_id,
                                                       tuple(request.replicas))
            return api_pb2.CompletePartitionMoveResponse()

        return await self.on_controller("CompletePartitionMove", request, locally)

    async def CreateAcls(self, request: api_pb2.CreateAclsRequest, context: grpc.aio.ServicerContext
                         ) -> api_pb2.CreateAclsResponse:
        return await unary(context, lambda: self._change_acls("CreateAcls", "create_acls", request,
                                                              api_pb2.CreateAclsResponse()))

    async def DeleteAcls(self, request: api_pb2.DeleteAclsRequest, context: grpc.aio.ServicerContext
                         ) -> api_pb2.DeleteAclsResponse:
        async def delete() -> api_pb2.DeleteAclsResponse:
            present = set(self._state.metadata.acls()[1])
            existing = [acl for acl in self._acls_of(request) if acl in present]
            await self._change_acls("DeleteAcls", "delete_acls", request, api_pb2.DeleteAclsResponse())
            return api_pb2.DeleteAclsResponse(deleted=[acl.to_proto() for acl in existing])
        return await unary(context, delete)

    @staticmethod
    def _acls_of(request: api_pb2.CreateAclsRequest | api_pb2.DeleteAclsRequest) -> list[Acl]:
        if not request.acls:
            raise InvalidRequestError("the request names no ACL")
        return [Acl.from_proto(binding) for binding in request.acls]

    async def _change_acls(self, method: str, op: str, request: Any, answer: Any) -> Any:
        acls = self._acls_of(request)

        async def locally() -> Any:
            await self._state.controller.change_acls(op, acls)
            return answer

        return await self.on_controller(method, request, locally)

    async def ListAcls(self, request: api_pb2.ListAclsRequest, context: grpc.aio.ServicerContext
                       ) -> api_pb2.ListAclsResponse:
        async def listing() -> api_pb2.ListAclsResponse:
            await self._state.catch_up_metadata()
            return api_pb2.ListAclsResponse(acls=[
                acl.to_proto() for acl in sorted(self._state.metadata.acls()[1])
                if not request.principal or acl.principal == request.principal])
        return await unary(context, listing)

    async def SetQuota(self, request: api_pb2.SetQuotaRequest, context: grpc.aio.ServicerContext
                       ) -> api_pb2.SetQuotaResponse:
        async def set_quota() -> api_pb2.SetQuotaResponse:
            quota = Quota.from_proto(request.quota)

            async def locally() -> api_pb2.SetQuotaResponse:
                await self._state.controller.set_quota(quota)
                return api_pb2.SetQuotaResponse()
            return await self.on_controller("SetQuota", request, locally)
        return await unary(context, set_quota)

    async def RemoveQuota(self, request: api_pb2.RemoveQuotaRequest, context: grpc.aio.ServicerContext
                          ) -> api_pb2.RemoveQuotaResponse:
        async def remove() -> api_pb2.RemoveQuotaResponse:
            if not (request.principal or request.client_id):
                raise InvalidRequestError("the request names no principal and no client id")

            async def locally() -> api_pb2.RemoveQuotaResponse:
                await self._state.controller.remove_quota(request.principal, request.client_id)
                return api_pb2.RemoveQuotaResponse()
            return await self.on_controller("RemoveQuota", request, locally)
        return await unary(context, remove)

    async def ListQuotas(self, request: api_pb2.ListQuotasRequest, context: grpc.aio.ServicerContext
                         ) -> api_pb2.ListQuotasResponse:
        async def listing() -> api_pb2.ListQuotasResponse:
            await self._state.catch_up_metadata()
            return api_pb2.ListQuotasResponse(quotas=[quota.to_proto() for quota in self._state.metadata.quotas()])
        return await unary(context, listing)

    async def on_controller(self, method: str, request: Any, locally: Callable[[], Awaitable[Any]],
                             stub: Callable[[grpc.aio.Channel], Any] = api_pb2_grpc.AdminStub) -> Any:
        """Run a metadata change here if this broker leads the metadata log, else forward the call
        (`stub(channel).<method>`) to the leader, as this broker (its `--broker-token-file`
        credentials): the caller was authorized here, where it called."""
        try:
            return await locally()
        except NotLeaderError as exc:
            if not exc.leader_address:
                raise
            return await self._forward(exc.leader_address, method, request, stub)

    async def _forward(self, address: str, method: str, request: Any,
                       stub: Callable[[grpc.aio.Channel], Any] = api_pb2_grpc.AdminStub) -> Any:
        """Call `method` on the leader at `address` (of the metadata log, or of a partition)."""
        channel = self._state.channels.cached(address)
        try:
            return await getattr(stub(channel), method)(request, timeout=FORWARD_TIMEOUT_S,
                                                        metadata=self._state.peer_metadata)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, BrokerUnavailableError):
                raise NotLeaderError(f"the leader at {address} is unreachable; a new one is being elected, "
                                     "retry") from None
            raise error from None


def _config_entries(config: TopicConfig) -> list[api_pb2.ConfigEntry]:
    return [api_pb2.ConfigEntry(name=key, value=value, is_default=default) for key, value, default in config.entries()]
