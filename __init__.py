"""Raftka: a Raft-replicated, partitioned, durable log with a gRPC API.

Users import one namespace::

    from raftka import Producer, Consumer, Admin

The client names are resolved lazily so that the broker and the pure Raft core
(`raftka.replication`) do not import the client stack they never use.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Admin", "Consumer", "Producer", "Record", "RecordMetadata", "TopicPartition"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from raftka import client

        return getattr(client, name)
    raise AttributeError(f"module 'raftka' has no attribute {name!r}")
