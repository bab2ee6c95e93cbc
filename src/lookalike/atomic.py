"""Atomic file writes: a kill at any moment leaves the old file or the new one, whole, never half of either.

Every file Lookalike replaces (checkpoints, metrics, manifests, caches, plots, exported models) goes through
here: write a temporary file in the same folder, fsync it, rename it over the target, fsync the folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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


@contextlib.contextmanager
def atomic_path(path: PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs a file name; on success it replaces
    `path`, on failure it is removed and `path` is left as it was. `durable=False` skips the fsyncs, for caches
    that may be lost in a power cut but must never be read half-written."""
    path = Path(path)
    # A unique name: threads of one process (a web server's) may write the same target at once.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:  # the writer may have closed its own handle without syncing
                os.fsync(fh.fileno())
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
