"""The Raft view of a partition log: entries whose records are the log's batches, stored once."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from raftka.partition import keys
from raftka.partition.errors import EntryIndexError, InvalidEntryError
from raftka.partition.log import LogConfig
from raftka.partition.raft_entries import CONF_CHANGE, NOOP, RECORDS, SnapshotRecord
from raftka.partition.store import LogStore
from raftka.wire.batch import encode_batch, read_header, split_batches, stamp_replicated

CONFIG = LogConfig(segment_bytes=1024, retention_bytes=-1, retention_ms=-1)


def batch(n: int, count: int = 2) -> bytes:
    return encode_batch([(b"k", b"%d:" % n + b"v" * 200, (), 1_000 + n)] * count)


def records_entries(raft_log, start: int, count: int, term: int = 1) -> list:
    offset = raft_log.end_offset_at(start - 1)
    entries = []
    for index in range(start, start + count):
        data = stamp_replicated(batch(index), offset, term)
        entries.append((index, term, RECORDS, data))
        offset += 2
    return entries


def test_a_record_entry_is_stored_once_in_the_batch_keyspace_and_read_back_whole(tmp_path):
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", CONFIG)
        entries = records_entries(raft_log, 1, 3)
        raft_log.append(entries[:1] + [(2, 1, NOOP, b"")])
        raft_log.append([(3, 1, CONF_CHANGE, b"add 4"), (4, 1, RECORDS, stamp_replicated(batch(4), 2, 1)),
                         (5, 1, RECORDS, stamp_replicated(batch(5), 4, 1))])
        staged = raft_log.entries(1, 6)
        store.flush()
        assert raft_log.entries(1, 6) == staged
        log = raft_log.log
        stored = raft_log.entries(1, 6)
        assert [e.type for e in stored] == [RECORDS, NOOP, CONF_CHANGE, RECORDS, RECORDS]
        assert b"".join(e.data for e in stored if e.type == RECORDS) == log.read(0, 1 << 20)
        assert [raft_log.end_offset_at(i) for i in range(0, 6)] == [0, 2, 2, 2, 4, 6] and log.end_offset == 6
        assert raft_log.config_entries(1, 6) == [stored[2]]
        assert len(raft_log.entries(1, 6, 10)) == 1 and len(raft_log.entries(1, 6, 2 * 400)) == 3


def test_truncation_removes_pointers_and_records_and_a_bad_stamp_stages_nothing(tmp_path):
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", CONFIG)
        raft_log.append(records_entries(raft_log, 1, 6))
        store.flush()
        raft_log.append(records_entries(raft_log, 4, 1, term=2))
        assert raft_log.last_index == 4 and raft_log.end_offset == 8 and raft_log.term(4) == 2
        store.flush()
        assert [read_header(raft_log.log.read(6, 1 << 20)).term] == [2]
        with pytest.raises(InvalidEntryError):
            raft_log.append([(5, 2, RECORDS, stamp_replicated(batch(5), 7, 2))])
        with pytest.raises(InvalidEntryError):
            raft_log.append([(5, 2, NOOP, b""), (7, 2, NOOP, b"")])
        with pytest.raises(EntryIndexError):
            raft_log.append([(7, 2, NOOP, b"")])
        assert raft_log.last_index == 4
        store.flush()


def test_staged_entries_are_readable_while_a_flush_runs_on_another_thread(tmp_path):
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", CONFIG)
        stop = threading.Event()
        flusher = threading.Thread(target=lambda: [store.flush() for _ in iter(stop.is_set, True)])
        flusher.start()
        try:
            for round_ in range(150):
                start = max(1, raft_log.last_index - round_ % 3)
                raft_log.append(records_entries(raft_log, start, 3, term=round_))
                got = raft_log.entries(1, raft_log.last_index + 1)
                assert [e.index for e in got] == list(range(1, raft_log.last_index + 1))
                offsets = [read_header(e.data).base_offset for e in got]
                assert offsets == list(range(0, raft_log.end_offset, 2))
        finally:
            stop.set()
            flusher.join()


def test_recently_flushed_entries_read_the_same_through_truncation_compaction_and_reopen(tmp_path):
    """The newest flushed entries stay cached; every read must agree with RocksDB's copy."""
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", CONFIG)
        raft_log.append(records_entries(raft_log, 1, 12))
        store.flush()
        raft_log.append(records_entries(raft_log, 13, 2))
        raft_log.append(records_entries(raft_log, 10, 2, term=2))
        store.flush()
        expected = raft_log.entries(1, 12)
        assert [(e.index, e.term) for e in expected[8:]] == [(9, 1), (10, 2), (11, 2)]
        assert [raft_log.term(i) for i in (9, 10, 11)] == [1, 2, 2]
        raft_log.create_snapshot(9, b"conf", b"")
        raft_log.compact(9)
        store.flush()
        assert raft_log.entries(10, 12) == expected[9:] and raft_log.term(9) == 1
        with pytest.raises(EntryIndexError):
            raft_log.entries(9, 12)
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", CONFIG)
        assert raft_log.entries(10, 12) == expected[9:] and raft_log.term(9) == 1


def test_retention_compacts_the_entries_whose_records_it_deletes_but_never_past_max_index(tmp_path):
    config = LogConfig(segment_bytes=1024, retention_bytes=1024, retention_ms=-1)
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", config)
        raft_log.apply_snapshot(SnapshotRecord(1, 1, 0, b"conf-1"))
        raft_log.append(records_entries(raft_log, 2, 20))
        store.flush()
        confs, offset_at_5 = [], raft_log.end_offset_at(5)
        assert raft_log.apply_retention(0, 5, lambda i: confs.append(i) or b"conf-%d" % i) > 0
        log = raft_log.log
        assert log.start_offset <= raft_log.end_offset_at(5)
        assert raft_log.first_index - 1 == raft_log.snapshot.index == confs[0] <= 5
        assert raft_log.snapshot.offset == log.start_offset == raft_log.end_offset_at(raft_log.first_index - 1)
        assert raft_log.snapshot.conf == b"conf-%d" % confs[0]
        store.flush()
        assert raft_log.apply_retention(0, 21, bytes) > 0
        store.flush()
        assert raft_log.snapshot.offset == log.start_offset > offset_at_5
        entries = raft_log.entries(raft_log.first_index, 22)
        assert b"".join(e.data for e in entries) == log.read(log.start_offset, 1 << 20)
    with LogStore(tmp_path / "db", sync=False) as store:
        reopened = store.open_raft_log("t/0", config)
        assert (reopened.first_index, reopened.last_index, reopened.snapshot) == (
            raft_log.first_index, raft_log.last_index, raft_log.snapshot)



def test_a_snapshot_with_truncation_drops_the_entries_and_the_segments_it_covers_and_rolls(tmp_path):
    config = LogConfig(segment_bytes=1 << 20, retention_bytes=-1, retention_ms=-1)
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", config)
        raft_log.apply_snapshot(SnapshotRecord(1, 1, 0, b"conf-1"))
        raft_log.append(records_entries(raft_log, 2, 10))
        log = raft_log.log
        assert len(log.segments()) == 1, "one big segment: nothing ends before the snapshot yet"
        raft_log.snapshot_and_truncate(8, b"conf-8", b"state at 8")
        store.flush()
        assert (raft_log.first_index, raft_log.snapshot.index, raft_log.snapshot.data) == (9, 8, b"state at 8")
        assert raft_log.snapshot.offset == raft_log.end_offset_at(8) == 14
        assert log.start_offset == 0, "the active segment holds entries 9-11 too, so it stays"
        raft_log.append(records_entries(raft_log, 12, 5))
        assert [s.base_offset for s in log.segments()] == [0, 20], "the segment rolled after the snapshot"
        raft_log.snapshot_and_truncate(14, b"conf-14", b"state at 14")
        store.flush()
        assert log.start_offset == 20 and raft_log.first_index == 15
        tail = log.read(raft_log.end_offset_at(14), 1 << 20, upper_bound=log.end_offset)
        assert b"".join(e.data for e in raft_log.entries(15, 17)) == tail
    with LogStore(tmp_path / "db", sync=False) as store:
        reopened = store.open_raft_log("t/0", config)
        assert (reopened.first_index, reopened.last_index, reopened.snapshot) == (15, 16, raft_log.snapshot)
        assert reopened.log.start_offset == 20
        assert [e.index for e in reopened.entries(15, 17)] == [15, 16]


WRITER = textwrap.dedent("""
    import sys
    from raftka.wire.batch import encode_batch, stamp_replicated
    from raftka.partition.log import LogConfig
    from raftka.partition.raft_entries import NOOP, RECORDS
    from raftka.partition.store import LogStore

    store = LogStore(sys.argv[1])
    raft_log = store.open_raft_log("crash/0", LogConfig(segment_bytes=64 * 1024, retention_bytes=-1, retention_ms=-1))
    n = 0
    while True:
        start = max(1, raft_log.last_index - n % 4)
        offset = raft_log.end_offset_at(start - 1)
        entries = []
        for index in range(start, start + 1 + n % 6):
            if index % 5 == 0:
                entries.append((index, n, NOOP, b""))
                continue
            data = stamp_replicated(encode_batch([(b"k", b"%d" % index + b"v" * (n % 3000), (), 1)] * 3), offset, n)
            entries.append((index, n, RECORDS, data))
            offset += 3
        raft_log.append(entries)
        raft_log.set_hard_state(n, 1, start)
        store.flush()
        print(raft_log.last_index, n, flush=True)
        n += 1
""")


def test_flushed_entries_survive_sigkill_and_nothing_is_half_written(tmp_path):
    data_dir = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    acked = []
    deadline = time.monotonic() + 5
    try:
        while len(acked) < 300 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            assert line, "writer died before it was killed"
            acked.append(tuple(map(int, line.split())))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert len(acked) >= 50

    with LogStore(data_dir) as store:
        raft_log = store.open_raft_log("crash/0", CONFIG)
        last, n = acked[-1]
        hard = raft_log.hard_state
        assert hard.term >= n and (hard.term > n or raft_log.last_index == last)
        entries = raft_log.entries(1, raft_log.last_index + 1)
        assert [e.index for e in entries] == list(range(1, raft_log.last_index + 1))
        data = b"".join(e.data for e in entries if e.type == RECORDS)
        assert data == raft_log.log.read(0, 1 << 40)
        bases = [read_header(data, a).base_offset for a, _ in split_batches(data)]
        assert bases == list(range(0, raft_log.end_offset, 3))
        for entry in entries:
            assert entry.type == (NOOP if entry.index % 5 == 0 else RECORDS)
            if entry.type == RECORDS:
                assert read_header(entry.data).term == entry.term


def test_the_rejoining_flag_survives_a_reopen_and_old_hard_states_read_without_it(tmp_path):
    """HardState.rejoining (design note 14 in replication/raft.py) is durable; a hard state
    written before the flag existed (three u64s) reads as not rejoining, and one without the flag
    is still written in that original form."""
    with LogStore(tmp_path / "db") as store:
        store.open_raft_log("a/0", CONFIG).set_hard_state(3, 2, 9, rejoining=True)
        store.open_raft_log("b/0", CONFIG).set_hard_state(4, 1, 7)
        store.flush()
    with LogStore(tmp_path / "db") as store:
        assert store.open_raft_log("a/0", CONFIG).hard_state == (3, 2, 9, True)
        assert store.open_raft_log("b/0", CONFIG).hard_state == (4, 1, 7, False)
    assert keys.pack_hard_state(4, 1, 7) == struct.pack(">QQQ", 4, 1, 7)
    assert keys.unpack_hard_state(struct.pack(">QQQ", 4, 1, 7)) == (4, 1, 7, False)


def test_entries_above_the_previous_flushs_commit_are_applied_from_memory_not_read_back(tmp_path):
    """The driver applies committed entries right after the flush that persists their commit index;
    until a later flush has persisted a commit covering them, they stay cached however many bytes
    they are (within UNAPPLIED_BYTES), so applying them reads no segment file. After that flush only
    the newest few stay, and reading the older ones goes back to the files, with the same result."""
    config = LogConfig(segment_bytes=1 << 20, retention_bytes=-1, retention_ms=-1)
    with LogStore(tmp_path / "db", sync=False) as store:
        raft_log = store.open_raft_log("t/0", config)
        reads = []
        read_file = store._files.read
        store._files.read = lambda *span: reads.append(span) or read_file(*span)
        entries = [(index, 1, RECORDS, stamp_replicated(encode_batch([(None, b"%d" % index * 8000, (), 1_000)]),
                                                        index - 1, 1)) for index in range(1, 21)]
        raft_log.append(entries)
        raft_log.set_hard_state(1, 0, 0)
        store.flush()
        raft_log.set_hard_state(1, 0, 20)
        store.flush()
        applied = raft_log.entries(1, 21)
        assert [entry.data for entry in applied] == [data for _, _, _, data in entries] and reads == []
        raft_log.set_hard_state(1, 0, 20)
        store.flush()
        assert raft_log.entries(1, 21) == applied and reads
