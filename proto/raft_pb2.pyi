from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_UNSPECIFIED: _ClassVar[MessageType]
    MESSAGE_TYPE_PRE_VOTE: _ClassVar[MessageType]
    MESSAGE_TYPE_PRE_VOTE_RESP: _ClassVar[MessageType]
    MESSAGE_TYPE_VOTE: _ClassVar[MessageType]
    MESSAGE_TYPE_VOTE_RESP: _ClassVar[MessageType]
    MESSAGE_TYPE_APPEND: _ClassVar[MessageType]
    MESSAGE_TYPE_APPEND_RESP: _ClassVar[MessageType]
    MESSAGE_TYPE_HEARTBEAT: _ClassVar[MessageType]
    MESSAGE_TYPE_HEARTBEAT_RESP: _ClassVar[MessageType]
    MESSAGE_TYPE_SNAPSHOT: _ClassVar[MessageType]
    MESSAGE_TYPE_TIMEOUT_NOW: _ClassVar[MessageType]
    MESSAGE_TYPE_READ_INDEX: _ClassVar[MessageType]
    MESSAGE_TYPE_READ_INDEX_RESP: _ClassVar[MessageType]

class EntryType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_TYPE_NORMAL: _ClassVar[EntryType]
    ENTRY_TYPE_NOOP: _ClassVar[EntryType]
    ENTRY_TYPE_CONF_CHANGE: _ClassVar[EntryType]
MESSAGE_TYPE_UNSPECIFIED: MessageType
MESSAGE_TYPE_PRE_VOTE: MessageType
MESSAGE_TYPE_PRE_VOTE_RESP: MessageType
MESSAGE_TYPE_VOTE: MessageType
MESSAGE_TYPE_VOTE_RESP: MessageType
MESSAGE_TYPE_APPEND: MessageType
MESSAGE_TYPE_APPEND_RESP: MessageType
MESSAGE_TYPE_HEARTBEAT: MessageType
MESSAGE_TYPE_HEARTBEAT_RESP: MessageType
MESSAGE_TYPE_SNAPSHOT: MessageType
MESSAGE_TYPE_TIMEOUT_NOW: MessageType
MESSAGE_TYPE_READ_INDEX: MessageType
MESSAGE_TYPE_READ_INDEX_RESP: MessageType
ENTRY_TYPE_NORMAL: EntryType
ENTRY_TYPE_NOOP: EntryType
ENTRY_TYPE_CONF_CHANGE: EntryType

class EndpointRequest(_message.Message):
    __slots__ = ("cluster_id", "from_broker", "to_broker")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_BROKER_FIELD_NUMBER: _ClassVar[int]
    TO_BROKER_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    from_broker: int
    to_broker: int
    def __init__(self, cluster_id: _Optional[str] = ..., from_broker: _Optional[int] = ..., to_broker: _Optional[int] = ...) -> None: ...

class EndpointResponse(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("cluster_id", "from_broker", "to_broker", "messages")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_BROKER_FIELD_NUMBER: _ClassVar[int]
    TO_BROKER_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    from_broker: int
    to_broker: int
    messages: _containers.RepeatedCompositeFieldContainer[GroupMessage]
    def __init__(self, cluster_id: _Optional[str] = ..., from_broker: _Optional[int] = ..., to_broker: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[GroupMessage, _Mapping]]] = ...) -> None: ...

class GroupMessage(_message.Message):
    __slots__ = ("group", "message")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    group: str
    message: RaftMessage
    def __init__(self, group: _Optional[str] = ..., message: _Optional[_Union[RaftMessage, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("broker_id", "refusal", "detail")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    broker_id: int
    refusal: str
    detail: str
    def __init__(self, broker_id: _Optional[int] = ..., refusal: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("type", "src", "dst", "term", "log_term", "index", "entries", "commit", "reject", "reject_hint", "snapshot", "context", "force", "quiesce")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    QUIESCE_FIELD_NUMBER: _ClassVar[int]
    type: MessageType
    src: int
    dst: int
    term: int
    log_term: int
    index: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    commit: int
    reject: bool
    reject_hint: int
    snapshot: Snapshot
    context: bytes
    force: bool
    quiesce: bool
    def __init__(self, type: _Optional[_Union[MessageType, str]] = ..., src: _Optional[int] = ..., dst: _Optional[int] = ..., term: _Optional[int] = ..., log_term: _Optional[int] = ..., index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., context: _Optional[bytes] = ..., force: _Optional[bool] = ..., quiesce: _Optional[bool] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("index", "term", "type", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    type: EntryType
    data: bytes
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., type: _Optional[_Union[EntryType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("index", "term", "voters", "learners", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...
