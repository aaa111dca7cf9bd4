"""Kafka's partition reassignment JSON, as `kafka-reassign-partitions.sh` reads and writes it:

    {"version": 1, "partitions": [{"topic": "orders", "partition": 0, "replicas": [4, 2, 3]}, ...]}

Raftka adds one optional field, `"placement_offset"`: the metadata's placement offset when the plan
was made. A plan that carries it is refused (STALE_PLAN) once placement has changed, so a plan made
against another layout is never executed. The CLI reads and writes plan files with this module; the
planner (`raftka.cluster.rebalance`) writes its plans with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from raftka.errors import InvalidRequestError

VERSION = 1
_FIELDS = {"version", "partitions", "placement_offset"}
_ENTRY_FIELDS = ("topic", "partition", "replicas")


def format_reassignment(targets: Mapping[tuple[str, int], Sequence[int]], placement_offset: int | None = None
                        ) -> dict[str, Any]:
    """The JSON document of `targets` ((topic, partition) -> replicas), partitions in order."""
    document: dict[str, Any] = {"version": VERSION, "partitions": [
        {"topic": topic, "partition": partition, "replicas": list(replicas)}
        for (topic, partition), replicas in sorted(targets.items())]}
    if placement_offset is not None:
        document["placement_offset"] = placement_offset
    return document


def parse_reassignment(text: str) -> tuple[dict[tuple[str, int], tuple[int, ...]], int | None]:
    """(targets, placement offset or None) of a reassignment document. Raises InvalidRequestError
    naming the first fault: not JSON, a version other than 1, a field missing, unknown or of the
    wrong type, a partition listed twice, an empty replica list or one naming a broker twice."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"reassignment is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequestError("reassignment must be a JSON object with 'version' and 'partitions'")
    if unknown := sorted(set(document) - _FIELDS):
        raise InvalidRequestError(f"reassignment has unknown field(s) {', '.join(map(repr, unknown))}")
    if document.get("version") != VERSION or isinstance(document.get("version"), bool):
        raise InvalidRequestError(f"reassignment version must be {VERSION}, not {document.get('version')!r}")
    offset = document.get("placement_offset")
    if offset is not None and not _is_index(offset):
        raise InvalidRequestError(f"reassignment placement_offset must be a non-negative integer, not {offset!r}")
    entries = document.get("partitions")
    if not isinstance(entries, list):
        raise InvalidRequestError("reassignment 'partitions' must be a list")
    targets: dict[tuple[str, int], tuple[int, ...]] = {}
    for index, entry in enumerate(entries):
        tp, replicas = _parse_entry(index, entry)
        if tp in targets:
            raise InvalidRequestError(f"partitions[{index}]: {tp[0]}/{tp[1]} is listed twice")
        targets[tp] = replicas
    return targets, offset


def _parse_entry(index: int, entry: Any) -> tuple[tuple[str, int], tuple[int, ...]]:
    where = f"partitions[{index}]"
    if not isinstance(entry, dict):
        raise InvalidRequestError(f"{where} must be an object with 'topic', 'partition' and 'replicas'")
    if unknown := sorted(set(entry) - set(_ENTRY_FIELDS)):
        raise InvalidRequestError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    for field in _ENTRY_FIELDS:
        if field not in entry:
            raise InvalidRequestError(f"{where} lacks '{field}'")
    topic, partition, replicas = entry["topic"], entry["partition"], entry["replicas"]
    if not isinstance(topic, str) or not topic:
        raise InvalidRequestError(f"{where}.topic must be a non-empty string, not {topic!r}")
    if not _is_index(partition):
        raise InvalidRequestError(f"{where}.partition must be a non-negative integer, not {partition!r}")
    if not isinstance(replicas, list) or not replicas or not all(_is_index(b) and b > 0 for b in replicas):
        raise InvalidRequestError(f"{where}.replicas must be a non-empty list of broker ids, not {replicas!r}")
    if len(set(replicas)) != len(replicas):
        raise InvalidRequestError(f"{where}.replicas names a broker twice: {replicas}")
    return (topic, partition), tuple(replicas)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
