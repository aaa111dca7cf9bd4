"""Group commit: many partitions' staged appends become durable with one synced RocksDB write.

Appends are staged on the event loop thread (in memory, cheap). The committer runs one flush at a
time in a worker thread; everything staged while a flush is running waits for the next one, so under
load each fsync covers every request that arrived during the previous fsync. At rest nothing runs.

Invariant: a future returned by `durable()` resolves only after a `LogStore.flush()` that started
after the caller's appends were staged has returned, so the appends are fsynced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

from raftka.errors import ShuttingDownError, StorageError

log = logging.getLogger(__name__)


class Flushable(Protocol):
    def flush(self) -> None: ...


class GroupCommitter:
    def __init__(self, store: Flushable, *, on_flushed: Callable[[int, float], None] | None = None) -> None:
        self._store = store
        self._on_flushed = on_flushed
        self._round: asyncio.Future[None] | None = None
        self._listeners: set[Callable[[], None]] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    def durable(self, on_durable: Callable[[], None] | None = None) -> asyncio.Future[None]:
        """A future for the flush that will cover every append staged so far.

        `on_durable` runs on the event loop right after that flush, before the future resolves; the
        partition replicas use it to publish their new high watermark to waiting fetches.
        """
        if self._closed:
            raise ShuttingDownError("broker is shutting down")
        if self._round is None:
            self._round = asyncio.get_running_loop().create_future()
            self._wake.set()
        if on_durable is not None:
            self._listeners.add(on_durable)
        return self._round

    async def close(self) -> None:
        """Flush what is staged, then stop; later `durable()` calls raise ShuttingDownError."""
        self._closed = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            round_, listeners = self._round, self._listeners
            self._round, self._listeners = None, set()
            if round_ is not None:
                started = time.perf_counter()
                try:
                    await loop.run_in_executor(None, self._store.flush)
                except Exception as exc:  # noqa: BLE001 - every waiter must learn the write failed
                    log.exception("group commit flush failed")
                    round_.set_exception(StorageError(f"write to disk failed: {exc}"))
                    continue
                elapsed = time.perf_counter() - started
                for listener in listeners:
                    listener()
                round_.set_result(None)
                if self._on_flushed is not None:
                    self._on_flushed(len(listeners), elapsed)
            if self._closed and self._round is None:
                return
