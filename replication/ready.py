"""The Ready batch: everything the core needs the driver to do, and the order to do it in.

Contract (one Ready outstanding at a time; ``node.ready()`` raises ReadyContractError otherwise):

0. Send ``early_messages`` (at once: they do not wait for step 1).
1. Persist, durably, in this order or in one atomic write batch:
   ``snapshot`` (``storage.apply_snapshot``), ``entries`` (``storage.append``, which replaces the
   stored suffix from ``entries[0].index``), ``hard_state`` (``storage.set_hard_state``).
2. Only then send ``messages``: each may depend on the state persisted in step 1 (a vote on the
   persisted vote, an append acknowledgement on the persisted entries).
3. Apply: install ``snapshot`` into the state machine (if any), then ``committed_entries`` in order.
   Serve each of ``read_states`` once the state machine has applied its index.
4. Call ``node.advance(ready)``.

Between ``ready()`` and ``advance()`` the driver may keep calling ``step``, ``tick`` and ``propose``
(e.g. while an fsync is in flight); their effects go into the next Ready. A crash at any point
loses exactly what step 1 had not made durable, which Raft tolerates.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftka.replication.entries import Entry
from raftka.replication.messages import Message
from raftka.replication.readindex import ReadState
from raftka.replication.state import HardState, Snapshot


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None
    """The new hard state, or None if unchanged since the previous Ready."""
    entries: tuple[Entry, ...]
    """Entries to append to storage (possibly overwriting a stored suffix)."""
    snapshot: Snapshot | None
    """A snapshot received from the leader, to persist and install."""
    committed_entries: tuple[Entry, ...]
    """Entries to apply to the state machine, in index order."""
    messages: tuple[Message, ...]
    """Messages to send after step 1 is durable."""
    early_messages: tuple[Message, ...]
    """A leader's AppendEntries, which may leave while its own write of the same entries is in
    flight (Raft thesis §10.2.1), so the leader's fsync overlaps the followers' instead of preceding
    them. Safe because the leader counts its own log toward commit only once ``advance`` says it is
    durable, and because only messages of a term already durable here qualify: a crash before step 1
    can then lose entries a follower holds, but never let them count as committed without a
    majority of disks, nor let this node lead that term twice."""
    read_states: tuple[ReadState, ...]
    """Linearizable reads released since the previous Ready."""
    must_sync: bool
    """False when step 1 only moves the commit index, which may be written without an fsync
    (a lost commit index is relearned from the leader)."""
