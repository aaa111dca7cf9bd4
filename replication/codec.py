"""Raft messages to and from their protobuf form (``raftka.raft.v1``), for the inter-broker transport.

Invariant: ``message_from_proto(message_to_proto(m)) == m`` for every well-formed message (a
snapshot's presence included). Decoding never trusts the wire: an unknown message or entry type,
or overlapping voters and learners, raise :class:`CodecError` instead of building a bad message.

Entries are record batches of up to megabytes, so ``data`` is handed to protobuf as the same bytes
object (protobuf copies it once into its arena) and read back as one bytes object; fields equal to
their default are not assigned, which saves most of the per-field cost of heartbeats and responses.
"""

from __future__ import annotations

from typing import Iterable

from raftka.proto import raft_pb2
from raftka.replication.entries import Entry, EntryType
from raftka.replication.errors import RaftError
from raftka.replication.messages import Message, MessageType
from raftka.replication.state import ConfState, Snapshot, SnapshotMetadata

MESSAGE_OVERHEAD_BYTES = 100
"""Fixed cost counted per message by :func:`message_size`: its fields at their largest (91 bytes:
seven 64-bit varints and their tags, the type, three flags, the context's tag and length) and its
place in a batch (a tag and a length)."""
ENTRY_WIRE_BYTES = 36
"""An entry's fields at their largest without its data (two 64-bit varints, the type, the data's
tag and length) and its place in the message."""
SNAPSHOT_WIRE_BYTES = 46
"""A snapshot's fields at their largest without its data and member ids (two 64-bit varints, two
packed id lists' tags and lengths, the data's tag and length) and its place in the message; each
member id adds at most 10."""

_MESSAGE_TYPES = {t.value: t for t in MessageType}
_ENTRY_TYPES = {t.value: t for t in EntryType}


class CodecError(RaftError):
    """A protobuf Raft message does not describe a valid :class:`Message`."""


def message_size(message: Message) -> int:
    """An upper bound of the encoded size, for any field values, cheap enough to call on every send."""
    size = MESSAGE_OVERHEAD_BYTES + len(message.context)
    for entry in message.entries:
        size += ENTRY_WIRE_BYTES + len(entry.data)
    snapshot = message.snapshot
    if snapshot is not None:
        conf = snapshot.metadata.conf_state
        size += SNAPSHOT_WIRE_BYTES + 10 * (len(conf.voters) + len(conf.learners)) + len(snapshot.data)
    return size


def fill_proto(pb: raft_pb2.RaftMessage, message: Message) -> None:
    """Write ``message`` into an empty ``pb`` (e.g. one just added to a batch's repeated field)."""
    pb.type = message.type  # type: ignore[assignment]  # MessageType mirrors raft.proto's enum value for value
    pb.src = message.src
    pb.dst = message.dst
    pb.term = message.term
    if message.log_term:
        pb.log_term = message.log_term
    if message.index:
        pb.index = message.index
    if message.entries:
        add = pb.entries.add
        for entry in message.entries:
            add(index=entry.index, term=entry.term, type=entry.type, data=entry.data)
    if message.commit:
        pb.commit = message.commit
    if message.reject:
        pb.reject = True
    if message.reject_hint:
        pb.reject_hint = message.reject_hint
    if message.snapshot is not None:
        snapshot, meta = message.snapshot, message.snapshot.metadata
        pb.snapshot.SetInParent()
        pb.snapshot.index = meta.index
        pb.snapshot.term = meta.term
        pb.snapshot.voters.extend(meta.conf_state.voters)
        pb.snapshot.learners.extend(meta.conf_state.learners)
        pb.snapshot.data = snapshot.data
    if message.context:
        pb.context = message.context
    if message.force:
        pb.force = True
    if message.quiesce:
        pb.quiesce = True


def message_to_proto(message: Message) -> raft_pb2.RaftMessage:
    pb = raft_pb2.RaftMessage()
    fill_proto(pb, message)
    return pb


def message_from_proto(pb: raft_pb2.RaftMessage) -> Message:
    """The :class:`Message` ``pb`` describes; raises :class:`CodecError` if it describes none."""
    mtype = _MESSAGE_TYPES.get(pb.type)
    if mtype is None:
        raise CodecError(f"unknown Raft message type {pb.type}")
    entries = []
    if pb.entries:
        entry_types = _ENTRY_TYPES
        for e in pb.entries:
            etype = entry_types.get(e.type)
            if etype is None:
                raise CodecError(f"unknown entry type {e.type} at index {e.index}")
            entries.append(Entry(e.index, e.term, etype, e.data))
    snapshot = None
    if pb.HasField("snapshot"):
        s = pb.snapshot
        try:
            conf = ConfState(tuple(s.voters), tuple(s.learners))
        except ValueError as exc:
            raise CodecError(f"invalid snapshot configuration: {exc}") from exc
        snapshot = Snapshot(SnapshotMetadata(s.index, s.term, conf), s.data)
    return Message(mtype, pb.src, pb.dst, pb.term, pb.log_term, pb.index, entries, pb.commit, pb.reject,
                   pb.reject_hint, snapshot, pb.context, pb.force, pb.quiesce)


def encode_message_batch(cluster_id: str, from_broker: int, to_broker: int,
                         messages: Iterable[tuple[str, Message]]) -> raft_pb2.MessageBatch:
    """One frame's worth of (group, message) pairs from `from_broker` to `to_broker`: a batch of Raft
    messages, not a record batch (`raftka.wire.batch`)."""
    batch = raft_pb2.MessageBatch(cluster_id=cluster_id, from_broker=from_broker, to_broker=to_broker)
    add = batch.messages.add
    for group, message in messages:
        fill_proto(add(group=group).message, message)
    return batch


def decode_message_batch(batch: raft_pb2.MessageBatch) -> list[tuple[str, Message]]:
    """Every (group, message) of ``batch`` in order; all or nothing (raises :class:`CodecError`)."""
    return [(item.group, message_from_proto(item.message)) for item in batch.messages]
