"""The `raftka` command (the console script and `python -m raftka`).

The client's commands (`raftka.client.cli`) and the broker's (`raftka.cluster.cli`) meet here and
nowhere else, so neither the client nor the broker imports the other: this module sits above both.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from raftka.client import cli as client_cli
from raftka.cluster import cli as broker_cli


def _add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    client_cli.add_broker_admin_arguments(parser)
    broker_cli.add_arguments(parser)


def _run_broker(args: argparse.Namespace) -> int:
    """`raftka broker` runs a broker; `raftka broker decommission|recommission N` asks the cluster."""
    return client_cli.cmd_broker_admin(args) if args.action else broker_cli.run(args)


BROKER = client_cli.Command("run one broker in the foreground, or decommission one", _add_broker_arguments,
                            _run_broker)


def main(argv: Sequence[str] | None = None) -> int:
    return client_cli.main({"broker": BROKER}, argv)
