"""Topic names and per-topic configuration: the rules, the defaults, and their validation.

Names follow Kafka's rules so tooling and habits carry over: 1-249 characters of `[a-zA-Z0-9._-]`,
not `.` or `..`. Names starting with `__` are reserved for internal topics (such as
`__consumer_offsets`) and cannot be created through the Admin API.

Configuration uses Kafka's key names. Unknown keys and malformed values are rejected rather than
ignored, so a typo never silently leaves a topic with the default retention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Iterable, Mapping

from raftka.errors import InvalidConfigError, InvalidTopicError

MAX_TOPIC_NAME_LENGTH = 249
INTERNAL_PREFIX = "__"
_NAME_RE = re.compile(r"[a-zA-Z0-9._-]+")

_DAY_MS = 24 * 3600 * 1000

MAX_BATCH_BYTES_LIMIT = 32 * 1024 * 1024
"""Hard ceiling for max.message.bytes; the broker's gRPC message limit is set above it."""


def validate_topic_name(name: str, *, allow_internal: bool = False) -> None:
    """Raise InvalidTopicError naming exactly what is wrong with `name`."""
    if not name:
        raise InvalidTopicError("topic name must not be empty")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise InvalidTopicError(
            f"topic name is {len(name)} characters long; the limit is {MAX_TOPIC_NAME_LENGTH}")
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name {name!r} is not allowed")
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_RE.fullmatch(c)})
        raise InvalidTopicError(
            f"topic name {name!r} contains {''.join(bad)!r}; allowed are ASCII letters, digits, '.', '_' and '-'")
    if name.startswith(INTERNAL_PREFIX) and not allow_internal:
        raise InvalidTopicError(f"topic names starting with {INTERNAL_PREFIX!r} are reserved for internal topics")


@dataclass(frozen=True)
class TopicConfig:
    """Per-topic settings. -1 means unlimited for the retention limits."""

    retention_ms: int = 7 * _DAY_MS
    retention_bytes: int = -1
    segment_bytes: int = 64 * 1024 * 1024
    segment_ms: int = 7 * _DAY_MS
    max_message_bytes: int = 4 * 1024 * 1024

    @staticmethod
    def key(field_name: str) -> str:
        return field_name.replace("_", ".")

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> TopicConfig:
        """Build a config from Kafka-style `key=value` strings, rejecting unknown keys and bad values."""
        known = {cls.key(f.name): f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for key, text in raw.items():
            if key not in known:
                raise InvalidConfigError(
                    f"unknown topic config {key!r}; known keys are {', '.join(sorted(known))}")
            try:
                value = int(text)
            except ValueError:
                raise InvalidConfigError(f"topic config {key}={text!r} is not an integer") from None
            values[known[key]] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("retention_ms", "retention_bytes"):
            value = getattr(self, name)
            if value < -1 or value == 0:
                raise InvalidConfigError(f"{self.key(name)} must be positive or -1 (unlimited), not {value}")
        if self.segment_bytes < 1024:
            raise InvalidConfigError(f"segment.bytes must be at least 1024, not {self.segment_bytes}")
        if self.segment_ms < 1:
            raise InvalidConfigError(f"segment.ms must be positive, not {self.segment_ms}")
        if not 1024 <= self.max_message_bytes <= MAX_BATCH_BYTES_LIMIT:
            raise InvalidConfigError(
                f"max.message.bytes must be between 1024 and {MAX_BATCH_BYTES_LIMIT}, not {self.max_message_bytes}")

    def altered(self, changes: Mapping[str, str], reset: Iterable[str]) -> TopicConfig:
        """This config with the `changes` keys set and the `reset` keys back to their defaults, validated
        as a whole: an unknown key, a key both set and reset, or a bad value raises InvalidConfigError."""
        current, reset = self.as_strings(), list(reset)
        unknown = sorted(key for key in [*changes, *reset] if key not in current)
        if unknown:
            raise InvalidConfigError(f"unknown topic config {', '.join(map(repr, unknown))}; known keys are "
                                     f"{', '.join(sorted(current))}")
        both = sorted(set(changes) & set(reset))
        if both:
            raise InvalidConfigError(f"topic config {', '.join(map(repr, both))} is both set and reset")
        defaults = TopicConfig().as_strings()
        return self.parse({**current, **{key: defaults[key] for key in reset}, **changes})

    def entries(self) -> list[tuple[str, str, bool]]:
        """(key, value, whether it is the default) of every setting, by key."""
        defaults = TopicConfig().as_strings()
        return sorted((key, value, value == defaults[key]) for key, value in self.as_strings().items())

    def as_strings(self) -> dict[str, str]:
        return {self.key(f.name): str(getattr(self, f.name)) for f in fields(self)}
