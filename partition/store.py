"""The log store: one RocksDB instance per broker data directory, holding every partition log's
metadata, and one directory of segment files holding their batches (`raftka.partition.segments`).

All logs share one key space (layout and its rationale: `raftka.partition.keys`) and one pending
`WriteBatch`. Appends, truncations, retention, log creation and drops are staged into it in memory
(an append also writes its batch into its segment file's page cache); `flush()` fdatasyncs the segment
files written since the last flush, in parallel, then writes everything staged, across all logs, in
ONE RocksDB write and one WAL sync, then unlinks the files of deleted segments. So one flush commits
many partitions' appends (group commit), every operation lands atomically with the metadata that
describes it, and a durable pointer never references bytes that are not durable.

Open recovers the files to match the durable records (orphans removed, unacknowledged tails cut) and
checks the CRC of each log's last batch: a referenced file that is missing, short or corrupt means
acknowledged data was lost (a disk fault), and the store refuses to open (StorageFailedError naming
the log and file) rather than serve a log with a hole. A version-1 store (batches inside RocksDB) is
upgraded in place: the batches are copied into segment files and synced first, then ONE RocksDB write
swaps every batch value for its pointer and sets the version; a crash before that write leaves files
no record references, which the next open removes before it redoes the upgrade.

Threading: logs are mutated on one thread (the broker's event loop); `flush()` may run on any thread.
Staging and the swap of the pending batch happen under one lock; the RocksDB write happens outside
it, so a flush on a worker would not stop appends being staged during the fsync. Flushes are
serialised. The lock is reentrant so that a composite operation (a Raft append: record batch plus
entry pointer) can nest the stagings of its parts and still land in one flush, never split across two.

Invariant: a log's durable_end_offset only covers data whose write returned from a flush; if a write
fails, the store refuses all further work (what was staged is in doubt, as with any failed fsync).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Callable

from rocksdict import Options, ReadOptions, Rdict, WriteBatch, WriteOptions

from raftka.errors import CorruptBatchError
from raftka.partition import keys
from raftka.partition.errors import LogClosedError, StorageFailedError
from raftka.partition.log import FlushParticipant, LogConfig, PartitionLog
from raftka.partition.raft_entries import RaftEntryLog
from raftka.partition.segments import DEFAULT_CACHE_BYTES, DEFAULT_MAX_OPEN, SegmentFiles
from raftka.wire.batch import read_header

log = logging.getLogger(__name__)


INLINE_MAX_BYTES = 4096


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class LogStore:
    def __init__(self, path: str | Path, *, sync: bool = True, clock: Callable[[], int] = wall_clock_ms,
                 max_open_files: int = DEFAULT_MAX_OPEN, inline_max_bytes: int = INLINE_MAX_BYTES,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        """`inline_max_bytes`: batches up to this size stay inline in RocksDB (`raftka.partition.log`
        says why); `max_open_files`: the segment files' descriptor bound; `cache_bytes`: how many of
        the newest synced segment bytes stay in the OS page cache (both `raftka.partition.segments`)."""
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self.path = Path(path)
        self._db: Rdict | None = Rdict(str(self.path), options)
        self._files = SegmentFiles(self.path / "segments", sync=sync, max_open=max_open_files,
                                   cache_bytes=cache_bytes)
        self._sync = sync
        self._inline_max = inline_max_bytes
        self._write_options = WriteOptions()
        self._write_options.sync = False
        self._clock = clock
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._pending = WriteBatch(raw_mode=True)
        self._dirty: set[FlushParticipant] = set()
        self._raft_logs: dict[str, RaftEntryLog] = {}
        self._failure: BaseException | None = None
        self._logs: dict[str, PartitionLog] = {}
        try:
            self._catalog = self._load_catalog()
            self._recover_files()
        except BaseException:
            self._files.close()
            self._db.close()
            raise
        self._next_id = max(self._catalog.values(), default=0) + 1
        log.info("log store opened path=%s logs=%d sync=%s", self.path, len(self._catalog), sync)

    @property
    def open_file_count(self) -> int:
        """Segment file descriptors held now: at most max_open_files, plus files written since their
        last fdatasync (which are never closed before it)."""
        return self._files.open_count

    @property
    def cached_bytes(self) -> int:
        """Synced segment bytes the store leaves in the page cache (at most cache_bytes after a flush)."""
        return self._files.cached_bytes

    def log_names(self) -> list[str]:
        """Names of every log in the store (created ones included even before their first flush)."""
        return sorted(self._catalog)

    def open_log(self, name: str, config: LogConfig) -> PartitionLog:
        """The log called `name`, created empty if it does not exist; an open log gets `config`."""
        db = self._usable()
        existing = self._logs.get(name)
        if existing is not None:
            existing.config = config
            return existing
        log_id = self._catalog.get(name)
        if log_id is not None:
            partition_log = PartitionLog(name, log_id, config, db=db, files=self._files,
                                         inline_max_bytes=self._inline_max, staging=self._staging,
                                         clock=self._clock, create=False)
        else:
            log_id = self._next_id
            self._next_id += 1
            partition_log = PartitionLog(name, log_id, config, db=db, files=self._files,
                                         inline_max_bytes=self._inline_max, staging=self._staging,
                                         clock=self._clock, create=True)
            with self._staging(partition_log) as wb:
                wb.put(keys.catalog_key(name), keys.pack_id(log_id))
                wb.put(keys.LogKeys(log_id).meta, keys.pack_meta(0))
            self._catalog[name] = log_id
        self._logs[name] = partition_log
        return partition_log

    def open_raft_log(self, name: str, config: LogConfig) -> RaftEntryLog:
        """The log called `name` seen as a Raft log (see `raftka.partition.raft_entries`); created empty
        if it does not exist. Once a log is used this way, only its RaftEntryLog may mutate it."""
        partition_log = self.open_log(name, config)
        raft_log = self._raft_logs.get(name)
        if raft_log is None:
            raft_log = self._raft_logs[name] = RaftEntryLog(partition_log, db=self._usable(), staging=self._staging)
        return raft_log

    def drop_log(self, name: str) -> None:
        """Delete the log and all its data (range tombstones, durable at the next flush, which then
        unlinks its segment files)."""
        db = self._usable()
        log_id = self._catalog.pop(name, None)
        if log_id is None:
            return
        with self._lock:
            opened = self._logs.get(name)
            file_ids = (opened._file_ids() if opened is not None
                        else [file_id for file_id, _ in self._segment_files(db, log_id)])
            for file_id in file_ids:
                self._files.delete_after_flush(file_id)
            self._pending.delete(keys.catalog_key(name))
            self._pending.delete_range(*keys.log_range(log_id))
            dropped = self._logs.pop(name, None)
            raft_view = self._raft_logs.pop(name, None)
            if raft_view is not None:
                self._dirty.discard(raft_view)
            if dropped is not None:
                self._dirty.discard(dropped)
                dropped._detach()
        log.info("log dropped name=%s id=%d", name, log_id)

    def flush(self) -> None:
        """Make everything staged so far, across all logs, durable: fdatasync the segment files written
        (in parallel), then one (synced) RocksDB write, then unlink the files of deleted segments; then
        advance each affected log's durable end. Safe to call from any thread; concurrent calls are
        serialised."""
        with self._flush_lock:
            with self._lock:
                db = self._usable()
                if self._pending.is_empty():
                    return
                batch, self._pending = self._pending, WriteBatch(raw_mode=True)
                marks = [(partition_log, partition_log._flush_mark()) for partition_log in self._dirty]
                self._dirty = set()
                work = self._files.take()
            try:
                self._files.sync(work)
                db.write(batch, self._write_options)
                self._sync_wal()
                self._files.unlink(work)
            except Exception as exc:
                self._failure = exc
                log.critical("log store write failed path=%s; refusing further work", self.path, exc_info=True)
                raise StorageFailedError(f"log store write failed: {exc}") from exc
            with self._lock:
                for partition_log, flushed_end in marks:
                    partition_log._flush_done(flushed_end)

    def _sync_wal(self) -> None:
        """fsync the WAL (when the store syncs). A write with `sync=True` costs the same (about
        0.2 ms, measured on the development machine) but holds the GIL through the fsync (rocksdict
        0.3 does not release it there), stalling every other thread; `flush_wal` releases it. The
        write is visible in RocksDB before the sync, which changes nothing: a log's durable end moves
        only after `flush` returns."""
        if self._sync:
            assert self._db is not None
            self._db.flush_wal(True)

    def close(self, *, flush: bool = True) -> None:
        """Flush what is staged (unless `flush` is False: then it is lost, as in a crash), then close
        RocksDB; every log of the store becomes unusable."""
        if self._db is None:
            return
        if flush and self._failure is None:
            self.flush()
        with self._flush_lock, self._lock:
            for partition_log in self._logs.values():
                partition_log._detach()
            self._logs.clear()
            self._raft_logs.clear()
            self._pending = WriteBatch(raw_mode=True)
            self._dirty = set()
            db, self._db = self._db, None
            db.close()
            self._files.close()
        log.info("log store closed path=%s", self.path)

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _staging(self, participant: FlushParticipant) -> _Staging:
        return _Staging(self, participant)

    def _usable(self) -> Rdict:
        if self._failure is not None:
            raise StorageFailedError(f"log store {self.path} failed earlier: {self._failure}")
        if self._db is None:
            raise LogClosedError(f"log store {self.path} is closed")
        return self._db

    def _load_catalog(self) -> dict[str, int]:
        assert self._db is not None
        raw = self._db.get(keys.STORE_VERSION_KEY)
        version = None if raw is None else int.from_bytes(raw, "big")
        if version not in (None, keys.V1_STORE_VERSION, keys.STORE_VERSION):
            raise StorageFailedError(f"log store {self.path} has format version {version}; this build reads "
                                     f"{keys.V1_STORE_VERSION} (upgraded on open) and {keys.STORE_VERSION}")
        options = ReadOptions()
        options.set_iterate_upper_bound(keys.CATALOG_END)
        prefix = len(keys.CATALOG_PREFIX)
        catalog = {key[prefix:].decode(): keys.unpack_id(value)
                   for key, value in keys.bytes_items(self._db.items(from_key=keys.CATALOG_PREFIX, read_opt=options))}
        if version == keys.V1_STORE_VERSION:
            self._upgrade_v1(catalog)
        elif version is None:
            self._db.put(keys.STORE_VERSION_KEY, keys.STORE_VERSION.to_bytes(2, "big"), self._write_options)
            self._sync_wal()
        return catalog

    def _upgrade_v1(self, catalog: dict[str, int]) -> None:
        """Move every batch of a version-1 store into segment files (see the module docstring)."""
        assert self._db is not None
        started = time.monotonic()
        self._files.remove_all()
        swap = WriteBatch(raw_mode=True)
        batches = total = 0
        for log_id in catalog.values():
            log_keys = keys.LogKeys(log_id)
            options = ReadOptions()
            options.set_iterate_upper_bound(log_keys.segment_end)
            segments = [(keys.offset_of(k), *keys.unpack_v1_segment(v)) for k, v in
                        keys.bytes_items(self._db.items(from_key=log_keys.segment_prefix, read_opt=options))]
            for n, (base, size, max_ts, created_ms) in enumerate(segments):
                file_id, file_end = self._files.create(), 0
                batch_options = ReadOptions()
                batch_options.set_iterate_upper_bound(
                    log_keys.batch(segments[n + 1][0]) if n + 1 < len(segments) else log_keys.batch_end)
                for key, value in keys.bytes_items(self._db.items(from_key=log_keys.batch(base),
                                                                  read_opt=batch_options)):
                    self._files.write(file_id, file_end, value)
                    next_offset = read_header(value, verify_crc=False).next_offset
                    swap.put(key, keys.pack_batch_pointer(file_id, file_end, len(value), next_offset))
                    file_end += len(value)
                    batches += 1
                swap.put(log_keys.segment(base), keys.pack_segment(size, max_ts, created_ms, file_id, file_end))
                total += file_end
        work = self._files.take()
        self._files.sync(work)
        self._files.unlink(work)
        swap.put(keys.STORE_VERSION_KEY, keys.STORE_VERSION.to_bytes(2, "big"))
        self._db.write(swap, self._write_options)
        self._sync_wal()
        log.info("log store upgraded path=%s from_version=%d to_version=%d logs=%d batches=%d bytes=%d "
                 "seconds=%.1f", self.path, keys.V1_STORE_VERSION, keys.STORE_VERSION, len(catalog), batches, total,
                 time.monotonic() - started)

    def _segment_files(self, db: Rdict, log_id: int) -> list[tuple[int, int]]:
        """(file id, file end) of each durable segment of the log."""
        log_keys = keys.LogKeys(log_id)
        options = ReadOptions()
        options.set_iterate_upper_bound(log_keys.segment_end)
        return [(file_id, file_end) for file_id, file_end in
                (keys.unpack_segment(v)[3:5] for v in db.values(from_key=log_keys.segment_prefix, read_opt=options))
                if file_id != keys.INLINE]

    def _recover_files(self) -> None:
        """Match the segment files to the durable records, then check each log's last batch."""
        assert self._db is not None
        referenced = {file_id: (file_end, name) for name, log_id in self._catalog.items()
                      for file_id, file_end in self._segment_files(self._db, log_id)}
        self._files.recover(referenced)
        for name, log_id in self._catalog.items():
            log_keys = keys.LogKeys(log_id)
            last = next(keys.bytes_items(self._db.items(backwards=True, from_key=log_keys.batch(keys.MAX_U64))), None)
            if last is None or not last[0].startswith(log_keys.batch_prefix):
                continue
            file_id, position, size, _ = keys.unpack_batch_pointer(last[1])
            if file_id == keys.INLINE:
                continue
            try:
                header = read_header(self._files.read(file_id, position, size))
            except CorruptBatchError as exc:
                raise StorageFailedError(f"log {name}: the last acknowledged batch in segment file "
                                         f"{self._files.file_path(file_id)} (bytes {position}..{position + size}) is "
                                         f"corrupt: {exc}") from exc
            if header.base_offset != keys.offset_of(last[0]):
                raise StorageFailedError(f"log {name}: segment file {self._files.file_path(file_id)} holds the batch "
                                         f"of offset {header.base_offset} where offset {keys.offset_of(last[0])} "
                                         f"is expected")


class _Staging:
    """`with store._staging(participant) as wb:` stages writes and in-memory changes atomically w.r.t.
    flush (a log, or the Raft view of one).

    If the body raises, the pending batch may hold half an operation, so the store is poisoned.
    """

    __slots__ = ("_store", "_log")

    def __init__(self, store: LogStore, participant: FlushParticipant) -> None:
        self._store = store
        self._log = participant

    def __enter__(self) -> WriteBatch:
        store = self._store
        store._lock.acquire()
        try:
            store._usable()
        except BaseException:
            store._lock.release()
            raise
        return store._pending

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        store = self._store
        if exc is not None:
            store._failure = exc
            log.critical("staging failed half-way in log %s; refusing further work", self._log.name)
        else:
            store._dirty.add(self._log)
        store._lock.release()
