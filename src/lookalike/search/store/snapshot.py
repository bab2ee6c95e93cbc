"""`IndexSnapshot`: the read-only view of an index, loaded at open time from one commit (rows, vector file and
generation), shared between threads; searching goes through its ANN file when that matches the vectors, else
exactly over the memory-mapped vectors."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np

from ...errors import LookalikeError
from . import queries
from .ann_file import CATCH_UP_MAX, parse_ann_fingerprint
from .database import _connect_reader, _row_problem, from_db_path
from .errors import storage_error
from .base import IndexBase
from .layout import _ANN_NAME, _VECTOR_NAME, own_file
from .vectors import RowVectors, is_run


class IndexSnapshot(IndexBase):
    """A read-only snapshot of an index, loaded at open time (rows, vector file and generation of one commit);
    safe to share between threads. Never writes: another account or a read-only mount can search.

    Searching goes through `backend()`: the ANN file the writer saved for this generation, caught up from the
    vectors when a few commits behind, or an exact search over the memory-mapped vectors (the ANN file missing,
    damaged or out of date: one line in `notes`)."""

    readonly = True

    def __init__(self, path: Path, manifest: dict) -> None:
        super().__init__(path, manifest)
        self._ids = np.zeros(0, np.int64)  # sorted
        self._rows = np.zeros(0, np.int64)  # aligned with _ids
        self._paths: list[str] = []
        self._by_path: dict[str, int] | None = None
        self._mm: np.ndarray = np.zeros((0, self.dim if manifest else 0), np.float32)
        # A second mapping of the same file (same page cache) for reads of scattered rows: the rerank's
        # candidates, `dupes` lookups, single vectors. Scans (exact search, vectors()) keep read-ahead on _mm.
        self._mm_rows: np.ndarray = self._mm
        self._vectors: np.ndarray | None = None
        self._lock = threading.Lock()
        self._backend = None
        self.generation = 0
        self.vector_file = "vectors-0.f32"
        self.ann_file: str | None = None
        self.whitening: dict | None = None  # the whitening applied to this snapshot's vectors (its record)

    def _load_snapshot(self) -> None:
        conn = _connect_reader(self.path, self.manifest.get("root"))
        try:
            got = queries.read_snapshot(conn)
            self.vector_file, self.ann_file, self.generation = got.vector_file, got.ann_file, got.generation
            self.whitening = got.whitening
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, writing=False, root=self.manifest.get("root")) from None
        except (ValueError, TypeError) as exc:
            raise self._damaged(str(exc)) from None
        finally:
            conn.close()
        if own_file(self.path, self.vector_file, _VECTOR_NAME) is None:
            raise self._damaged(f"it names the vector file {self.vector_file!r}, which is not the index's own")
        self._stamps = np.concatenate(got.stamps) if got.stamps else np.zeros((0, 2), np.int64)
        self._ids = np.concatenate(got.ids) if got.ids else np.zeros(0, np.int64)
        self._rows = np.concatenate(got.rows) if got.rows else np.zeros(0, np.int64)
        # Text as it is; only names that are not valid UTF-8 (stored as bytes) need decoding.
        self._paths = [p if isinstance(p, str) else from_db_path(p) for p in got.paths]
        if any(not isinstance(p, str) for p in self._paths):
            raise self._damaged("a path is not text")
        problem = _row_problem(self._ids, self._rows)
        if problem:
            raise self._damaged(problem)
        need = int(self._rows.max()) + 1 if len(self._rows) else 0
        self._mm = self._open_vectors(self.vector_file, need)
        self._mm_rows = self._open_vectors(self.vector_file, need, scattered=True) if len(self._mm) else self._mm

    # --- reading -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        """int64 image ids, ascending, aligned with `vectors()`."""
        return self._ids.copy()

    def _position(self, image_id: int) -> int:
        pos = int(np.searchsorted(self._ids, int(image_id)))
        if pos >= len(self._ids) or self._ids[pos] != int(image_id):
            raise KeyError(image_id)
        return pos

    def has_id(self, image_id: int) -> bool:
        try:
            self._position(image_id)
        except KeyError:
            return False
        return True

    def vectors(self) -> np.ndarray:
        """(N, D) float32 L2-normalised rows, aligned with `ids()`: a memory-mapped view when the rows lie in
        id order in the file, else a copy (see `row_vectors` for a view that never copies)."""
        if self._vectors is None:
            self._vectors = self._mm[self._rows] if len(self._rows) and not self._contiguous() else \
                self._gather_view()
        return self._vectors

    def _contiguous(self) -> bool:
        return is_run(self._rows)

    def _gather_view(self) -> np.ndarray:
        if not len(self._rows):
            return np.zeros((0, self.dim), np.float32)
        return self._mm[int(self._rows[0]):int(self._rows[0]) + len(self._rows)]

    def row_vectors(self) -> "RowVectors | np.ndarray":
        """The vectors aligned with `ids()`, read from the memory-mapped file only where sliced."""
        return self._gather_view() if self._contiguous() else RowVectors(self._mm, self._rows)

    def lookup(self, wanted) -> np.ndarray:
        """ids -> their vectors (KeyError for an unknown id): what an approximate backend reranks with."""
        wanted = np.asarray(wanted, np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(self._ids, wanted), 0, max(0, len(self._ids) - 1))
        if len(wanted) and (not len(self._ids) or not np.array_equal(self._ids[pos], wanted)):
            raise KeyError("ids missing from the index")
        return np.asarray(self._mm_rows[self._rows[pos]], np.float32)

    def path_of(self, image_id: int) -> Path:
        """Absolute path of an image id; KeyError if the id is unknown."""
        return self.root / self._paths[self._position(image_id)]

    def id_of(self, path) -> int | None:
        with self._lock:
            if self._by_path is None:  # built on first use: a server that never looks up paths never pays
                self._by_path = {p: int(i) for p, i in zip(self._paths, self._ids)}
        return self._by_path.get(self.stored_path(path))

    def vector_of(self, image_id: int) -> np.ndarray:
        """The stored vector of one image id (KeyError if unknown)."""
        return np.asarray(self._mm_rows[int(self._rows[self._position(image_id)])])

    def stamp_of(self, image_id: int) -> tuple[int, int]:
        """(size, mtime_ns) of an image's file when it was indexed (KeyError if unknown)."""
        size, mtime = self._stamps[self._position(image_id)]
        return int(size), int(mtime)

    # --- the search backend --------------------------------------------------------------------------------
    def backend(self):
        """The search backend of this snapshot (loaded once, on first use; thread-safe)."""
        with self._lock:
            if self._backend is None:
                self._backend = self._load_backend()
            return self._backend

    def _exact(self):
        from . import ann

        if not len(self._ids):
            return ann.make("exact", self.dim)
        # No copy: the file's range of live rows, dead rows in between masked.
        first, last = int(self._rows.min()), int(self._rows.max())
        labels = np.full(last - first + 1, -1, np.int64)
        labels[self._rows - first] = self._ids
        keys = np.arange(first, last + 1, dtype=np.int64)
        return ann.exact_view(self._mm[first:last + 1], labels, keys)

    def _load_backend(self):
        from . import ann

        name = self.ann_file
        if own_file(self.path, name, _ANN_NAME) is None:
            kind, _ = ann.plan(self.ann_requested, len(self._ids), self.dim)
            if kind != "exact":
                self.notes.append(f"index {self.path} has no ANN file for its {kind} backend yet: searching "
                                  f"exactly; `lookalike index {self.root}` builds it")
            return self._exact()
        path = self.path / name
        try:
            header = ann.read_params(path)
            fp = parse_ann_fingerprint(header.get("fingerprint"))
            if fp is None or fp.get("vector_file") != self.vector_file or fp["generation"] > self.generation:
                raise ann.StaleAnnError(f"ANN file {path} was built from other vectors than the index holds")
            behind = fp["generation"] < self.generation
            backend = ann.load(path)
            if behind:
                gap = abs(len(self._ids) - len(backend))
                if gap > max(CATCH_UP_MAX, len(self._ids) // 10):  # a reader does not build what a run should
                    raise ann.StaleAnnError(f"ANN file {path} is {gap} images behind the index")
                backend.catch_up(self._ids, self._rows, self.row_vectors())
            elif len(backend) != len(self._ids):
                raise ann.StaleAnnError(f"ANN file {path} holds {len(backend)} images, the index {len(self._ids)}")
            return backend
        except (ann.AnnFileError, LookalikeError) as exc:
            self.notes.append(f"{exc}: searching exactly; `lookalike index {self.root}` rebuilds it")
            return self._exact()

