"""A group consumer in its own process, for tests that SIGKILL consumers.

Prints one JSON line per record it processed ({"p", "o", "v"}) and one per commit ({"commit": {p: o}}),
committing synchronously after each processed poll. SIGINT stops it between polls, after the last
processed poll is committed, as a real application would stop; an interrupt between printing records
and committing them would make a graceful leave look like a lost commit. Usage:
    python group_worker.py BOOTSTRAP TOPIC GROUP [--instance ID] [--session-ms N] [--slow-ms N]
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
    args = parser.parse_args()
    out = sys.stdout
    consumer = Consumer(args.bootstrap, group_id=args.group, topics=[args.topic], auto_offset_reset="earliest",
                        group_instance_id=args.instance or None, session_timeout_ms=args.session_ms,
                        enable_auto_commit=False, fetch_max_wait_ms=200,
                        on_revoked=lambda tps: out.write(json.dumps({"revoked": sorted(p for _, p in tps)}) + "\n"),
                        on_assigned=lambda tps: out.write(json.dumps({"assigned": sorted(p for _, p in tps)}) + "\n"))
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        while not stopping.is_set():
            records = consumer.poll(timeout_ms=200, max_records=50)
            for record in records:
                out.write(json.dumps({"p": record.partition, "o": record.offset, "v": record.value.decode()}) + "\n")
            out.flush()
            if args.slow_ms:
                time.sleep(args.slow_ms / 1000)
            if records:
                positions = {r.partition: r.offset + 1 for r in records}
                try:
                    consumer.commit({TopicPartition(args.topic, p): o for p, o in positions.items()})
                except RaftkaError as exc:
                    out.write(json.dumps({"commit_failed": str(exc)}) + "\n")
                else:
                    out.write(json.dumps({"commit": positions}) + "\n")
                out.flush()
    finally:
        consumer.close()
        out.write(json.dumps({"closed": True}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
