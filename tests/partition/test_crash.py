"""kill -9 a writer mid-stream: every batch it saw flushed is intact after reopening, and no batch is
half there (the log is whole batches with consistent segments and time index)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from raftka.partition.log import LogConfig
from raftka.partition.store import LogStore
from raftka.wire.batch import decode_batch, split_batches

CONFIG = LogConfig(segment_bytes=64 * 1024, retention_bytes=-1, retention_ms=-1)
NAMES = ("crash/0", "crash/1")

WRITER = textwrap.dedent("""
    import sys
    from raftka.partition.log import LogConfig
    from raftka.partition.store import LogStore
    from raftka.wire.batch import encode_batch, stamp_replicated

    store = LogStore(sys.argv[1])
    logs = [store.open_log(name, LogConfig(segment_bytes=64 * 1024, retention_bytes=-1, retention_ms=-1))
            for name in ("crash/0", "crash/1")]
    i = 0
    while True:
        staged = []
        for _ in range(1 + i % 5):
            log = logs[i % 2]
            records = [(b"k%d" % i, b"%d:%d:" % (i, j) + b"v" * (i % 3000), (), 1_000_000 + i)
                       for j in range(1 + i % 7)]
            batch = stamp_replicated(encode_batch(records), log.end_offset, 0)
            staged.append((log.name, log.append_stamped(batch).base_offset, i, len(records)))
            i += 1
        store.flush()
        for name, base, n, count in staged:
            print(name, base, n, count, flush=True)
""")


def test_flushed_batches_survive_sigkill(tmp_path):
    data_dir = tmp_path / "store"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir)], stdout=subprocess.PIPE, text=True,
                              env=env)
    acked = []
    deadline = time.monotonic() + 20
    try:
        while len(acked) < 4000 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            assert line, "writer died before it was killed"
            name, base, n, count = line.split()
            acked.append((name, int(base), int(n), int(count)))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert len(acked) >= 200

    with LogStore(data_dir) as store:
        assert store.log_names() == sorted(NAMES)
        for name in NAMES:
            log = store.open_log(name, CONFIG)
            data = log.read(0, 1 << 40)
            batches = [decode_batch(data[a:b]) for a, b in split_batches(data)]
            assert len(data) == sum(s.size_bytes for s in log.segments())
            offsets = [r.offset for b in batches for r in b.records]
            assert offsets == list(range(log.end_offset))
            by_base = {b.header.base_offset: b for b in batches}
            for base in (s.base_offset for s in log.segments()):
                assert base in by_base
            for acked_name, base, n, count in acked:
                if acked_name != name:
                    continue
                records = by_base[base].records
                assert len(records) == count
                assert [r.value.split(b":")[:2] for r in records] == [[b"%d" % n, b"%d" % j] for j in range(count)]
                assert log.offset_for_timestamp(1_000_000 + n) == base
