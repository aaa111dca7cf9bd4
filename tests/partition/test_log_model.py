"""PartitionLog + LogStore against a plain in-memory model of the same rules.

Two logs share one store, so group commit and key-space isolation are exercised too. A "crash"
throws away what was staged since the last flush and reopens the store: the log must come back
exactly as the model was at that flush.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from rocksdict import WriteBatch

from raftka.errors import OffsetOutOfRangeError
from raftka.partition.errors import InvalidOffsetError
from raftka.partition.log import LogConfig
from raftka.partition.store import LogStore
from raftka.wire.batch import encode_batch, read_header, split_batches, stamp_replicated

NAMES = ("orders/0", "payments/7")
T0 = 1_000_000


@dataclass
class ModelBatch:
    base: int
    next: int
    data: bytes
    max_ts: int


@dataclass
class ModelSegment:
    base: int
    created_ms: int


@dataclass
class ModelLog:
    start: int = 0
    durable: int = 0
    batches: list[ModelBatch] = field(default_factory=list)
    segments: list[ModelSegment] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.batches[-1].next if self.batches else self.start

    def segment_batches(self, index: int) -> list[ModelBatch]:
        lo = self.segments[index].base
        hi = self.segments[index + 1].base if index + 1 < len(self.segments) else float("inf")
        return [b for b in self.batches if lo <= b.base < hi]

    def segment_infos(self) -> list[tuple]:
        infos = []
        for i, segment in enumerate(self.segments):
            batches = self.segment_batches(i)
            infos.append((segment.base, batches[-1].next, sum(len(b.data) for b in batches),
                          max(b.max_ts for b in batches), segment.created_ms))
        return infos


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="raftka-model-")
        self.now = T0
        self.store: LogStore | None = None

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(segment_bytes=st.sampled_from([200, 600, 5000]), segment_ms=st.sampled_from([40, 10_000]),
                retention_bytes=st.sampled_from([-1, 0, 700, 3000]), retention_ms=st.sampled_from([-1, 50, 500]))
    def open(self, segment_bytes, segment_ms, retention_bytes, retention_ms) -> None:
        self.config = LogConfig(segment_bytes=segment_bytes, segment_ms=segment_ms,
                                retention_bytes=retention_bytes, retention_ms=retention_ms)
        self.models = {name: ModelLog() for name in NAMES}
        self.flushed = copy.deepcopy(self.models)
        self._open_store()

    def opened(self) -> LogStore:
        assert self.store is not None, "initialize() opens the store before any rule"
        return self.store

    def _open_store(self) -> None:
        self.store = LogStore(self.dir, clock=lambda: self.now)
        self.logs = {name: self.store.open_log(name, self.config) for name in NAMES}

    @rule(name=st.sampled_from(NAMES), count=st.integers(1, 4), size=st.integers(0, 150),
          jitter=st.lists(st.integers(-300, 300), min_size=4, max_size=4))
    def append(self, name, count, size, jitter) -> None:
        model = self.models[name]
        records = [(None, bytes([i]) * size, (), self.now + jitter[i]) for i in range(count)]
        batch = encode_batch(records)
        log = self.logs[name]
        result = log.append_stamped(stamp_replicated(batch, log.end_offset, 0))
        base = model.end
        assert (result.base_offset, result.last_offset) == (base, base + count - 1)
        last = model.segments[-1] if model.segments else None
        if (last is None or sum(len(b.data) for b in model.segment_batches(len(model.segments) - 1))
                + len(batch) > self.config.segment_bytes or self.now - last.created_ms >= self.config.segment_ms):
            model.segments.append(ModelSegment(base, self.now))
        stamped = base.to_bytes(8, "big") + batch[8:]
        model.batches.append(ModelBatch(base, base + count, stamped, max(r[3] for r in records)))

    @rule()
    def flush(self) -> None:
        self.opened().flush()
        for model in self.models.values():
            model.durable = model.end
        self.flushed = copy.deepcopy(self.models)

    @rule(ms=st.integers(0, 60))
    def tick(self, ms) -> None:
        self.now += ms

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def read(self, name, data) -> None:
        model = self.models[name]
        offset = data.draw(st.integers(model.start - 1, model.end + 1), label="offset")
        max_bytes = data.draw(st.integers(0, 1200), label="max_bytes")
        upper = data.draw(st.none() | st.integers(model.start, model.end + 2), label="upper_bound")
        log = self.logs[name]
        if offset < model.start or offset > model.end:
            with pytest.raises(OffsetOutOfRangeError):
                log.read(offset, max_bytes, upper_bound=upper)
            return
        assert log.read(offset, max_bytes, upper_bound=upper) == expected_read(model, offset, max_bytes, upper)

    @rule(name=st.sampled_from(NAMES), delta=st.integers(-400, 400), upper=st.none() | st.integers(0, 60))
    def offset_for_timestamp(self, name, delta, upper) -> None:
        model = self.models[name]
        ts = self.now + delta
        bound = model.durable if upper is None else min(upper, model.durable)
        first = next((b for b in model.batches if b.max_ts >= ts), None)
        expected = first.base if first is not None and first.base < bound else None
        assert self.logs[name].offset_for_timestamp(ts, upper_bound=upper) == expected

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def truncate_suffix(self, name, data) -> None:
        model = self.models[name]
        boundaries = [b.base for b in model.batches] + [model.end]
        offset = data.draw(st.sampled_from(boundaries), label="truncate at")
        self.logs[name].truncate_suffix(offset)
        model.batches = [b for b in model.batches if b.base < offset]
        model.segments = [s for s in model.segments if s.base < offset]
        model.durable = min(model.durable, offset)

    @precondition(lambda self: any(b.next - b.base > 1 for m in self.models.values() for b in m.batches))
    @rule(data=st.data())
    def truncate_inside_a_batch_is_refused(self, data) -> None:
        name, batch = data.draw(st.sampled_from(
            [(n, b) for n, m in self.models.items() for b in m.batches if b.next - b.base > 1]))
        with pytest.raises(InvalidOffsetError):
            self.logs[name].truncate_suffix(batch.base + 1)

    @rule(name=st.sampled_from(NAMES))
    def apply_retention(self, name) -> None:
        model = self.models[name]
        infos = model.segment_infos()
        total = sum(info[2] for info in infos)
        doomed = 0
        while doomed + 1 < len(infos) and infos[doomed + 1][0] <= model.durable:
            base, _, size, max_ts, _ = infos[doomed]
            expired = self.config.retention_ms >= 0 and self.now - max_ts > self.config.retention_ms
            oversize = self.config.retention_bytes >= 0 and total - size >= self.config.retention_bytes
            if not (expired or oversize):
                break
            total -= size
            doomed += 1
        log = self.logs[name]
        assert log.delete_segments_before(log.retention_start(self.now)) == doomed
        if doomed:
            model.start = model.segments[doomed].base
            model.batches = [b for b in model.batches if b.base >= model.start]
            del model.segments[:doomed]

    @rule()
    def close_and_reopen(self) -> None:
        self.opened().close()
        for model in self.models.values():
            model.durable = model.end
        self.flushed = copy.deepcopy(self.models)
        self._open_store()

    @rule()
    def crash_and_reopen(self) -> None:
        with self.opened()._lock:
            self.opened()._pending = WriteBatch(raw_mode=True)
            self.opened()._dirty = set()
        self.opened().close()
        self.models = copy.deepcopy(self.flushed)
        self._open_store()

    @invariant()
    def offsets_and_segments_match(self) -> None:
        if self.store is None:
            return
        for name, model in self.models.items():
            log = self.logs[name]
            assert (log.start_offset, log.durable_end_offset, log.end_offset) == (model.start, model.durable, model.end)
            assert [(s.base_offset, s.end_offset, s.size_bytes, s.max_timestamp, s.created_ms)
                    for s in log.segments()] == model.segment_infos()


def expected_read(model: ModelLog, offset: int, max_bytes: int, upper: int | None) -> bytes:
    bound = model.durable if upper is None else min(upper, model.durable)
    if offset >= bound:
        return b""
    index = next(i for i, b in enumerate(model.batches) if b.base <= offset < b.next)
    parts, total = [], 0
    for batch in model.batches[index:]:
        if batch.next > bound or (parts and total + len(batch.data) > max_bytes):
            break
        parts.append(batch.data)
        total += len(batch.data)
    return b"".join(parts)


LogMachine.TestCase.settings = settings(max_examples=int(os.environ.get("RAFTKA_MODEL_EXAMPLES", 60)),
                                        stateful_step_count=40, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestPartitionLogModel = LogMachine.TestCase


def test_read_returns_whole_valid_batches(tmp_path):
    with LogStore(tmp_path) as store:
        log = store.open_log("t/0", LogConfig())
        for i in range(10):
            log.append_stamped(stamp_replicated(encode_batch([(None, b"x" * 50, (), T0 + i)] * 3), log.end_offset, 0))
        store.flush()
        data = log.read(4, 1)
        assert [read_header(data[a:b]).base_offset for a, b in split_batches(data)] == [3]
        data = log.read(0, 10**6, upper_bound=14)
        assert [read_header(data[a:b]).base_offset for a, b in split_batches(data)] == [0, 3, 6, 9]
