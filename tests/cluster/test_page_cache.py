"""`--segment-cache-bytes`: a broker leaves only the newest fsynced segment bytes in the page cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from raftka import Admin, Consumer, Producer, TopicPartition
from residency import resident_bytes


def _segments(broker) -> list[Path]:
    return sorted((broker.data_dir / "log" / "segments").iterdir())


def test_a_broker_with_no_segment_cache_drops_what_it_synced_and_still_serves_it(start_broker) -> None:
    broker = start_broker("--segment-cache-bytes", "0")
    values = [os.urandom(1000) for _ in range(2000)]
    with Admin(broker.address) as admin:
        admin.create_topic("cold", partitions=1)
    with Producer(broker.address) as producer:
        for value in values:
            producer.send("cold", value)
        producer.flush()
    files = _segments(broker)
    written = sum(path.stat().st_size for path in files)
    assert written >= 2000 * 1000
    assert sum(resident_bytes(path) for path in files) <= 4096 * len(files), "a partial last page at most"
    with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("cold", 0)])
        read: list[bytes | None] = []
        deadline = time.monotonic() + 30
        while len(read) < len(values) and time.monotonic() < deadline:
            read.extend(record.value for record in consumer.poll(timeout_ms=1000))
    assert read == values


def test_a_negative_segment_cache_is_refused_with_the_reason(tmp_path: Path) -> None:
    started = subprocess.run([sys.executable, "-m", "raftka", "broker", "--id", "1", "--data-dir", str(tmp_path),
                              "--segment-cache-bytes", "-1"], capture_output=True, text=True, timeout=60)
    assert started.returncode == 2, started.stderr
    assert "--segment-cache-bytes must be 0 or more, not -1" in started.stderr
