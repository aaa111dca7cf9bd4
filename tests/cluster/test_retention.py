"""The broker deletes whole expired segments on its own, and consumers see the new log start."""

from __future__ import annotations

import time
import urllib.request

from raftka import Admin, Consumer, Producer, TopicPartition


def test_size_retention_advances_the_log_start(start_broker) -> None:
    broker = start_broker("--retention-check-ms", "200")
    address = broker.address
    with Admin(address) as admin:
        admin.create_topic("short", config={"segment.bytes": 4096, "retention.bytes": 8192})
    with Producer(address, linger_ms=0, batch_size=1024) as producer:
        for i in range(200):
            producer.send("short", f"{i:04d}".encode() * 64).result(timeout=10)
    deadline = time.monotonic() + 20
    with Admin(address) as admin:
        while (partition := admin.describe_topic("short").partitions[0]).size_bytes >= 8192 + 2 * 4096:
            assert time.monotonic() < deadline, f"retention did not catch up: {partition}"
            time.sleep(0.1)
    start = partition.log_start_offset
    assert 0 < start < 200 and partition.high_watermark == 200
    assert partition.size_bytes >= 8192, "retention keeps at least retention.bytes"
    body = urllib.request.urlopen(f"http://127.0.0.1:{broker.metrics_port}/metrics", timeout=5).read().decode()
    counted = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
               if "retention_deleted" in line and not line.startswith("#")}
    assert counted['raftka_retention_deleted_segments_total{topic="short"}'] >= 2
    assert counted['raftka_retention_deleted_bytes_total{topic="short"}'] >= 2 * 4096 - 1024, "whole segments went"
    consumer = Consumer(address, auto_offset_reset="earliest")
    consumer.assign([TopicPartition("short", 0)])
    consumer.seek(TopicPartition("short", 0), 0)
    records = []
    while len(records) < 200 - start:
        records.extend(consumer.poll(timeout_ms=1000))
    assert records[0].offset == start and records[-1].offset == 199
    consumer.close()
