"""The on-disk image index: a folder holding

- `manifest.json`: backbone, preprocessing, pooling, dimension, format version, root folder (atomic replace);
- `index.db`: SQLite (WAL) with one row per image: path relative to the root, size, mtime, content hash, and the
  row of its vector in the vector file; one row per file that could not be decoded (so an unchanged bad file is
  not decoded again); a `generation` counter in `meta`, bumped by every write transaction, so that a running
  server can tell cheaply that the index changed (`change_stamp`);
- `vectors-<gen>.f32`: float32 unit vectors, row after row, memory-mappable.

Crash safety: vectors are appended and fsynced before the SQLite transaction that references them commits, so
a kill at any point leaves at worst unreferenced rows at the end of the vector file (reclaimed by compaction),
never a row pointing at missing data. Compaction writes a new generation file and switches to it in one
transaction.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..atomic import atomic_write, fsync_dir
from ..errors import LookalikeError
from ..paths import home

FORMAT_VERSION = 2  # 2: the `failures` table
OLDEST_READABLE = 1  # readers never touch the `failures` table, so format 1 is searchable as it is
MANIFEST = "manifest.json"
DATABASE = "index.db"
LOCKFILE = "write.lock"

# Upgrades of an older index, in place: {from_version: function(index_dir)} bringing it to from_version + 1.
MIGRATIONS: dict[int, Callable[[Path], None]] = {}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,      -- relative to the manifest's root, '/'-separated
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,           -- SHA-256 (first 128 bits) of the file's bytes: finds renamed files
    row INTEGER NOT NULL            -- row of the vector in the vector file
);
CREATE INDEX IF NOT EXISTS images_digest ON images (digest);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,          -- relative to the manifest's root, as in images
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


def _add_failures_table(path: Path) -> None:
    """Format 1 -> 2. The table is created empty: files that failed before the upgrade are decoded once more."""
    db = path / DATABASE
    if not db.is_file():  # created, killed before the first batch: the writer creates the whole schema
        return
    try:
        conn = sqlite3.connect(db)
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise LookalikeError(f"index database {db} is unreadable ({exc}): rebuild with --rebuild") from None


MIGRATIONS[1] = _add_failures_table


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_index_path(folder) -> Path:
    """`folder/.lookalike`, or a folder under `$LOOKALIKE_HOME/indexes` when that variable is set."""
    folder = Path(folder).expanduser().resolve()
    if os.environ.get("LOOKALIKE_HOME"):
        tag = hashlib.sha1(str(folder).encode()).hexdigest()[:12]
        return home() / "indexes" / f"{folder.name or 'root'}-{tag}"
    return folder / ".lookalike"


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)


def resolve_index_dir(path) -> Path:
    """Accept the index folder itself, or an image folder that holds `.lookalike/`."""
    path = Path(path).expanduser()
    if (path / MANIFEST).is_file():
        return path.resolve()
    if (path / ".lookalike" / MANIFEST).is_file():
        return (path / ".lookalike").resolve()
    if path.is_dir() and os.environ.get("LOOKALIKE_HOME"):
        alt = default_index_path(path)
        if (alt / MANIFEST).is_file():
            return alt
    return path.resolve()


BACKBONE_KEYS = ("model", "pooling", "dim", "preprocess", "weights")


def same_backbone(a: dict, b: dict) -> bool:
    """Whether two manifests (or a manifest and a backbone description) give comparable vectors."""
    return all(a.get(k) == b.get(k) for k in BACKBONE_KEYS)


def change_stamp(path) -> tuple | None:
    """A fingerprint of the committed state of the index folder `path`, for a reader that wants to know whether
    to reopen: one stat and one small query. It changes with every committed write and compaction (the
    generation counter) and with every manifest rewrite, which a rebuild starts with. None while the index
    cannot be read, e.g. in the moment a rebuild has removed the old files."""
    path = Path(path)
    try:
        st = (path / MANIFEST).stat()
    except OSError:
        return None
    generation = 0
    db = path / DATABASE
    if db.is_file():
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                generation = int(ImageIndex._meta(conn, "generation", "0"))
            finally:
                conn.close()
        except (sqlite3.DatabaseError, ValueError):
            return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, generation)


class ImageIndex:
    """An opened index. Read-only instances load a snapshot at open time and are safe to share between threads;
    writable instances (used by `lookalike index`) belong to one thread and hold the folder's write lock."""

    def __init__(self, path: Path, manifest: dict, readonly: bool) -> None:
        self.path = path
        self.manifest = manifest
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._lock_fh = None
        self._ids = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int64)
        self._paths: list[str] = []
        self._by_id: dict[int, int] = {}
        self._by_path: dict[str, int] = {}
        self._vectors: np.ndarray | None = None
        self._vec_lock = threading.Lock()
        self.generation = 0  # of the snapshot (read-only instances)

    # --- opening -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, readonly: bool = True) -> "ImageIndex":
        """Open an existing index (its folder, or an image folder holding `.lookalike/`).

        LookalikeError when it is missing, unreadable, or made by a newer Lookalike.
        """
        path = resolve_index_dir(path)
        manifest = cls._read_manifest(path)
        version = int(manifest.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise LookalikeError(f"index {path} has format {version}, newer than this Lookalike reads "
                                 f"({FORMAT_VERSION}): upgrade lookalike")
        if version < FORMAT_VERSION and not (readonly and version >= OLDEST_READABLE):
            if readonly:
                raise LookalikeError(f"index {path} has the older format {version}: run `lookalike index` on "
                                     "its folder once to upgrade it")
            for v in range(version, FORMAT_VERSION):
                if v not in MIGRATIONS:
                    raise LookalikeError(f"index {path} has format {v}, which cannot be upgraded: use --rebuild")
                MIGRATIONS[v](path)
            manifest["format_version"] = FORMAT_VERSION
            write_json_atomic(path / MANIFEST, manifest)
        index = cls(path, manifest, readonly)
        if readonly:
            index._load_snapshot()
        else:
            index._open_writer()
        return index

    @classmethod
    def create(cls, path, *, root, backbone: dict) -> "ImageIndex":
        """Start a new, empty index at `path` for images under `root`, recording the backbone description
        (`Embedder.describe()`). Any previous index files there are removed."""
        path = Path(path).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        index = cls(path, {}, readonly=False)
        index._acquire_lock()
        for f in list(path.iterdir()):
            if f.name in (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", MANIFEST) or f.suffix == ".f32":
                f.unlink()
        stamp = now_iso()
        manifest = {**backbone, "format_version": FORMAT_VERSION, "root": str(Path(root).resolve()),
                    "created_at": stamp, "updated_at": stamp, "count": 0}
        write_json_atomic(path / MANIFEST, manifest)
        index.manifest = manifest
        index._open_writer(lock=False)
        return index

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise LookalikeError(f"no index at {path}: build one with `lookalike index FOLDER`")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LookalikeError(f"index manifest {mpath} is unreadable ({exc.__class__.__name__}): "
                                 "rebuild with `lookalike index FOLDER --rebuild`") from None
        missing = [k for k in ("model", "pooling", "dim", "preprocess", "root") if k not in manifest]
        if not isinstance(manifest, dict) or missing:
            raise LookalikeError(f"index manifest {mpath} lacks {', '.join(missing)}: rebuild with --rebuild")
        return manifest

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        db = self.path / DATABASE
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
            else:
                conn = sqlite3.connect(db, isolation_level=None)  # explicit BEGIN/COMMIT
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
            conn.execute("SELECT count(*) FROM images").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LookalikeError(f"index database {db} is unreadable ({exc}): rebuild with --rebuild") from None
        return conn

    def _acquire_lock(self) -> None:
        self._lock_fh = open(self.path / LOCKFILE, "a+")
        try:
            import fcntl

            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory lock; SQLite still serialises the writes
            pass
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise LookalikeError(f"another `lookalike index` is updating {self.path}: wait for it to finish")

    def _open_writer(self, lock: bool = True) -> None:
        if lock:
            self._acquire_lock()
        self._conn = self._connect(readonly=False)
        self._clean_orphan_files()

    def _load_snapshot(self) -> None:
        if not (self.path / DATABASE).is_file():  # created, killed before the first batch
            return
        conn = self._connect(readonly=True)
        try:
            # One read transaction: rows, vector file and generation from the same commit, even while a writer
            # commits or compacts (which switches the vector file).
            conn.execute("BEGIN")
            rows = conn.execute("SELECT id, path, row FROM images ORDER BY id").fetchall()
            vec_file = self._meta(conn, "vector_file")
            self.generation = int(self._meta(conn, "generation", "0"))
            conn.execute("COMMIT")
        finally:
            conn.close()
        self._ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        self._paths = [r[1] for r in rows]
        self._rows = np.fromiter((r[2] for r in rows), np.int64, len(rows))
        self._by_id = {int(i): n for n, i in enumerate(self._ids)}
        self._by_path = {p: int(i) for p, i in zip(self._paths, self._ids)}
        if rows:
            self._vectors = self._gather(vec_file, self._rows)

    # --- reading -----------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.manifest["root"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        if self.readonly:
            return len(self._ids)
        return int(self._conn.execute("SELECT count(*) FROM images").fetchone()[0])

    def ids(self) -> np.ndarray:
        """int64 image ids, aligned with `vectors()`."""
        if not self.readonly:
            return np.asarray([r[0] for r in self._conn.execute("SELECT id FROM images ORDER BY id")], np.int64)
        return self._ids.copy()

    def vectors(self) -> np.ndarray:
        """(N, D) float32 L2-normalised rows, aligned with `ids()`."""
        if not self.readonly:
            rows = np.asarray([r[0] for r in self._conn.execute("SELECT row FROM images ORDER BY id")], np.int64)
            return self._gather(self._meta(self._conn, "vector_file"), rows)
        if self._vectors is None:
            return np.zeros((0, self.dim), np.float32)
        return self._vectors

    def path_of(self, image_id: int) -> Path:
        """Absolute path of an image id; KeyError if the id is unknown."""
        if self.readonly:
            return self.root / self._paths[self._by_id[int(image_id)]]
        row = self._conn.execute("SELECT path FROM images WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return self.root / row[0]

    def relpath(self, path) -> str | None:
        """The stored (root-relative) form of `path`, or None when it lies outside the root."""
        try:
            rel = Path(os.path.abspath(Path(path).expanduser())).relative_to(self.root)
        except ValueError:
            return None
        return rel.as_posix()

    def id_of(self, path) -> int | None:
        rel = self.relpath(path)
        if rel is None:
            return None
        if self.readonly:
            return self._by_path.get(rel)
        row = self._conn.execute("SELECT id FROM images WHERE path = ?", (rel,)).fetchone()
        return None if row is None else int(row[0])

    def vector_of(self, image_id: int) -> np.ndarray:
        """The stored vector of one image id (KeyError if unknown)."""
        if self.readonly:
            return self.vectors()[self._by_id[int(image_id)]]
        row = self._conn.execute("SELECT row FROM images WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return self._gather(self._meta(self._conn, "vector_file"), np.asarray([row[0]]))[0]

    def stats(self) -> dict:
        m = self.manifest
        return {"count": len(self), "model": m["model"], "dim": int(m["dim"]), "pooling": m["pooling"],
                "updated_at": m.get("updated_at"), "root": m["root"], "index_path": str(self.path)}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fh is not None:
            self._lock_fh.close()  # releases the flock
            self._lock_fh = None

    def __enter__(self) -> "ImageIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- vector file ---------------------------------------------------------------------------------------
    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def _vector_file(self) -> Path:
        name = self._meta(self._conn, "vector_file") if self._conn is not None else None
        return self.path / (name or "vectors-0.f32")

    def _gather(self, name: str | None, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        vpath = self.path / (name or "vectors-0.f32")
        row_bytes = self.dim * 4
        try:
            n = vpath.stat().st_size // row_bytes
            if int(rows.max()) >= n:
                raise LookalikeError(f"vector file {vpath} is shorter than the database says: "
                                     "rebuild with --rebuild")
            mm = np.memmap(vpath, dtype=np.float32, mode="r", shape=(n, self.dim))
        except OSError as exc:
            raise LookalikeError(f"cannot read vector file {vpath} ({exc.strerror}): rebuild with --rebuild") from None
        first = int(rows[0])
        if int(rows[-1]) - first + 1 == len(rows) and np.array_equal(rows, np.arange(first, first + len(rows))):
            # Rows in file order (a fresh or compacted index): a read-only view, paged in on demand and
            # shared with other processes through the page cache, instead of a private copy.
            return mm[first:first + len(rows)].view(np.ndarray)
        out = np.ascontiguousarray(mm[rows])
        del mm
        return out

    def read_rows(self, rows) -> np.ndarray:
        """Vectors at given rows of the current vector file (the writer's view)."""
        return self._gather(self._vector_file().name, np.asarray(rows, np.int64))

    def append_vectors(self, vectors: np.ndarray) -> list[int]:
        """Append rows to the vector file and make them durable; returns their row numbers."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {vectors.shape}")
        vpath = self._vector_file()
        row_bytes = self.dim * 4
        with open(vpath, "ab") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size % row_bytes:  # a write cut short by a kill: drop the partial row
                fh.truncate(size - size % row_bytes)
                size -= size % row_bytes
            fh.write(vectors.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        start = size // row_bytes
        return list(range(start, start + len(vectors)))

    def entries(self) -> dict[str, tuple[int, int, int, str, int]]:
        """{relative path: (id, size, mtime_ns, digest, row)} for the writer's sync."""
        return {r[1]: (r[0], r[2], r[3], r[4], r[5])
                for r in self._conn.execute("SELECT id, path, size, mtime_ns, digest, row FROM images")}

    def failures(self) -> dict[str, tuple[int, int, str]]:
        """{relative path: (size, mtime_ns, reason)} of the files that could not be decoded, for the writer's sync."""
        return {r[0]: (r[1], r[2], r[3])
                for r in self._conn.execute("SELECT path, size, mtime_ns, reason FROM failures")}

    def failures_decoder(self) -> str | None:
        """The decoder (`images.decoder_version`) that last tried the recorded failures, None before any."""
        return self._meta(self._conn, "failures_decoder")

    def commit(self, inserts: Iterable[tuple] = (), updates: Iterable[tuple] = (), deletes: Iterable[int] = (),
               failed: Iterable[tuple] = (), cleared: Iterable[str] = (), decoder: str | None = None) -> None:
        """One transaction. inserts: (path, size, mtime_ns, digest, row); updates: (id, path, size, mtime_ns,
        digest, row); deletes: ids; failed: (path, size, mtime_ns, reason), replacing any earlier failure of the
        path; cleared: paths whose failure no longer applies; decoder: the decoder that found `failed`."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in deletes])
            conn.executemany("UPDATE images SET path = ?, size = ?, mtime_ns = ?, digest = ?, row = ? WHERE id = ?",
                             [(p, s, m, d, r, i) for i, p, s, m, d, r in updates])
            conn.executemany("INSERT INTO images (path, size, mtime_ns, digest, row) VALUES (?, ?, ?, ?, ?)",
                             list(inserts))
            conn.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in cleared])
            conn.executemany("INSERT OR REPLACE INTO failures (path, size, mtime_ns, reason) VALUES (?, ?, ?, ?)",
                             list(failed))
            if self._meta(conn, "vector_file") is None:
                conn.execute("INSERT INTO meta VALUES ('vector_file', ?)", (self._vector_file().name,))
            if decoder is not None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('failures_decoder', ?)", (decoder,))
            self._bump_generation()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _bump_generation(self) -> None:
        """Inside a write transaction: tell readers (`change_stamp`) that the committed state changed."""
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def dead_rows(self) -> int:
        total = self._vector_file().stat().st_size // (self.dim * 4) if self._vector_file().exists() else 0
        return total - len(self)

    def compact(self) -> None:
        """Rewrite the vector file without dead rows, into a new generation file, switched to atomically."""
        conn = self._conn
        old = self._vector_file()
        rows = conn.execute("SELECT id, row FROM images ORDER BY id").fetchall()
        ids = [r[0] for r in rows]
        vectors = self._gather(old.name, np.asarray([r[1] for r in rows], np.int64))
        gen = int(old.stem.split("-")[-1]) + 1 if old.stem.split("-")[-1].isdigit() else 1
        new = self.path / f"vectors-{gen}.f32"
        with open(new, "wb") as fh:
            fh.write(np.ascontiguousarray(vectors, np.float32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.path)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("UPDATE images SET row = ? WHERE id = ?", [(n, i) for n, i in enumerate(ids)])
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('vector_file', ?)", (new.name,))
            self._bump_generation()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._clean_orphan_files()

    def _clean_orphan_files(self) -> None:
        current = self._vector_file().name
        for f in self.path.glob("vectors-*.f32"):
            if f.name != current:
                try:
                    f.unlink()
                except OSError:
                    pass

    def touch_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.manifest["updated_at"] = now_iso()
        write_json_atomic(self.path / MANIFEST, self.manifest)
