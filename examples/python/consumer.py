"""Read a topic from the beginning as a member of a consumer group, printing each record, until it
has been idle for a few seconds.

    python examples/python/consumer.py [--bootstrap 127.0.0.1:9092] [--topic orders] [--group example]
"""

from __future__ import annotations

import argparse
import time

from raftka import Consumer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--group", default="example")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with Consumer(args.bootstrap, group_id=args.group, topics=[args.topic], auto_offset_reset="earliest") as consumer:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < args.idle_seconds:
            records = consumer.poll(timeout_ms=500)
            if records:
                idle_since = time.monotonic()
            for record in records:
                print(f"{record.topic}/{record.partition}@{record.offset} key={record.key!r} "
                      f"value={record.value!r} headers={record.headers}")


if __name__ == "__main__":
    main()
