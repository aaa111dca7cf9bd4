"""Hand-written Raft scenarios replayed from plain-text files in ``testdata/`` (etcd's interaction
tests are the model; the format is our own).

A file is a sequence of directives. Each directive is a command line, a ``----`` line and the
expected output, ended by a blank line; ``#`` lines and blank lines before a command are comments.
Set ``RAFTKA_REWRITE=1`` to regenerate the expected output in place, then review the diff.

Commands (node lists are comma-separated ids; ``all`` means every node):
  cluster voters=1,2,3 [learners=..] [joiners=..] [max-msg-bytes=N] [inflight=N]
  set-log ID terms=1,1,4,.. [term=T] [vote=V] [commit=C]   persisted log (index 1 is the bootstrap)
  campaign ID | tick IDS [N] | propose ID DATA | conf-change ID add-voter|add-learner|remove NODE
  transfer ID TARGET | read-index ID CTX | quiesce ID | snapshot ID [keep=N]
  process [IDS]             persist each node's Ready, queue its messages, apply, advance
  deliver [from=IDS] [to=IDS] [type=NAME]   deliver queued messages in order (blocked -> dropped)
  drop [from=IDS] [to=IDS] [type=NAME]
  stabilize [IDS]           process and deliver until quiet (among the given nodes)
  partition 1 2 | 3 ...     block traffic between groups; ``heal`` removes every block
  crash ID | restart ID     a crash loses the Ready taken but not processed and all volatile state
  lose-disk ID              a crash that also empties the node's storage; ``restart`` then starts
                            it rejoining (design note 14 in raft.py)
  status [IDS] | logs [IDS]

The harness's nodes draw the largest randomized election timeout (2 * election - 1 ticks), so a
scenario can tick followers out of their leader lease without triggering an election.
Every persist and apply runs the simulator's safety checker; a violation fails the scenario.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from raftka.replication import (
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    RaftConfig,
    RaftError,
)
from raftka.replication.simcluster import BOOT, SafetyChecker, SimNode, chain

TESTDATA = Path(__file__).parent / "testdata"
REWRITE = os.environ.get("RAFTKA_REWRITE") == "1"


class SlowestTimeout(random.Random):
    def randrange(self, *args: int, **kwargs: object) -> int:  # type: ignore[override]  # any arguments, one answer
        return args[-1] - 1 if len(args) == 1 else args[1] - 1


class ScenarioCluster:
    def __init__(self, args: dict[str, str]) -> None:
        voters = _ids(args.get("voters", "1,2,3"))
        learners = _ids(args.get("learners", ""))
        joiners = _ids(args.get("joiners", ""))
        self.checker = SafetyChecker()
        self.queue: list[Message] = []
        self.blocked: set[tuple[int, int]] = set()
        self.nodes: dict[int, SimNode] = {}
        conf = ConfState(tuple(voters), tuple(learners))
        for i in sorted(voters + learners + joiners):
            config = RaftConfig(
                i,
                election_ticks=10,
                heartbeat_ticks=1,
                max_msg_bytes=int(args.get("max-msg-bytes", 1 << 20)),
                max_inflight_msgs=int(args.get("inflight", 256)),
            )
            node = SimNode(i, conf if i not in joiners else ConfState(), config, 0, lambda _restarts: SlowestTimeout())
            self.nodes[i] = node

    def ids(self, spec: str | None) -> list[int]:
        return sorted(self.nodes) if spec in (None, "all") else _ids(spec)

    def core(self, i: int):
        core = self.nodes[i].core
        if core is None:
            raise RuntimeError(f"node {i} is crashed")
        return core

    def process(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            node = self.nodes[i]
            if node.core is None or node.take_ready() is None:
                continue
            rd = node.pending
            assert rd is not None
            parts = []
            if rd.hard_state is not None:
                hs = rd.hard_state
                rejoining = " rejoining" if hs.rejoining else ""
                parts.append(f"hs term={hs.term} vote={hs.vote} commit={hs.commit}{rejoining}")
            if rd.snapshot is not None:
                parts.append(f"snapshot {rd.snapshot.index}/{rd.snapshot.term}")
            if rd.entries:
                parts.append("entries " + " ".join(_entry(e) for e in rd.entries))
            if rd.committed_entries:
                parts.append("apply " + " ".join(_entry(e) for e in rd.committed_entries))
            parts.extend(f"read {rs.context.decode()} at {rs.index}" for rs in rd.read_states)
            self.queue.extend(node.complete_ready(self.checker))
            if parts:
                out.append(f"{i}: " + "; ".join(parts))
        self.checker.check_leaders([n for n in self.nodes.values() if n.alive])
        return out

    def _matching(self, src: str | None, dst: str | None, type_: str | None) -> list[Message]:
        srcs, dsts = set(self.ids(src)), set(self.ids(dst))
        return [
            m
            for m in self.queue
            if m.src in srcs and m.dst in dsts and (type_ is None or m.type.name == type_.upper())
        ]

    def deliver(self, src: str | None = None, dst: str | None = None, type_: str | None = None) -> list[str]:
        chosen = self._matching(src, dst, type_)
        self.queue = [m for m in self.queue if all(m is not c for c in chosen)]
        out = []
        for m in chosen:
            node = self.nodes[m.dst]
            if node.core is None or (m.src, m.dst) in self.blocked:
                out.append(f"dropped {m.describe()}")
                continue
            out.append(m.describe())
            node.core.step(m)
        return out

    def drop(self, src: str | None, dst: str | None, type_: str | None) -> list[str]:
        chosen = self._matching(src, dst, type_)
        self.queue = [m for m in self.queue if all(m is not c for c in chosen)]
        return [f"dropped {m.describe()}" for m in chosen]

    def stabilize(self, ids: list[int]) -> list[str]:
        spec = ",".join(map(str, ids))
        out: list[str] = []
        for _ in range(100):
            step = self.process(ids) + self.deliver(spec, spec)
            if not step:
                return out
            out += step
        raise RuntimeError("stabilize did not converge")

    def status(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            core = self.nodes[i].core
            if core is None:
                out.append(f"{i}: crashed")
                continue
            conf = core.conf_state
            learners = f" learners={list(conf.learners)}" if conf.learners else ""
            out.append(
                f"{i}: {core.role.value} term={core.term} lead={core.leader_id} commit={core.commit_index} "
                f"applied={core.applied_index} last={core.last_index} voters={list(conf.voters)}{learners}"
                + (" rejoining" if core.rejoining else "")
            )
        return out

    def logs(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            node = self.nodes[i]
            if node.core is None:
                st = node.storage
                terms = [st.term(j) for j in range(st.first_index(), st.last_index() + 1)]
                out.append(f"{i}: (crashed, persisted) {st.first_index()}..: {terms}")
                continue
            first = node.storage.first_index()
            terms = [node.core.term_of(j) for j in range(first, node.core.last_index + 1)]
            out.append(f"{i}: {first}..: {terms}")
        return out

    def set_log(self, i: int, args: dict[str, str]) -> None:
        node = self.nodes[i]
        conf = self.core(i).conf_state
        terms = [int(t) for t in args["terms"].split(",")]
        if terms[0] != 1:
            raise ValueError("index 1 is the bootstrap snapshot (term 1)")
        storage = MemoryStorage.bootstrap(conf, BOOT)
        storage.append([Entry(n + 2, t, EntryType.NORMAL, b"e%d.%d" % (n + 2, t)) for n, t in enumerate(terms[1:])])
        term = int(args.get("term", terms[-1]))
        storage.set_hard_state(HardState(term, int(args.get("vote", 0)), int(args.get("commit", 1))))
        node.storage = storage
        node.chain_off, node.chain = 1, [BOOT]
        for j in range(2, storage.last_index() + 1):
            node.chain.append(chain(node.chain[-1], storage.entries(j, j + 1)[0]))
        node.crash()
        node.start()

    def run(self, line: str) -> list[str]:
        words = line.split()
        cmd, pos = words[0], [w for w in words[1:] if "=" not in w]
        kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        if cmd == "campaign":
            self.core(int(pos[0])).campaign()
        elif cmd == "tick":
            for _ in range(int(pos[1]) if len(pos) > 1 else 1):
                for i in self.ids(pos[0]):
                    if self.nodes[i].alive:
                        self.core(i).tick()
        elif cmd == "propose":
            return [f"index {self.core(int(pos[0])).propose(pos[1].encode())}"]
        elif cmd == "conf-change":
            op = {"add-voter": ConfChangeOp.ADD_VOTER, "add-learner": ConfChangeOp.ADD_LEARNER,
                  "remove": ConfChangeOp.REMOVE}
            return [f"index {self.core(int(pos[0])).propose_conf_change(ConfChange(op[pos[1]], int(pos[2])))}"]
        elif cmd == "transfer":
            self.core(int(pos[0])).transfer_leadership(int(pos[1]))
        elif cmd == "read-index":
            self.checker.on_read_started(pos[1].encode())
            self.core(int(pos[0])).read_index(pos[1].encode())
        elif cmd == "quiesce":
            return [f"quiescent={self.core(int(pos[0])).quiesce()}"]
        elif cmd == "snapshot":
            node = self.nodes[int(pos[0])]
            node.snapshot_and_compact(int(kv.get("keep", 0)))
            return [f"snapshot at {node.storage.snapshot().index}, first index {node.storage.first_index()}"]
        elif cmd == "process":
            return self.process(self.ids(pos[0] if pos else None))
        elif cmd == "deliver":
            return self.deliver(kv.get("from"), kv.get("to"), kv.get("type"))
        elif cmd == "drop":
            return self.drop(kv.get("from"), kv.get("to"), kv.get("type"))
        elif cmd == "stabilize":
            return self.stabilize(self.ids(pos[0] if pos else None))
        elif cmd == "partition":
            groups = [_ids(g.strip().replace(" ", ",")) for g in line[len("partition") :].split("|")]
            self.blocked = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}
        elif cmd == "heal":
            self.blocked = set()
        elif cmd == "crash":
            self.nodes[int(pos[0])].crash()
        elif cmd == "lose-disk":
            self.nodes[int(pos[0])].lose_disk(self.checker.max_committed)
        elif cmd == "restart":
            self.nodes[int(pos[0])].start()
        elif cmd == "status":
            return self.status(self.ids(pos[0] if pos else None))
        elif cmd == "logs":
            return self.logs(self.ids(pos[0] if pos else None))
        elif cmd == "set-log":
            self.set_log(int(pos[0]), kv)
        else:
            raise ValueError(f"unknown command {cmd!r}")
        return []


def _ids(spec: str) -> list[int]:
    return [int(x) for x in spec.split(",") if x.strip()]


def _entry(e: Entry) -> str:
    kind = {EntryType.NOOP: "noop", EntryType.CONF_CHANGE: "conf"}.get(e.type)
    if kind == "conf":
        return f"{e.index}/{e.term}:{ConfChange.decode(e.data)}"
    return f"{e.index}/{e.term}" + (f":{kind}" if kind else f":{e.data.decode(errors='replace')}")


def parse(text: str) -> list[tuple[str, str, str]]:
    """Split a scenario into (leading comment block, command, expected output) triples."""
    blocks, lines, n, lead = [], text.split("\n"), 0, []
    while n < len(lines):
        line = lines[n]
        if not line.strip() or line.startswith("#"):
            lead.append(line)
            n += 1
            continue
        if n + 1 >= len(lines) or lines[n + 1] != "----":
            raise ValueError(f"line {n + 2}: expected '----' after command {line!r}")
        n += 2
        out = []
        while n < len(lines) and lines[n].strip():
            out.append(lines[n])
            n += 1
        blocks.append(("\n".join(lead).strip("\n"), line, "\n".join(out)))
        lead = []
    return blocks


def run_scenario(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    cluster: ScenarioCluster | None = None
    results = []
    for lead, command, expected in parse(text):
        try:
            if command.startswith("cluster"):
                cluster = ScenarioCluster(dict(w.split("=", 1) for w in command.split()[1:]))
                out = []
            else:
                assert cluster is not None, "the first command must be 'cluster'"
                out = cluster.run(command)
        except RaftError as exc:
            out = [f"error: {type(exc).__name__}"]
        results.append((lead, command, "\n".join(out) or "ok", expected))
    rendered = "".join(
        (lead + "\n" if lead else "") + f"{cmd}\n----\n{out}\n\n" for lead, cmd, out, _ in results
    )
    return rendered.rstrip("\n") + "\n", [(cmd, out, exp) for _, cmd, out, exp in results]


SCENARIOS = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    rendered, results = run_scenario(path.read_text())
    if REWRITE:
        path.write_text(rendered)
        return
    for command, actual, expected in results:
        assert actual == expected, \
            f"{path.name}: output of {command!r} differs\n--- expected\n{expected}\n--- actual\n{actual}"


def test_scenario_files_exist() -> None:
    assert len(SCENARIOS) >= 8
