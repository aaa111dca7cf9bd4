"""Acknowledged records survive kill -9; a graceful stop and restart serves the same data."""

from __future__ import annotations

from raftka import Admin, Producer


def test_kill_9_during_produce_loses_no_acknowledged_record(broker, consume_all, ack_recorder, lost) -> None:
    """Producers run while the broker is SIGKILLed; everything acknowledged before is there after."""
    with Admin(broker.address) as admin:
        admin.create_topic("durable", partitions=4)
    producers = ack_recorder(broker.address, "durable", workers=3, linger_ms=1, batch_size=8192,
                             delivery_timeout_ms=2_000, request_timeout_ms=2_000, max_block_ms=2_000)
    producers.wait_for(5_000)
    broker.kill()
    acked = producers.stop()
    broker.start()
    found = consume_all(broker.address, "durable", 4)
    missing = lost(acked, found)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    for records in found.values():
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
