"""The check before every action: the file is still what the index saw (and what the plan recorded)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any


def check_file(path: Path, entry: Any, planned: tuple[int, int] | None) -> tuple[str, str | None]:
    """('', its digest) when `path` is a regular file with the size and mtime of its index row `entry` (an
    `IndexEntry`, None when the index does not hold it) and of the plan, and the row's digest when one is
    recorded; else (the reason to skip it, None)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "vanished since it was indexed", None
    except OSError as exc:
        return f"cannot be read ({exc.strerror})", None
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file", None
    if entry is None:
        return "not in the index (run `lookalike index` first)", None
    now = (st.st_size, st.st_mtime_ns)
    if now != (entry.size, entry.mtime_ns):
        return "changed since it was indexed (size or modification time)", None
    if planned is not None and now != tuple(planned):
        return "changed since the plan was made", None
    from .fileops import file_digest

    try:
        digest = file_digest(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})", None
    if entry.digest and digest != entry.digest:
        return "content changed since it was indexed", None
    return "", digest
