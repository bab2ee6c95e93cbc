"""Decoded-once photo caches: every photo of a split, uint8 at the training side, in one file that later epochs and
later runs memory-map instead of decoding JPEGs again.

A cache is two files under `cache_dir("photos")`: `<slot>-<key>.u8` (N x 3 x S x S bytes, the readable photos in
order) and `<slot>-<key>.json` (shape, labels, skipped files). The key hashes every file's path, size and
modification time and the side, so a changed, added or removed photo makes a new cache; the slot hashes the folder,
the split's role and the side, so the new cache replaces the old one of the same slot (both are ours: our names in
our cache folder). A split whose bytes exceed the memory budget is not cached: it streams, decoded in worker
threads at every step.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import BadImageError
from .paths import cache_dir

CACHE_VERSION = 1
CHUNK = 256  # photos decoded per batch of worker-thread jobs while a cache is built
MAX_DEFAULT_BUDGET = 8 << 30


def default_budget_bytes() -> int:
    """A quarter of the machine's memory, at most 8 GiB: room for the model, the batches and everyone else."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(MAX_DEFAULT_BUDGET, total // 4))


def cache_bytes(n: int, size: int) -> int:
    return n * 3 * size * size


def _slot(root: Path, role: str, size: int) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}|{root.resolve()}|{role}|{size}".encode()).hexdigest()[:16]


def cache_key(files: Sequence[Path], size: int) -> str:
    """Hash of the photos (path, size in bytes, modification time) and the side they are decoded to."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{len(files)}\n".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def load_or_build(root: Path, role: str, files: Sequence[Path], labels: Sequence[int], size: int,
                  decode: Callable[[Path, int], np.ndarray], threads: int,
                  progress: Optional[Callable[[str], None]] = None):
    """(images, labels, skipped) of `files`: images a uint8 tensor N x 3 x size x size memory-mapped from the
    cache (built first when missing or stale), labels int64, skipped "path: reason" for unreadable photos."""
    import torch

    folder = cache_dir("photos")
    slot = _slot(root, role, size)
    key = cache_key(files, size)
    data_path, meta_path = folder / f"{slot}-{key}.u8", folder / f"{slot}-{key}.json"
    loaded = _load(data_path, meta_path, size, len(files))
    if loaded is None:
        if progress:
            progress(f"decoding {len(files)} photos from {root} at {size} px "
                     "(once; cached for later epochs and runs)")
        _build(data_path, meta_path, files, labels, size, decode, threads)
        _drop_stale(folder, slot, key)
        loaded = _load(data_path, meta_path, size, len(files))
        if loaded is None:  # written a moment ago: only a full disk or a concurrent writer gets here
            raise OSError(f"the photo cache {data_path} could not be read back")
    images, meta = loaded
    return torch.from_numpy(images), torch.tensor(meta["labels"], dtype=torch.long), list(meta["skipped"])


def _load(data_path: Path, meta_path: Path, size: int, n_files: int):
    """(memory-mapped N x 3 x S x S array, meta) of a complete cache, or None: a missing or damaged cache is
    rebuilt, never trusted."""
    try:
        meta = json.loads(meta_path.read_text())
        n = int(meta["n"])
        if (meta.get("version") != CACHE_VERSION or meta.get("size") != size or not 0 <= n <= n_files
                or len(meta["labels"]) != n or data_path.stat().st_size != cache_bytes(n, size)):
            return None
        if n == 0:
            return np.empty((0, 3, size, size), dtype=np.uint8), meta
        # Copy-on-write: pages are shared with the page cache and never written back to the file.
        return np.memmap(data_path, dtype=np.uint8, mode="c", shape=(n, 3, size, size)), meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build(data_path: Path, meta_path: Path, files: Sequence[Path], labels: Sequence[int], size: int,
           decode: Callable[[Path, int], np.ndarray], threads: int) -> None:
    """Decode every photo in worker threads (PIL releases the GIL while decoding) and append the readable ones, in
    order, to the data file; the meta file, written last, is what makes the cache complete."""

    def one(path: Path):
        try:
            return decode(path, size)
        except BadImageError as exc:
            return exc

    kept_labels: list[int] = []
    skipped: list[str] = []
    with atomic_write(data_path, "wb", durable=False) as fh, ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            for i, pic in enumerate(pool.map(one, chunk)):
                if isinstance(pic, BadImageError):
                    skipped.append(str(pic))
                    continue
                fh.write(np.ascontiguousarray(pic.transpose(2, 0, 1)).tobytes())
                kept_labels.append(int(labels[start + i]))
    meta = {"version": CACHE_VERSION, "size": size, "n": len(kept_labels), "labels": kept_labels, "skipped": skipped}
    with atomic_write(meta_path, "w", durable=False) as fh:
        json.dump(meta, fh)


def _drop_stale(folder: Path, slot: str, key: str) -> None:
    """Remove this slot's earlier caches (same folder, role and side; older photos): files we named ourselves."""
    for path in folder.glob(f"{slot}-*"):
        stem, suffix = path.name.rsplit(".", 1) if "." in path.name else (path.name, "")
        if suffix in ("u8", "json") and stem != f"{slot}-{key}" and len(stem) == len(slot) + 1 + len(key):
            try:
                path.unlink()
            except OSError:  # in use elsewhere or already gone: it is only disk space
                pass
