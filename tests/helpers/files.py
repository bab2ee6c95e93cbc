"""What a folder holds, to prove that nothing wrote there, and a file's permission bits."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def file_mode(path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(folder: Path) -> dict:
    """Name -> (size, mtime, sha256) of every file under `folder`: proof that nothing wrote there.

    SQLite's `-shm` file is the readers' shared memory: opening the database read-only refreshes its mtime
    (not its bytes), so only its size and content count.
    """
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            st = path.stat()
            mtime = None if path.name.endswith("-shm") else st.st_mtime_ns
            out[str(path.relative_to(folder))] = (st.st_size, mtime, hashlib.sha256(path.read_bytes()).hexdigest())
    return out
