"""LogStore: group commit across logs, catalog, drops, threads; PartitionLog rules in small cases."""

from __future__ import annotations

import threading

import pytest

from raftka.errors import InvalidBatchError, OffsetOutOfRangeError
from raftka.partition.errors import LogClosedError
from raftka.partition.log import LogConfig
from raftka.partition.store import LogStore
from raftka.wire.batch import encode_batch, split_batches, stamp_replicated

T0 = 1_000_000


def batch(size=100, count=1, ts=T0):
    return encode_batch([(None, b"x" * size, (), ts)] * count)


def append(log, data):
    """Stage `data` at the log's end, stamped there as the Raft leader stamps it."""
    return log.append_stamped(stamp_replicated(data, log.end_offset, 0))


def apply_retention(log, now_ms):
    return log.delete_segments_before(log.retention_start(now_ms))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def test_one_flush_makes_every_log_durable_and_names_survive_reopen(tmp_path):
    with LogStore(tmp_path) as store:
        logs = [store.open_log(f"topic/{i}", LogConfig()) for i in range(200)]
        for log in logs:
            append(log, batch())
        assert all(log.durable_end_offset == 0 and log.read(0, 1000) == b"" for log in logs)
        store.flush()
        assert all(log.durable_end_offset == 1 for log in logs)
    with LogStore(tmp_path) as store:
        assert store.log_names() == sorted(f"topic/{i}" for i in range(200))
        assert store.open_log("topic/7", LogConfig()).end_offset == 1


def test_drop_log_deletes_data_and_name_reuse_starts_empty(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("a/0", LogConfig())
        append(log, batch())
        store.flush()
        store.drop_log("a/0")
        with pytest.raises(LogClosedError):
            log.read(0, 100)
        assert store.log_names() == []
        assert store.open_log("a/0", LogConfig()).end_offset == 0
        store.drop_log("a/0")
    with LogStore(tmp_path) as store:
        assert store.log_names() == []
        assert store.open_log("a/0", LogConfig()).end_offset == 0


def test_open_log_twice_returns_the_same_log_with_the_new_config(tmp_path):
    with LogStore(tmp_path) as store:
        first = store.open_log("a/0", LogConfig())
        again = store.open_log("a/0", LogConfig(retention_bytes=5))
        assert again is first and first.config.retention_bytes == 5


def test_append_refuses_anything_but_exactly_one_batch(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("a/0", LogConfig())
        with pytest.raises(InvalidBatchError, match="exactly one batch"):
            append(log, batch() + batch())
        with pytest.raises(OffsetOutOfRangeError) as info:
            log.read(1, 100)
        assert (info.value.start_offset, info.value.end_offset) == (0, 0)


def test_segments_roll_on_size_and_age_and_retention_keeps_at_least_retention_bytes(tmp_path):
    clock = Clock()
    with LogStore(tmp_path, clock=clock) as store:
        log = store.open_log("a/0", LogConfig(segment_bytes=1000, segment_ms=100, retention_bytes=1500,
                                              retention_ms=-1))
        for _ in range(6):
            append(log, batch(size=339))
        clock.now += 100
        append(log, batch(size=339))
        store.flush()
        size = len(batch(size=339))
        assert [(s.base_offset, s.end_offset, s.size_bytes) for s in log.segments()] == [
            (0, 2, 2 * size), (2, 4, 2 * size), (4, 6, 2 * size), (6, 7, size)]
        assert apply_retention(log, clock.now) == 1
        assert log.start_offset == 2 and sum(s.size_bytes for s in log.segments()) == 5 * size > 1500 > 3 * size
        with pytest.raises(OffsetOutOfRangeError):
            log.read(1, 100)


def test_retention_by_time_never_deletes_the_active_or_an_unflushed_segment(tmp_path):
    clock = Clock()
    with LogStore(tmp_path, clock=clock) as store:
        log = store.open_log("a/0", LogConfig(segment_bytes=1, retention_ms=10))
        for i in range(3):
            append(log, batch(ts=T0 + i))
        assert apply_retention(log, T0 + 1000) == 0
        store.flush()
        assert apply_retention(log, T0 + 1000) == 2
        assert [s.base_offset for s in log.segments()] == [2]
    with LogStore(tmp_path, clock=clock) as store:
        log = store.open_log("a/0", LogConfig())
        assert (log.start_offset, log.end_offset) == (2, 3)


def test_appends_and_reads_run_while_another_thread_flushes(tmp_path):
    with LogStore(tmp_path) as store:
        logs = [store.open_log(f"t/{i}", LogConfig(segment_bytes=4096)) for i in range(4)]
        stop = threading.Event()

        def flusher():
            while not stop.is_set():
                store.flush()

        thread = threading.Thread(target=flusher)
        thread.start()
        try:
            for i in range(2000):
                log = logs[i % 4]
                append(log, batch(size=i % 500, count=1 + i % 3))
                if i % 50 == 0:
                    log.truncate_suffix(log.segments()[-1].base_offset)
                data = log.read(log.start_offset, 1 << 20)
                assert sum(1 for _ in split_batches(data)) >= 0
        finally:
            stop.set()
            thread.join()
        store.flush()
        for log in logs:
            assert log.durable_end_offset == log.end_offset
            data = log.read(0, 1 << 30)
            assert len(data) == sum(s.size_bytes for s in log.segments())


def test_retention_deletes_the_segments_wholly_below_a_deleted_before_offset(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("a/0", LogConfig(segment_bytes=1, retention_ms=-1))
        for _ in range(5):
            append(log, batch())
        store.flush()
        assert log.retention_start(T0, deleted_before=0) == 0, "unlimited retention keeps everything"
        assert log.retention_start(T0, deleted_before=3) == 3
        assert log.retention_start(T0, deleted_before=3, limit=2) == 2, "never past the caller's limit"
        assert log.retention_start(T0, deleted_before=9) == 4, "the active segment stays"
