"""Acknowledged records survive kill -9; a graceful stop and restart serves the same data."""

from __future__ import annotations

import threading
import time

from raftka import Admin, Producer
from raftka.errors import RaftkaError


def test_kill_9_during_produce_loses_no_acknowledged_record(broker, consume_all) -> None:
    """Producers run while the broker is SIGKILLed; everything acknowledged before is there after."""
    with Admin(broker.address) as admin:
        admin.create_topic("durable", partitions=4)
    acknowledged: list[tuple[int, int, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def produce(worker: int) -> None:
        producer = Producer(broker.address, linger_ms=1, batch_size=8192, delivery_timeout_ms=2_000,
                            request_timeout_ms=2_000, max_block_ms=2_000)
        i = 0
        while not stop.is_set():
            value = f"w{worker}-{i}".encode()
            i += 1

            def record(future, value=value) -> None:  # type: ignore[no-untyped-def]
                if future.exception() is None:
                    meta = future.result()
                    with lock:
                        acknowledged.append((meta.partition, meta.offset, value))
            try:
                producer.send("durable", value).add_done_callback(record)
            except RaftkaError:
                break
            if i % 200 == 0:
                time.sleep(0.001)
        try:
            producer.close(timeout=10)
        except RaftkaError:
            pass

    workers = [threading.Thread(target=produce, args=(w,)) for w in range(3)]
    for worker in workers:
        worker.start()
    while len(acknowledged) < 5_000:
        time.sleep(0.02)
    broker.kill()
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    with lock:
        acked = list(acknowledged)
    broker.start()
    found = consume_all(broker.address, "durable", 4)
    by_position = {(p, r.offset): r.value for p, records in found.items() for r in records}
    missing = [(p, o, v) for p, o, v in acked if by_position.get((p, o)) != v]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    for partition, records in found.items():
        assert [r.offset for r in records] == list(range(len(records))), "offsets are dense and ordered"
    assert len(acked) >= 5_000


def test_graceful_stop_and_restart_serves_the_same_data(broker, consume_all) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic("kept", partitions=2, config={"retention.ms": 86_400_000})
    with Producer(broker.address, acks="leader") as producer:
        for i in range(1000):
            producer.send("kept", f"r{i}", key=str(i))
    before = consume_all(broker.address, "kept", 2)
    assert broker.stop() == 0, broker.log()
    assert "broker stopped" in broker.log()
    broker.start()
    with Admin(broker.address) as admin:
        topic = admin.describe_topic("kept")
    assert topic.config["retention.ms"] == "86400000"
    after = consume_all(broker.address, "kept", 2)
    assert {p: [(r.offset, r.key, r.value) for r in rs] for p, rs in after.items()} == \
        {p: [(r.offset, r.key, r.value) for r in rs] for p, rs in before.items()}
    assert sum(map(len, after.values())) == 1000
