"""The Raftka client: Producer, Consumer and Admin over the v1 gRPC API, and the `raftka` CLI."""

from raftka.client.admin import Admin, PartitionInfo, TopicInfo
from raftka.client.consumer import Consumer
from raftka.client.producer import Producer
from raftka.client.records import Record, RecordMetadata
from raftka.wire.structs import TopicPartition

__all__ = ["Admin", "Consumer", "PartitionInfo", "Producer", "Record", "RecordMetadata", "TopicInfo",
           "TopicPartition"]
