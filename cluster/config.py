"""A broker's settings, from `raftka broker` flags or the matching RAFTKA_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def parse_host_port(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:PORT`), raising ValueError with a readable message."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class BrokerConfig:
    broker_id: int
    listen: str
    data_dir: Path
    advertise: str = ""
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    request_timeout_ms: int = 30_000
    max_fetch_wait_ms: int = 30_000
    retention_check_interval_s: float = 60.0

    @property
    def advertised_address(self) -> str:
        """The address clients are told to use: --advertise, or the listen address."""
        return self.advertise or self.listen

    def validate(self) -> None:
        if self.broker_id < 0:
            raise ValueError(f"broker id must be >= 0, not {self.broker_id}")
        parse_host_port(self.listen)
        if self.advertise:
            parse_host_port(self.advertise)
        elif parse_host_port(self.listen)[0] in ("0.0.0.0", "::"):
            raise ValueError(f"--listen {self.listen} is a wildcard address; give --advertise HOST:PORT "
                             "so clients know where to connect")
