"""How much a caller may do: produce and fetch bytes per second and requests per second, enforced
the way Kafka does (KIP-219) — a request over the quota is served, its response carries the time the
caller must now wait (`throttle_time_ms`), and the broker holds that caller's next request for that
long rather than failing anything.

Who a quota is for (Kafka's KIP-55): a quota entity is a principal, a client id, or both, where `*`
stands for the default of those without a quota of their own. A caller (its authenticated principal
and the client id its calls carry, `raftka.wire.headers`) is held to the most specific entity that
sets a rate of the kind being charged (`entities_of` gives the order: principal and client id, then
principal and default client id, the principal alone, the same three for the default principal, then
the client id alone and the default client id), so an entity that limits only produce leaves fetches
to a less specific one. A caller that no entity limits is never throttled.

Usage is accounted per matched entity, with a default standing for each principal or client id it
covers: callers held to `client_id=A` share one budget whatever their principals, while
`client_id=*` gives each client id a budget of its own, as in Kafka. Each account has a virtual
clock `due`: the time by which what it was charged would have been paid at its quota's rate. A
charge moves `due` on by amount / rate, starting no earlier than BURST_S before now (an idle account
saves at most that much credit); the throttle is how far `due` lies ahead of now. So over any long
window an account kept busy gets its rate plus at most one burst, whatever its request sizes. The
throttled caller's next request is held (`hold`); another caller sharing the account is throttled
at its own next charge.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

from raftka.errors import InvalidRequestError
from raftka.proto import api_pb2
from raftka.wire.headers import DEFAULT_ENTITY as DEFAULT
from raftka.wire.headers import client_id_problem

PRODUCE, FETCH, REQUESTS = "produce", "fetch", "requests"
BURST_S = 1.0
MAX_THROTTLE_S = 30.0
"""A throttle never exceeds this (Kafka caps it at its quota window), so one huge request cannot
stall its caller for minutes."""

Entity = tuple[str, str]
"""(principal, client id) of a quota: each "" (not part of it), `*` (the default) or a name."""

ENTITY_KINDS = ("user+client", "user+client-default", "user", "user-default+client",
                "user-default+client-default", "user-default", "client", "client-default")
"""The shapes of entities, most specific first: what the throttle metric is labelled by (bounded,
unlike the principals and client ids themselves)."""


class Caller(NamedTuple):
    """Who a call's quotas are resolved for: its authenticated principal and its client id ("": none)."""

    principal: str
    client_id: str = ""


def entities_of(caller: Caller) -> tuple[Entity, ...]:
    """The entities whose quota may apply to `caller`, most specific first (KIP-55's order). A caller
    without a client id matches only default client-id entities."""
    principal, client_id = caller
    clients = (client_id, DEFAULT) if client_id else (DEFAULT,)
    return (*((principal, c) for c in clients), (principal, ""),
            *((DEFAULT, c) for c in clients), (DEFAULT, ""),
            *(("", c) for c in clients))


@dataclass(frozen=True)
class Quota:
    principal: str
    produce_bytes_per_s: int = 0
    fetch_bytes_per_s: int = 0
    requests_per_s: int = 0
    """0: this entity does not limit the kind (a less specific entity may)."""
    client_id: str = ""
    """Last, so that quotas written before client ids existed read the same."""

    @property
    def entity(self) -> Entity:
        return self.principal, self.client_id

    @property
    def entity_kind(self) -> str:
        """One of ENTITY_KINDS."""
        parts = [f"{name}-default" if value == DEFAULT else name
                 for name, value in (("user", self.principal), ("client", self.client_id)) if value]
        return "+".join(parts)

    def rate(self, kind: str) -> int:
        return {PRODUCE: self.produce_bytes_per_s, FETCH: self.fetch_bytes_per_s,
                REQUESTS: self.requests_per_s}[kind]

    def validate(self) -> Quota:
        if not (self.principal or self.client_id):
            raise InvalidRequestError("a quota names a principal, a client id or both")
        if self.principal not in ("", DEFAULT) and (":" not in self.principal
                                                     or not self.principal.split(":", 1)[1]):
            raise InvalidRequestError(f"quota principal {self.principal!r} is not 'User:<name>' or '*'")
        if self.client_id != DEFAULT and (problem := client_id_problem(self.client_id)) is not None:
            raise InvalidRequestError(f"quota {problem}")
        if min(self.produce_bytes_per_s, self.fetch_bytes_per_s, self.requests_per_s) < 0:
            raise InvalidRequestError("quota rates must be 0 (unlimited) or positive")
        if not (self.produce_bytes_per_s or self.fetch_bytes_per_s or self.requests_per_s):
            raise InvalidRequestError("a quota sets at least one rate (remove it to lift every limit)")
        return self

    def to_json(self) -> dict[str, Any]:
        """A principal's quota reads as it did before client ids existed (no `client_id` key)."""
        return {"principal": self.principal, "produce": self.produce_bytes_per_s, "fetch": self.fetch_bytes_per_s,
                "requests": self.requests_per_s, **({"client_id": self.client_id} if self.client_id else {})}

    @classmethod
    def from_json(cls, raw: Any) -> Quota:
        if not isinstance(raw, dict):
            raise InvalidRequestError(f"quota {raw!r} is not an object")
        values = (raw.get("principal"), raw.get("produce"), raw.get("fetch"), raw.get("requests"))
        client_id = raw.get("client_id", "")
        if not isinstance(values[0], str) or not isinstance(client_id, str) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values[1:]):
            raise InvalidRequestError(f"quota {raw!r} is malformed")
        return cls(values[0], values[1], values[2], values[3], client_id).validate()  # type: ignore[arg-type]

    def to_proto(self) -> api_pb2.Quota:
        return api_pb2.Quota(principal=self.principal, client_id=self.client_id,
                             produce_bytes_per_s=self.produce_bytes_per_s,
                             fetch_bytes_per_s=self.fetch_bytes_per_s, requests_per_s=self.requests_per_s)

    @classmethod
    def from_proto(cls, quota: api_pb2.Quota) -> Quota:
        return cls(quota.principal, quota.produce_bytes_per_s, quota.fetch_bytes_per_s,
                   quota.requests_per_s, quota.client_id).validate()


def resolve(quotas: Mapping[Entity, Quota], caller: Caller, kind: str) -> Quota | None:
    """The quota `caller` is held to for `kind`: that of the most specific entity limiting `kind`."""
    for entity in entities_of(caller):
        quota = quotas.get(entity)
        if quota is not None and quota.rate(kind) > 0:
            return quota
    return None


class QuotaManager:
    """Per-broker accounting; runs on the broker's event loop."""

    def __init__(self, quota_for: Callable[[Caller, str], Quota | None], *,
                 on_throttled: Callable[[str, str, float], None] = lambda kind, entity_kind, seconds: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`quota_for(caller, kind)`: the quota `resolve` picks; `on_throttled(kind, entity_kind, s)`."""
        self._quota_for = quota_for
        self._on_throttled = on_throttled
        self._clock = clock
        self._due: dict[tuple[str, str, str], float] = {}
        self._held_until: dict[Caller, float] = {}

    def charge(self, caller: Caller, kind: str, amount: int) -> float:
        """Record `amount` (bytes, or 1 request) of `kind`; returns the throttle in seconds (0 within
        quota), which also holds the caller's next request."""
        if amount <= 0:
            return 0.0
        quota = self._quota_for(caller, kind)
        if quota is None:
            return 0.0
        now = self._clock()
        key = (kind, caller.principal if quota.principal else "", caller.client_id if quota.client_id else "")
        due = max(self._due.get(key, now), now - BURST_S) + amount / quota.rate(kind)
        self._due[key] = due
        throttle = min(MAX_THROTTLE_S, max(0.0, due - now))
        if throttle > 0:
            self._held_until[caller] = max(self._held_until.get(caller, now), now + throttle)
            self._on_throttled(kind, quota.entity_kind, throttle)
        if len(self._due) > 100_000:
            self._forget_idle(now)
        return throttle

    def hold_s(self, caller: Caller) -> float:
        """How long the caller's next request must wait (0: at once)."""
        until = self._held_until.get(caller)
        return 0.0 if until is None else max(0.0, until - self._clock())

    async def hold(self, caller: Caller) -> None:
        """Wait until the caller's throttle has passed."""
        while (wait := self.hold_s(caller)) > 0:
            await asyncio.sleep(wait)

    def _forget_idle(self, now: float) -> None:
        for key in [key for key, due in self._due.items() if due < now - BURST_S]:
            del self._due[key]
        for caller in [c for c, until in self._held_until.items() if until < now]:
            del self._held_until[caller]


def throttle_ms(seconds: float) -> int:
    return int(seconds * 1000 + 0.999)
