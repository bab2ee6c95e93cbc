"""The index folder's file names and format version: what every part of the index agrees on, and the one
check (`own_file`) that keeps a name read from the folder from pointing anywhere else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

FORMAT_VERSION = 7  # 2: the `failures` table; 3: `images.imported`; 4: the `facts` table; 5: `renditions`;
# 6: `facts.date`, the library's date sort key; 7: `renditions.keypoints`, stored local features
OLDEST_READABLE = 1  # readers never touch the `failures` table, so format 1 is searchable as it is
MANIFEST = "manifest.json"
DATABASE = "index.db"
LOCKFILE = "write.lock"
_DB_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal")
_VECTOR_NAME = re.compile(r"vectors-(\d+)\.f32")
_ANN_NAME = re.compile(r"ann-(\d+)\.ann")
_WHITENING_NAME = re.compile(r"whitening-[0-9a-f]{16}\.npz")  # `whitening.INDEX_FILE_PATTERN`
_MANIFEST_TMP = re.compile(re.escape(f".{MANIFEST}.") + r".*\.tmp")  # left by a kill inside atomic_write


def own_file(folder: Path, name: Any, pattern: "re.Pattern") -> Path | None:
    """`folder/name` when `name` (read from the database or a manifest, so not trusted) is one of the index's own
    file names (`pattern`) and is not a link: a crafted name never makes the index read, truncate or append to a
    file elsewhere. None otherwise."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        return None
    path = folder / name
    return None if path.is_symlink() else path
