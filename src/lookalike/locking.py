"""An exclusive advisory lock on a file that names the process holding it.

The writer of an index holds one for the whole run. A second writer waits a bounded time for it (the first may
be seconds from done), then gives up with one line naming the holder's PID, instead of hanging forever or
racing it. The lock is the kernel's (`flock`): it goes with the process, so a killed holder never leaves a
stale lock behind, and the PID written into the file is only what the message names.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import IO

# Seconds a second writer waits for the lock before giving up; LOOKALIKE_LOCK_WAIT changes it (0: no wait).
DEFAULT_WAIT_S = 30.0


def lock_wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("LOOKALIKE_LOCK_WAIT", DEFAULT_WAIT_S)))
    except ValueError:
        return DEFAULT_WAIT_S


class LockBusy(Exception):
    """The lock stayed held by another process for the whole wait; `holder` is its PID when it wrote one."""

    def __init__(self, holder: int | None) -> None:
        super().__init__(holder)
        self.holder = holder

    def by(self) -> str:
        """` (PID 1234)` or an empty string, for a message."""
        return f" (PID {self.holder})" if self.holder else ""


def _holder_of(path: Path) -> int | None:
    """The PID the lock file names, None when it names none."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:32].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _open_locked(path: Path, fcntl) -> IO[str] | None:
    """`path` opened and locked, or None when another process holds the lock. Opened anew when the file was
    removed or replaced between the open and the lock (a holder that just finished), so two processes never
    hold locks on two different files of one name."""
    for _ in range(100):
        fh = open(path, "a+", encoding="ascii")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()
    raise OSError(errno.EAGAIN, f"its lock file {path} keeps changing")


def acquire(path: Path, wait_s: float | None = None) -> IO[str]:
    """Open (creating it, mode 0666 less the umask) and lock the file `path` exclusively, waiting up to
    `wait_s` seconds (default `lock_wait_seconds()`; 0: one try); write this process's PID into it. Returns the
    open file: closing it releases the lock. LockBusy when another process held it all along; OSError when the
    file cannot be opened or locked."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; SQLite still serialises an index's writes
        return open(path, "a+", encoding="ascii")
    deadline = time.monotonic() + (lock_wait_seconds() if wait_s is None else wait_s)
    delay = 0.05
    while (fh := _open_locked(path, fcntl)) is None:
        if time.monotonic() >= deadline:
            raise LockBusy(_holder_of(path))
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
    except OSError:  # the PID only serves messages: a full disk must not stop the holder
        pass
    return fh
