"""Raftka's typed errors, shared by the broker (which raises them) and the client (which receives them).

Every error has one machine-readable `ErrorCode` (from the v1 API) and one gRPC status code. The broker
turns an error into a gRPC status whose trailing metadata repeats the code and, for NOT_LEADER, the
leader hint; the client turns that status back into the same class (`from_rpc_error`). Streams that
report per-item outcomes use the `Error` message instead (`to_proto` / `from_proto`).

These are the only classes for what the API has a code for, on either side and in every layer: the
record-batch format raises CorruptBatchError and InvalidBatchError whether the producer, the broker or
a consumer meets the bad batch, and the broker's partition log raises OffsetOutOfRangeError. Lower
layers name their own errors only for what means something else (`raftka.partition.errors`,
`raftka.replication.errors`), and the broker turns those into one of these where they reach a client.
"""

from __future__ import annotations

from typing import ClassVar, Iterable, cast

import grpc

from raftka.proto import NO_LEADER, api_pb2

ErrorCode = api_pb2.ErrorCode

METADATA_CODE = "raftka-error-code"
METADATA_LEADER_ID = "raftka-leader-id"
METADATA_LEADER_ADDRESS = "raftka-leader-address"


class RaftkaError(Exception):
    """Base class: `code` is the API's ErrorCode, `status` the gRPC status it travels as."""

    code: ClassVar[api_pb2.ErrorCode] = ErrorCode.INVALID_REQUEST
    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INVALID_ARGUMENT
    retriable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((METADATA_CODE, ErrorCode.Name(self.code)),)

    def to_proto(self) -> api_pb2.Error:
        return api_pb2.Error(code=self.code, message=self.message)


class InvalidRequestError(RaftkaError):
    code = ErrorCode.INVALID_REQUEST


class InvalidTopicError(RaftkaError):
    code = ErrorCode.INVALID_TOPIC


class UnknownTopicError(RaftkaError):
    code = ErrorCode.UNKNOWN_TOPIC
    status = grpc.StatusCode.NOT_FOUND


class UnknownPartitionError(RaftkaError):
    code = ErrorCode.UNKNOWN_PARTITION
    status = grpc.StatusCode.NOT_FOUND


class TopicExistsError(RaftkaError):
    code = ErrorCode.TOPIC_EXISTS
    status = grpc.StatusCode.ALREADY_EXISTS


class InvalidPartitionsError(RaftkaError):
    code = ErrorCode.INVALID_PARTITIONS


class InvalidReplicationFactorError(RaftkaError):
    code = ErrorCode.INVALID_REPLICATION_FACTOR


class InvalidConfigError(RaftkaError):
    code = ErrorCode.INVALID_CONFIG


class OffsetOutOfRangeError(RaftkaError):
    """The offset lies outside the partition's log. Where the log's bounds are known (the broker's
    partition log raises it) they are named too: `offset`, `start_offset` and `end_offset`
    (exclusive); the API carries only the message, so a client receives None for them."""

    code = ErrorCode.OFFSET_OUT_OF_RANGE
    status = grpc.StatusCode.OUT_OF_RANGE

    def __init__(self, message: str, *, offset: int | None = None, start_offset: int | None = None,
                 end_offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.start_offset = start_offset
        self.end_offset = end_offset


class BatchError(RaftkaError):
    """A record batch that cannot be accepted, whoever finds it: the producer encoding it, the broker
    checking a produce request, a consumer decoding a fetch (`raftka.wire.batch` raises them). Only
    its two kinds are raised; `position` is the batch's byte offset in the buffer examined (0 when
    unknown, as after the API, which carries only the message)."""

    def __init__(self, message: str, *, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class CorruptBatchError(BatchError):
    """The bytes are damaged: the CRC32C does not match, or the buffer ends inside the batch."""

    code = ErrorCode.CORRUPT_BATCH
    status = grpc.StatusCode.DATA_LOSS


class InvalidBatchError(BatchError):
    """The bytes are intact but do not form a batch this build accepts (bad magic, length, fields)."""

    code = ErrorCode.INVALID_BATCH


class BatchTooLargeError(RaftkaError):
    code = ErrorCode.BATCH_TOO_LARGE
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class RecordTooLargeError(RaftkaError):
    """A protobuf record that no batch of its topic could hold (key, value and headers above
    max.message.bytes), or whose header name or header count overflows the batch format's u16."""

    code = ErrorCode.RECORD_TOO_LARGE
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class InvalidTimestampError(RaftkaError):
    """A protobuf record's timestamp outside 0..9999-12-31, or records of one request spanning 2**31 ms
    or more (one batch stores each timestamp as a 32-bit delta from the first)."""

    code = ErrorCode.INVALID_TIMESTAMP


class RequestTimedOutError(RaftkaError):
    code = ErrorCode.REQUEST_TIMED_OUT
    status = grpc.StatusCode.DEADLINE_EXCEEDED
    retriable = True


class NotEnoughReplicasError(RaftkaError):
    code = ErrorCode.NOT_ENOUGH_REPLICAS
    status = grpc.StatusCode.UNAVAILABLE
    retriable = True


class StorageError(RaftkaError):
    """The replica's storage failed here; retriable, as Kafka's KAFKA_STORAGE_ERROR: the replica is
    reopened, or its broker restarts, and meanwhile another replica takes over leadership."""

    code = ErrorCode.STORAGE_ERROR
    status = grpc.StatusCode.UNAVAILABLE
    retriable = True


class ShuttingDownError(RaftkaError):
    code = ErrorCode.SHUTTING_DOWN
    status = grpc.StatusCode.UNAVAILABLE
    retriable = True


class InternalError(RaftkaError):
    code = ErrorCode.INTERNAL_ERROR
    status = grpc.StatusCode.INTERNAL


class OutOfOrderSequenceError(RaftkaError):
    """Not written: an earlier batch of the producer is missing. Retriable: it is retried first."""

    code = ErrorCode.OUT_OF_ORDER_SEQUENCE
    status = grpc.StatusCode.FAILED_PRECONDITION
    retriable = True


class DuplicateSequenceError(RaftkaError):
    """The batch was written before, longer ago than the leader's window of remembered batches."""

    code = ErrorCode.DUPLICATE_SEQUENCE
    status = grpc.StatusCode.ALREADY_EXISTS


class UnknownProducerIdError(RaftkaError):
    """Not written: the leader has no state for the producer (never seen, or forgotten after
    retention, eviction or a snapshot); the producer starts a fresh id and sends again."""

    code = ErrorCode.UNKNOWN_PRODUCER_ID
    status = grpc.StatusCode.FAILED_PRECONDITION
    retriable = True


class ProducerFencedError(RaftkaError):
    code = ErrorCode.PRODUCER_FENCED
    status = grpc.StatusCode.FAILED_PRECONDITION


class NotCoordinatorError(RaftkaError):
    """The broker does not coordinate the group (any more); find the coordinator again and retry."""

    code = ErrorCode.NOT_COORDINATOR
    status = grpc.StatusCode.FAILED_PRECONDITION
    retriable = True


class UnknownMemberIdError(RaftkaError):
    """The coordinator does not know the member (expired or fenced); it must rejoin owning nothing."""

    code = ErrorCode.UNKNOWN_MEMBER_ID
    status = grpc.StatusCode.FAILED_PRECONDITION


class GroupNotEmptyError(RaftkaError):
    code = ErrorCode.GROUP_NOT_EMPTY
    status = grpc.StatusCode.FAILED_PRECONDITION


class UnknownGroupError(RaftkaError):
    code = ErrorCode.UNKNOWN_GROUP
    status = grpc.StatusCode.NOT_FOUND


class NotPartitionOwnerError(RaftkaError):
    """A commit for a partition the member no longer owns (it was revoked or the member expired)."""

    code = ErrorCode.NOT_PARTITION_OWNER
    status = grpc.StatusCode.FAILED_PRECONDITION


class IncarnationMismatchError(RaftkaError):
    """A broker id registered with another data directory: its disk was lost or replaced (--replace)."""

    code = ErrorCode.INCARNATION_MISMATCH
    status = grpc.StatusCode.FAILED_PRECONDITION


class InvalidReplicaAssignmentError(RaftkaError):
    """A replica list naming an unregistered broker, a broker twice, or no broker."""

    code = ErrorCode.INVALID_REPLICA_ASSIGNMENT


class ReassignmentInProgressError(RaftkaError):
    """The partition is being moved already: cancel that move, or wait for it to finish."""

    code = ErrorCode.REASSIGNMENT_IN_PROGRESS
    status = grpc.StatusCode.FAILED_PRECONDITION


class StalePlanError(RaftkaError):
    """The reassignment plan was made before placement last changed: plan again."""

    code = ErrorCode.STALE_PLAN
    status = grpc.StatusCode.FAILED_PRECONDITION


class UnreleasedInstanceIdError(RaftkaError):
    """Another live member holds the static instance id; retried until it leaves or expires."""

    code = ErrorCode.UNRELEASED_INSTANCE_ID
    status = grpc.StatusCode.FAILED_PRECONDITION
    retriable = True


class AuthenticationFailedError(RaftkaError):
    """The call's credentials are missing, malformed, expired or not trusted by the broker."""

    code = ErrorCode.AUTHENTICATION_FAILED
    status = grpc.StatusCode.UNAUTHENTICATED


class AuthorizationFailedError(RaftkaError):
    """The caller's ACLs do not allow the operation; the message names only what the caller asked for."""

    code = ErrorCode.AUTHORIZATION_FAILED
    status = grpc.StatusCode.PERMISSION_DENIED


class BrokerUnavailableError(RaftkaError):
    """Client side only: no broker could be reached (the status is whatever the transport said)."""

    code = ErrorCode.NONE
    status = grpc.StatusCode.UNAVAILABLE
    retriable = True


class BufferExhaustedError(RaftkaError):
    """Client side only: the producer's buffer_memory stayed full for max_block_ms."""

    code = ErrorCode.NONE
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class ClientClosedError(RaftkaError):
    """Client side only: the producer or consumer was used after close()."""

    code = ErrorCode.NONE
    status = grpc.StatusCode.CANCELLED


class NotLeaderError(RaftkaError):
    """The broker does not lead the partition; `leader_id`/`leader_address` say who does, if known."""

    code = ErrorCode.NOT_LEADER
    status = grpc.StatusCode.FAILED_PRECONDITION
    retriable = True

    def __init__(self, message: str, leader_id: int = NO_LEADER, leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        hint = ((METADATA_LEADER_ID, str(self.leader_id)), (METADATA_LEADER_ADDRESS, self.leader_address))
        return super().trailing_metadata() + (hint if self.leader_id != NO_LEADER else ())

    def to_proto(self) -> api_pb2.Error:
        return api_pb2.Error(code=self.code, message=self.message, leader_id=self.leader_id,
                             leader_address=self.leader_address)


def _descendants(cls: type[RaftkaError]) -> list[type[RaftkaError]]:
    return [sub for child in cls.__subclasses__() for sub in (child, *_descendants(child))]


_BY_CODE: dict[int, type[RaftkaError]] = {
    cls.code: cls for cls in _descendants(RaftkaError) if "code" in vars(cls) and cls.code != ErrorCode.NONE
}
"""The class of each ErrorCode: the one that names it (a grouping such as BatchError names none)."""


def from_proto(error: api_pb2.Error) -> RaftkaError | None:
    """The exception an `Error` message describes, or None when it says NONE."""
    if error.code == ErrorCode.NONE:
        return None
    if error.code == ErrorCode.NOT_LEADER:
        return NotLeaderError(error.message, error.leader_id if error.leader_address else NO_LEADER,
                              error.leader_address)
    return _BY_CODE.get(error.code, RaftkaError)(error.message)


def rpc_metadata(exc: grpc.RpcError) -> dict[str, str]:
    """The trailing metadata of a failed call by key (empty when it carries none). Raftka's keys are
    ASCII, so grpc hands their values over as str (its type stub says bytes)."""
    if not hasattr(exc, "trailing_metadata"):
        return {}
    return dict(cast(Iterable[tuple[str, str]], exc.trailing_metadata() or ()))


def from_rpc_error(exc: grpc.RpcError) -> RaftkaError:
    """Map a failed call to the typed error the broker raised, or a transport-level one."""
    metadata = rpc_metadata(exc)
    details = (exc.details() or "") if hasattr(exc, "details") else str(exc)
    name = metadata.get(METADATA_CODE)
    if name is None:
        status = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return BrokerUnavailableError(f"broker unavailable: {details}")
        if status == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RequestTimedOutError(f"request timed out: {details}")
        return RaftkaError(f"{status.name}: {details}")
    code = ErrorCode.Value(name)
    if code == ErrorCode.NOT_LEADER:
        leader_id = int(metadata.get(METADATA_LEADER_ID, NO_LEADER))
        return NotLeaderError(details, leader_id, metadata.get(METADATA_LEADER_ADDRESS, ""))
    return _BY_CODE.get(code, RaftkaError)(details)
