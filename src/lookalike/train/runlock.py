"""One training at a time in a run folder.

A run holds an exclusive `flock` on LOCK_NAME inside its folder from the check that the folder may be used to its
last write, so a second `lookalike train --out RUN` or `--resume RUN` is refused while the first runs, instead of
both passing the check and writing over each other's files. The lock file names the holder's PID. The kernel drops
the lock with the process however it ends, so a killed run never blocks its resume; a run that ends normally
removes the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, Iterator, Optional

from ..errors import LookalikeError

LOCK_NAME = ".lookalike-train.lock"


class RunInUse(LookalikeError):
    """Another process trains in the run folder."""


def _lock(path: Path, run_dir: Path, what: str) -> IO[str]:
    """The run folder's lock file, open and locked (`locking.acquire`, without waiting): RunInUse naming the
    holder when another process trains there."""
    from ..locking import LockBusy, acquire

    try:
        return acquire(path, wait_s=0)
    except LockBusy as busy:
        holder = f"process {busy.holder}" if busy.holder else "another process"
        other = ", or train into another --out folder" if what == "--out" else ""
        raise RunInUse(f"{what} {run_dir}: {holder} is training in that folder (a run folder takes one training "
                       f"at a time): wait for it to finish{other}") from None
    except OSError as exc:
        problem = "cannot write the lock file there" if exc.filename else "cannot lock it"  # open, or flock
        raise LookalikeError(f"{what} {run_dir}: {problem} ({exc.strerror or exc})") from None


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
        fh = _lock(path, run_dir, what)
    except LookalikeError:
        _remove_if_empty(created)
        raise
    try:
        yield
    finally:
        # Removed while still locked: a process that opened the file meanwhile sees it gone and opens it anew.
        with contextlib.suppress(OSError):
            path.unlink()
        fh.close()
        _remove_if_empty(created)


def _remove_if_empty(folder: Optional[Path]) -> None:
    """A folder this run created and never wrote into goes again, as if the run had not started."""
    if folder is not None:
        with contextlib.suppress(OSError):
            folder.rmdir()
