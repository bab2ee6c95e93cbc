"""The index's vector files (`vectors-<gen>.f32`): float32 unit vectors, row after row, memory-mapped read-only;
reads of given rows (a view when they are one run of the file, else a copy) and the read-ahead advice for
reads at scattered rows."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import LookalikeError
from .errors import damaged_database, storage_error
from .layout import _VECTOR_NAME, DATABASE, own_file


def advise_random(arr: np.ndarray) -> np.ndarray:
    """Tell the kernel that the memory-mapped `arr` (a numpy memmap, or a slice of one) is read at scattered
    rows; returns `arr`. By default a page fault reads the device's read-ahead window around the faulting page
    (128 KiB by default, megabytes on some virtual disks), so fetching one 5 KiB row at a random place reads tens
    to thousands of rows, and a rerank or `dupes` pass that touches a few rows per stretch of the file reads it
    many times over. A no-op where the platform has no madvise."""
    handle = getattr(arr, "_mmap", None)
    advice = getattr(mmap, "MADV_RANDOM", None)
    if handle is not None and advice is not None:
        try:
            handle.madvise(advice)
        except (OSError, ValueError):  # advice only: reading works the same without it
            pass
    return arr


class RowVectors:
    """The vectors of given rows of a memory-mapped vector file, read only when sliced or indexed: positions
    i of this object are rows rows[i] of the file. Aligned with ids the way `vectors()` is, without copying
    the whole file (at 1M images that copy would be 5 GB)."""

    def __init__(self, mm: np.ndarray, rows: np.ndarray) -> None:
        self._mm, self._rows = mm, np.asarray(rows, np.int64)
        self.shape = (len(self._rows), mm.shape[1])
        self.dtype = mm.dtype
        self.ndim = 2

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, item) -> np.ndarray:
        rows = self._rows[item]
        if np.ndim(rows) == 0:
            return np.asarray(self._mm[int(rows)])
        return np.ascontiguousarray(self._mm[rows])


def is_run(rows: np.ndarray) -> bool:
    """Whether `rows` are consecutive rows of the file in ascending order (empty: yes)."""
    if len(rows) == 0:
        return True
    first = int(rows[0])
    return int(rows[-1]) - first + 1 == len(rows) and np.array_equal(rows, np.arange(first, first + len(rows)))


def open_vectors(folder: Path, name: str | None, dim: int, need_rows: int, root: Any,
                 scattered: bool = False) -> np.ndarray:
    """The whole vector file `name` of the index folder `folder`, memory-mapped read-only; LookalikeError when it
    holds fewer than `need_rows` rows (the database refers to rows it lost). `scattered`: the mapping serves
    reads of a few rows at random places (no read-ahead, see `advise_random`); scans want the default. `root`:
    the indexed folder, which the advice names."""
    vpath = own_file(folder, name or "vectors-0.f32", _VECTOR_NAME)
    if vpath is None:
        raise damaged_database(folder, root, f"it names the vector file {name!r}, which is not the index's own")
    row_bytes = dim * 4
    again = (f"run `lookalike index {root or 'FOLDER'}` to embed the images whose vectors "
             "are lost again (the images themselves are untouched)")
    try:
        n = vpath.stat().st_size // row_bytes
        if need_rows > n:
            raise LookalikeError(f"vector file {vpath} holds {n} vectors, fewer than {DATABASE} refers to: "
                                 f"{again}")
        if n == 0:
            return np.zeros((0, dim), np.float32)
        mm = np.memmap(vpath, dtype=np.float32, mode="r", shape=(n, dim))
        return (advise_random(mm) if scattered else mm).view(np.ndarray)
    except FileNotFoundError:
        if need_rows == 0:
            return np.zeros((0, dim), np.float32)
        raise LookalikeError(f"vector file {vpath} is missing: {again}") from None
    except OSError as exc:
        raise storage_error(exc, folder, writing=False) from None


def gather(folder: Path, name: str | None, dim: int, rows: np.ndarray, root: Any,
           scattered: bool = False) -> np.ndarray:
    """Vectors of `rows` of the vector file `name`: a read-only view when the rows are in file order and
    contiguous (paged in on demand, shared through the page cache), else a copy. `scattered`: a few rows
    at random places (see `open_vectors`)."""
    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        return np.zeros((0, dim), np.float32)
    mm = open_vectors(folder, name, dim, int(rows.max()) + 1, root, scattered)
    first = int(rows[0])
    if is_run(rows):
        return mm[first:first + len(rows)]
    return np.ascontiguousarray(mm[rows])
