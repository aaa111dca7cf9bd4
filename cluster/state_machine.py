"""The contract of the broker's internal state machines (cluster metadata, consumer groups).

An internal state machine is materialised from the committed batches of one internal partition
(`__cluster_metadata/0`, a partition of `__consumer_offsets`) by every replica of it, and is
snapshotted into that partition's Raft snapshot (as hashicorp/raft's FSM: Apply, Snapshot, Restore):

- `apply(base_offset, batch)` is TOTAL: every record of a committed batch is either applied whole or,
  if it is malformed (not a batch, not JSON, a missing or mistyped field, an unknown command), it is
  skipped and reported, the same way for every state machine (`apply_records`: one greppable log line
  and the broker's `raftka_state_machine_records_skipped` metric). A bad record therefore never stops a
  replica from applying the records after it, and applying never raises into the Raft driver;
- `snapshot()` serialises the whole state as of the last applied record, and `restore(data)`
  replaces the state by a snapshot's (on a restart, and when a lagging replica installs the leader's
  snapshot). A snapshot is written by this code only, so a snapshot that does not decode is a broken
  store, not bad input: `restore` raises `SnapshotFormatError`.

Invariant: the state after `restore(snapshot())` and the same later records equals the state after
replaying the whole log, so a replica may start from either.

When a replica snapshots is `SnapshotPolicy`'s rule (see `raftka.cluster.replica`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from raftka.wire.batch import decode_batch

log = logging.getLogger(__name__)


class MalformedRecordError(ValueError):
    """A committed record that no state machine can apply (reported and skipped, never raised further)."""


class SnapshotFormatError(ValueError):
    """A snapshot's data does not decode: the store holding it is broken."""


@dataclass
class StateMachineStats:
    """Per kind of state machine ("metadata", "groups"): records skipped, snapshots taken and restored.
    One per broker, exported as metrics."""

    skipped: Counter[str] = field(default_factory=Counter)
    snapshots_taken: Counter[str] = field(default_factory=Counter)
    snapshots_restored: Counter[str] = field(default_factory=Counter)


class StateMachine(Protocol):
    kind: str
    """"metadata" or "groups": the label of its log lines and metrics."""
    stats: StateMachineStats

    def apply(self, base_offset: int, batch: bytes) -> None:
        """Apply one committed batch; total (see the module docstring)."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as of the last applied record."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot's; raises SnapshotFormatError if it does not decode."""
        ...


@dataclass(frozen=True)
class SnapshotPolicy:
    """When a replica snapshots its state machine: once the batches applied since the last snapshot
    reach `min_bytes`, and `ratio` times the size of that snapshot (so writing snapshots costs at most
    1/ratio of writing the log, however large the state). The log then holds the batches since the
    snapshot before last at most, so its size depends on the state, not on how many records built it."""

    min_bytes: int = 4 << 20
    ratio: float = 2.0

    def due(self, applied_bytes: int, last_snapshot_bytes: int) -> bool:
        return applied_bytes >= max(self.min_bytes, self.ratio * last_snapshot_bytes)


def apply_records(machine: StateMachine, log_name: str, base_offset: int, batch: bytes,
                  apply_record: Callable[[int, bytes], None]) -> None:
    """Call `apply_record(offset, value)` for each record of `batch`; a batch that does not decode, or
    a record for which `apply_record` raises MalformedRecordError, is skipped and reported."""
    try:
        records = decode_batch(batch, verify_crc=False).records
    except Exception as exc:  # noqa: BLE001 - a batch that does not decode, for whatever reason, is skipped
        report_skipped(machine, log_name, base_offset, f"undecodable batch: {exc}")
        return
    for record in records:
        try:
            apply_record(record.offset, record.value or b"")
        except MalformedRecordError as exc:
            report_skipped(machine, log_name, record.offset, str(exc))


def report_skipped(machine: StateMachine, log_name: str, offset: int, reason: str) -> None:
    machine.stats.skipped[machine.kind] += 1
    log.error("state machine record skipped machine=%s log=%s offset=%d reason=%r", machine.kind, log_name,
              offset, reason)


def field_of(raw: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    """`raw[name]`, checked to be a `kind` (an int field never takes a bool); MalformedRecordError if
    `raw` is not a JSON object, lacks the field or holds another type."""
    if not isinstance(raw, dict):
        raise MalformedRecordError(f"expected a JSON object, got {type(raw).__name__}")
    if name not in raw:
        raise MalformedRecordError(f"field {name!r} is missing")
    value = raw[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int,))):
        raise MalformedRecordError(f"field {name!r} is {value!r}, not of type {_type_names(kind)}")
    return value


def items_of(raw: Any, name: str, width: int, kinds: tuple[type, ...]) -> list[tuple[Any, ...]]:
    """`raw[name]` as a list of `width`-element lists whose elements have the types `kinds`."""
    out = []
    for item in field_of(raw, name, list):
        if not isinstance(item, list) or len(item) != width:
            raise MalformedRecordError(f"field {name!r} holds {item!r}, not a list of {width} values")
        out.append(tuple(field_of({name: value}, name, kind) for value, kind in zip(item, kinds)))
    return out


def parse_json(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise MalformedRecordError(f"not JSON: {exc}") from None


def _type_names(kind: type | tuple[type, ...]) -> str:
    return "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
