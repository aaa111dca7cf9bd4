"""The cluster's brokers as this broker knows them: who they are, where clients and peers reach them,
and which may take new replicas.

Registrations in the metadata log are the truth: each broker registers its advertised address, rack
and incarnation when it starts (`cluster.broker`), and joins later by doing so. `--peers` only names
the founding controllers, whose addresses stand in until they have registered. Every registration
applied here also tells the Raft transport where that broker is, so a broker that joins is reached
without restarting anyone.
"""

from __future__ import annotations

import logging
from typing import Callable

from raftka.cluster.config import BrokerConfig
from raftka.cluster.metadata import BrokerRegistration, MetadataState
from raftka.cluster.placement import BrokerSlot

log = logging.getLogger(__name__)


class BrokerDirectory:
    def __init__(self, config: BrokerConfig, metadata: MetadataState, add_peer: Callable[[int, str], None]) -> None:
        """`add_peer(broker, address)` points the Raft transport at a broker (called for every other
        founding controller now, and for every registration applied from then on)."""
        self._config = config
        self._metadata = metadata
        self._add_peer = add_peer
        for broker, address in config.founders.items():
            if broker != config.broker_id:
                add_peer(broker, address)
        metadata.on_registered.append(self._registered)

    def ids(self) -> list[int]:
        """Every broker: the registered ones and the founding controllers not decommissioned."""
        return sorted((set(self._metadata.brokers()) | set(self._config.founders)) - self._metadata.decommissioned)

    def address_of(self, broker_id: int) -> str:
        """Where clients reach `broker_id`: its registered address, else the one `--peers` gives ("" if unknown)."""
        registration = self._metadata.brokers().get(broker_id)
        if registration is not None:
            return registration.address
        return self._config.founders.get(broker_id, "")

    def rack_of(self, broker_id: int) -> str:
        registration = self._metadata.brokers().get(broker_id)
        return registration.rack if registration is not None else self._config.racks.get(broker_id, "")

    def placeable(self, is_alive: Callable[[int], bool], replication_factor: int) -> list[BrokerSlot]:
        """Brokers new replicas may go to: not draining, and alive unless too few are alive for the
        replication factor (a replica on a dead broker catches up when it returns; refusing would be
        worse)."""
        registered = self._metadata.brokers()
        slots = [BrokerSlot(broker, self.rack_of(broker)) for broker in self.ids()
                 if not (broker in registered and registered[broker].draining)]
        alive = [slot for slot in slots if is_alive(slot.broker_id)]
        return alive if len(alive) >= replication_factor else slots

    def learn(self, broker_id: int, address: str) -> None:
        """Where a broker is, as another broker said (a joining broker, before it applies any registration)."""
        if broker_id != self._config.broker_id and address:
            self._add_peer(broker_id, address)

    def _registered(self, registration: BrokerRegistration) -> None:
        if registration.broker_id != self._config.broker_id:
            self._add_peer(registration.broker_id, registration.address)
