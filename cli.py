"""The `raftka` command (the console script and `python -m raftka`).

The client's commands (`raftka.client.cli`) and the broker's (`raftka.cluster.cli`) meet here and
nowhere else, so neither the client nor the broker imports the other: this module sits above both.
"""

from __future__ import annotations

from typing import Sequence

from raftka.client import cli as client_cli
from raftka.cluster import cli as broker_cli

BROKER = client_cli.Command("run one broker in the foreground", broker_cli.add_arguments, broker_cli.run)


def main(argv: Sequence[str] | None = None) -> int:
    return client_cli.main({"broker": BROKER}, argv)
