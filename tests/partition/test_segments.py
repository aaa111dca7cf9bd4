"""Segment files under the log store: what open recovers (orphans, unacknowledged tails, lost data),
when files go (after the flush that deletes their segment), crashes between the steps of a flush,
the upgrade of a version-1 store, and the bound on open descriptors."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
from rocksdict import Options, Rdict

from raftka.partition import keys
from raftka.partition.errors import StorageFailedError
from raftka.partition.log import LogConfig
from raftka.partition.store import LogStore
from raftka.wire.batch import decode_batch, encode_batch, read_header, split_batches, stamp_replicated
from residency import resident_bytes

CONFIG = LogConfig(segment_bytes=16384, retention_bytes=-1, retention_ms=-1)
SIZE = 5000
"""Batches of this many bytes go to segment files (the store keeps batches up to 4 KiB inline)."""


def batch(tag: int, size: int = SIZE) -> bytes:
    return encode_batch([(None, b"%d:" % tag + b"x" * size, (), 1_000_000 + tag)])


def append(log, tag: int, size: int = SIZE) -> int:
    return log.append_stamped(stamp_replicated(batch(tag, size), log.end_offset, 0)).base_offset


def segment_files(store_dir) -> dict[str, int]:
    directory = store_dir / "segments"
    return {name: (directory / name).stat().st_size for name in sorted(os.listdir(directory))}


def values(log):
    data = log.read(log.start_offset, 1 << 40)
    return [decode_batch(data[a:b]).records[0].value for a, b in split_batches(data)]


def run_until_marker(script, *args, marker="MARKER"):
    """Run `script` in a real process, SIGKILL it once it prints `marker`; the lines before it."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the child exited before its marker"
            if line.strip() == marker:
                return lines
            lines.append(line.strip())
        raise AssertionError("no marker within 60 s")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()


def test_open_removes_orphan_files_and_cuts_unacknowledged_tails(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("t/0", CONFIG)
        for tag in range(3):
            append(log, tag)
        store.flush()
        acknowledged = segment_files(tmp_path)
        assert len(acknowledged) == 1
        for tag in range(3, 9):
            append(log, tag)
        assert len(segment_files(tmp_path)) > 1
        store.close(flush=False)
    (tmp_path / "segments" / "00000000000000ff.seg").write_bytes(b"stray")
    with LogStore(tmp_path) as store:
        assert segment_files(tmp_path) == acknowledged
        log = store.open_log("t/0", CONFIG)
        assert log.end_offset == 3
        assert values(log) == [b"%d:" % t + b"x" * SIZE for t in range(3)]
        append(log, 99)
        store.flush()
        assert values(log)[-1].startswith(b"99:")
    with LogStore(tmp_path) as store:
        assert [v[:3] for v in values(store.open_log("t/0", CONFIG))] == [b"0:x", b"1:x", b"2:x", b"99:"]


def test_a_torn_tail_is_cut_and_never_served(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("t/0", CONFIG)
        append(log, 1)
        store.flush()
    [(name, size)] = segment_files(tmp_path).items()
    with open(tmp_path / "segments" / name, "ab") as file:
        file.write(batch(2)[:500])
    with LogStore(tmp_path) as store:
        assert segment_files(tmp_path) == {name: size}
        log = store.open_log("t/0", CONFIG)
        assert log.end_offset == 1 and len(values(log)) == 1


def test_lost_or_corrupt_acknowledged_bytes_refuse_the_open_naming_log_and_file(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("t/0", CONFIG)
        append(log, 1)
        append(log, 2)
        store.flush()
    [(name, size)] = segment_files(tmp_path).items()
    path = tmp_path / "segments" / name
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(StorageFailedError, match=f"log t/0: the last acknowledged batch in segment file .*{name}"):
        LogStore(tmp_path)
    path.write_bytes(original[:-10])
    with pytest.raises(StorageFailedError, match=f"log t/0: segment file .*{name} holds {size - 10} bytes"):
        LogStore(tmp_path)
    path.unlink()
    with pytest.raises(StorageFailedError, match=f"log t/0: segment file .*{name} is missing"):
        LogStore(tmp_path)
    path.write_bytes(original)
    with LogStore(tmp_path) as store:
        assert len(values(store.open_log("t/0", CONFIG))) == 2


def test_deleted_segments_lose_their_files_after_the_flush_not_before(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("t/0", CONFIG)
        other = store.open_log("t/1", CONFIG)
        for tag in range(12):
            append(log, tag)
            append(other, tag)
        store.flush()
        before = segment_files(tmp_path)
        segments = log.segments()
        assert len(segments) >= 4
        log.delete_segments_before(segments[2].base_offset)
        log.truncate_suffix(segments[-1].base_offset)
        assert segment_files(tmp_path) == before
        store.flush()
        after = segment_files(tmp_path)
        assert len(after) == len(before) - 3
        assert values(log) == [b"%d:" % t + b"x" * SIZE for t in range(segments[2].base_offset,
                                                                       segments[-1].base_offset)]
        store.drop_log("t/1")
        assert segment_files(tmp_path) == after
        store.flush()
        assert len(segment_files(tmp_path)) == len(log.segments())
        log.reset(100)
        store.flush()
        assert segment_files(tmp_path) == {}


def test_small_batches_stay_inline_and_read_back_with_file_batches_in_order(tmp_path):
    sizes = [10, 6000, 7000, 100, 3000, 9000, 8000, 20]
    with LogStore(tmp_path) as store:
        log = store.open_log("t/0", LogConfig(segment_bytes=1 << 20))
        for tag, size in enumerate(sizes):
            append(log, tag, size)
        store.flush()
        assert segment_files(tmp_path) == {"0000000000000001.seg": sum(len(batch(t, s)) for t, s in enumerate(sizes)
                                                                        if s > 4096)}
        expected = [b"%d:" % t + b"x" * s for t, s in enumerate(sizes)]
        assert values(log) == expected
        assert [read_header(log.read(n, 1)).base_offset for n in range(len(sizes))] == list(range(len(sizes)))
        small = store.open_log("t/1", LogConfig(segment_bytes=1 << 20))
        append(small, 0, 10)
        store.flush()
        assert len(segment_files(tmp_path)) == 1
    with LogStore(tmp_path) as store:
        assert values(store.open_log("t/0", CONFIG)) == expected


def test_appends_after_a_truncation_never_overwrite_the_truncated_bytes(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("t/0", LogConfig(segment_bytes=1 << 20, retention_bytes=-1, retention_ms=-1))
        for tag in range(3):
            append(log, tag)
        store.flush()
        [(name, size)] = segment_files(tmp_path).items()
        log.truncate_suffix(1)
        append(log, 7)
        store.flush()
        assert segment_files(tmp_path) == {name: size + len(batch(7))}
        assert [v[:2] for v in values(log)] == [b"0:", b"7:"]
    with LogStore(tmp_path) as store:
        assert [v[:2] for v in values(store.open_log("t/0", CONFIG))] == [b"0:", b"7:"]


WRITER = """
    import sys
    from raftka.partition.log import LogConfig
    from raftka.partition.store import LogStore
    from raftka.wire.batch import encode_batch, stamp_replicated

    store = LogStore(sys.argv[1])
    logs = [store.open_log(name, LogConfig(segment_bytes=65536, retention_bytes=-1, retention_ms=-1))
            for name in ("c/0", "c/1", "c/2")]
    i = 0
    while True:
        appended = []
        for _ in range(1 + i % 4):
            log = logs[i % 3]
            if i % 23 == 0 and log.end_offset > log.start_offset:
                log.truncate_suffix(log.end_offset - 1)
            if i % 41 == 0 and len(log.segments()) > 3:
                log.delete_segments_before(log.segments()[1].base_offset)
            batch = encode_batch([(None, b"%d:" % i + b"v" * (3000 + i * 37 % 6000), (), i)])
            base = log.append_stamped(stamp_replicated(batch, log.end_offset, 0)).base_offset
            appended.append("%s:%d:%d" % (log.name, base, i))
            i += 1
        store.flush()
        print(" ".join(appended), flush=True)
"""


STOPPING_WRITER = WRITER.replace("store.flush()\n", "store.flush()\n        if i > 400:\n            break\n", 1)
assert STOPPING_WRITER != WRITER


def check_store_matches_files(store_dir, store):
    """Every file on disk is referenced and ends where its segment record says; every batch reads whole."""
    referenced = {}
    for name in store.log_names():
        log = store.open_log(name, CONFIG)
        data = log.read(log.start_offset, 1 << 40)
        bases = [read_header(data, a).base_offset for a, _ in split_batches(data)]
        assert bases == list(range(log.start_offset, log.end_offset))
        assert len(data) == sum(s.size_bytes for s in log.segments())
    for log_id in store._catalog.values():
        for file_id, file_end in store._segment_files(store._db, log_id):
            referenced[f"{file_id:016x}.seg"] = file_end
    assert segment_files(store_dir) == referenced


def test_sigkill_mid_append_and_flush_loop_keeps_every_flushed_batch_and_nothing_torn(tmp_path):
    data_dir = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(data_dir)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    acked: dict[tuple[str, int], int] = {}
    rounds = 0
    deadline = time.monotonic() + 20
    try:
        while rounds < 1500 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            assert line, "writer died before it was killed"
            for token in line.split():
                name, base, i = token.split(":")
                acked[name, int(base)] = int(i)
            rounds += 1
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert rounds >= 100
    with LogStore(data_dir) as store:
        check_store_matches_files(data_dir, store)
        checked = 0
        for name in store.log_names():
            log = store.open_log(name, CONFIG)
            acked_end = max(base for n, base in acked if n == name) + 1
            assert log.end_offset >= acked_end
            for offset in range(log.start_offset, acked_end - 1):
                record = decode_batch(log.read(offset, 1)).records[0]
                assert record.value.startswith(b"%d:" % acked[name, offset])
                checked += 1
        assert checked >= 100


def test_a_crash_after_the_write_before_the_unlink_leaves_orphans_that_open_removes(tmp_path):
    data_dir = tmp_path / "store"
    script = STOPPING_WRITER + """
    from raftka.partition.segments import SegmentFiles
    def stop(self, work):
        print("MARKER", flush=True)
        signal.pause()
    import signal
    SegmentFiles.unlink = stop
    for log in logs:
        log.delete_segments_before(log.segments()[-1].base_offset)
    store.flush()
"""
    run_until_marker(script, str(data_dir))
    with LogStore(data_dir) as store:
        check_store_matches_files(data_dir, store)
        for name in store.log_names():
            assert len(store.open_log(name, CONFIG).segments()) == 1


def test_a_staged_deletion_not_yet_flushed_leaves_the_data_readable_after_a_crash(tmp_path):
    data_dir = tmp_path / "store"
    script = STOPPING_WRITER + """
    for log in logs:
        print(log.name, log.start_offset, log.end_offset, flush=True)
        log.delete_segments_before(log.segments()[-1].base_offset)
        log.truncate_suffix(log.segments()[-1].base_offset)
    print("MARKER", flush=True)
    import signal
    signal.pause()
"""
    lines = run_until_marker(script, str(data_dir))
    with LogStore(data_dir) as store:
        check_store_matches_files(data_dir, store)
        for name, start, end in (line.split() for line in lines[-3:]):
            log = store.open_log(name, CONFIG)
            assert (log.start_offset, log.end_offset) == (int(start), int(end))


def write_v1_store(path, logs: dict[str, list[list[bytes]]]) -> None:
    """A version-1 store written with raw RocksDB puts in the v1 layout: batches as values of their
    03 keys, 24-byte segment records; each log is a list of segments, each a list of payloads."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    db = Rdict(str(path), options)
    db[keys.STORE_VERSION_KEY] = (1).to_bytes(2, "big")
    for log_id, (name, segments) in enumerate(logs.items(), start=1):
        log_keys = keys.LogKeys(log_id)
        db[keys.catalog_key(name)] = keys.pack_id(log_id)
        db[log_keys.meta] = keys.pack_meta(0)
        offset = 0
        for payloads in segments:
            base, size, max_ts = offset, 0, -(1 << 63)
            for payload in payloads:
                stamped = stamp_replicated(encode_batch([(None, payload, (), 1_000 + offset)]), offset, 0)
                db[log_keys.batch(offset)] = stamped
                if 1_000 + offset > max_ts:
                    max_ts = 1_000 + offset
                    db[log_keys.time(base, max_ts)] = keys.pack_u64(offset)
                size += len(stamped)
                offset += 1
            db[log_keys.segment(base)] = struct.pack(">Qqq", size, max_ts, 5)
    db.close()


V1_LOGS = {"a/0": [[b"a%d" % i * 300 for i in range(4)], [b"b%d" % i * 300 for i in range(3)]],
           "a/1": [[b"c%d" % i for i in range(5)]], "empty/0": []}


def check_upgraded(path) -> None:
    with LogStore(path) as store:
        assert store.log_names() == sorted(V1_LOGS)
        assert len(segment_files(path)) == 3
        for name, segments in V1_LOGS.items():
            log = store.open_log(name, LogConfig(segment_bytes=1 << 20))
            assert values(log) == [p for payloads in segments for p in payloads]
            assert [(s.base_offset, s.created_ms) for s in log.segments()] == [
                (sum(map(len, segments[:n])), 5) for n in range(len(segments))]
            assert log.offset_for_timestamp(1_003) == (3 if segments else None)
            if segments:
                append(log, 42)
                store.flush()
        check_store_matches_files(path, store)
    with LogStore(path) as store:
        assert values(store.open_log("a/0", CONFIG))[-1].startswith(b"42:")


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    write_v1_store(tmp_path, V1_LOGS)
    check_upgraded(tmp_path)


def test_a_crash_during_the_upgrade_leaves_orphans_and_the_next_open_redoes_it(tmp_path):
    write_v1_store(tmp_path, V1_LOGS)
    run_until_marker("""
        import signal, sys
        from raftka.partition.segments import SegmentFiles
        from raftka.partition.store import LogStore
        synced = SegmentFiles.sync
        def stop(self, work):
            synced(self, work)
            print("MARKER", flush=True)
            signal.pause()
        SegmentFiles.sync = stop
        LogStore(sys.argv[1])
    """, str(tmp_path))
    assert len(segment_files(tmp_path)) == 3
    check_upgraded(tmp_path)


def test_an_unknown_store_version_is_refused(tmp_path):
    with LogStore(tmp_path):
        pass
    options = Options(raw_mode=True)
    db = Rdict(str(tmp_path), options)
    db[keys.STORE_VERSION_KEY] = (9).to_bytes(2, "big")
    db.close()
    with pytest.raises(StorageFailedError, match="format version 9"):
        LogStore(tmp_path)


def test_open_descriptors_stay_within_the_bound_but_unsynced_files_stay_open(tmp_path):
    with LogStore(tmp_path, max_open_files=4) as store:
        logs = [store.open_log(f"t/{n}", CONFIG) for n in range(12)]
        for tag in range(3):
            for log in logs:
                append(log, tag)
        assert store.open_file_count == 12
        store.flush()
        for log in logs:
            assert len(values(log)) == 3
            assert store.open_file_count <= 4
        assert len(segment_files(tmp_path)) == 12


def test_synced_bytes_beyond_the_cache_bound_leave_the_page_cache_and_still_read_back(tmp_path):
    """After each flush only the newest `cache_bytes` synced bytes stay cached, across logs and files
    (older files first); the same appends with a large bound leave every byte cached, so the bound,
    not the kernel, dropped them. Data read back is the same either way."""
    def cached_after_appends(directory, cache_bytes: int) -> tuple[int, int, int, list[bytes]]:
        config = LogConfig(segment_bytes=64 << 10, retention_bytes=-1, retention_ms=-1)
        with LogStore(directory, cache_bytes=cache_bytes) as store:
            logs = [store.open_log(f"t/{n}", config) for n in range(3)]
            for tag in range(40):
                append(logs[tag % 3], tag)
                store.flush()
                assert store.cached_bytes <= cache_bytes
            files = segment_files(directory)
            resident = sum(resident_bytes(directory / "segments" / name) for name in files)
            read = [value for log in logs for value in values(log)]
            return store.cached_bytes, resident, sum(files.values()), read

    kept, resident, written, read = cached_after_appends(tmp_path / "bounded", 32 << 10)
    assert kept <= 32 << 10 and written > 6 * kept
    assert resident <= (32 << 10) + 8 * 4096  # a partial page at each end of each file's kept range
    everything, resident_all, written_all, read_all = cached_after_appends(tmp_path / "unbounded", 1 << 30)
    assert everything == written_all == written and resident_all >= written
    assert read == read_all and len(read) == 40
