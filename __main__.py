"""`python -m raftka` runs the `raftka` command."""

from raftka.client.cli import main

raise SystemExit(main())
