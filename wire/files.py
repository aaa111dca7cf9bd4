"""Noticing that a file was replaced, for everything the broker and clients take again without a
restart: certificates and keys, JWKS and token files, a client's token file.

Operators rotate these by writing new files (cert-manager and Kubernetes swap a mounted Secret's
symlink; a sidecar rewrites a token file). A file's stamp (modification time, size and inode of what
the path resolves to) changes with every such replacement, and reading it costs one `stat`, so a
reader compares stamps and re-reads only on a change.
"""

from __future__ import annotations

import os
from pathlib import Path

FileStamp = tuple[int, int, int] | None
"""(mtime_ns, size, inode) of the file a path names, or None when it cannot be stat'ed."""


def file_stamp(path: str | Path) -> FileStamp:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino
