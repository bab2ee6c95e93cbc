"""`IndexBase`: what a snapshot (`snapshot.py`) and the writer (`writer.py`) share: the folder, its manifest,
the vector file, the facts every caller asks either of them (root, dimension, stored paths, stats), and closing.
Open either through `index.ImageIndex`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...errors import LookalikeError
from .database import _meta
from .errors import damaged_database
from .layout import LOCKFILE, MANIFEST
from .manifest import read_manifest
from .vectors import gather, open_vectors


class ImageFacts(NamedTuple):
    """What an image's header says: its size as shown (EXIF orientation applied), the date taken (EXIF
    DateTimeOriginal, ISO 8601, None when absent) and the camera (EXIF Make and Model, None when absent)."""

    width: int | None
    height: int | None
    taken: str | None
    camera: str | None


class IndexBase:
    """The shared part of `IndexSnapshot` and `IndexWriter`; both answer the same reads (`len`, `ids`,
    `vectors`, `path_of`, `id_of`, `vector_of`, `stamp_of`, `lookup`, `backend`).

    `notes` lists what opening found and repaired (a missing database, vectors lost from the vector file) or
    fell back on (a missing or damaged ANN file), one line each, for the caller to show."""

    readonly = True

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self.notes: list[str] = []
        self._conn: sqlite3.Connection | None = None
        self._lock_fh = None

    _read_manifest = staticmethod(read_manifest)

    # --- common facts ------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.manifest["root"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def ann_requested(self) -> str:
        """The search backend the manifest asks for: auto (the default) or a kind of `ann.BACKENDS`."""
        value = self.manifest.get("ann")
        return value if isinstance(value, str) and value else "auto"

    def facts(self, ids) -> dict[int, "ImageFacts"]:
        """{id: ImageFacts} of those `ids` whose header facts (resolution, date taken, camera) the index holds;
        an image missing here was indexed before facts existed and has not been read since."""
        from . import queries
        from .database import _connect_reader

        conn = self._conn if self._conn is not None else _connect_reader(self.path, self.manifest.get("root"))
        try:
            return {i: ImageFacts(*row) for i, row in queries.read_facts(conn, ids).items()}
        finally:
            if conn is not self._conn:
                conn.close()

    def __bool__(self) -> bool:
        return True  # an opened index exists, even with no images: `if index:` must not mean `if len(index):`

    def relpath(self, path) -> str | None:
        """The root-relative form of `path` ('/'-separated), or None when it lies outside the root."""
        try:
            rel = Path(os.path.abspath(Path(path).expanduser())).relative_to(self.root)
        except ValueError:
            return None
        return rel.as_posix()

    def stored_path(self, path) -> str:
        """The key a file is stored under: root-relative when it lies under the root, else absolute (imported
        rows of files elsewhere)."""
        rel = self.relpath(path)
        return rel if rel is not None else Path(os.path.abspath(Path(path).expanduser())).as_posix()

    def current_id(self, path) -> int | None:
        """The id of the indexed image at `path` while the file is still what was indexed (same size and
        mtime), else None: a file changed since (`cp b.jpg a.jpg`) must be embedded, not answered by the old
        vector."""
        image_id = self.id_of(path)
        if image_id is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return image_id if self.stamp_of(image_id) == (st.st_size, st.st_mtime_ns) else None

    def stats(self) -> dict:
        m = self.manifest
        return {"count": len(self), "model": m["model"], "dim": int(m["dim"]), "pooling": m["pooling"],
                "updated_at": m.get("updated_at"), "root": m["root"], "index_path": str(self.path)}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fh is not None:
            if getattr(self, "_made_folder", False) and not (self.path / MANIFEST).exists():
                # Taken for a new index and given up before it was started: remove what this run made.
                with contextlib.suppress(OSError):
                    (self.path / LOCKFILE).unlink()
                    self.path.rmdir()  # only when empty
            self._lock_fh.close()  # releases the flock
            self._lock_fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    _meta = staticmethod(_meta)

    def _damaged(self, problem: str) -> LookalikeError:
        """A reader's one line for a database whose contents the index did not write."""
        return damaged_database(self.path, self.manifest.get("root"), problem)

    # --- the vector file ---------------------------------------------------------------------------------
    def _open_vectors(self, name: str | None, need_rows: int, scattered: bool = False) -> np.ndarray:
        """The whole vector file `name`, memory-mapped read-only (see `vectors.open_vectors`)."""
        return open_vectors(self.path, name, self.dim, need_rows, self.manifest.get("root"), scattered)

    def _gather(self, name: str | None, rows: np.ndarray, scattered: bool = False) -> np.ndarray:
        """Vectors of `rows` of the vector file `name` (see `vectors.gather`)."""
        return gather(self.path, name, self.dim, rows, self.manifest.get("root"), scattered)
