"""A consumer's membership in a group: coordinator discovery, heartbeats, offsets.

A background thread heartbeats to the group's coordinator, reporting the partitions the consumer
owns and the member epoch of the last assignment it applied; the coordinator answers with the
partitions the consumer may own now. The thread never changes the consumer's partitions itself: it
leaves the newest answer for the consumer's `poll()` to apply (`take_change`), so rebalance callbacks
run on the application's thread, between its batches of records, and a partition is only reported
released once the application has handed it back (callbacks run, offsets committed).

Heartbeats continue while the application processes records; the session timeout only catches
crashed consumers. A separate `max_poll_interval` catches a consumer stuck in processing: it leaves
the group (losing only its own partitions) and rejoins at its next poll. Both limits are checked by
the thread and by every `poll()`, under one lock, whichever comes first: a process that was
suspended (SIGSTOP, a paused VM) wakes both threads at once, and its poll must drop partitions the
group may have handed to other members before it returns more of their records.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeVar

import grpc

from raftka.client.connection import Backoff, ClusterConnection
from raftka.errors import RaftkaError, UnknownMemberIdError, from_proto, from_rpc_error
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.structs import TopicPartition, as_group_partitions, from_group_partitions

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class AssignmentChange:
    """What `poll()` must apply: the partitions the consumer may own from now on. `lost` means the
    consumer is no longer a member (expired, fenced, or left after max_poll_interval): its
    partitions are already someone else's, so it must drop them without committing. `generation`
    counts memberships: a change from an earlier one is never reported as applied."""

    partitions: frozenset[TopicPartition]
    member_epoch: int
    generation: int
    lost: bool = False


class GroupCoordinatorClient:
    """Calls to a group's coordinator, found (again) whenever it moves."""

    def __init__(self, conn: ClusterConnection, group_id: str) -> None:
        self.conn = conn
        self.group_id = group_id
        self._address: str | None = None

    def call(self, method: Callable[[api_pb2_grpc.GroupsStub], Callable[..., T]], request: object, *,
             deadline_s: float | None = None) -> T:
        """Call the coordinator, finding it first and again after NOT_COORDINATOR or an outage."""
        def attempt() -> T:
            address = self._address or self._find()
            try:
                return method(api_pb2_grpc.GroupsStub(self.conn.channel(address)))(
                    request, timeout=self.conn.request_timeout_s)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if error.retriable:
                    self._address = None
                raise error from None
        deadline = time.monotonic() + self.conn.request_timeout_s if deadline_s is None else deadline_s
        return self.conn.retrying(attempt, deadline_s=deadline)

    def _find(self) -> str:
        request = api_pb2.FindCoordinatorRequest(group_id=self.group_id)
        response = self.conn.any_broker(lambda ch: api_pb2_grpc.GroupsStub(ch).FindCoordinator(
            request, timeout=self.conn.request_timeout_s), idempotent=True)
        self._address = response.coordinator_address
        log.debug("group=%s coordinator=%d at %s", self.group_id, response.coordinator_id, self._address)
        return self._address

    def commit(self, offsets: Mapping[TopicPartition, tuple[int, str]], member_id: str = "") -> None:
        """Commit `{tp: (offset, metadata)}`; raises the first partition's refusal, if any."""
        request = api_pb2.CommitOffsetsRequest(group_id=self.group_id, member_id=member_id, offsets=[
            api_pb2.CommittedOffset(topic=tp.topic, partition=tp.partition, offset=offset, metadata=metadata)
            for tp, (offset, metadata) in sorted(offsets.items())])
        response = self.call(lambda stub: stub.CommitOffsets, request)
        for item in response.offsets:
            error = from_proto(item.error)
            if error is not None:
                raise error

    def committed(self, tps: Sequence[TopicPartition] = ()) -> dict[TopicPartition, api_pb2.CommittedOffset]:
        """Committed offsets of `tps` (all committed partitions when empty); absent ones are omitted."""
        request = api_pb2.FetchOffsetsRequest(group_id=self.group_id, partitions=as_group_partitions(tps))
        response = self.call(lambda stub: stub.FetchOffsets, request)
        return {TopicPartition(o.topic, o.partition): o for o in response.offsets if o.offset >= 0}


class GroupMembership(threading.Thread):
    def __init__(self, coordinator: GroupCoordinatorClient, *, topics: Sequence[str], pattern: str,
                 instance_id: str, client_id: str, assignor: str, session_timeout_ms: int,
                 max_poll_interval_ms: int, backoff: Backoff = Backoff()) -> None:
        super().__init__(name=f"raftka-group-{coordinator.group_id}", daemon=True)
        self.coordinator = coordinator
        self._topics = list(topics)
        self._pattern = pattern
        self._instance_id = instance_id
        self._client_id = client_id
        self._assignor = assignor
        self._session_timeout_ms = session_timeout_ms
        self._max_poll_interval_s = max_poll_interval_ms / 1000
        self._backoff = backoff
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._member_id = uuid.uuid4().hex
        self._joined = False
        self._generation = 0
        self._owned: frozenset[TopicPartition] = frozenset()
        self._applied_epoch = 0
        self._change: AssignmentChange | None = None
        self._leaving: tuple[str, int] | None = None
        """(member id, member epoch) this consumer gave up (poll or session timeout): the thread
        tells the coordinator, so the partitions move without waiting for the session to expire."""
        self._last_poll = self._last_heartbeat = time.monotonic()
        self._interval_s = 1.0
        self.error: RaftkaError | None = None
        """A non-retriable refusal (bad subscription, ...), raised by the consumer's next poll."""

    @property
    def member_id(self) -> str:
        """This consumer's member id while it is a member of the group, else empty."""
        with self._lock:
            return self._member_id if self._joined else ""

    def polled(self) -> None:
        """The consumer is polling: first give the membership up if a limit has passed meanwhile."""
        with self._lock:
            now = time.monotonic()
            gave_up = self._give_up_if_overdue(now)
            self._last_poll = now
        if gave_up:
            self._wake.set()

    def valid_until(self) -> float:
        """The monotonic time after which `polled()` gives the membership up, unless a heartbeat gets
        through or a poll comes first (what the consumer may hand out from a batch until then)."""
        with self._lock:
            return min(self._last_poll + self._max_poll_interval_s,
                       self._last_heartbeat + self._session_timeout_ms / 1000)

    def take_change(self) -> AssignmentChange | None:
        with self._lock:
            change, self._change = self._change, None
            return change

    def defer(self, change: AssignmentChange) -> None:
        """Offer `change` again at the next poll (applying it failed), unless a newer one arrived."""
        with self._lock:
            if self._change is None and change.generation == self._generation:
                self._change = change

    def applied(self, owned: frozenset[TopicPartition], member_epoch: int, generation: int) -> None:
        """The consumer now owns `owned`, per the assignment of `member_epoch`; tell the coordinator
        at once, so released partitions move without waiting a heartbeat interval. Ignored when the
        membership it was granted in has been lost meanwhile."""
        with self._lock:
            if generation != self._generation:
                return
            self._owned, self._applied_epoch = owned, member_epoch
        self._wake.set()

    def close(self) -> None:
        """Leave the group (static members keep their partitions for their session) and stop."""
        self._stopping = True
        self._wake.set()
        self.join(timeout=self.coordinator.conn.request_timeout_s + 1)
        if self.member_id:
            try:
                self.coordinator.call(lambda stub: stub.Heartbeat, self._request(leave=True),
                                      deadline_s=time.monotonic() + 5)
            except RaftkaError as exc:
                log.info("leaving group %s failed (its session will expire): %s", self.coordinator.group_id, exc)
            with self._lock:
                self._joined = False

    def run(self) -> None:
        attempt = 0
        while not self._stopping:
            with self._lock:
                self._give_up_if_overdue(time.monotonic())
                leaving, self._leaving = self._leaving, None
                lost = self._change is not None and self._change.lost
            if leaving is not None:
                self._leave(*leaving)
            elif not lost:
                try:
                    self._heartbeat()
                    attempt = 0
                except UnknownMemberIdError as exc:
                    log.warning("group %s: member %s is unknown to the coordinator (%s); rejoining",
                                self.coordinator.group_id, self._member_id, exc)
                    self._lose()
                except RaftkaError as exc:
                    if not exc.retriable:
                        self.error = exc
                        log.error("group %s: heartbeat refused: %s", self.coordinator.group_id, exc)
                    else:
                        log.info("group %s: heartbeat failed, retrying: %s", self.coordinator.group_id, exc)
                    self._wake.wait(self._backoff.delay(attempt))
                    attempt += 1
                    continue
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def _heartbeat(self) -> None:
        """One heartbeat. The session it renews counts from when it was sent, not from when its answer
        was read: an answer read late (the process was suspended while it was in flight) must not
        make this member think it holds partitions the coordinator has meanwhile given away."""
        request = self._request(leave=False)
        sent = time.monotonic()
        response = self.coordinator.call(lambda stub: stub.Heartbeat, request,
                                         deadline_s=sent + self._session_timeout_ms / 1000)
        assignment = from_group_partitions(response.assignment)
        with self._lock:
            if request.member_id != self._member_id:
                return
            self._joined = True
            self._last_heartbeat = sent
            self._interval_s = max(0.05, response.heartbeat_interval_ms / 1000)
            if response.member_epoch != self._applied_epoch or assignment != self._owned:
                self._change = AssignmentChange(assignment, response.member_epoch, self._generation)
            else:
                self._change = None

    def _request(self, *, leave: bool) -> api_pb2.GroupHeartbeatRequest:
        with self._lock:
            return api_pb2.GroupHeartbeatRequest(
                group_id=self.coordinator.group_id, member_id=self._member_id, instance_id=self._instance_id,
                topics=self._topics, pattern=self._pattern, owned=as_group_partitions(self._owned),
                session_timeout_ms=self._session_timeout_ms, assignor=self._assignor, leave=leave,
                client_id=self._client_id, member_epoch=self._applied_epoch)

    def _give_up_if_overdue(self, now: float) -> bool:
        """With the lock held: if no poll came for max_poll_interval, or no heartbeat got through for
        the session timeout, stop being a member (the thread then sends the leave). Returns whether
        it did."""
        if not self._joined or (self._change is not None and self._change.lost):
            return False
        group = self.coordinator.group_id
        if now - self._last_poll > self._max_poll_interval_s:
            log.warning("group %s: no poll for max_poll_interval (%.1fs); leaving the group so its partitions "
                        "move to other members", group, self._max_poll_interval_s)
        elif now - self._last_heartbeat > self._session_timeout_ms / 1000:
            log.warning("group %s: no heartbeat got through for the session timeout; the coordinator has "
                        "dropped this member, so its partitions are given up", group)
        else:
            return False
        self._leaving = self._member_id, self._applied_epoch
        self._lose_locked()
        return True

    def _leave(self, member_id: str, member_epoch: int) -> None:
        """Tell the coordinator that `member_id` (given up) left, so its partitions move now."""
        request = self._request(leave=True)
        request.member_id, request.member_epoch = member_id, member_epoch
        try:
            self.coordinator.call(lambda stub: stub.Heartbeat, request, deadline_s=time.monotonic() + 5)
        except RaftkaError as exc:
            log.info("group %s: leave failed (the session will expire): %s", self.coordinator.group_id, exc)

    def _lose(self) -> None:
        with self._lock:
            self._lose_locked()

    def _lose_locked(self) -> None:
        """No longer a member: the consumer drops its partitions at its next poll, then rejoins as a
        new member (a new id, a new generation)."""
        self._generation += 1
        self._joined = False
        self._member_id = uuid.uuid4().hex
        self._change = AssignmentChange(frozenset(), 0, self._generation, lost=True)
        self._owned, self._applied_epoch = frozenset(), 0

    def rejoin(self) -> None:
        """Called by the consumer once it has dropped a lost assignment (and is polling again)."""
        with self._lock:
            self._last_poll = self._last_heartbeat = time.monotonic()
            self._owned, self._applied_epoch = frozenset(), 0
            if self._change is not None and self._change.lost:
                self._change = None
        self._wake.set()
