"""Settings the client and the broker read the same way: HOST:PORT addresses, bootstrap lists, and the
RAFTKA_* environment variable behind every flag of the `raftka` command."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence


def env(name: str, default: Any = None, cast: Callable[[str], Any] = str) -> Any:
    """RAFTKA_<name> cast to the flag's type, or `default` when it is not set."""
    value = os.environ.get(f"RAFTKA_{name}")
    return default if value is None else cast(value)


def flag(text: str) -> bool:
    """A boolean environment variable: 1, true, yes or on (any case) is true."""
    return text.strip().lower() in ("1", "true", "yes", "on")


def parse_host_port(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:PORT`), raising ValueError with a readable message."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_bootstrap(bootstrap: str | Sequence[str]) -> list[str]:
    """`"h1:p1,h2:p2"` or a list of addresses, validated as HOST:PORT."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    addresses = [item.strip() for item in items if item.strip()]
    if not addresses:
        raise ValueError("bootstrap names no broker; expected HOST:PORT[,HOST:PORT...]")
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bootstrap address {address!r} is not HOST:PORT")
    return addresses

