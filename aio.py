"""asyncio clients: `from raftka.aio import AIOProducer, AIOConsumer` (see raftka.client.aio)."""

from raftka.client.aio import AIOConsumer, AIOProducer

__all__ = ["AIOConsumer", "AIOProducer"]
