"""Unit tests of the core's building blocks and of the driver-facing contract."""

from __future__ import annotations

import random

import pytest

from raftka.replication import (
    CompactedError,
    Message,
    MessageType,
    ConfChange,
    ConfChangeError,
    ConfChangeOp,
    ConfState,
    Entry,
    MemoryStorage,
    NotRaftLeaderError,
    RaftConfig,
    RaftNode,
    ReadyContractError,
    Role,
)
from raftka.replication.entries import EntryType
from raftka.replication.log import RaftLog
from raftka.replication.membership import Membership, apply_conf_change
from raftka.replication.progress import Inflights, Progress, ProgressState
from raftka.replication.quorum import VoteResult, committed_index, vote_result
from raftka.replication.simcluster import SafetyChecker, SimNode


def _single_node() -> tuple[RaftNode, MemoryStorage]:
    storage = MemoryStorage.bootstrap(ConfState((1,)))
    return RaftNode(RaftConfig(1), storage, random.Random(1)), storage


def _three_nodes_led_by_1(checker: SafetyChecker) -> tuple[dict[int, SimNode], RaftNode]:
    """Nodes 1-3 of one group, node 1 elected and every message delivered."""
    nodes = {i: SimNode(i, ConfState((1, 2, 3)), RaftConfig(i), seed=0) for i in (1, 2, 3)}
    leader = nodes[1].core
    assert leader is not None
    leader.campaign()
    _stabilize(nodes, checker)
    return nodes, leader


def _stabilize(nodes: dict[int, SimNode], checker: SafetyChecker, cut_off: int = 0) -> list[Message]:
    """Process every Ready and deliver every message (none to or from `cut_off`) until quiet."""
    sent: list[Message] = []
    for _ in range(50):
        batch = [m for n in nodes.values() if n.core and n.take_ready() for m in n.complete_ready(checker)]
        if not batch:
            return sent
        sent += batch
        for m in batch:
            target = nodes[m.dst].core
            if target is not None and cut_off not in (m.src, m.dst):
                target.step(m)
    raise AssertionError("no quiescence")


def _handle(node: RaftNode, storage: MemoryStorage) -> None:
    while (rd := node.ready()) is not None:
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(list(rd.entries))
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        node.advance(rd)


def test_single_voter_commits_only_after_its_own_entry_is_durable() -> None:
    node, storage = _single_node()
    node.campaign()
    assert node.role == Role.LEADER
    _handle(node, storage)
    index = node.propose(b"x")
    rd = node.ready()
    assert rd is not None and [e.index for e in rd.entries] == [index]
    assert node.commit_index < index, "the leader must not count an entry that is not yet durable"
    storage.append(list(rd.entries))
    node.advance(rd)
    assert node.commit_index == index


def test_leader_appends_leave_before_its_write_but_acknowledgements_wait_for_theirs() -> None:
    """Thesis §10.2.1: a leader's appends may overlap its own fsync; a follower's acknowledgement
    (a promise that the entries are on its disk) may not."""
    checker = SafetyChecker()
    nodes, leader = _three_nodes_led_by_1(checker)
    assert leader.role == Role.LEADER
    index = leader.propose(b"x")
    rd = nodes[1].take_ready()
    assert rd is not None and [e.index for e in rd.entries] == [index]
    early = nodes[1].send_early()
    assert sorted(m.dst for m in early) == [2, 3]
    assert all(m.type == MessageType.APPEND and m.entries[-1].index == index for m in early)
    assert not any(m.type == MessageType.APPEND for m in rd.messages)
    follower = nodes[2].core
    assert follower is not None
    follower.step(next(m for m in early if m.dst == 2))
    answer = nodes[2].take_ready()
    assert answer is not None and [e.index for e in answer.entries] == [index]
    assert answer.early_messages == ()
    assert [m.type for m in answer.messages] == [MessageType.APPEND_RESP]


def test_appends_of_a_term_not_yet_durable_wait_for_the_sync() -> None:
    """A lone voter wins its election without a round trip, so its first appends (to a learner) can
    carry a term its disk does not hold yet; sent early, a crash would let it lead that term twice."""
    node = RaftNode(RaftConfig(1), MemoryStorage.bootstrap(ConfState((1,), learners=(2,))), random.Random(1))
    node.campaign()
    assert node.role == Role.LEADER
    rd = node.ready()
    assert rd is not None and rd.hard_state is not None and rd.hard_state.term == node.term
    assert rd.early_messages == ()
    assert any(m.type == MessageType.APPEND and m.dst == 2 for m in rd.messages)


def test_ready_contract_is_enforced() -> None:
    node, storage = _single_node()
    node.campaign()
    rd = node.ready()
    assert rd is not None
    with pytest.raises(ReadyContractError):
        node.ready()
    with pytest.raises(ReadyContractError):
        node.advance(rd.__class__(**{f: getattr(rd, f) for f in rd.__dataclass_fields__}))


def test_followers_refuse_proposals_with_a_leader_hint() -> None:
    node = RaftNode(RaftConfig(2), MemoryStorage.bootstrap(ConfState((1, 2, 3))), random.Random(2))
    with pytest.raises(NotRaftLeaderError) as info:
        node.propose(b"x")
    assert info.value.leader_id == 0


def test_find_conflict_by_term_skips_whole_terms() -> None:
    storage = MemoryStorage.bootstrap(ConfState((1,)))
    storage.append([Entry(i, t) for i, t in zip(range(2, 9), [1, 1, 4, 4, 5, 5, 6])])
    log = RaftLog(storage)
    assert log.find_conflict_by_term(8, 3) == (3, 1)
    assert log.find_conflict_by_term(8, 5) == (7, 5)
    storage.create_snapshot(4, ConfState((1,)), b"")
    storage.compact(4)
    assert log.find_conflict_by_term(8, 3) == (3, 0), "stops where the log is compacted"
    with pytest.raises(CompactedError):
        log.slice(3, 5)


def test_inflights_bound_by_count_and_bytes() -> None:
    inflights = Inflights(max_count=3, max_bytes=100)
    inflights.add(5, 60)
    assert not inflights.full()
    inflights.add(6, 50)
    assert inflights.full()
    inflights.free_le(5)
    assert not inflights.full() and len(inflights) == 1


def test_probe_backs_off_to_the_hint_and_ignores_stale_rejections() -> None:
    pr = Progress(next_index=11, max_inflight=4, max_inflight_bytes=0)
    assert pr.maybe_decr_to(rejected=10, match_hint=4)
    assert pr.next == 5
    assert not pr.maybe_decr_to(rejected=10, match_hint=2), "a stale rejection must be ignored"
    pr.maybe_update(7)
    pr.become_replicate()
    assert pr.state == ProgressState.REPLICATE and pr.next == 8


def test_quorum_arithmetic() -> None:
    assert committed_index((1, 2, 3, 4, 5), {1: 9, 2: 7, 3: 7, 4: 3, 5: 1}.__getitem__) == 7
    assert vote_result((1, 2, 3), {1: True, 2: False}) == VoteResult.PENDING
    assert vote_result((1, 2, 3), {1: True, 2: False, 3: False}) == VoteResult.LOST
    assert vote_result((1, 2, 3), {1: True, 3: True}) == VoteResult.WON


def test_membership_changes_one_voter_at_a_time_and_reverts_on_truncation() -> None:
    base = ConfState((1, 2, 3))
    assert apply_conf_change(base, ConfChange(ConfChangeOp.ADD_LEARNER, 4)) == ConfState((1, 2, 3), (4,))
    with pytest.raises(ConfChangeError):
        apply_conf_change(base, ConfChange(ConfChangeOp.ADD_VOTER, 3))
    with pytest.raises(ConfChangeError):
        apply_conf_change(ConfState((1,)), ConfChange(ConfChangeOp.REMOVE, 1))
    m = Membership(base, 1)
    m.append([Entry(5, 2, EntryType.CONF_CHANGE, ConfChange(ConfChangeOp.REMOVE, 3).encode())])
    assert m.current == ConfState((1, 2)) and m.at(4) == base
    m.truncate_from(5)
    assert m.current == base


def test_restart_recovers_configuration_and_applied_index_from_snapshot() -> None:
    node, storage = _single_node()
    node.campaign()
    _handle(node, storage)
    node.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, 2))
    for n in range(3):
        node.propose(b"%d" % n)
    _handle(node, storage)
    storage.create_snapshot(4, node.conf_state_at(4), b"sm@4")
    storage.compact(3)
    restarted = RaftNode(RaftConfig(1), storage, random.Random(1))
    assert restarted.conf_state == ConfState((1,), (2,))
    assert restarted.applied_index == 4
    rd = restarted.ready()
    assert rd is not None and [e.index for e in rd.committed_entries] == [5, 6]



def test_leader_resends_a_lost_snapshot_after_the_transport_reports_failure() -> None:
    """A follower behind the compacted log gets a snapshot; when the transport reports the send
    failed, the leader probes again and resends instead of waiting forever."""
    checker = SafetyChecker()
    nodes, leader = _three_nodes_led_by_1(checker)
    for n in range(3):
        leader.propose(b"%d" % n)
    _stabilize(nodes, checker, cut_off=3)
    assert nodes[1].snapshot_and_compact(keep=0)
    leader.report_unreachable(3)
    sent = _stabilize(nodes, checker, cut_off=3)
    assert [m.type for m in sent if m.dst == 3] == [MessageType.SNAPSHOT]
    assert leader.progress()[3].state == ProgressState.SNAPSHOT
    leader.report_snapshot(3, success=False)
    assert leader.progress()[3].state == ProgressState.PROBE
    leader.tick()
    _stabilize(nodes, checker)
    assert leader.progress()[3].match == leader.last_index
    follower = nodes[3].core
    assert follower is not None and follower.applied_index >= 5


def test_a_held_member_is_sent_no_append_until_released_and_commits_do_not_wait_for_it() -> None:
    """The driver's bandwidth throttle holds a learner's appends back (RaftNode.throttle): while held it
    gets none (heartbeat responses do not unstick it), the voters keep committing, and once released
    it catches up."""
    checker = SafetyChecker()
    nodes = {i: SimNode(i, ConfState((1, 2), learners=(3,)), RaftConfig(i), seed=0) for i in (1, 2, 3)}
    leader = nodes[1].core
    assert leader is not None
    leader.campaign()
    _stabilize(nodes, checker)
    leader.throttle(3, max_inflight_bytes=10, paused=True)
    for i in range(5):
        leader.propose(f"entry-{i}".encode() * 4)
    sent = _stabilize(nodes, checker)
    for _ in range(30):
        leader.tick()
        sent += _stabilize(nodes, checker)
    assert not [m for m in sent if m.type == MessageType.APPEND and m.dst == 3 and m.entries]
    assert leader.commit_index == leader.last_index
    assert leader.role == Role.LEADER, leader.role
    assert leader.progress()[3].match < leader.last_index, leader.progress()
    leader.throttle(3, max_inflight_bytes=10, paused=False)
    leader.tick()
    sent = _stabilize(nodes, checker)
    appends = [m for m in sent if m.type == MessageType.APPEND and m.dst == 3 and m.entries]
    assert appends
    assert leader.progress()[3].match == leader.last_index


def test_a_rejoining_node_takes_only_its_own_barrier() -> None:
    """Design note 14: only the answer echoing this incarnation's nonce, once committed, lifts the
    rule; a heartbeat's commit index (which may rest on the lost state's match) is not taken."""
    storage = MemoryStorage()
    node = RaftNode(RaftConfig(3, rejoining=True), storage, random.Random(5))
    rd = node.ready()
    assert rd is not None and rd.must_sync and rd.hard_state is not None and rd.hard_state.rejoining
    node.advance(rd)
    node.step(Message(MessageType.HEARTBEAT, 1, 3, 2, commit=7))
    assert node.commit_index == 0
    rd = node.ready()
    assert rd is not None
    asks = [m for m in rd.messages if m.type == MessageType.READ_INDEX]
    assert len(asks) == 1 and asks[0].index > 0 and not asks[0].context
    node.advance(rd)
    node.step(Message(MessageType.READ_INDEX_RESP, 1, 3, 2, index=1, commit=asks[0].index + 1))
    snapshot = MemoryStorage.bootstrap(ConfState((1, 2, 3))).snapshot()
    node.step(Message(MessageType.SNAPSHOT, 1, 3, 2, snapshot=snapshot))
    assert node.commit_index == 1 and node.rejoining
    node.step(Message(MessageType.READ_INDEX_RESP, 1, 3, 2, index=1, commit=asks[0].index))
    assert not node.rejoining
    rd = node.ready()
    assert rd is not None and rd.hard_state is not None
    assert (rd.hard_state.vote, rd.hard_state.rejoining, rd.must_sync) == (1, False, True)


def test_the_rejoining_flag_applies_to_an_empty_storage_only() -> None:
    """A driver passes RaftConfig.rejoining again when it reopens a group; a storage with state
    follows its HardState (design note 14)."""
    fresh = RaftNode(RaftConfig(1, rejoining=True), MemoryStorage(), random.Random(1))
    founded = RaftNode(RaftConfig(1, rejoining=True), MemoryStorage.bootstrap(ConfState((1, 2, 3))), random.Random(1))
    assert fresh.rejoining and not founded.rejoining


def test_a_quiescent_group_elects_again_when_its_leader_comes_back_as_a_follower() -> None:
    """Followers of a quiescent group stop their timers inside their leader's lease. If the leader's
    group fails and is rebuilt from storage (or its broker restarts) before anything woke them, its
    pre-campaign is the only sign of life: it wakes them and is not refused for the lease they granted
    that same leader, so a leader is elected again."""
    checker = SafetyChecker()
    nodes, leader = _three_nodes_led_by_1(checker)
    assert leader.quiesce()
    _stabilize(nodes, checker)
    assert all(n.core is not None and n.core.is_quiescent for n in nodes.values())
    nodes[1].crash()
    nodes[1].start()
    for _ in range(200):
        for n in nodes.values():
            assert n.core is not None
            n.core.tick()
        _stabilize(nodes, checker)
        if any(n.core is not None and n.core.role == Role.LEADER for n in nodes.values()):
            break
    assert any(n.core is not None and n.core.role == Role.LEADER for n in nodes.values())


@pytest.mark.parametrize("seed", range(20))
def test_replicas_that_defer_their_first_election_leave_it_to_the_preferred_leader(seed: int) -> None:
    """A new group's preferred leader (1) campaigns before its peers host the group (its vote requests
    are lost); the others defer their first election, so 1's next campaign wins."""
    checker = SafetyChecker()
    nodes = {i: SimNode(i, ConfState((1, 2, 3)), RaftConfig(i), seed=seed * 3 + i) for i in (1, 2, 3)}
    cores = {i: node.core for i, node in nodes.items() if node.core is not None}
    cores[1].campaign()
    _stabilize(nodes, checker, cut_off=1)
    for i in (2, 3):
        cores[i].defer_election(2 * RaftConfig(i).election_ticks)
    for _ in range(5 * RaftConfig(1).election_ticks):
        for core in cores.values():
            core.tick()
        _stabilize(nodes, checker)
        if any(core.role == Role.LEADER for core in cores.values()):
            break
    assert [i for i, core in cores.items() if core.role == Role.LEADER] == [1]
