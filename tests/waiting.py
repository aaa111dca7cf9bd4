"""How tests wait: on a condition, with a deadline; never a sleep followed by an assert.

A fixed sleep is either too short on a loaded machine (a flaky failure) or longer than needed
everywhere else (a slow suite). To check that something does NOT happen, wait for a later event
that proves it would have been seen by then, and assert after that.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable


def wait_until(condition: Callable[[], object], what: str = "condition", timeout_s: float = 60,
               interval_s: float = 0.05) -> None:
    """Return as soon as `condition()` is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting until {what}"
        time.sleep(interval_s)


async def until(condition: Callable[[], object], what: str = "condition", timeout_s: float = 20,
                interval_s: float = 0.005) -> None:
    """`wait_until` for coroutines: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting until {what}"
        await asyncio.sleep(interval_s)
