"""Atomic file writes: a kill at any moment leaves the old file or the new one, whole, never half of either.

Every file Lookalike replaces (checkpoints, metrics, manifests, caches, plots, exported models) goes through
here: write a temporary file in the same folder, fsync it, rename it over the target, fsync the folder.
A new file gets the mode `open()` would give it (0666 less the umask); a replaced file keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]


def fsync_dir(path: PathLike) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temporary(path: Path) -> Path:
    """An empty new file beside `path` with a unique name (threads of one process, a web server's, may write the
    same target at once), created with mode 0666 so the kernel applies the umask as for any new file (unlike
    `tempfile.mkstemp`, which makes every file 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _keep_mode(path: Path, tmp: Path) -> None:
    """Give the replacement the mode of the file it replaces (a chmod the user made outlives our rewrites)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return  # a new file: it keeps the umask's mode from its creation
    os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_path(path: PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs a file name; on success it replaces
    `path`, on failure it is removed and `path` is left as it was. `durable=False` skips the fsyncs, for caches
    that may be lost in a power cut but must never be read half-written."""
    path = Path(path)
    tmp = _create_temporary(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:  # the writer may have closed its own handle without syncing
                os.fsync(fh.fileno())
        _keep_mode(path, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", durable: bool = True, **open_kwargs) -> Iterator[IO]:
    """`with atomic_write(p, "w") as fh: ...`: like `open(p, mode)`, but the file appears whole or not at all."""
    with atomic_path(path, durable) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
