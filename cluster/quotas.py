"""How much a principal may do: produce and fetch bytes per second and requests per second, enforced
the way Kafka does (KIP-219) — a request over the quota is served, its response carries the time the
caller must now wait (`throttle_time_ms`), and the broker holds that caller's next request for that
long rather than failing anything.

Each (principal, kind) has a virtual clock `due`: the time by which what it was charged would have
been paid at its quota's rate. A charge moves `due` on by amount / rate, starting no earlier than
BURST_S before now (an idle principal saves at most that much credit); the throttle is how far `due`
lies ahead of now. So over any long window a principal kept busy gets its rate plus at most one
burst, whatever its request sizes. Quotas come from the metadata log (`Quota`, `*` is the default
for principals without their own); a principal without either is never throttled.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

from raftka.errors import InvalidRequestError
from raftka.proto import api_pb2

PRODUCE, FETCH, REQUESTS = "produce", "fetch", "requests"
BURST_S = 1.0
MAX_THROTTLE_S = 30.0
"""A throttle never exceeds this (Kafka caps it at its quota window), so one huge request cannot
stall its caller for minutes."""
DEFAULT = "*"


@dataclass(frozen=True)
class Quota:
    principal: str
    produce_bytes_per_s: int = 0
    fetch_bytes_per_s: int = 0
    requests_per_s: int = 0
    """0: unlimited."""

    def rate(self, kind: str) -> int:
        return {PRODUCE: self.produce_bytes_per_s, FETCH: self.fetch_bytes_per_s,
                REQUESTS: self.requests_per_s}[kind]

    def validate(self) -> Quota:
        if self.principal != DEFAULT and (":" not in self.principal or not self.principal.split(":", 1)[1]):
            raise InvalidRequestError(f"quota principal {self.principal!r} is not 'User:<name>' or '*'")
        if min(self.produce_bytes_per_s, self.fetch_bytes_per_s, self.requests_per_s) < 0:
            raise InvalidRequestError("quota rates must be 0 (unlimited) or positive")
        if not (self.produce_bytes_per_s or self.fetch_bytes_per_s or self.requests_per_s):
            raise InvalidRequestError("a quota sets at least one rate (remove it to lift every limit)")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"principal": self.principal, "produce": self.produce_bytes_per_s, "fetch": self.fetch_bytes_per_s,
                "requests": self.requests_per_s}

    @classmethod
    def from_json(cls, raw: Any) -> Quota:
        if not isinstance(raw, dict):
            raise InvalidRequestError(f"quota {raw!r} is not an object")
        values = (raw.get("principal"), raw.get("produce"), raw.get("fetch"), raw.get("requests"))
        if not isinstance(values[0], str) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                     for v in values[1:]):
            raise InvalidRequestError(f"quota {raw!r} is malformed")
        return cls(values[0], values[1], values[2], values[3]).validate()  # type: ignore[arg-type]

    def to_proto(self) -> api_pb2.Quota:
        return api_pb2.Quota(principal=self.principal, produce_bytes_per_s=self.produce_bytes_per_s,
                             fetch_bytes_per_s=self.fetch_bytes_per_s, requests_per_s=self.requests_per_s)

    @classmethod
    def from_proto(cls, quota: api_pb2.Quota) -> Quota:
        return cls(quota.principal, quota.produce_bytes_per_s, quota.fetch_bytes_per_s,
                   quota.requests_per_s).validate()


class QuotaManager:
    """Per-broker accounting; runs on the broker's event loop."""

    def __init__(self, quota_of: Callable[[str], Quota | None], *,
                 on_throttled: Callable[[str, float], None] = lambda kind, seconds: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._quota_of = quota_of
        self._on_throttled = on_throttled
        self._clock = clock
        self._due: dict[tuple[str, str], float] = {}
        self._held_until: dict[str, float] = {}

    def charge(self, principal: str, kind: str, amount: int) -> float:
        """Record `amount` (bytes, or 1 request) of `kind`; returns the throttle in seconds (0 within
        quota), which also holds the principal's next request."""
        quota = self._quota_of(principal)
        rate = quota.rate(kind) if quota is not None else 0
        if rate <= 0 or amount <= 0:
            return 0.0
        now = self._clock()
        key = (principal, kind)
        due = max(self._due.get(key, now), now - BURST_S) + amount / rate
        self._due[key] = due
        throttle = min(MAX_THROTTLE_S, max(0.0, due - now))
        if throttle > 0:
            self._held_until[principal] = max(self._held_until.get(principal, now), now + throttle)
            self._on_throttled(kind, throttle)
        if len(self._due) > 100_000:
            self._forget_idle(now)
        return throttle

    def hold_s(self, principal: str) -> float:
        """How long the principal's next request must wait (0: at once)."""
        until = self._held_until.get(principal)
        return 0.0 if until is None else max(0.0, until - self._clock())

    async def hold(self, principal: str) -> None:
        """Wait until the principal's throttle has passed."""
        while (wait := self.hold_s(principal)) > 0:
            await asyncio.sleep(wait)

    def _forget_idle(self, now: float) -> None:
        for key in [key for key, due in self._due.items() if due < now - BURST_S]:
            del self._due[key]
        for principal in [p for p, until in self._held_until.items() if until < now]:
            del self._held_until[principal]


def throttle_ms(seconds: float) -> int:
    return int(seconds * 1000 + 0.999)
