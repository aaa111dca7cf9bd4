"""The inter-broker transport over real TCP and gRPC on 127.0.0.1: batching, order, loss, refusals, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from raftka.cluster.handlers import add_servicer
from raftka.proto import raft_pb2
from raftka.replication.codec import encode_message_batch, message_size, message_to_proto
from raftka.replication.entries import Entry
from raftka.replication.messages import Message, MessageType
from raftka.replication.transport import (
    FRAME_HEADER,
    MAX_HELLO_BYTES,
    STAGE_BYTES,
    FrameTooLargeError,
    PeerState,
    RaftTransport,
    TransportOptions,
    _FrameReceiver,
)
from waiting import until

FAST = TransportOptions(backoff_initial_s=0.02, backoff_max_s=0.2, connect_timeout_s=2.0)
SERVICE = raft_pb2.DESCRIPTOR.services_by_name["RaftTransport"]


class Broker:
    """One transport with its own in-process gRPC server (for Endpoint) and Raft listener.

    ``stop`` closes both and replaces the transport with a fresh one, so ``serve`` brings the same
    broker id and gRPC address back, as a restarted broker would (on a new Raft port).
    """

    def __init__(self, broker_id: int, port: int, cluster_id: str = "c1",
                 options: TransportOptions = FAST) -> None:
        self.id = broker_id
        self.address = f"127.0.0.1:{port}"
        self.cluster_id = cluster_id
        self.options = options
        self.received: list[tuple[int, list[tuple[str, Message]]]] = []
        self.downs: list[int] = []
        self.ups: list[int] = []
        self.peers: dict[int, str] = {}
        self.server: grpc.aio.Server | None = None

    def connect(self, peers: list[Broker]) -> RaftTransport:
        self.peers = {p.id: p.address for p in peers}
        self.transport = RaftTransport(self.id, self.cluster_id, self.peers,
                                       lambda src, items: self.received.append((src, items)),
                                       on_peer_down=self.downs.append, on_peer_up=self.ups.append,
                                       options=self.options)
        return self.transport

    async def serve(self) -> None:
        await self.transport.listen("127.0.0.1")
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_servicer(self.server, SERVICE, self.transport.servicer, None)
        assert self.server.add_insecure_port(self.address) != 0
        await self.server.start()

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(0)
        self.server = None
        await self.transport.close()
        self.transport = RaftTransport(self.id, self.cluster_id, self.peers,
                                       lambda src, items: self.received.append((src, items)),
                                       options=self.options)

    def messages(self) -> list[tuple[int, str, Message]]:
        return [(src, group, m) for src, items in self.received for group, m in items]


def run(scenario: Callable[..., Awaitable[None]], free_port: Callable[[], int], *cluster_ids: str,
        options: TransportOptions = FAST) -> None:
    """Run ``scenario`` with brokers 1..n (one per cluster id, all peers of each other), then clean up."""
    async def main() -> None:
        brokers = [Broker(i + 1, free_port(), cluster_id, options) for i, cluster_id in enumerate(cluster_ids)]
        for broker in brokers:
            broker.connect([p for p in brokers if p is not broker])
        try:
            await scenario(*brokers)
        finally:
            for broker in brokers:
                await broker.transport.close()
                if broker.server is not None:
                    await broker.stop()
    asyncio.run(asyncio.wait_for(main(), 20))


def heartbeat(src: int, dst: int, seq: int) -> Message:
    return Message(MessageType.HEARTBEAT, src, dst, term=1, commit=seq)


def test_three_brokers_deliver_every_group_in_order(free_port: Callable[[], int]) -> None:
    groups, rounds = 20, 15

    async def scenario(a: Broker, b: Broker, c: Broker) -> None:
        for broker in (a, b, c):
            await broker.serve()
        for seq in range(rounds):
            for sender in (a, b, c):
                for g in range(groups):
                    for receiver in (a, b, c):
                        if receiver is not sender:
                            sender.transport.send(f"t/{g}", heartbeat(sender.id, receiver.id, seq))
            await asyncio.sleep(0 if seq % 3 else 0.01)
        await until(lambda: all(len(x.messages()) == 2 * groups * rounds for x in (a, b, c)))
        for receiver in (a, b, c):
            streams: dict[tuple[int, str], list[int]] = {}
            for src, group, m in receiver.messages():
                assert m.src == src and m.dst == receiver.id
                streams.setdefault((src, group), []).append(m.commit)
            assert len(streams) == 2 * groups
            assert all(seqs == list(range(rounds)) for seqs in streams.values())
            assert sorted(receiver.ups) == sorted(p.id for p in (a, b, c) if p is not receiver)
            assert receiver.downs == [] and receiver.transport.stats.dropped_messages == 0

    run(scenario, free_port, "c1", "c1", "c1")


def test_heartbeats_of_a_thousand_groups_in_one_iteration_travel_as_one_batch(free_port: Callable[[], int]) -> None:
    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        a.transport.send("warm-up", heartbeat(1, 2, 0))
        await until(lambda: len(b.received) == 1)
        for g in range(1000):
            a.transport.send(f"topic/{g}", heartbeat(1, 2, 1))
        await until(lambda: len(b.messages()) == 1001 and a.transport.stats.sent_messages == 1001)
        assert len(b.received) == 2 and len(b.received[1][1]) == 1000
        assert a.transport.stats.sent_batches == 2 and b.transport.stats.received_batches == 2

    run(scenario, free_port, "c1", "c1")


def test_large_messages_are_split_at_the_batch_cap_and_new_ones_dropped_at_the_queue_cap(
        free_port: Callable[[], int]) -> None:
    entry = 300 << 10

    def append(i: int) -> Message:
        return Message(MessageType.APPEND, 1, 2, 1, index=i, entries=[Entry(i + 1, 1, data=bytes(entry))])

    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        a.transport.send("g", heartbeat(1, 2, 0))
        await until(lambda: len(b.received) == 1)
        for i in range(10):
            a.transport.send("g", append(i))
        await until(lambda: len(b.messages()) == 1 + 7)
        assert [m.index for _, _, m in b.messages()[1:]] == list(range(7))
        assert [len(items) for _, items in b.received[1:]] == [3, 3, 1]
        assert a.transport.stats.dropped_messages == 3

    run(scenario, free_port, "c1", "c1",
        options=TransportOptions(max_batch_bytes=1 << 20, max_queued_bytes=7 * (message_size(append(0)) + len("g"))))


def test_down_peer_drops_messages_reports_and_resumes_when_back(free_port: Callable[[], int]) -> None:
    async def scenario(a: Broker, b: Broker) -> None:
        a.transport.send("g", heartbeat(1, 2, 0))
        await until(lambda: a.downs == [2])
        assert a.transport.peer_state(2) in (PeerState.DOWN, PeerState.CONNECTING)
        assert a.transport.reported_down(2) and not a.transport.reported_down(3)
        assert a.transport.stats.dropped_messages >= 1 and b.received == []

        await b.serve()
        seq = 1
        while not b.received:
            a.transport.send("g", heartbeat(1, 2, seq))
            seq += 1
            await asyncio.sleep(0.01)
        assert a.ups == [2] and a.downs == [2]
        await until(lambda: a.transport.peer_state(2) is PeerState.UP)
        assert not a.transport.reported_down(2)

        await b.stop()
        await until(lambda: a.downs == [2, 2])
        delivered = len(b.messages())
        await b.serve()
        while len(b.messages()) == delivered:
            a.transport.send("g", heartbeat(1, 2, seq))
            seq += 1
            await asyncio.sleep(0.01)
        assert a.ups == [2, 2]
        commits = [m.commit for _, _, m in b.messages()]
        assert commits == sorted(commits) and len(set(commits)) == len(commits)

    run(scenario, free_port, "c1", "c1")


@contextlib.asynccontextmanager
async def frozen_peer(options: TransportOptions, *,
                      stop_reading: bool) -> AsyncIterator[tuple[RaftTransport, list[int]]]:
    """Broker 1's transport, connected to a "broker 2" that answers the hello and then nothing, as
    a frozen process whose kernel still takes bytes, or with `stop_reading` none once its buffers
    fill. Yields the transport and the peers it reported down."""
    accepted: list[asyncio.StreamWriter] = []

    async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))[0])
        writer.write(frame(raft_pb2.Ack(broker_id=2).SerializeToString()))
        accepted.append(writer)
        if stop_reading:
            reader._transport.pause_reading()  # type: ignore[attr-defined]  # no public way to stop reading

    server = await asyncio.start_server(frozen, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def resolve(peer_id: int, address: str) -> str:
        return f"127.0.0.1:{port}"

    downs: list[int] = []
    transport = RaftTransport(1, "c1", {2: "unused:1"}, lambda src, items: None, on_peer_down=downs.append,
                              options=options, resolve=resolve)
    try:
        transport.send("g", heartbeat(1, 2, 0))
        await until(lambda: transport.peer_state(2) is PeerState.UP)
        yield transport, downs
    finally:
        await transport.close()
        for writer in accepted:
            writer.close()
        server.close()


def test_a_peer_that_accepts_but_stops_answering_is_reported_down() -> None:
    """A frozen broker's kernel still accepts bytes and TCP keepalives; only its unanswered pings
    show it is gone, and then the groups it leads can be woken to elect."""
    async def scenario() -> None:
        options = TransportOptions(ping_interval_s=0.1, ping_timeout_s=0.2)
        async with frozen_peer(options, stop_reading=False) as (transport, downs):
            await until(lambda: downs == [2], timeout_s=3)
            assert transport.stats.sent_messages == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_peer_that_stops_reading_under_load_is_reported_down() -> None:
    """The socket buffers fill and the writer blocks in drain; the unanswered ping must still end
    the connection rather than wait for TCP's own timeout."""
    async def scenario() -> None:
        options = TransportOptions(ping_interval_s=0.1, ping_timeout_s=0.3)
        async with frozen_peer(options, stop_reading=True) as (transport, downs):
            data = bytes(256 << 10)
            for i in range(400):
                if downs:
                    break
                transport.send("g", Message(MessageType.APPEND, 1, 2, 1, index=i, entries=[Entry(i + 1, 1, data=data)]))
                await asyncio.sleep(0.01)
            await until(lambda: downs == [2], timeout_s=5)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_quiet_connection_to_a_live_peer_stays_up_across_many_pings(free_port: Callable[[], int]) -> None:
    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        batches = []
        check = b.transport._check

        def counted(sender, payload, writer, certified):
            batches.append(payload)
            return check(sender, payload, writer, certified)
        b.transport._check = counted  # type: ignore[method-assign]  # counts what reaches the receiver
        a.transport.send("g", heartbeat(1, 2, 0))
        await until(lambda: len(b.received) == 1)
        await until(lambda: len(batches) >= 1 + 12, "a dozen pings reached the receiver")
        a.transport.send("g", heartbeat(1, 2, 1))
        await until(lambda: len(b.received) == 2)
        assert a.downs == [] and a.ups == [2] and a.transport.peer_state(2) is PeerState.UP

    run(scenario, free_port, "c1", "c1", options=TransportOptions(ping_interval_s=0.05, ping_timeout_s=0.2))


def test_peers_can_be_removed_and_readdressed(free_port: Callable[[], int]) -> None:
    async def scenario(a: Broker, b: Broker, c: Broker) -> None:
        await b.serve()
        await c.serve()
        a.transport.remove_peer(2)
        a.transport.send("g", heartbeat(1, 2, 0))
        assert a.transport.stats.dropped_messages == 1
        a.transport.add_peer(2, c.address)
        a.transport.send("g", heartbeat(1, 2, 1))
        await until(lambda: c.transport.stats.refused_streams == 1)
        a.transport.add_peer(2, b.address)
        a.transport.send("g", heartbeat(1, 2, 2))
        await until(lambda: len(b.received) == 1)
        assert c.received == []

    run(scenario, free_port, "c1", "c1", "c1")


def test_a_broker_of_another_cluster_is_refused(free_port: Callable[[], int]) -> None:
    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        a.transport.send("g", heartbeat(1, 2, 0))
        await until(lambda: a.downs == [2] and b.transport.stats.refused_streams >= 1)
        assert b.received == [] and a.ups == []
        assert a.transport.peer_state(2) in (PeerState.DOWN, PeerState.CONNECTING)

    run(scenario, free_port, "other", "c1")


async def _raw_exchange(address: str, frames: list[bytes]) -> list[raft_pb2.Ack]:
    """Send raw frames on one Raft connection, end our side, and return the Acks read until the
    receiver closes."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"".join(frames))
    writer.write_eof()
    acks = []
    try:
        while header := await reader.read(FRAME_HEADER.size):
            (size,) = FRAME_HEADER.unpack(header)
            acks.append(raft_pb2.Ack.FromString(await reader.readexactly(size)))
    finally:
        writer.close()
    return acks


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


GOOD = encode_message_batch("c1", 1, 2, [("g", heartbeat(1, 2, 0))]).SerializeToString()


@pytest.mark.parametrize("frames, refusal", [
    ([frame(encode_message_batch("c2", 1, 2, [("g", heartbeat(1, 2, 0))]).SerializeToString())], "CLUSTER_MISMATCH"),
    ([frame(encode_message_batch("c1", 1, 3, [("g", heartbeat(1, 3, 0))]).SerializeToString())], "BROKER_MISMATCH"),
    ([frame(b"\xff\xff\xff\xff")], "MALFORMED"),
    ([frame(raft_pb2.MessageBatch(cluster_id="c1", from_broker=1, to_broker=2, messages=[
        raft_pb2.GroupMessage(group="g", message=raft_pb2.RaftMessage(type=42))  # type: ignore[arg-type]  # no such type
    ]).SerializeToString())], "MALFORMED"),
    ([frame(GOOD), frame(encode_message_batch("c1", 3, 2, [("g", heartbeat(3, 2, 0))]).SerializeToString())],
     "MALFORMED"),
    ([frame(GOOD), frame(b"\x0a\xff")], "MALFORMED"),
    ([FRAME_HEADER.pack(65 << 20)], "MALFORMED"),
    ([frame(bytes(5000))], "MALFORMED"),
    ([frame(GOOD), FRAME_HEADER.pack(65 << 20)], "MALFORMED"),
])
def test_refused_batches_are_never_delivered_and_the_server_keeps_serving(
        free_port: Callable[[], int], frames: list[bytes], refusal: str) -> None:
    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        good_first = frames[0] == frame(GOOD)
        acks = await _raw_exchange(b.transport.address, frames)
        assert [ack.refusal for ack in acks] == ([""] if good_first else []) + [refusal]
        assert all(ack.broker_id == 2 for ack in acks)
        assert b.transport.stats.refused_streams == 1
        assert len(b.received) == (1 if good_first else 0)
        a.transport.send("g", heartbeat(1, 2, 7))
        await until(lambda: b.messages()[-1:] and b.messages()[-1][2].commit == 7)

    run(scenario, free_port, "c1", "c1")


def test_a_connection_that_ends_inside_a_frame_delivers_nothing_of_it_and_is_no_refusal(
        free_port: Callable[[], int]) -> None:
    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        acks = await _raw_exchange(b.transport.address, [frame(GOOD), FRAME_HEADER.pack(100) + b"cut short"])
        assert [ack.refusal for ack in acks] == [""]
        assert len(b.received) == 1 and b.transport.stats.refused_streams == 0

    run(scenario, free_port, "c1", "c1")


def _append(i: int, size: int) -> bytes:
    """A frame of one APPEND from broker 1 to 2 whose entry is `size` bytes of value i."""
    message = Message(MessageType.APPEND, 1, 2, 1, index=i, entries=[Entry(i + 1, 1, data=bytes([i]) * size)])
    return frame(encode_message_batch("c1", 1, 2, [("g", message)]).SerializeToString())


LARGE = [10, 300_000, 70_000, 1, 65_536, 200_000, 5]


@pytest.mark.parametrize("chunk, sizes", [(1, [0, 10, 3]), (3, [10, 5000, 5]), (4096, LARGE), (100_000, LARGE),
                                          (1 << 22, LARGE)])
def test_frames_split_anywhere_arrive_whole_and_in_order(free_port: Callable[[], int], chunk: int,
                                                         sizes: list[int]) -> None:
    """The receiver stages small frames several to a read and reads a large one straight into its own
    buffer: wherever the sender's writes cut the stream (a header in two, a large frame behind a small
    one in the same read, one byte at a time), every frame arrives whole and in order. The large
    frames follow the first (small) one before the receiver has checked it: they are not held to the
    first frame's size limit."""
    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        stream = b"".join([frame(GOOD), *(_append(i, size) for i, size in enumerate(sizes))])
        host, port = b.transport.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        for start in range(0, len(stream), chunk):
            writer.write(stream[start:start + chunk])
            await writer.drain()
        await until(lambda: len(b.received) == 1 + len(sizes))
        appends = [m for _, _, m in b.messages() if m.type == MessageType.APPEND]
        assert [m.entries[0].data for m in appends] == [bytes([i]) * size for i, size in enumerate(sizes)]
        assert b.transport.stats.refused_streams == 0
        writer.close()

    run(scenario, free_port, "c1", "c1")


class _Paused:
    """The transport side `_FrameReceiver` drives: counts pauses and resumes."""

    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused = True

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False

    def is_closing(self) -> bool:
        return False


def _feed(receiver: _FrameReceiver, data: bytes, chunk: int) -> None:
    """Deliver `data` the way a loop does: into the buffers the receiver hands out, `chunk` at most."""
    at = 0
    while at < len(data):
        buffer = receiver.get_buffer(-1)
        n = min(chunk, len(buffer), len(data) - at)
        assert n > 0, "the receiver asked for bytes while its stage was full"
        buffer[:n] = data[at:at + n]
        receiver.buffer_updated(n)
        at += n


@pytest.mark.parametrize("chunk", [1, 2, 5, 4095, 4096, 65_537, 1 << 20])
def test_the_frame_receiver_reassembles_frames_from_any_reads(chunk: int) -> None:
    """Every cut of the stream (headers and bodies split anywhere, many frames per read, frames larger
    than the stage) yields the same frames; before `trust`, nothing past the first frame is parsed,
    and after it frames of up to the trusted limit pass."""
    async def scenario() -> None:
        receiver = _FrameReceiver(MAX_HELLO_BYTES, lambda _: None)
        transport = _Paused()
        receiver.connection_made(transport)  # type: ignore[arg-type]
        bodies = [b"hello", b"", bytes(range(256)) * 1200, b"x" * 70_000, b"y", bytes(STAGE_BYTES)]
        stream = b"".join(frame(body) for body in bodies)
        _feed(receiver, stream[:len(frame(bodies[0])) + 2], chunk)
        assert transport.paused  # a stranger's first frame waits to be checked
        assert await receiver.read_frame() == bodies[0]
        receiver.trust(1 << 20)
        assert not transport.paused
        _feed(receiver, stream[len(frame(bodies[0])) + 2:], chunk)
        assert [bytes(await receiver.read_frame()) for _ in bodies[1:]] == bodies[1:]
        receiver.eof_received()
        with pytest.raises(asyncio.IncompleteReadError) as ended:
            await receiver.read_frame()
        assert ended.value.partial == b""

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_the_frame_receiver_refuses_a_length_over_its_limit_after_the_frames_before_it() -> None:
    async def scenario() -> None:
        receiver = _FrameReceiver(MAX_HELLO_BYTES, lambda _: None)
        receiver.connection_made(_Paused())  # type: ignore[arg-type]
        _feed(receiver, frame(b"first") + FRAME_HEADER.pack(17) + b"z" * 17, 1 << 10)
        assert await receiver.read_frame() == b"first"
        receiver.trust(16)
        with pytest.raises(FrameTooLargeError, match="17-byte frame is over the 16-byte limit"):
            await receiver.read_frame()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_refusal_after_the_first_batch_reaches_the_sender(free_port: Callable[[], int]) -> None:
    """The receiver takes frames of at most 64 KiB; the sender's 100 KiB append is refused, and the
    sender learns why (and backs off as after any refusal) instead of seeing a reset."""
    async def scenario(a: Broker, b: Broker) -> None:
        await b.transport.close()
        b.options = TransportOptions(max_message_bytes=64 << 10)
        b.connect([a])
        await b.serve()
        a.transport.send("g", heartbeat(1, 2, 0))
        await until(lambda: len(b.received) == 1)
        big = Entry(2, 1, data=bytes(100 << 10))
        a.transport.send("g", Message(MessageType.APPEND, 1, 2, 1, index=1, entries=[big]))
        await until(lambda: a.downs == [2])
        assert b.transport.stats.refused_streams == 1 and len(b.received) == 1
        assert a.transport.stats.refused_by_peers >= 1

    run(scenario, free_port, "c1", "c1")


def test_append_throughput_with_16k_entries(free_port: Callable[[], int]) -> None:
    """Not an assertion on speed: prints messages/s and MB/s of APPENDs between two transports.

    The sender keeps at most ~1,000 messages (16 MiB) queued, as Raft's inflight limits would; past
    the 32 MiB queue cap the transport would drop new messages.
    """
    count, size = 4000, 16 << 10

    async def scenario(a: Broker, b: Broker) -> None:
        await b.serve()
        a.transport.send("g", heartbeat(1, 2, 0))
        await until(lambda: len(b.received) == 1)
        data = bytes(size)
        started = time.perf_counter()
        for i in range(count):
            a.transport.send(f"t/{i % 8}", Message(MessageType.APPEND, 1, 2, 1, log_term=1, index=i, commit=i,
                                                   entries=[Entry(i + 1, 1, data=data)]))
            while a.transport.stats.sent_messages < i - 1000:
                await asyncio.sleep(0)
        await until(lambda: b.transport.stats.received_messages == count + 1, timeout_s=15)
        elapsed = time.perf_counter() - started
        print(f"\nAPPEND 16 KiB: {count / elapsed:,.0f} msg/s, {count * size / elapsed / 1e6:,.1f} MB/s, "
              f"{a.transport.stats.sent_batches - 1} batches")
        assert a.transport.stats.dropped_messages == 0

    run(scenario, free_port, "c1", "c1")


def test_wire_encoding_matches_codec() -> None:
    batch = raft_pb2.MessageBatch.FromString(GOOD)
    assert batch.messages[0].message == message_to_proto(heartbeat(1, 2, 0))
