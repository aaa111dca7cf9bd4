"""Failpoints: faults a test arms in a real broker process, through its environment (as etcd's gofail).

``RAFTKA_FAILPOINTS="NAME:COUNT:PATTERN[,NAME:COUNT:PATTERN...]"`` arms failpoint NAME for the
targets (Raft group ids, ``TOPIC_ID/PARTITION``) that the regular expression PATTERN matches
(``re.search``): each of the next COUNT hits raises :class:`InjectedFaultError`, or every hit when
COUNT is 0. Unarmed, a hit costs one truth test of an empty dict, so the hooks stay in production
code and fault tests run the real broker, not a twin of it.

Failpoints:

- ``partition-append``: ``PartitionStorage.append`` of entries that carry record batches, before
  anything is staged: the storage refuses the group's write, as a full or failing disk would
  (`replication.driver`'s failure contract).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENVIRONMENT = "RAFTKA_FAILPOINTS"


class InjectedFaultError(OSError):
    """A failure raised by an armed failpoint (errno EIO, like the disk error it stands for)."""


@dataclass
class _Armed:
    pattern: re.Pattern[str]
    remaining: int
    """Hits left to fail; 0 fails every hit."""


def parse(spec: str) -> dict[str, list[_Armed]]:
    """The failpoints of a RAFTKA_FAILPOINTS value; ValueError names a malformed item."""
    armed: dict[str, list[_Armed]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep1, rest = item.partition(":")
        count, sep2, pattern = rest.partition(":")
        if not (sep1 and sep2 and name and count.isdigit() and pattern):
            raise ValueError(f"{ENVIRONMENT}: expected NAME:COUNT:PATTERN, got {item!r}")
        armed.setdefault(name, []).append(_Armed(re.compile(pattern), int(count)))
    return armed


_ARMED = parse(os.environ.get(ENVIRONMENT, ""))
if _ARMED:
    log.warning("failpoints armed: %s", os.environ[ENVIRONMENT])


def armed(name: str) -> bool:
    """Whether failpoint `name` is armed at all (so a caller skips preparing a hit otherwise)."""
    return name in _ARMED


def hit(name: str, target: str) -> None:
    """Raise InjectedFaultError if failpoint `name` is armed for `target`."""
    if not _ARMED:
        return
    for armed in _ARMED.get(name, ()):
        if armed.remaining >= 0 and armed.pattern.search(target):
            if armed.remaining == 1:
                armed.remaining = -1
            elif armed.remaining > 1:
                armed.remaining -= 1
            log.warning("failpoint hit name=%s target=%s", name, target)
            raise InjectedFaultError(5, f"failpoint {name} injected an I/O error for {target}")
