"""A group consumer in its own process, for tests that SIGKILL consumers.

Prints one JSON line per record it processed ({"p", "o", "v"}), one per commit ({"commit": {p: o}}) and
one per rebalance step ({"assigned": [p...]}, {"revoked": [p...]}), committing synchronously after each
processed poll; every line carries "t", the machine's monotonic clock (shared by all processes), so a
test can order lines of different workers. SIGINT stops it between polls, after the last processed
poll is committed, as a real application would stop; an interrupt between printing records and
committing them would make a graceful leave look like a lost commit. SIGTERM kills it as it does a
process without a handler (no commit, no leave). SIGUSR1 makes it stall once, as an application stuck
in processing, for `--stall-ms` without polling. Usage:
    python group_worker.py BOOTSTRAP TOPIC GROUP [--instance ID] [--session-ms N] [--slow-ms N]
                           [--max-poll-ms N] [--stall-ms N]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from raftka import Consumer, TopicPartition
from raftka.errors import RaftkaError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("group")
    parser.add_argument("--instance", default="")
    parser.add_argument("--session-ms", type=int, default=10_000)
    parser.add_argument("--slow-ms", type=int, default=0, help="sleep this long per poll (slow processing)")
    parser.add_argument("--max-poll-ms", type=int, default=300_000, help="the consumer's max_poll_interval_ms")
    parser.add_argument("--stall-ms", type=int, default=0, help="how long SIGUSR1 stalls the worker")
    args = parser.parse_args()
    out = sys.stdout

    def emit(line: dict) -> None:
        out.write(json.dumps({**line, "t": time.monotonic()}) + "\n")

    consumer = Consumer(args.bootstrap, group_id=args.group, topics=[args.topic], auto_offset_reset="earliest",
                        group_instance_id=args.instance or None, session_timeout_ms=args.session_ms,
                        max_poll_interval_ms=args.max_poll_ms, enable_auto_commit=False, fetch_max_wait_ms=200,
                        on_revoked=lambda tps: emit({"revoked": sorted(p for _, p in tps)}),
                        on_assigned=lambda tps: emit({"assigned": sorted(p for _, p in tps)}))
    stopping, stall = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGUSR1, lambda *_: stall.set())
    try:
        while not stopping.is_set():
            records = consumer.poll(timeout_ms=200, max_records=50)
            for record in records:
                emit({"p": record.partition, "o": record.offset, "v": record.value.decode()})
            out.flush()
            if args.slow_ms:
                time.sleep(args.slow_ms / 1000)
            if stall.is_set():
                stall.clear()
                emit({"stalled": args.stall_ms})
                out.flush()
                time.sleep(args.stall_ms / 1000)
            if records:
                positions = {r.partition: r.offset + 1 for r in records}
                try:
                    consumer.commit({TopicPartition(args.topic, p): o for p, o in positions.items()})
                except RaftkaError as exc:
                    emit({"commit_failed": str(exc)})
                else:
                    emit({"commit": positions})
                out.flush()
    finally:
        consumer.close()
        emit({"closed": True})
        out.flush()


if __name__ == "__main__":
    main()
