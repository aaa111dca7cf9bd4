"""Raft messages survive the protobuf round trip exactly, and bad wire data is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftka.proto import raft_pb2
from raftka.replication.codec import (
    CodecError,
    decode_message_batch,
    encode_message_batch,
    message_from_proto,
    message_size,
    message_to_proto,
)
from raftka.replication.entries import Entry, EntryType
from raftka.replication.messages import Message, MessageType
from raftka.replication.state import ConfState, Snapshot, SnapshotMetadata

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small_bytes = st.binary(max_size=300)

entries = st.builds(Entry, u64, u64, st.sampled_from(EntryType), small_bytes)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    ids = draw(st.lists(st.integers(min_value=1, max_value=2**64 - 1), unique=True, max_size=7))
    split = draw(st.integers(min_value=0, max_value=len(ids)))
    conf = ConfState(tuple(ids[:split]), tuple(ids[split:]))
    return Snapshot(SnapshotMetadata(draw(u64), draw(u64), conf), draw(small_bytes))


messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    src=u64,
    dst=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=8),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    snapshot=st.none() | snapshots(),
    context=small_bytes,
    force=st.booleans(),
    quiesce=st.booleans(),
)


@settings(max_examples=400)
@given(messages)
def test_message_round_trip(message: Message) -> None:
    wire = message_to_proto(message).SerializeToString()
    assert message_from_proto(raft_pb2.RaftMessage.FromString(wire)) == message


@settings(max_examples=100)
@given(st.lists(st.tuples(st.text(max_size=20), messages), max_size=10))
def test_batch_round_trip(items: list[tuple[str, Message]]) -> None:
    batch = encode_message_batch("c1", 3, 4, items)
    decoded = raft_pb2.MessageBatch.FromString(batch.SerializeToString())
    assert (decoded.cluster_id, decoded.from_broker, decoded.to_broker) == ("c1", 3, 4)
    assert decode_message_batch(decoded) == items


@pytest.mark.parametrize("size", [0, 1 << 20, 8 << 20])
def test_large_entries_and_snapshot_round_trip(size: int) -> None:
    data = bytes(range(256)) * (size // 256)
    message = Message(MessageType.APPEND, 1, 2, 7, log_term=6, index=10, commit=9,
                      entries=[Entry(11, 7, EntryType.NORMAL, data), Entry(12, 7, EntryType.NOOP)])
    snap = Message(MessageType.SNAPSHOT, 1, 2, 7,
                   snapshot=Snapshot(SnapshotMetadata(100, 6, ConfState((1, 2), (3,))), data))
    for m in (message, snap):
        wire = message_to_proto(m).SerializeToString()
        assert message_from_proto(raft_pb2.RaftMessage.FromString(wire)) == m
        assert message_size(m) >= len(wire)


def test_empty_snapshot_is_distinct_from_no_snapshot() -> None:
    with_empty = Message(MessageType.SNAPSHOT, 1, 2, 1, snapshot=Snapshot())
    without = Message(MessageType.SNAPSHOT, 1, 2, 1)
    assert message_from_proto(message_to_proto(with_empty)).snapshot == Snapshot()
    assert message_from_proto(message_to_proto(without)).snapshot is None


@settings(max_examples=200)
@given(messages)
def test_size_estimate_bounds_the_encoding(message: Message) -> None:
    assert message_size(message) >= message_to_proto(message).ByteSize()


@pytest.mark.parametrize("mutate, error", [
    (lambda pb: setattr(pb, "type", 0), "unknown Raft message type 0"),
    (lambda pb: setattr(pb, "type", 99), "unknown Raft message type 99"),
    (lambda pb: pb.entries.add(index=1, term=1, type=7), "unknown entry type 7"),
    (lambda pb: (pb.snapshot.voters.append(1), pb.snapshot.learners.append(1)), "invalid snapshot configuration"),
])
def test_invalid_wire_messages_are_refused(mutate, error: str) -> None:
    pb = message_to_proto(Message(MessageType.HEARTBEAT, 1, 2, 3))
    mutate(pb)
    with pytest.raises(CodecError, match=error):
        message_from_proto(raft_pb2.RaftMessage.FromString(pb.SerializeToString()))
