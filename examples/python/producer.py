"""Produce a few keyed records with headers to a topic, printing where each landed.

    python examples/python/producer.py [--bootstrap 127.0.0.1:9092] [--topic orders] [--count 5]

The Python client builds record batches itself (the fast path); see examples/node for a client that
sends protobuf records instead.
"""

from __future__ import annotations

import argparse

from raftka import Admin, Producer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()
    with Admin(args.bootstrap) as admin:
        admin.create_topic(args.topic, partitions=3, exist_ok=True)
    with Producer(args.bootstrap) as producer:
        futures = [producer.send(args.topic, f'{{"order": {i}}}'.encode(), key=f"customer-{i % 2}".encode(),
                                 headers=[("source", b"example")]) for i in range(args.count)]
        for future in futures:
            meta = future.result()
            print(f"{meta.topic}/{meta.partition} offset {meta.offset}")


if __name__ == "__main__":
    main()
