"""JPEG thumbnails of indexed images, cached in memory (LRU, bounded in bytes) and on disk (bounded in bytes).

The disk cache lives under `lookalike.paths.cache_dir("thumbnails")`, never in the index or photo folders. Its
key is the file's absolute path, size and mtime plus the thumbnail size, so an edited photo gets a new thumbnail.
Requested sizes are snapped up to one of `SIZES`, so any number of `<img>` sizes makes at most six files per
image; the disk cache is trimmed, least recently used first, whenever a write takes it over its budget.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

from ..atomic import atomic_write
from ..images import load_image

JPEG_QUALITY = 82
SIZES = (64, 128, 256, 512, 1024, 2048)  # longest side: what a request for any size gets (2048: the detail view)


class ImageGone(Exception):
    """The indexed file is no longer on disk (moved or deleted since indexing)."""


def snap_size(size: int) -> int:
    """The smallest of `SIZES` >= `size` (the largest for anything bigger)."""
    for choice in SIZES:
        if size <= choice:
            return choice
    return SIZES[-1]


class ThumbnailCache:
    def __init__(self, cache_dir: Path | None = None, max_memory_bytes: int = 64 * 1024 * 1024,
                 max_disk_bytes: int | None = None,
                 decode_gate: Callable[[], AbstractContextManager] | None = None) -> None:
        """`max_disk_bytes`: the disk cache's budget (None: unbounded). `decode_gate()`: a context manager held
        around each decode (the server's `DecodeSlots.hold`)."""
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_memory_bytes = max_memory_bytes
        self.max_disk_bytes = max_disk_bytes
        self._gate = decode_gate or nullcontext
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._disk_bytes: int | None = None  # unknown until the first prune scans the folder
        self._lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._making: dict[str, threading.Lock] = {}  # one decode per key at a time; the others wait for it
        self.hits = 0  # memory or disk
        self.misses = 0  # decoded from the original

    def _key(self, path: Path, size: int) -> str:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageGone(str(path)) from None
        raw = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{size}"
        return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return
            self._memory[key] = data
            self._memory_bytes += len(data)
            while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
                _, old = self._memory.popitem(last=False)
                self._memory_bytes -= len(old)

    def _cached(self, key: str, disk_file: Path | None) -> bytes | None:
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return data
        if disk_file is not None:
            try:
                data = disk_file.read_bytes()
            except OSError:
                data = None
            if data:
                with self._lock:
                    self.hits += 1
                _touch(disk_file)  # recently used files survive `prune`
                self._remember(key, data)
                return data
        return None

    def get(self, path: Path, size: int) -> tuple[str, bytes]:
        """(cache key, JPEG bytes) of `path` shrunk to fit in `snap_size(size)` squared; the key serves as an
        ETag. Raises `ImageGone`, `BadImageError`, or what the decode gate raises (`ServerBusy`)."""
        path = Path(path)
        size = snap_size(size)
        key = self._key(path, size)
        disk_file = self.cache_dir / key[:2] / f"{key}.jpg" if self.cache_dir is not None else None
        data = self._cached(key, disk_file)
        if data is not None:
            return key, data
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        try:
            with making:  # many requests for one new thumbnail: one decode, the rest read its result
                data = self._cached(key, disk_file)
                if data is not None:
                    return key, data
                try:
                    with self._gate():
                        data = make_thumbnail(path, size)
                except FileNotFoundError:
                    raise ImageGone(str(path)) from None
                with self._lock:
                    self.misses += 1
                if disk_file is not None:
                    self._store(disk_file, data)
                self._remember(key, data)
                return key, data
        finally:
            with self._lock:
                if self._making.get(key) is making and not making.locked():
                    del self._making[key]

    def _store(self, disk_file: Path, data: bytes) -> None:
        if not _write_atomic(disk_file, data) or self.max_disk_bytes is None:
            return
        with self._lock:
            if self._disk_bytes is not None:
                self._disk_bytes += len(data)
            over = self._disk_bytes is None or self._disk_bytes > self.max_disk_bytes
        if over:
            try:
                self.prune()
            except OSError:  # an unreadable cache only costs disk space, never a request
                pass

    def prune(self, max_bytes: int | None = None) -> int:
        """Shrink the disk cache to 80% of `max_bytes` (default: its budget) when it is over, least recently
        used first. Returns the number of files removed. Runs when a server starts and whenever a write takes
        the cache over its budget (one thread at a time: the others go on)."""
        max_bytes = self.max_disk_bytes if max_bytes is None else max_bytes
        if self.cache_dir is None or max_bytes is None or not self.cache_dir.is_dir():
            return 0
        if not self._prune_lock.acquire(blocking=False):
            return 0
        try:
            files = []
            for shard in self.cache_dir.iterdir():
                if shard.is_dir():
                    for entry in os.scandir(shard):
                        if entry.is_file() and entry.name.endswith(".jpg"):
                            try:
                                st = entry.stat()
                            except OSError:  # removed by another server meanwhile
                                continue
                            files.append((st.st_mtime_ns, st.st_size, entry.path))
            total = sum(size for _, size, _ in files)
            removed = 0
            if total > max_bytes:
                for _, size, path in sorted(files):
                    if total <= max_bytes * 0.8:
                        break
                    try:
                        os.unlink(path)
                    except OSError:
                        continue
                    total -= size
                    removed += 1
            with self._lock:
                self._disk_bytes = total
            return removed
        finally:
            self._prune_lock.release()

    def disk_bytes(self) -> int | None:
        """The disk cache's size as last counted (None before the first prune)."""
        with self._lock:
            return self._disk_bytes


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def make_thumbnail(path: Path, size: int) -> bytes:
    from PIL import Image

    if not path.exists():
        raise FileNotFoundError(path)
    # JPEG draft decoding makes big photos cheap; other formats are reduced as soon as they are decoded.
    img = load_image(path, min_size=size)
    img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write_atomic(target: Path, data: bytes) -> bool:
    """Write then rename, so a reader never sees half a file; a full or read-only disk only costs the cache."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, durable=False) as fh:
            fh.write(data)
        return True
    except OSError:
        return False
