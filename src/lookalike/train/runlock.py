"""One training at a time in a run folder.

A run holds an exclusive `flock` on LOCK_NAME inside its folder from the check that the folder may be used to its
last write, so a second `lookalike train --out RUN` or `--resume RUN` is refused while the first runs, instead of
both passing the check and writing over each other's files. The lock file names the holder's PID. The kernel drops
the lock with the process however it ends, so a killed run never blocks its resume; a run that ends normally
removes the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator, Optional

from ..errors import LookalikeError

LOCK_NAME = ".lookalike-train.lock"


class RunInUse(LookalikeError):
    """Another process trains in the run folder."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()[:20]
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def _open_locked(path: Path, run_dir: Path, what: str) -> int:
    """An open descriptor of `path` holding its exclusive lock. Retries when the file was removed (by a holder that
    just finished) between the open and the lock, so two processes never lock two different files."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; the run proceeds unguarded, as before
        fcntl = None
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise LookalikeError(f"{what} {run_dir}: cannot write the lock file there "
                                 f"({exc.strerror or exc})") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                other = ", or train into another --out folder" if what == "--out" else ""
                raise RunInUse(f"{what} {run_dir}: {_holder(path)} is training in that folder (a run folder takes "
                               f"one training at a time): wait for it to finish{other}") from None
            raise LookalikeError(f"{what} {run_dir}: cannot lock it ({exc.strerror or exc})") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise LookalikeError(f"{what} {run_dir}: cannot lock it (its lock file keeps changing)")


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, new: bool, active: bool = True) -> Iterator[None]:
    """Hold `run_dir` for one training while the block runs. `new`: a new run, whose folder is created here (and
    removed again when the block leaves it empty); otherwise a resume, whose folder must exist. `active=False`
    (a torchrun rank other than 0, which writes no files) holds nothing."""
    if not active:
        yield
        return
    what = "--out" if new else "--resume"
    if not new and not run_dir.is_dir():
        raise LookalikeError(f"--resume {run_dir}: no such run folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise LookalikeError(f"--out {run_dir} is a file, not a folder")
    created: Optional[Path] = None
    if not run_dir.exists():
        try:
            run_dir.mkdir(parents=True)
            created = run_dir
        except FileExistsError:  # made by another process just now: the lock decides who uses it
            pass
        except OSError as exc:
            raise LookalikeError(f"--out {run_dir}: cannot create it ({exc.strerror or exc})") from None
    path = run_dir / LOCK_NAME
    try:
        fd = _open_locked(path, run_dir, what)
    except LookalikeError:
        _remove_if_empty(created)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # Removed while still locked: a process that opened the file meanwhile sees it gone and opens it anew.
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        _remove_if_empty(created)


def _remove_if_empty(folder: Optional[Path]) -> None:
    """A folder this run created and never wrote into goes again, as if the run had not started."""
    if folder is not None:
        with contextlib.suppress(OSError):
            folder.rmdir()
