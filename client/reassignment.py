"""Client-side pieces of partition moves: throttle rates as operators write them, and the progress
figures of `raftka reassign --status` (plan files: `raftka.wire.reassignment`)."""

from __future__ import annotations

import re
import time
from typing import Any

from raftka.client.admin import ReassignmentInfo
from raftka.wire.structs import TopicPartition

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def parse_rate(text: str) -> int:
    """Bytes per second from `50MB/s`, `512KiB/s`, `1MiB` or `1048576` (ValueError otherwise)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*(?:/s)?\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"expected a rate such as 50MB/s, 512KiB/s or a number of bytes per second, not {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class ProgressTracker:
    """Turns successive status snapshots into a copy rate and an ETA per partition."""

    def __init__(self) -> None:
        self._first: dict[TopicPartition, tuple[float, int]] = {}

    def row(self, move: ReassignmentInfo, now: float | None = None) -> dict[str, Any]:
        """One partition's progress: bytes copied/remaining for its new replicas, rate, ETA (None when unknown)."""
        now = time.monotonic() if now is None else now
        tp = TopicPartition(move.topic, move.partition)
        remaining = sum(move.bytes_behind.values()) if move.leader is not None else None
        rate = eta = None
        if remaining is not None:
            started_at, remaining_then = self._first.setdefault(tp, (now, remaining))
            if now > started_at and remaining_then > remaining:
                rate = (remaining_then - remaining) / (now - started_at)
                eta = remaining / rate
        phase = f"stalled (broker {','.join(map(str, move.stalled_on))} not answering)" if move.stalled_on \
            else move.phase
        return {"topic": move.topic, "partition": move.partition, "phase": phase,
                "original": list(move.original), "target": list(move.target), "cancelled": move.cancelled,
                "leader": move.leader, "voters": list(move.voters), "learners": list(move.learners),
                "bytes_remaining": remaining, "partition_bytes": move.partition_bytes,
                "rate_bytes_per_s": None if rate is None else int(rate),
                "eta_s": None if eta is None else round(eta, 1),
                "throttle_bytes_per_s": move.throttle_bytes_per_s,
                "warning": (f"writes ({human_bytes(move.write_bytes_per_s)}/s) exceed the throttle: the move "
                            "cannot finish") if move.throttle_too_low else None}
