"""A producer pod's program, run inside a container of the image as `python3 -c <this source> TOPIC`
(the image has Raftka but not the tests): it sends unique keyed values w0-0, w0-1, ... to TOPIC
through RAFTKA_BOOTSTRAP (acks=all, idempotent) until SIGTERM, then flushes and exits 0.

stdout is the ground truth a durability check needs: one JSON line per acknowledged record,
{"partition": P, "offset": O, "value": "w0-N"}, and one {"error": "Type: message"} per record the
producer gave up on. Values follow tests/conftest.py's AckRecorder (worker-number), so its
`exactly_once_in_order` checks them."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from types import FrameType

from raftka import Producer
from raftka.client.accumulator import RecordFuture

PACE_S = 0.005
"""A pause after each send: about 150 records/s here, enough traffic to cross every restart."""


def main(topic: str) -> int:
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    lock = threading.Lock()

    def report(value: str, future: RecordFuture) -> None:
        error = future.exception()
        if error is None:
            meta = future.result()
            line: dict[str, object] = {"partition": meta.partition, "offset": meta.offset, "value": value}
        else:
            line = {"error": f"{type(error).__name__}: {error}"}
        with lock:
            print(json.dumps(line), flush=True)

    with Producer(os.environ["RAFTKA_BOOTSTRAP"], linger_ms=1) as producer:
        number = 0
        while not stop.wait(PACE_S):
            value = f"w0-{number}"
            number += 1
            producer.send(topic, value.encode(), key=value.encode()).add_done_callback(
                lambda future, value=value: report(value, future))
        producer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
