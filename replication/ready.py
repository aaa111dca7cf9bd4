"""The Ready batch: everything the core needs the driver to do, and the order to do it in.

Contract (one Ready outstanding at a time; ``node.ready()`` raises ReadyContractError otherwise):

1. Persist, durably, in this order or in one atomic write batch:
   ``snapshot`` (``storage.apply_snapshot``), ``entries`` (``storage.append``, which replaces the
   stored suffix from ``entries[0].index``), ``hard_state`` (``storage.set_hard_state``).
2. Only then send ``messages``. Every message may depend on the state persisted in step 1 (a vote
   on the persisted vote, an append acknowledgement on the persisted entries), so Raftka supports
   *persist-then-send* only; it does not let the leader send appends in parallel with its own fsync.
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
    read_states: tuple[ReadState, ...]
    """Linearizable reads released since the previous Ready."""
    must_sync: bool
    """False when step 1 only moves the commit index, which may be written without an fsync
    (a lost commit index is relearned from the leader)."""
