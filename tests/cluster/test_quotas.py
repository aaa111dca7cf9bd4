"""Quotas against a real broker: a producer over its quota is slowed to it without errors, while
another principal is not slowed."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from raftka.client.admin import Admin
from raftka.client.producer import Producer

QUOTA = 200_000
WARM_UP_S, WINDOW_S = 3.0, 10.0


@pytest.mark.slow
def test_a_producer_over_quota_is_slowed_to_it_and_another_principal_is_not(start_broker, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-token User:admin\nfast-token User:fast\nother-token User:other\n")
    broker = start_broker("--auth-token-file", str(tokens))
    with Admin(broker.address, token="admin-token") as admin:
        admin.create_topic("quota")
        admin.set_quota("User:fast", produce_bytes_per_s=QUOTA)
    acked: list[tuple[float, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def done(future):
        if future.exception() is not None:
            errors.append(future.exception())
        else:
            acked.append((time.monotonic(), 1000))

    def flood() -> None:
        """As fast as the producer's (small) buffer lets it: only the quota holds it back."""
        with Producer(broker.address, token="fast-token", linger_ms=1, batch_size=16_384,
                      buffer_memory=512 * 1024) as producer:
            while not stop.is_set():
                producer.send("quota", b"x" * 1000, partition=0).add_done_callback(done)

    started = time.monotonic()
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    latencies = []
    with Producer(broker.address, token="other-token", linger_ms=0) as other:
        while time.monotonic() < started + WARM_UP_S + WINDOW_S:
            sent = time.monotonic()
            other.send("quota", b"y" * 100, partition=0).result(timeout=30)
            latencies.append(time.monotonic() - sent)
            time.sleep(0.05)
    stop.set()
    thread.join(timeout=60)
    assert not errors
    begin, end = started + WARM_UP_S, started + WARM_UP_S + WINDOW_S
    rate = sum(size for at, size in acked if begin <= at < end) / WINDOW_S
    assert abs(rate - QUOTA) <= 0.1 * QUOTA, rate
    print(f"quota {QUOTA} B/s: measured {rate:.0f} B/s; other principal's median latency "
          f"{statistics.median(latencies) * 1000:.1f} ms over {len(latencies)} sends")
    assert statistics.median(latencies) < 0.5
