"""`python -m raftka` runs the `raftka` command."""

from raftka.cli import main

raise SystemExit(main())
