"""The leader's table of idempotent producers: accept the next batch, recognise retries, refuse gaps."""

from __future__ import annotations

import pytest

from raftka.cluster.producer_state import CACHED_BATCHES, ProducerStates
from raftka.errors import (DuplicateSequenceError, OutOfOrderSequenceError, ProducerFencedError,
                           UnknownProducerIdError)
from raftka.wire.batch import encode_batch, read_header, stamp_replicated


def header(producer_id: int, sequence: int, count: int = 2, *, base_offset: int = 0, epoch: int = 0):
    batch = encode_batch([(None, b"v", (), 0)] * count, producer_id=producer_id, producer_epoch=epoch,
                         base_sequence=sequence)
    return read_header(stamp_replicated(batch, base_offset, 0))


def test_next_batches_are_accepted_and_retries_get_the_first_offsets() -> None:
    states = ProducerStates()
    assert states.check(header(7, 0)) is None
    states.record(header(7, 0, base_offset=10))
    assert states.check(header(7, 2)) is None
    states.record(header(7, 2, base_offset=20))
    repeat = states.check(header(7, 0))
    assert repeat is not None and (repeat.base_offset, repeat.last_offset) == (10, 11)
    repeat = states.check(header(7, 2))
    assert repeat is not None and (repeat.base_offset, repeat.last_offset) == (20, 21)


def test_gaps_unknown_producers_and_stale_epochs_are_refused() -> None:
    states = ProducerStates()
    with pytest.raises(UnknownProducerIdError):
        states.check(header(7, 5))
    states.record(header(7, 0, epoch=1))
    with pytest.raises(OutOfOrderSequenceError):
        states.check(header(7, 4, epoch=1))
    with pytest.raises(ProducerFencedError):
        states.check(header(7, 2, epoch=0))
    assert states.check(header(7, 0, epoch=2)) is None, "a new epoch starts again at sequence 0"


def test_a_repeat_older_than_the_window_is_reported_not_rewritten() -> None:
    states = ProducerStates()
    for i in range(CACHED_BATCHES + 1):
        states.record(header(7, 2 * i, base_offset=2 * i))
    with pytest.raises(DuplicateSequenceError):
        states.check(header(7, 0))
    assert states.check(header(7, 2)) is not None


def test_tables_are_bounded_and_copies_independent() -> None:
    states = ProducerStates(max_producers=3)
    for producer_id in range(5):
        states.record(header(producer_id, 0))
    assert len(states) == 3
    with pytest.raises(UnknownProducerIdError):
        states.check(header(0, 2))
    twin = states.copy()
    twin.record(header(4, 2))
    assert states.check(header(4, 2)) is None and twin.check(header(4, 2)) is not None


def test_extend_appends_a_later_stretch_of_the_log() -> None:
    history, recent = ProducerStates(), ProducerStates()
    history.record(header(7, 0, base_offset=0))
    recent.record(header(7, 2, base_offset=5))
    history.extend(recent)
    assert history.check(header(7, 4)) is None
    assert history.check(header(7, 0)) is not None
