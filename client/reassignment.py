"""Client-side pieces of partition moves: Kafka's reassignment JSON, throttle rates as operators
write them, and the progress table of `raftka reassign --status`.

A plan file is what `kafka-reassign-partitions.sh` reads and writes,
`{"version": 1, "partitions": [{"topic": "t", "partition": 0, "replicas": [4, 2, 3]}, ...]}`, plus
an optional `"placement_offset"`: the metadata's placement offset when the plan was made. A plan
that carries it is refused (STALE_PLAN) once placement changed, so a plan made against another
layout is never executed.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from raftka.client.admin import ReassignmentInfo
from raftka.wire.structs import TopicPartition

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


class Plan:
    def __init__(self, moves: dict[TopicPartition, list[int]], placement_offset: int | None = None) -> None:
        self.moves = moves
        self.placement_offset = placement_offset

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": 1, "partitions": [
            {"topic": tp.topic, "partition": tp.partition, "replicas": replicas}
            for tp, replicas in sorted(self.moves.items())]}
        if self.placement_offset is not None:
            data["placement_offset"] = self.placement_offset
        return data

    @classmethod
    def parse(cls, text: str, source: str) -> Plan:
        """A plan file's contents; ValueError says what is wrong and where."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("partitions"), list):
            raise ValueError(f'{source}: expected {{"version": 1, "partitions": [...]}}')
        offset = raw.get("placement_offset")
        if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool)):
            raise ValueError(f"{source}: placement_offset must be an integer")
        moves: dict[TopicPartition, list[int]] = {}
        for number, item in enumerate(raw["partitions"]):
            where = f"{source}: partitions[{number}]"
            if not isinstance(item, dict):
                raise ValueError(f"{where} is not an object")
            topic, partition, replicas = item.get("topic"), item.get("partition"), item.get("replicas")
            if not isinstance(topic, str) or not topic:
                raise ValueError(f"{where}: topic must be a non-empty string")
            if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
                raise ValueError(f"{where}: partition must be an integer >= 0")
            if (not isinstance(replicas, list) or not replicas
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in replicas)):
                raise ValueError(f"{where}: replicas must be a non-empty list of broker ids")
            tp = TopicPartition(topic, partition)
            if tp in moves:
                raise ValueError(f"{where}: {topic}/{partition} appears twice")
            moves[tp] = replicas
        if not moves:
            raise ValueError(f"{source}: the plan moves no partition")
        return cls(moves, offset)


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
        return {"topic": move.topic, "partition": move.partition, "phase": move.phase,
                "original": list(move.original), "target": list(move.target), "cancelled": move.cancelled,
                "leader": move.leader, "voters": list(move.voters), "learners": list(move.learners),
                "bytes_remaining": remaining, "partition_bytes": move.partition_bytes,
                "rate_bytes_per_s": None if rate is None else int(rate), "eta_s": None if eta is None else round(eta, 1),
                "throttle_bytes_per_s": move.throttle_bytes_per_s,
                "warning": (f"writes ({human_bytes(move.write_bytes_per_s)}/s) exceed the throttle: the move "
                            "cannot finish") if move.throttle_too_low else None}
