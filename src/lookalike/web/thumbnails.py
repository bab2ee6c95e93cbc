"""JPEG thumbnails of indexed images, cached in memory (LRU, bounded in bytes) and on disk.

The disk cache lives under `lookalike.paths.cache_dir("thumbnails")`, never in the index or photo folders. Its
key is the file's absolute path, size and mtime plus the thumbnail size, so an edited photo gets a new thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

from ..atomic import atomic_write
from ..images import load_image

JPEG_QUALITY = 82


class ImageGone(Exception):
    """The indexed file is no longer on disk (moved or deleted since indexing)."""


class ThumbnailCache:
    def __init__(self, cache_dir: Path | None = None, max_memory_bytes: int = 64 * 1024 * 1024) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_memory_bytes = max_memory_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
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

    def get(self, path: Path, size: int) -> tuple[str, bytes]:
        """(cache key, JPEG bytes) of `path` shrunk to fit in `size` x `size`; the key serves as an ETag.

        Raises `ImageGone` or `BadImageError`.
        """
        path = Path(path)
        key = self._key(path, size)
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return key, data
        disk_file = self.cache_dir / key[:2] / f"{key}.jpg" if self.cache_dir is not None else None
        if disk_file is not None:
            try:
                data = disk_file.read_bytes()
            except OSError:
                data = None
            if data:
                self.hits += 1
                _touch(disk_file)  # recently used files survive `prune`
                self._remember(key, data)
                return key, data
        try:
            data = make_thumbnail(path, size)
        except FileNotFoundError:
            raise ImageGone(str(path)) from None
        self.misses += 1
        if disk_file is not None:
            _write_atomic(disk_file, data)
        self._remember(key, data)
        return key, data


    def prune(self, max_bytes: int) -> int:
        """Shrink the disk cache to 80% of `max_bytes` when it is over, least recently used first.

        Returns the number of files removed. Called once when a server starts, so the cache cannot grow forever.
        """
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0
        files = []
        for shard in self.cache_dir.iterdir():
            if shard.is_dir():
                for entry in os.scandir(shard):
                    if entry.is_file() and entry.name.endswith(".jpg"):
                        st = entry.stat()
                        files.append((st.st_mtime_ns, st.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        if total <= max_bytes:
            return 0
        removed = 0
        for _, size, path in sorted(files):
            if total <= max_bytes * 0.8:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
            removed += 1
        return removed


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def make_thumbnail(path: Path, size: int) -> bytes:
    from PIL import Image

    if not path.exists():
        raise FileNotFoundError(path)
    img = load_image(path, min_size=size)  # JPEG draft decoding makes big photos cheap
    img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write_atomic(target: Path, data: bytes) -> None:
    """Write then rename, so a reader never sees half a file; a full or read-only disk only costs the cache."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, durable=False) as fh:
            fh.write(data)
    except OSError:
        pass
