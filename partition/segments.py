"""Segment files: the bytes of every partition's batches, one file per segment, beside the log store's RocksDB.

Why files: with batches stored as RocksDB values, every byte was written to the WAL, again by the
memtable flush, and again by each leveled compaction, because all partitions of a broker share one
key space and every flushed table spans all of them (4.2-7.4x the replicated payload, measured; see
README "Sustained ingest"). A segment file receives each batch once, exactly as it is served; RocksDB
keeps only small pointers to it (`raftka.partition.keys`), and retention deletes a segment by
unlinking its file. (Batches of up to the store's inline limit stay in their RocksDB pointer, and a
segment gets its file at its first larger batch: `raftka.partition.log` says why.)

Files live in `<store>/segments/` (RocksDB ignores a subdirectory in its directory) and are named by a
store-wide file id, `<id as 16 hex digits>.seg`. Ids only grow while the store is open; after a
restart the next id is one past the largest referenced id, and no unreferenced file survives open,
so an id never names two files at once even when a truncated segment's base offset is reused.

Durability order (driven by `LogStore.flush`): an append writes its batch into the page cache at
stage time (`write`); a flush takes the files written since the previous flush (`take`), fdatasyncs
them in parallel and fsyncs the directory if files were created (`sync`), and only then writes the
RocksDB batch whose pointers reference those bytes; the files of segments that batch deleted are
unlinked after it (`unlink`). So a durable pointer only ever references durable bytes, and a crash
leaves at worst files that no segment record references (created but never committed, or deleted
but not yet unlinked) and bytes past a segment's recorded file end (written but never
acknowledged); `recover` removes both at open. Positions in a file only grow (a truncation leaves
dead bytes, never overwrites them), so a write can never damage bytes a durable pointer references.

A failed write or create (a full disk) is not raised where it happens, in the middle of one log's
staging, but by the `sync` of the flush that covers it: the write is shared by every log as the
RocksDB write was before segment files, so its failure fails the flush, which fails every waiter and
poisons the store (the broker stops with status 1) instead of failing one Raft group after another.
Nothing staged after it can become durable, and a restart cuts whatever was written past the
recorded ends.

Page cache: once a flush has fdatasynced a file's new bytes, they stay in the OS page cache only while
they are among the store's newest `cache_bytes` synced bytes; older ones are dropped
(`posix_fadvise(DONTNEED)`, which frees clean pages at once). Reads of recent data (Raft apply and
follower sends, tailing consumers) find them there; a consumer further behind reads the disk, like a
Redpanda consumer missing its batch cache. Why bound it: written pages otherwise stay cached until
memory runs out, so the kernel keeps taking never-used free pages for new writes (on this project's
VMs each costs the hypervisor a fault: a 256 KiB pwrite took 114-149 us while the warm free memory
lasted, then about 800 us of system time, and sustained ingest fell by a third; with the bound, pages
freed by the drop are reused at once and the same pwrite took 49-57 us throughout), and a container's
memory accounting counts all of them. Drops follow sync order (the oldest synced bytes first, one call
per file per flush), so the newest bytes of every log stay.

File descriptors: at most `max_open` are kept, least recently used closed first, but never a file
written since its last fdatasync: Linux reports a writeback error to the descriptors open when it
happens, so closing one before its fsync could hide a lost write from the flush.

Threading: writes happen under the store's staging lock, reads on the thread that owns the logs,
`take`/`sync`/`unlink` on the flushing thread; this object's own lock guards its tables and the
descriptors in use, so a descriptor is never closed (and its number reused) under a read or write.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from raftka.partition.errors import StorageFailedError

log = logging.getLogger(__name__)

DEFAULT_MAX_OPEN = 1024
DEFAULT_CACHE_BYTES = 512 << 20
SYNC_THREADS = 100
_SUFFIX = ".seg"


@dataclass(frozen=True, slots=True)
class FlushWork:
    """What one flush must do to the files: fdatasync `written` (file id -> the end of its bytes
    written so far), fsync the directory if `created`, and (after the RocksDB write) unlink `doomed`."""

    written: dict[int, int]
    created: bool
    doomed: tuple[int, ...]
    error: OSError | None


class SegmentFiles:
    def __init__(self, directory: Path, *, sync: bool, max_open: int = DEFAULT_MAX_OPEN,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        """`cache_bytes`: how many of the newest synced bytes stay in the page cache (see the module
        docstring; only a syncing store drops pages, as only clean pages can be dropped)."""
        if max_open < 1:
            raise ValueError(f"max_open must be positive: {max_open}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must not be negative: {cache_bytes}")
        self.directory = directory
        directory.mkdir(exist_ok=True)
        self._sync = sync
        self._max_open = max_open
        self._lock = threading.Lock()
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._written: dict[int, int] = {}
        self._syncing: set[int] = set()
        self._cache_bytes = cache_bytes
        self._cached: deque[tuple[int, int]] = deque()
        self._cached_total = 0
        self._synced_end: dict[int, int] = {}
        self._dropped_to: dict[int, int] = {}
        self._created = False
        self._doomed: list[int] = []
        self._next_id = 1
        self._error: OSError | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def open_count(self) -> int:
        """Descriptors held now (bounded by max_open, plus files written since their last fdatasync)."""
        return len(self._fds)

    def file_path(self, file_id: int) -> Path:
        return self.directory / f"{file_id:016x}{_SUFFIX}"

    def recover(self, referenced: dict[int, tuple[int, str]]) -> None:
        """Make the directory match the durable records, given every referenced file id with (file
        end, log name): remove every other file, cut each referenced file at its end (bytes past it
        were never acknowledged; the cut need not be durable: the next open would cut again), and
        refuse a referenced file that is missing or shorter than its end (acknowledged bytes lost: a
        disk fault). Call once, at open, before any write."""
        removed = cut = 0
        present: set[int] = set()
        for entry in os.scandir(self.directory):
            file_id = _parse_name(entry.name)
            if file_id is None or file_id not in referenced:
                os.unlink(entry.path)
                removed += 1
                continue
            present.add(file_id)
            file_end, name = referenced[file_id]
            size = entry.stat().st_size
            if size < file_end:
                raise StorageFailedError(f"log {name}: segment file {entry.path} holds {size} bytes but durable "
                                         f"records reference {file_end}: acknowledged data was lost")
            if size > file_end:
                os.truncate(entry.path, file_end)
                cut += 1
        missing = sorted(set(referenced) - present)
        if missing:
            file_id = missing[0]
            raise StorageFailedError(f"log {referenced[file_id][1]}: segment file {self.file_path(file_id)} is "
                                     f"missing ({len(missing)} referenced files missing)")
        if removed and self._sync:
            self._sync_directory()
        self._next_id = max(referenced, default=0) + 1
        log.info("segment files recovered dir=%s files=%d orphans_removed=%d tails_cut=%d", self.directory,
                 len(present), removed, cut)

    def remove_all(self) -> int:
        """Delete every file (none is referenced: a version-1 store being upgraded); how many there were."""
        removed = 0
        for entry in os.scandir(self.directory):
            os.unlink(entry.path)
            removed += 1
        if removed and self._sync:
            self._sync_directory()
        return removed

    def create(self) -> int:
        """A new empty file; its id. The directory is fsynced by the next flush."""
        with self._lock:
            file_id = self._next_id
            self._next_id += 1
            self._created = True
            try:
                self._fds[file_id] = os.open(self.file_path(file_id), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                self._failed(exc, file_id)
            self._evict()
        return file_id

    def write(self, file_id: int, position: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `position` (page cache only; the next flush's `sync` makes it durable, or
        raises this write's error)."""
        with self._lock:
            self._written[file_id] = max(self._written.get(file_id, 0), position + len(data))
            if self._error is not None:
                return
            try:
                written = os.pwrite(self._fd(file_id), data, position)
                if written != len(data):
                    raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
            except OSError as exc:
                self._failed(exc, file_id)

    def read(self, file_id: int, position: int, size: int) -> bytes:
        with self._lock:
            data = os.pread(self._fd(file_id), size, position)
        if len(data) != size:
            raise StorageFailedError(f"segment file {self.file_path(file_id)}: {size} bytes expected at "
                                     f"{position}, {len(data)} read")
        return data

    def delete_after_flush(self, file_id: int) -> None:
        """Unlink the file once the flush that writes the deletion of its segment has synced (call
        while staging that deletion, so both land in the same flush)."""
        self._doomed.append(file_id)

    def take(self) -> FlushWork:
        """What the next `sync`/`unlink` covers: everything written, created and deleted so far (call
        under the store's staging lock, as the pending RocksDB batch is taken)."""
        with self._lock:
            work = FlushWork(self._written, self._created, tuple(self._doomed), self._error)
            self._syncing |= work.written.keys()
            self._written = {}
            self._created = False
            self._doomed = []
        return work

    def sync(self, work: FlushWork) -> None:
        """fdatasync the written files in parallel (each call releases the GIL), then the directory if
        files were created; nothing when the store does not sync. Raises the error of a failed write
        or create that `work` covers, synced or not."""
        if work.error is not None:
            raise work.error
        if not self._sync:
            return
        with self._lock:
            fds = [self._fds[file_id] for file_id in work.written]
        if len(fds) == 1:
            os.fdatasync(fds[0])
        elif fds:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="segment-sync")
            for _ in self._pool.map(os.fdatasync, fds):
                pass
        if work.created:
            self._sync_directory()
        self._drop_cached(work.written)

    @property
    def cached_bytes(self) -> int:
        """Synced bytes left in the page cache by the bound (at most `cache_bytes` after each flush)."""
        return self._cached_total

    def unlink(self, work: FlushWork) -> None:
        """After the RocksDB write of the flush that took `work`: release its files and unlink the doomed."""
        with self._lock:
            self._syncing -= work.written.keys()
            for file_id in work.doomed:
                fd = self._fds.pop(file_id, None)
                if fd is not None:
                    os.close(fd)
                self._written.pop(file_id, None)
                self._cached_total -= self._synced_end.pop(file_id, 0) - self._dropped_to.pop(file_id, 0)
            self._evict()
        for file_id in work.doomed:
            os.unlink(self.file_path(file_id))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _drop_cached(self, synced: dict[int, int]) -> None:
        """Account the bytes just synced (file id -> synced end) as cached, then drop the oldest
        beyond the bound: pop sync records until the total fits, and drop each file's bytes up to
        the furthest popped end in one call (its positions only grow, so everything below is synced
        and older). A file since deleted or closed needs nothing: unlink frees its pages, and a closed
        one is left to the kernel; a deleted file's records are skipped, its bytes were uncounted at
        its unlink. Invariant: `_cached_total` is the sum over live files of synced end minus dropped
        end, and the deque holds, per live file, its sync records above its dropped end in order."""
        with self._lock:
            for file_id, end in synced.items():
                start = max(self._synced_end.get(file_id, 0), self._dropped_to.get(file_id, 0))
                if end > start:
                    self._synced_end[file_id] = end
                    self._cached.append((file_id, end))
                    self._cached_total += end - start
            drops: dict[int, int] = {}
            while self._cached_total > self._cache_bytes and self._cached:
                file_id, end = self._cached.popleft()
                if file_id not in self._synced_end:
                    continue
                dropped = self._dropped_to.get(file_id, 0)
                if end > dropped:
                    self._cached_total -= end - dropped
                    self._dropped_to[file_id] = drops[file_id] = end
            if not drops:
                return
            for file_id, end in drops.items():
                fd = self._fds.get(file_id)
                if fd is not None:
                    os.posix_fadvise(fd, 0, end, os.POSIX_FADV_DONTNEED)

    def _fd(self, file_id: int) -> int:
        """The descriptor of the file, opened if needed (under self._lock)."""
        fd = self._fds.get(file_id)
        if fd is None:
            fd = self._fds[file_id] = os.open(self.file_path(file_id), os.O_RDWR)
            self._evict()
        else:
            self._fds.move_to_end(file_id)
        return fd

    def _evict(self) -> None:
        """Close least recently used descriptors beyond max_open, except those with writes not yet
        synced (under self._lock)."""
        excess = len(self._fds) - self._max_open
        if excess <= 0:
            return
        for file_id in list(self._fds):
            if file_id in self._written or file_id in self._syncing:
                continue
            os.close(self._fds.pop(file_id))
            excess -= 1
            if excess == 0:
                return

    def _failed(self, exc: OSError, file_id: int) -> None:
        """Keep the first write failure for the flush to raise (under self._lock)."""
        if self._error is None:
            self._error = exc
            log.error("segment file write failed path=%s error=%s; the next flush fails", self.file_path(file_id), exc)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _parse_name(name: str) -> int | None:
    if not name.endswith(_SUFFIX):
        return None
    try:
        return int(name[:-len(_SUFFIX)], 16)
    except ValueError:
        return None
