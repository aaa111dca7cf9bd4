"""Settings the client and the broker read the same way: HOST:PORT addresses and bootstrap lists."""

from __future__ import annotations

from typing import Sequence


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

