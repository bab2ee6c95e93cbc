"""Storage errors of the index as one line each: a full disk, a folder the user may not write (or read), a
damaged database, or another I/O failure; anything else is left to propagate (a bug stays a bug)."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from ...errors import LookalikeError
from .layout import DATABASE

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _kind(exc: BaseException) -> str | None:
    """'full', 'denied', 'damaged' or 'io' for a storage error, None for anything else (a bug stays a bug)."""
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return "full"
        return "denied" if exc.errno in _DENIED_ERRNOS else "io"
    if isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError)) and not isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        name = getattr(exc, "sqlite_errorname", "") or ""  # Python >= 3.11; the message text otherwise
        msg = str(exc).lower()
        if name.startswith("SQLITE_FULL") or "disk is full" in msg:
            return "full"
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")) \
                or "readonly" in msg or "unable to open" in msg:
            return "denied"
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in msg or "not a database" in msg:
            return "damaged"
        return "io"
    return None


def _detail(exc: BaseException) -> str:
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


def _low_on_space(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False


def rebuild_hint(root: Any = None) -> str:
    """The advice for an index whose data is unusable: rebuilding re-reads the images and never changes them."""
    return (f"rebuild it with `lookalike index {root or 'FOLDER'} --rebuild` (this embeds the images again; "
            "the images themselves are untouched)")


def storage_error(exc: BaseException, path: Path, *, writing: bool, root: Any = None) -> LookalikeError | None:
    """The one-line error for a failed read or write of the index at `path`, or None when `exc` is no storage
    error. A permission problem never gets the advice to rebuild: the data is fine, the access is not."""
    kind = _kind(exc)
    if kind is None:
        return None
    detail = _detail(exc)
    if kind == "full" or (kind == "io" and writing and _low_on_space(path)):
        return LookalikeError(f"disk full: cannot write the index at {path} ({detail}); free some space and run "
                              "`lookalike index` again, which resumes from the last committed batch")
    if kind == "denied":
        if writing:
            return LookalikeError(f"cannot write the index at {path} ({detail}): `lookalike index` needs write "
                                  "access to that folder and its files (searching needs only read access)")
        return LookalikeError(f"cannot read the index at {path} ({detail}): searching needs read access to "
                              "that folder and its files")
    if kind == "damaged":
        return LookalikeError(f"index database {path / DATABASE} is damaged ({detail}): {rebuild_hint(root)}")
    return LookalikeError(f"cannot {'write' if writing else 'read'} the index at {path} ({detail})")


def damaged_database(path: Path, root: Any, problem: str) -> LookalikeError:
    """A reader's one line for an index database (in the folder `path`) whose contents the index did not write."""
    return LookalikeError(f"index database {path / DATABASE} is damaged ({problem}): run `lookalike "
                          f"index {root or 'FOLDER'}` to repair it (searching refuses it until then)")
