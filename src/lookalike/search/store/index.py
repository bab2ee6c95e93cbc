"""The on-disk image index: a folder holding

- `manifest.json`: backbone, preprocessing, pooling, dimension, format version, root folder (atomic replace);
- `index.db`: SQLite (WAL) with one row per image: path relative to the root, size, mtime, content hash, and the
  row of its vector in the vector file; one row per file that could not be decoded (so an unchanged bad file is
  not decoded again); a `generation` counter in `meta`, bumped by every write transaction, so that a running
  server can tell cheaply that the index changed (`change_stamp`);
- `vectors-<gen>.f32`: float32 unit vectors, row after row, memory-mappable;
- `ann-<n>.ann`: the search backend's structure (`ann.py`: HNSW, IVF, IVF-PQ), derived state. The database
  names it (`ann_file`) with a fingerprint of the state it was built from (vector file and generation); a
  reader that finds it missing, damaged or built from another vector file searches exactly (one note), one a
  few commits behind catches up from the vectors, and the writer rebuilds it. `exact` has no file.

Crash safety: vectors are appended and fsynced before the SQLite transaction that references them commits, so
a kill at any point leaves at worst unreferenced rows at the end of the vector file (reclaimed by compaction),
never a row pointing at missing data. Compaction writes a new generation file and switches to it in one
transaction.

Ownership: the index deletes only files its own bookkeeping names. A folder is taken for a new index only when
it is new or empty, or holds a valid manifest; vector and ANN files are deleted only when the database records
them (`vector_file` / `ann_file`, or `pending_*` / `retired_*` around a compaction or an ANN save).

Rows are of two kinds: the images of the root folder, kept in step with it by `sync`, and rows brought in by
`lookalike import` (`imported`), whose files may live elsewhere or on another machine: a walk of the root
forgets only rows it owns, so imported rows stay searchable until their file turns up in the walk and changes.

Classes: `IndexSnapshot` (read-only, a consistent snapshot, shared between threads) and `IndexWriter` (one
thread, the folder's write lock); `ImageIndex.open(path, readonly=...)` returns one or the other.

Checks on open: the manifest's fields and types; the database's presence and readability; the vector file's
length against the highest row the database refers to. Readers refuse a short vector file; the writer repairs
it by forgetting the images whose vectors are gone, so that the run embeds them again (vectors are derived
from the image files, so nothing is lost that the run does not restore).

Paths are stored as text when they are valid UTF-8, else as the file system's bytes (a BLOB), so a file name
that is not valid UTF-8 round-trips to the same file.
"""


from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import mmap
import os
import re
import shutil
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from ...atomic import atomic_write, fsync_dir
from ...errors import LookalikeError
from ...paths import home

FORMAT_VERSION = 3  # 2: the `failures` table; 3: `images.imported`
OLDEST_READABLE = 1  # readers never touch the `failures` table, so format 1 is searchable as it is
MANIFEST = "manifest.json"
DATABASE = "index.db"
LOCKFILE = "write.lock"
_DB_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal")
_VECTOR_NAME = re.compile(r"vectors-(\d+)\.f32")
_ANN_NAME = re.compile(r"ann-(\d+)\.ann")
_WHITENING_NAME = re.compile(r"whitening-[0-9a-f]{16}\.npz")  # `whitening.INDEX_FILE_PATTERN`
CATCH_UP_MAX = 10_000  # images a reader adds to an ANN file that is behind; more: exact until the next run
_MANIFEST_TMP = re.compile(re.escape(f".{MANIFEST}.") + r".*\.tmp")  # left by a kill inside atomic_write

# Upgrades of an older index, in place: {from_version: function(index_dir)} bringing it to from_version + 1.
MIGRATIONS: dict[int, Callable[[Path], None]] = {}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,      -- relative to the manifest's root, '/'-separated; a BLOB when not UTF-8
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,           -- SHA-256 (first 128 bits) of the file's bytes: finds renamed files
    row INTEGER NOT NULL,           -- row of the vector in the vector file
    imported INTEGER NOT NULL DEFAULT 0  -- 1: brought in by `lookalike import`; a walk of the root keeps it
);
CREATE INDEX IF NOT EXISTS images_digest ON images (digest);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,          -- relative to the manifest's root, as in images
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""

class IndexEntry(NamedTuple):
    """One indexed image, as the writer sees it."""

    id: int
    size: int
    mtime_ns: int
    digest: str
    row: int  # of its vector in the vector file
    imported: bool = False


class FailureEntry(NamedTuple):
    """A file that could not be decoded, remembered until it changes."""

    size: int
    mtime_ns: int
    reason: str


# --- storage errors ---------------------------------------------------------------------------------------
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _kind(exc: BaseException) -> str | None:
    """'full', 'denied', 'damaged' or 'io' for a storage error, None for anything else (a bug stays a bug)."""
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return "full"
        return "denied" if exc.errno in _DENIED_ERRNOS else "io"
    if isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError)) and not isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        name = getattr(exc, "sqlite_errorname", "") or ""  # Python >= 3.11; the message text otherwise
        msg = str(exc).lower()
        if name.startswith("SQLITE_FULL") or "disk is full" in msg:
            return "full"
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")) \
                or "readonly" in msg or "unable to open" in msg:
            return "denied"
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in msg or "not a database" in msg:
            return "damaged"
        return "io"
    return None


def _detail(exc: BaseException) -> str:
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


def _low_on_space(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False


def rebuild_hint(root: Any = None) -> str:
    """The advice for an index whose data is unusable: rebuilding re-reads the images and never changes them."""
    return (f"rebuild it with `lookalike index {root or 'FOLDER'} --rebuild` (this embeds the images again; "
            "the images themselves are untouched)")


def storage_error(exc: BaseException, path: Path, *, writing: bool, root: Any = None) -> LookalikeError | None:
    """The one-line error for a failed read or write of the index at `path`, or None when `exc` is no storage
    error. A permission problem never gets the advice to rebuild: the data is fine, the access is not."""
    kind = _kind(exc)
    if kind is None:
        return None
    detail = _detail(exc)
    if kind == "full" or (kind == "io" and writing and _low_on_space(path)):
        return LookalikeError(f"disk full: cannot write the index at {path} ({detail}); free some space and run "
                              "`lookalike index` again, which resumes from the last committed batch")
    if kind == "denied":
        if writing:
            return LookalikeError(f"cannot write the index at {path} ({detail}): `lookalike index` needs write "
                                  "access to that folder and its files (searching needs only read access)")
        return LookalikeError(f"cannot read the index at {path} ({detail}): searching needs read access to "
                              "that folder and its files")
    if kind == "damaged":
        return LookalikeError(f"index database {path / DATABASE} is damaged ({detail}): {rebuild_hint(root)}")
    return LookalikeError(f"cannot {'write' if writing else 'read'} the index at {path} ({detail})")


# --- paths as stored ----------------------------------------------------------------------------------------
def db_path(rel: str) -> str | bytes:
    """The stored form of a root-relative path: itself when it is valid UTF-8, else the file system's bytes
    (a name read through surrogateescape), so that every name round-trips to the same file."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return os.fsencode(rel)


def from_db_path(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


# --- manifest -------------------------------------------------------------------------------------------------
_NONE = type(None)
# field: (allowed types, required)
_MANIFEST_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "model": ((str,), True), "pooling": ((str,), True), "dim": ((int,), True), "preprocess": ((dict,), True),
    "root": ((str,), True), "format_version": ((int,), False), "weights": ((str, _NONE), False),
    "count": ((int,), False), "created_at": ((str,), False), "updated_at": ((str,), False),
    "model_digest": ((str, _NONE), False),
}
_PREPROCESS_FIELDS: dict[str, tuple[type, ...]] = {
    "input_size": (int,), "resize_size": (int,), "mean": (list,), "std": (list,), "interpolation": (str,),
}


def _manifest_problem(m: Any) -> str | None:
    """What is wrong with a parsed manifest (a missing field or one of the wrong type), None if nothing."""
    if not isinstance(m, dict):
        return "not a JSON object"

    def bad_type(value, types) -> bool:
        return not isinstance(value, types) or (isinstance(value, bool) and bool not in types)

    missing = [k for k, (_, required) in _MANIFEST_FIELDS.items() if required and k not in m]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (types, _) in _MANIFEST_FIELDS.items():
        if key in m and bad_type(m[key], types):
            return f"{key} is {type(m[key]).__name__}, not {' or '.join(t.__name__ for t in types)}"
    if m["dim"] <= 0:
        return f"dim is {m['dim']}"
    for key, types in _PREPROCESS_FIELDS.items():
        value = m["preprocess"].get(key)
        if value is None:
            continue
        if bad_type(value, types) or (isinstance(value, int) and value <= 0):
            return f"preprocess.{key} is {value!r}"
        if isinstance(value, list) and (len(value) != 3 or any(bad_type(x, (int, float)) for x in value)):
            return f"preprocess.{key} is {value!r}, not 3 numbers"
    return None


def _add_failures_table(path: Path) -> None:
    """Format 1 -> 2. The table is created empty: files that failed before the upgrade are decoded once more."""
    db = path / DATABASE
    if not db.is_file():  # created, killed before the first batch: the writer creates the whole schema
        return
    conn = sqlite3.connect(db)
    try:
        conn.executescript(_SCHEMA)
    finally:
        conn.close()


MIGRATIONS[1] = _add_failures_table


def _add_imported_column(path: Path) -> None:
    """Format 2 -> 3: rows are the root's own unless `lookalike import` brought them in."""
    db = path / DATABASE
    if not db.is_file():
        return
    conn = sqlite3.connect(db)
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(images)")}
        if "imported" not in columns:
            conn.execute("ALTER TABLE images ADD COLUMN imported INTEGER NOT NULL DEFAULT 0")
            conn.commit()
    finally:
        conn.close()


MIGRATIONS[2] = _add_imported_column


def _newer_format(path: Path, version: int) -> LookalikeError:
    return LookalikeError(f"index {path} has format {version}, newer than this Lookalike reads ({FORMAT_VERSION}): "
                          "upgrade lookalike")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_index_path(folder) -> Path:
    """`folder/.lookalike`, or a folder under `$LOOKALIKE_HOME/indexes` when that variable is set."""
    folder = Path(folder).expanduser().resolve()
    if os.environ.get("LOOKALIKE_HOME"):
        tag = hashlib.sha1(os.fsencode(str(folder))).hexdigest()[:12]
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


# "whitening": the record of the PCA-whitening applied to the stored vectors (`whitening.store_for_index`), if any.
BACKBONE_KEYS = ("model", "pooling", "dim", "preprocess", "weights", "whitening")


def describe_backbone(m: dict, with_dim: bool = False) -> str:
    """`efficientnet_lite0 (avg pooling, whole photo at 416 px x 1,1.25, borders trimmed[, 1280-d])` for a manifest
    or a backbone description: what error messages name when two descriptors differ."""
    pre = m.get("preprocess") or {}
    parts = [f"{m.get('pooling') or 'avg'} pooling"]
    if pre.get("fit") == "whole":
        scales = list(pre.get("scales") or [1.0])
        parts.append(f"whole photo at {pre['long_side']} px"
                     + (f" x {','.join(f'{f:g}' for f in scales)}" if scales != [1.0] else ""))
    if pre.get("trim"):
        parts.append("borders trimmed")
    if pre.get("layers"):
        parts.append(f"layers {'+'.join(pre['layers'])}")
    if with_dim:
        parts.append(f"{m.get('dim')}-d")
    return f"{m.get('model')} ({', '.join(parts)})"


def same_backbone(a: dict, b: dict) -> bool:
    """Whether two manifests (or a manifest and a backbone description) give comparable vectors."""
    # The weights file's digest, where both sides know it (indexes and exports made before digests do not).
    digests = a.get("model_digest"), b.get("model_digest")
    return all(a.get(k) == b.get(k) for k in BACKBONE_KEYS) and (None in digests or digests[0] == digests[1])


def _connect_reader(path: Path, root: Any = None) -> sqlite3.Connection:
    """A read-only connection to the index database in `path`; never writes, so it works for a user who may only
    read the index (another account, a read-only mount).

    SQLite's WAL mode needs the `-shm` file even to read. When the folder is not writable and no `-wal` file
    exists, every committed change is in the main file and no writer can be running in that folder, so the file is
    opened `immutable` (no shared memory, no locks); otherwise `mode=ro`, falling back to `immutable` on the same
    condition."""
    db = path / DATABASE
    try:
        os.stat(db)
    except FileNotFoundError:
        raise LookalikeError(f"index database {db} is missing: run `lookalike index {root or 'FOLDER'}` to index "
                             "the images again (the images themselves are untouched)") from None
    except OSError as exc:
        raise storage_error(exc, path, writing=False) from None
    uri = "file:" + _uri_path(db)
    try:
        no_wal = os.path.getsize(path / f"{DATABASE}-wal") == 0
    except OSError:
        no_wal = True
    candidates = [f"{uri}?mode=ro"]
    if no_wal:
        if not os.access(path, os.W_OK):
            candidates.insert(0, f"{uri}?mode=ro&immutable=1")
        else:
            candidates.append(f"{uri}?mode=ro&immutable=1")
    error: BaseException | None = None
    for candidate in candidates:
        try:
            conn = sqlite3.connect(candidate, uri=True, check_same_thread=False)
            try:
                conn.execute("SELECT count(*) FROM images").fetchone()
            except BaseException:
                conn.close()
                raise
            return conn
        except sqlite3.Error as exc:
            error = exc
            if _kind(exc) == "damaged":
                break
    assert error is not None
    if _kind(error) == "denied" and not no_wal and not os.access(path, os.W_OK):
        raise LookalikeError(f"cannot read the index at {path} ({error}): it holds changes not yet merged into "
                             f"{DATABASE} ({DATABASE}-wal), which only a user who can write the folder can read; "
                             "run `lookalike index` once as such a user") from None
    raise storage_error(error, path, writing=False, root=root) from None


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(os.fsencode(str(path)), safe="/")


def change_stamp(path) -> tuple | None:
    """A fingerprint of the committed state of the index folder `path`, for a reader that wants to know whether
    to reopen: one stat and one small query. It changes with every committed write and compaction (the
    generation counter) and with every manifest rewrite, which a rebuild ends with. None while the index
    cannot be read, e.g. in the moment a rebuild has removed the old files."""
    path = Path(path)
    try:
        st = (path / MANIFEST).stat()
        conn = _connect_reader(path)
    except (OSError, LookalikeError):
        return None
    try:
        generation = int(ImageIndex._meta(conn, "generation", "0"))
    except (sqlite3.Error, ValueError):
        return None
    finally:
        conn.close()
    return (st.st_ino, st.st_mtime_ns, st.st_size, generation)


def _meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def own_file(folder: Path, name: Any, pattern: "re.Pattern") -> Path | None:
    """`folder/name` when `name` (read from the database or a manifest, so not trusted) is one of the index's own
    file names (`pattern`) and is not a link: a crafted name never makes the index read, truncate or append to a
    file elsewhere. None otherwise."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        return None
    path = folder / name
    return None if path.is_symlink() else path


def _generation(conn: sqlite3.Connection) -> int:
    """The `generation` counter; ValueError when the database holds something else there."""
    value = _meta(conn, "generation", "0")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ValueError(f"generation is {value!r}")
    return int(value)


def _row_problem(ids: np.ndarray, rows: np.ndarray) -> str | None:
    """What is wrong with the rows' vector numbers (negative, shared by two images), None if nothing."""
    if len(rows) and int(rows.min()) < 0:
        return f"image {int(ids[int(np.argmin(rows))])} has the row number {int(rows.min())}"
    if len(np.unique(rows)) != len(rows):
        return "two images share one vector row"
    return None


def ann_fingerprint(vector_file: str, generation: int, kind: str, params: dict) -> str:
    """What an ANN file was built from: the vector file and generation of the index, and the plan (kind and
    build parameters), as one string stored in the file and compared by readers and the writer."""
    return json.dumps({"vector_file": vector_file, "generation": int(generation), "kind": kind,
                       "params": params}, sort_keys=True)


def parse_ann_fingerprint(value: Any) -> dict | None:
    try:
        fp = json.loads(value)
    except (TypeError, ValueError):
        return None
    if not isinstance(fp, dict) or not isinstance(fp.get("generation"), int):
        return None
    return fp


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


class ImageIndex:
    """What a snapshot and the writer share: the folder, its manifest, the vector file. Open one with
    `ImageIndex.open(path, readonly=True)` (an `IndexSnapshot`) or `readonly=False` (an `IndexWriter`), or
    start one with `ImageIndex.create(...)` (an `IndexWriter`).

    `notes` lists what opening found and repaired (a missing database, vectors lost from the vector file) or
    fell back on (a missing or damaged ANN file), one line each, for the caller to show."""

    readonly = True

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self.notes: list[str] = []
        self._conn: sqlite3.Connection | None = None
        self._lock_fh = None

    # --- opening -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, readonly: bool = True) -> "ImageIndex":
        """Open an existing index (its folder, or an image folder holding `.lookalike/`): an `IndexSnapshot`
        when `readonly`, else an `IndexWriter` holding the write lock (waiting a bounded time for another
        writer to finish, `locking.acquire`).

        LookalikeError when it is missing, unreadable, damaged, or made by a newer Lookalike.
        """
        path = resolve_index_dir(path)
        if not readonly:
            writer = IndexWriter.take(path)
            if not writer.reopen():
                writer.close()
                cls._read_manifest(path)  # raises: no index there
            return writer
        manifest = cls._read_manifest(path)
        version = manifest.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise _newer_format(path, version)
        if version < OLDEST_READABLE:
            raise LookalikeError(f"index {path} has the older format {version}: run `lookalike index` on "
                                 "its folder once to upgrade it")
        index = IndexSnapshot(path, manifest)
        try:
            index._load_snapshot()
        except BaseException:
            index.close()
            raise
        return index

    @classmethod
    def create(cls, path, *, root, backbone: dict, ann: str | None = None, replace: bool = False) -> "IndexWriter":
        """Start a new, empty index at `path` for images under `root`, recording the backbone description
        (`Embedder.describe()`) and the search backend asked for (`ann`, default auto). `path` must be new or
        empty; an index already there is replaced only with `replace` (what `--rebuild` asks for), else
        refused. Anything else is refused, so that a mistyped `--index` never deletes a user's files."""
        writer = IndexWriter.take(path)
        try:
            return writer.start(root=root, backbone=backbone, ann=ann, replace=replace)
        except BaseException:
            writer.close()
            raise

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        mpath = path / MANIFEST
        try:
            data = mpath.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise LookalikeError(f"no index at {path}: build one with `lookalike index FOLDER`") from None
        except OSError as exc:
            raise storage_error(exc, path, writing=False) from None
        try:
            manifest = json.loads(data.decode("utf-8"))
            problem = _manifest_problem(manifest)
        except ValueError as exc:
            problem = f"{exc.__class__.__name__}: {exc}"
        if problem:
            # Lookalike writes its manifest whole (atomic replace), so a bad one was written by something else.
            raise LookalikeError(f"index manifest {mpath} is damaged or not Lookalike's ({problem}): restore it "
                                 f"from a backup, or index the images into a new folder with --index (this one "
                                 "keeps its vectors)")
        return manifest

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
        return LookalikeError(f"index database {self.path / DATABASE} is damaged ({problem}): run `lookalike "
                              f"index {self.manifest.get('root', 'FOLDER')}` to repair it (searching refuses it "
                              "until then)")

    # --- the vector file ---------------------------------------------------------------------------------
    def _open_vectors(self, name: str | None, need_rows: int, scattered: bool = False) -> np.ndarray:
        """The whole vector file `name`, memory-mapped read-only; LookalikeError when it holds fewer than
        `need_rows` rows (the database refers to rows it lost). `scattered`: the mapping serves reads of a few
        rows at random places (no read-ahead, see `advise_random`); scans want the default."""
        vpath = own_file(self.path, name or "vectors-0.f32", _VECTOR_NAME)
        if vpath is None:
            raise self._damaged(f"it names the vector file {name!r}, which is not the index's own")
        row_bytes = self.dim * 4
        again = (f"run `lookalike index {self.manifest.get('root', 'FOLDER')}` to embed the images whose vectors "
                 "are lost again (the images themselves are untouched)")
        try:
            n = vpath.stat().st_size // row_bytes
            if need_rows > n:
                raise LookalikeError(f"vector file {vpath} holds {n} vectors, fewer than {DATABASE} refers to: "
                                     f"{again}")
            if n == 0:
                return np.zeros((0, self.dim), np.float32)
            mm = np.memmap(vpath, dtype=np.float32, mode="r", shape=(n, self.dim))
            return (advise_random(mm) if scattered else mm).view(np.ndarray)
        except FileNotFoundError:
            if need_rows == 0:
                return np.zeros((0, self.dim), np.float32)
            raise LookalikeError(f"vector file {vpath} is missing: {again}") from None
        except OSError as exc:
            raise storage_error(exc, self.path, writing=False) from None

    def _gather(self, name: str | None, rows: np.ndarray, scattered: bool = False) -> np.ndarray:
        """Vectors of `rows` of the vector file `name`: a read-only view when the rows are in file order and
        contiguous (paged in on demand, shared through the page cache), else a copy. `scattered`: a few rows
        at random places (see `_open_vectors`)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        mm = self._open_vectors(name, int(rows.max()) + 1, scattered)
        first = int(rows[0])
        if int(rows[-1]) - first + 1 == len(rows) and np.array_equal(rows, np.arange(first, first + len(rows))):
            return mm[first:first + len(rows)]
        return np.ascontiguousarray(mm[rows])


class IndexSnapshot(ImageIndex):
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
            # One read transaction: rows, vector file, ANN file and generation from the same commit, even while
            # a writer commits or compacts (which switches the vector file).
            conn.execute("BEGIN")
            cur = conn.execute("SELECT id, row, path, size, mtime_ns FROM images ORDER BY id")
            ids, rows, paths, stamps = [], [], [], []
            while True:
                chunk = cur.fetchmany(65536)
                if not chunk:
                    break
                a, b, c, d, e = zip(*chunk)
                ids.append(_int_column(a))
                rows.append(_int_column(b))
                paths.extend(c)
                # What the file was when indexed; anything else than two integers matches no file.
                stamps.append(np.array([(x, y) if type(x) is int and type(y) is int else (-1, -1)
                                        for x, y in zip(d, e)], np.int64).reshape(-1, 2))
            self.vector_file = self._meta(conn, "vector_file") or "vectors-0.f32"
            self.ann_file = self._meta(conn, "ann_file")
            self.generation = _generation(conn)
            self.whitening = _json_meta(self._meta(conn, "whitening"))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, writing=False, root=self.manifest.get("root")) from None
        except (ValueError, TypeError) as exc:
            raise self._damaged(str(exc)) from None
        finally:
            conn.close()
        if own_file(self.path, self.vector_file, _VECTOR_NAME) is None:
            raise self._damaged(f"it names the vector file {self.vector_file!r}, which is not the index's own")
        self._stamps = np.concatenate(stamps) if stamps else np.zeros((0, 2), np.int64)
        self._ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self._rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        # Text as it is; only names that are not valid UTF-8 (stored as bytes) need decoding.
        self._paths = [p if isinstance(p, str) else from_db_path(p) for p in paths]
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
        rows = self._rows
        return bool(len(rows) == 0 or (int(rows[-1]) - int(rows[0]) + 1 == len(rows)
                                        and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))))

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


class IndexWriter(ImageIndex):
    """The writer of an index (`lookalike index`, `lookalike import`): one thread, holding the folder's write
    lock. Vectors are appended and fsynced before the transaction that refers to them commits."""

    readonly = False

    def __init__(self, path: Path, manifest: dict) -> None:
        super().__init__(path, manifest)
        self._rows_needed = 0  # the vector file must hold at least this many rows

    @classmethod
    def take(cls, path) -> "IndexWriter":
        """The folder `path` (made when missing) with its write lock held, nothing read yet: then `reopen()`
        the index there, or `start()` a new one. Deciding between the two under the lock is what keeps two
        writers (two `index` runs, an `index` and an `import`) from both starting an index in one folder."""
        path = Path(path).expanduser().resolve()
        made = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise LookalikeError(f"index path {path} is a file, not a folder") from None
        except OSError as exc:
            raise storage_error(exc, path, writing=True) from None
        writer = cls(path, {})
        writer._acquire_lock()
        writer._made_folder = made
        return writer

    def reopen(self) -> bool:
        """Open the index in the taken folder for writing (upgrading an older format in place): True, or
        False when the folder holds no manifest. LookalikeError when it holds one that cannot be used."""
        if not (self.path / MANIFEST).exists():
            return False
        self.manifest = self._read_manifest(self.path)
        version = self.manifest.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise _newer_format(self.path, version)
        if version < FORMAT_VERSION:
            self._upgrade(version)
        self._open_writer()
        return True

    def start(self, *, root, backbone: dict, ann: str | None = None, replace: bool = False) -> "IndexWriter":
        """Start a new, empty index in the taken folder (see `ImageIndex.create`); returns self."""
        path = self.path
        if not replace and (path / MANIFEST).exists():
            raise LookalikeError(f"{path} already holds an index: pass --rebuild to start it over")
        old_files = self._claim_folder()
        with self._writing():
            # The old manifest stays until the old files are gone: a kill in between leaves a folder that
            # is still provably an index, which the next run reopens or rebuilds.
            for name in old_files:
                (path / name).unlink(missing_ok=True)
            stamp = now_iso()
            manifest = {**backbone, "format_version": FORMAT_VERSION, "root": str(Path(root).resolve()),
                        "created_at": stamp, "updated_at": stamp, "count": 0, "ann": ann or "auto"}
            write_json_atomic(path / MANIFEST, manifest)
            self.manifest = manifest
        self._open_writer(new=True)
        unknown = sorted(f.name for f in path.iterdir() if _VECTOR_NAME.fullmatch(f.name)
                         and f.name != self._vector_file().name)
        if unknown:
            self.notes.append(f"left {', '.join(unknown)} in {path}: the old index's database could not "
                              "show that it is the index's own; delete it yourself to reclaim the space")
        return self

    def _upgrade(self, version: int) -> None:
        with self._writing():
            for v in range(version, FORMAT_VERSION):
                if v not in MIGRATIONS:
                    raise LookalikeError(f"index {self.path} has format {v}, which cannot be upgraded: "
                                         f"{rebuild_hint(self.manifest.get('root'))}")
                MIGRATIONS[v](self.path)
            self.manifest["format_version"] = FORMAT_VERSION
            write_json_atomic(self.path / MANIFEST, self.manifest)

    def _claim_folder(self) -> list[str]:
        """Whether a new index may be started in `self.path` (else LookalikeError), and which files of the old
        index there its bookkeeping names, to be removed."""
        path = self.path
        if (path / MANIFEST).exists():
            try:
                self._read_manifest(path)
            except LookalikeError as exc:
                raise LookalikeError(f"{path} does not hold a Lookalike index that can be replaced ({exc}); "
                                     "choose a new or empty folder for --index") from None
            return [*_DB_FILES, *self._own_files_of(path)]
        try:
            others = sorted(e for e in os.listdir(path) if e != LOCKFILE and not _MANIFEST_TMP.fullmatch(e))
        except OSError as exc:
            raise storage_error(exc, path, writing=True) from None
        if others:
            raise LookalikeError(f"{path} is not empty and holds no Lookalike index ({len(others)} entries, e.g. "
                                 f"{others[0]!r}): choose a new or empty folder for --index")
        return []

    @staticmethod
    def _own_files_of(path: Path) -> list[str]:
        """The vector and ANN files the database in `path` names as its own; none when it cannot be read."""
        if not (path / DATABASE).is_file():
            return []
        try:
            conn = _connect_reader(path)
        except LookalikeError:
            return []
        try:
            names = [row[0] for row in conn.execute(
                "SELECT value FROM meta WHERE key IN ('vector_file', 'pending_vector_file', 'retired_vector_file',"
                " 'ann_file', 'pending_ann_file', 'retired_ann_file')")]
            whitening = _json_meta(ImageIndex._meta(conn, "whitening"))
            has_images = conn.execute("SELECT 1 FROM images LIMIT 1").fetchone() is not None
        except sqlite3.Error:
            return []
        finally:
            conn.close()
        if not any(_VECTOR_NAME.fullmatch(n) for n in names) and not has_images:
            names.append("vectors-0.f32")  # the name older versions wrote to before their first commit recorded it
        if whitening is not None and isinstance(whitening.get("file"), str):
            names.append(whitening["file"])
        return [n for n in names if _VECTOR_NAME.fullmatch(n) or _ANN_NAME.fullmatch(n) or _WHITENING_NAME.fullmatch(n)]

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path / DATABASE, isolation_level=None)  # explicit BEGIN/COMMIT
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.executescript(_SCHEMA)
            conn.execute("SELECT count(*) FROM images").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _acquire_lock(self) -> None:
        from ...locking import LockBusy, acquire

        try:
            self._lock_fh = acquire(self.path / LOCKFILE)
        except LockBusy as busy:
            raise LookalikeError(f"another Lookalike process{busy.by()} is writing the index at {self.path}: "
                                 "wait for it to finish, then run this again") from None
        except OSError as exc:
            raise storage_error(exc, self.path, writing=True) from None

    def _open_writer(self, new: bool = False) -> None:
        with self._writing():
            missing = not (self.path / DATABASE).is_file()
            self._conn = self._connect_writer()
            recorded = self._meta(self._conn, "vector_file")
            if recorded is None:
                # A new database starts a vector file of its own, after any file already there, so it never
                # appends to rows it cannot account for. An existing one without the record was written by an
                # older version, which used vectors-0.f32 until its first commit recorded it.
                name = self._fresh_name(_VECTOR_NAME, "vectors-{}.f32") if missing else "vectors-0.f32"
                self._conn.execute("INSERT INTO meta VALUES ('vector_file', ?)", (name,))
            elif own_file(self.path, recorded, _VECTOR_NAME) is None:
                # Not a name this index writes (or a link): never opened, truncated or appended to. The rows
                # that referred to it are forgotten below (`_check_vector_file`) and embedded again.
                name = self._fresh_name(_VECTOR_NAME, "vectors-{}.f32")
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'vector_file'", (name,))
                self.notes.append(f"{DATABASE} named the vector file {recorded!r}, which is not the index's own: "
                                  f"started {name} instead")
            self._repair_rows()
            lost_work = self.manifest.get("count", 0) or any(
                _VECTOR_NAME.fullmatch(f.name) for f in self.path.iterdir())
            if missing and not new and lost_work:  # not merely created and killed before its database
                self.notes.append(f"index database {self.path / DATABASE} was missing: started a new one, so every "
                                  "image is embedded again")
            self._check_vector_file()
            self._clean_orphan_files()

    def _repair_rows(self) -> None:
        """Forget rows the index cannot have written (a row number that is not a whole number >= 0, one vector
        row shared by two images, a path that is neither text nor bytes), so this run embeds their files again,
        and reset a `generation` that is not a number."""
        conn = self._conn
        with self._transaction():
            bad = conn.execute(
                "SELECT count(*) FROM images WHERE typeof(row) != 'integer' OR row < 0 "
                "OR typeof(path) NOT IN ('text', 'blob') "
                "OR row IN (SELECT row FROM images GROUP BY row HAVING count(*) > 1)").fetchone()[0]
            if bad:
                conn.execute("DELETE FROM images WHERE typeof(row) != 'integer' OR row < 0 "
                             "OR typeof(path) NOT IN ('text', 'blob') "
                             "OR row IN (SELECT row FROM images GROUP BY row HAVING count(*) > 1)")
                self.notes.append(f"{DATABASE} held {bad} images with impossible vector rows: forgot them, so that "
                                  "this run embeds them again")
            try:
                _generation(conn)
            except ValueError:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', '0')")
            if bad:
                self._bump_generation()

    def _check_vector_file(self) -> None:
        """Repair a vector file shorter than the database says (deleted, truncated, restored from an older
        backup): forget the images whose vectors are gone, so this run embeds them again. Refusing instead would
        leave only --rebuild, which embeds every image again; this re-embeds only those that lost their vector,
        and the rows that remain are whole rows written and fsynced before their commit."""
        conn = self._conn
        top = conn.execute("SELECT max(row) FROM images").fetchone()[0]
        vfile = self._vector_file()
        try:
            have = vfile.stat().st_size // (self.dim * 4)
        except FileNotFoundError:
            have = None
        if top is not None and top >= (have or 0):
            with self._transaction():
                lost = conn.execute("SELECT count(*) FROM images WHERE row >= ?", (have or 0,)).fetchone()[0]
                conn.execute("DELETE FROM images WHERE row >= ?", (have or 0,))
                self._bump_generation()
            state = "is missing" if have is None else f"holds {have} vectors"
            self.notes.append(f"vector file {vfile} {state}, fewer than {DATABASE} refers to: forgot the {lost} "
                              "images whose vectors were lost, so that this run embeds them again")
        top = conn.execute("SELECT max(row) FROM images").fetchone()[0]
        self._rows_needed = 0 if top is None else top + 1

    def _fresh_name(self, pattern: "re.Pattern", template: str) -> str:
        """A file name of `pattern` not used in the folder, numbered after every one there."""
        numbers = [int(m.group(1)) for f in self.path.iterdir() if (m := pattern.fullmatch(f.name))]
        return template.format(max(numbers) + 1 if numbers else 0)

    def _fresh_vector_name(self) -> str:
        return self._fresh_name(_VECTOR_NAME, "vectors-{}.f32")

    # --- reading (the writer's view) ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM images").fetchone()[0])

    @property
    def generation(self) -> int:
        return _generation(self._conn)

    def ids(self) -> np.ndarray:
        """int64 image ids, ascending, aligned with `vectors()`."""
        return _column(self._conn.execute("SELECT id FROM images ORDER BY id"))

    def vectors(self) -> np.ndarray:
        """(N, D) float32 L2-normalised rows, aligned with `ids()`."""
        rows = _column(self._conn.execute("SELECT row FROM images ORDER BY id"))
        return self._gather(self._meta(self._conn, "vector_file"), rows)

    def path_of(self, image_id: int) -> Path:
        row = self._conn.execute("SELECT path FROM images WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return self.root / from_db_path(row[0])

    def id_of(self, path) -> int | None:
        row = self._conn.execute("SELECT id FROM images WHERE path = ?", (db_path(self.stored_path(path)),)).fetchone()
        return None if row is None else int(row[0])

    def vector_of(self, image_id: int) -> np.ndarray:
        row = self._conn.execute("SELECT row FROM images WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return self._gather(self._meta(self._conn, "vector_file"), np.asarray([row[0]]), scattered=True)[0]

    def stamp_of(self, image_id: int) -> tuple[int, int]:
        row = self._conn.execute("SELECT size, mtime_ns FROM images WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return row[0], row[1]

    def entries(self) -> dict[str, IndexEntry]:
        """{stored path: IndexEntry} of every row (small indexes and tests; `sync` looks rows up in batches)."""
        return {path: entry for path, entry in self.iter_entries()}

    def iter_entries(self, where: str = "", args: tuple = ()) -> Iterator[tuple[str, IndexEntry]]:
        """(stored path, IndexEntry) of the rows (optionally those of an SQL `where` clause), streamed."""
        cur = self._conn.execute("SELECT path, id, size, mtime_ns, digest, row, imported FROM images "
                                 + (f"WHERE {where}" if where else ""), args)
        for r in cur:
            yield from_db_path(r[0]), IndexEntry(r[1], r[2], r[3], r[4], r[5], bool(r[6]))

    def lookup_paths(self, paths: list[str]) -> dict[str, IndexEntry]:
        """{stored path: IndexEntry} of those of `paths` that the index holds: one query per 500 paths."""
        out: dict[str, IndexEntry] = {}
        for s in range(0, len(paths), 500):
            part = [db_path(p) for p in paths[s:s + 500]]
            marks = ",".join("?" * len(part))
            for path, entry in self.iter_entries(f"path IN ({marks})", tuple(part)):
                out[path] = entry
        return out

    def entry_by_digest(self, digest: str, exclude_ids: Iterable[int] = ()) -> tuple[str, IndexEntry] | None:
        """A row whose file has this content hash (not one of `exclude_ids`), or None."""
        skip = set(exclude_ids)
        for path, entry in self.iter_entries("digest = ?", (digest,)):
            if entry.id not in skip:
                return path, entry
        return None

    def digests(self) -> set[str]:
        """The content hashes of every row, for a quick membership test while files are read."""
        return {r[0] for r in self._conn.execute("SELECT digest FROM images")}

    @contextlib.contextmanager
    def walk_table(self) -> Iterator[Callable[[list[str]], None]]:
        """A temporary table of the paths a walk of the root found: yields `mark_seen(paths)`; inside the
        block, `unseen_entries()` lists the root's rows the walk did not find."""
        conn = self._conn
        conn.execute("DROP TABLE IF EXISTS temp.walk_seen")
        conn.execute("CREATE TEMP TABLE walk_seen (path PRIMARY KEY) WITHOUT ROWID")

        def mark_seen(paths: list[str]) -> None:
            conn.execute("BEGIN")
            try:
                conn.executemany("INSERT OR IGNORE INTO temp.walk_seen VALUES (?)", [(db_path(p),) for p in paths])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        try:
            yield mark_seen
        finally:
            conn.execute("DROP TABLE IF EXISTS temp.walk_seen")

    def seen_paths(self, paths: list[str]) -> set[str]:
        """Inside `walk_table()`: those of `paths` already marked seen."""
        out: set[str] = set()
        for s in range(0, len(paths), 500):
            part = [db_path(p) for p in paths[s:s + 500]]
            marks = ",".join("?" * len(part))
            out.update(from_db_path(r[0]) for r in self._conn.execute(
                f"SELECT path FROM temp.walk_seen WHERE path IN ({marks})", part))
        return out

    def unseen_entries(self) -> Iterator[tuple[str, IndexEntry]]:
        """Inside `walk_table()`: the rows the root owns (not imported) whose path the walk did not find."""
        return self.iter_entries("imported = 0 AND path NOT IN (SELECT path FROM temp.walk_seen)")

    def digest_checker(self) -> "DigestChecker":
        """`has(digest)` for the decoding threads (a connection of their own: SQLite connections belong to a
        thread); close it after use."""
        return DigestChecker(self.path / DATABASE)

    def failures(self) -> dict[str, FailureEntry]:
        """{relative path: FailureEntry} of the files that could not be decoded."""
        return {from_db_path(r[0]): FailureEntry(r[1], r[2], r[3])
                for r in self._conn.execute("SELECT path, size, mtime_ns, reason FROM failures")}

    def failures_decoder(self) -> str | None:
        """The decoder (`images.decoder_version`) that last tried the recorded failures, None before any."""
        return self._meta(self._conn, "failures_decoder")

    # --- writing helpers ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Storage errors of a write (a full disk, a read-only folder) as one LookalikeError line."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            err = storage_error(exc, self.path, writing=True, root=self.manifest.get("root"))
            if err is None:
                raise
            raise err from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does): a second ROLLBACK would raise "no
            # transaction is active" and hide the real error.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    def _vector_file(self) -> Path:
        name = (self._meta(self._conn, "vector_file") if self._conn is not None else None) or "vectors-0.f32"
        path = own_file(self.path, name, _VECTOR_NAME)
        if path is None:  # repaired on open: only a change made while this writer runs gets here
            raise self._damaged(f"it names the vector file {name!r}, which is not the index's own")
        return path

    def read_rows(self, rows) -> np.ndarray:
        """Vectors at given rows of the current vector file."""
        return self._gather(self._vector_file().name, np.asarray(rows, np.int64), scattered=True)

    def append_vectors(self, vectors: np.ndarray) -> list[int]:
        """Append rows to the vector file and make them durable; returns their row numbers."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {vectors.shape}")
        if not np.isfinite(vectors).all():  # callers drop such rows first; nothing non-finite is ever stored
            raise ValueError("refusing to store a vector that is not finite")
        vpath = self._vector_file()
        row_bytes = self.dim * 4
        with self._writing(), open(vpath, "ab") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size // row_bytes < self._rows_needed:
                # Cut short behind our back while this run held the lock: appending would reuse live rows.
                raise LookalikeError(f"vector file {vpath} was truncated while `lookalike index` was writing it: "
                                     "run `lookalike index` again, which repairs it")
            if size % row_bytes:  # a write cut short by a kill: drop the partial row
                fh.truncate(size - size % row_bytes)
                size -= size % row_bytes
            fh.write(vectors.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        start = size // row_bytes
        self._rows_needed = start + len(vectors)
        return list(range(start, start + len(vectors)))

    def commit(self, inserts: Iterable[tuple] = (), updates: Iterable[tuple] = (), deletes: Iterable[int] = (),
               failed: Iterable[tuple] = (), cleared: Iterable[str] = (), decoder: str | None = None,
               imported: bool = False) -> None:
        """One transaction. inserts: (path, size, mtime_ns, digest, row); updates: (id, path, size, mtime_ns,
        digest, row); deletes: ids; failed: (path, size, mtime_ns, reason), replacing any earlier failure of the
        path; cleared: paths whose failure no longer applies; decoder: the decoder that found `failed`.
        `imported`: the inserted and updated rows come from `lookalike import` (else they are the root's own)."""
        conn = self._conn
        flag = int(bool(imported))
        with self._writing(), self._transaction():
            conn.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in deletes])
            conn.executemany("UPDATE images SET path = ?, size = ?, mtime_ns = ?, digest = ?, row = ?, imported = ? "
                             "WHERE id = ?", [(db_path(p), s, m, d, r, flag, i) for i, p, s, m, d, r in updates])
            conn.executemany("INSERT INTO images (path, size, mtime_ns, digest, row, imported) "
                             "VALUES (?, ?, ?, ?, ?, ?)", [(db_path(p), s, m, d, r, flag) for p, s, m, d, r in inserts])
            conn.executemany("DELETE FROM failures WHERE path = ?", [(db_path(p),) for p in cleared])
            conn.executemany("INSERT OR REPLACE INTO failures (path, size, mtime_ns, reason) VALUES (?, ?, ?, ?)",
                             [(db_path(p), s, m, r) for p, s, m, r in failed])
            if decoder is not None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('failures_decoder', ?)", (decoder,))
            self._bump_generation()

    def _bump_generation(self) -> None:
        """Inside a write transaction: tell readers (`change_stamp`) that the committed state changed."""
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    @property
    def whitening(self) -> dict | None:
        """The record of the whitening applied to the stored vectors (committed with them), or None."""
        return _json_meta(self._meta(self._conn, "whitening"))

    def dead_rows(self) -> int:
        vfile = self._vector_file()
        total = vfile.stat().st_size // (self.dim * 4) if vfile.exists() else 0
        return total - len(self)

    def compact(self, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                meta: dict[str, str] | None = None) -> None:
        """Rewrite the vector file without dead rows, into a new generation file, switched to atomically.
        `transform`: applied to each block of rows on the way (e.g. a whitening: same width out), with `meta`
        keys set in the switch's transaction, so that readers see the new vectors and what made them together.
        The new file is recorded as pending before it is written and the old one as retired in the switch, so
        a kill at any point leaves only files the database names, which the next writer removes. Rows are
        copied block by block in id order: memory stays bounded at any size."""
        conn = self._conn
        old = self._vector_file()
        ids = _column(conn.execute("SELECT id FROM images ORDER BY id"))
        rows = _column(conn.execute("SELECT row FROM images ORDER BY id"))
        mm = self._open_vectors(old.name, int(rows.max()) + 1 if len(rows) else 0)
        new = self.path / self._fresh_vector_name()
        with self._writing():
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('pending_vector_file', ?)", (new.name,))
            with open(new, "wb") as fh:
                for s in range(0, len(rows), 65536):
                    block = np.ascontiguousarray(mm[rows[s:s + 65536]], np.float32)
                    if transform is not None:
                        block = np.ascontiguousarray(transform(block), np.float32)
                        if block.shape != (min(65536, len(rows) - s), self.dim):
                            raise ValueError(f"transform gave {block.shape} vectors")
                    fh.write(block.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            del mm
            with contextlib.suppress(OSError):  # a chmod the user made on the vectors outlives compaction
                os.chmod(new, stat.S_IMODE(old.stat().st_mode))
            fsync_dir(self.path)
            with self._transaction():
                conn.executemany("UPDATE images SET row = ? WHERE id = ?",
                                 ((n, int(i)) for n, i in enumerate(ids)))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('vector_file', ?)", (new.name,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('retired_vector_file', ?)", (old.name,))
                conn.execute("DELETE FROM meta WHERE key = 'pending_vector_file'")
                for key, value in (meta or {}).items():
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                self._bump_generation()
            self._rows_needed = len(ids)
            self._clean_orphan_files()

    def _clean_orphan_files(self) -> None:
        """Remove the vector and ANN files the database records as pending (a compaction or an ANN save cut
        short) or retired (one finished); never any other file."""
        conn = self._conn
        current = {self._vector_file().name, self._meta(conn, "ann_file")}
        for key in ("pending_vector_file", "retired_vector_file", "pending_ann_file", "retired_ann_file"):
            name = self._meta(conn, key)
            if name is None:
                continue
            if name not in current and (_VECTOR_NAME.fullmatch(name) or _ANN_NAME.fullmatch(name)):
                try:
                    (self.path / name).unlink(missing_ok=True)
                except OSError:
                    continue  # kept on record: tried again next time
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def touch_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.manifest["updated_at"] = now_iso()
        with self._writing():
            write_json_atomic(self.path / MANIFEST, self.manifest)

    # --- the ANN file --------------------------------------------------------------------------------------
    def _id_rows_by_row(self) -> tuple[np.ndarray, np.ndarray]:
        ids = _column(self._conn.execute("SELECT id FROM images ORDER BY row"))
        rows = _column(self._conn.execute("SELECT row FROM images ORDER BY row"))
        return ids, rows

    def update_ann(self, requested: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
        """Bring the ANN file in step with the committed vectors, once per run: nothing when it already is,
        a catch-up (new entries added, removed and changed ones masked) when it is a few commits behind, else a
        fresh build from the vectors (another backend or parameters, `auto` passing a threshold, too many masked
        entries, or a missing or damaged file, which adds a note). Then it is saved under a new name recorded
        as pending first, and switched to in one transaction. `requested` (auto or a kind) is stored in the
        manifest; None keeps the manifest's. Returns the backend's `params()`, with "requested"."""
        from . import ann

        requested = requested or self.ann_requested
        if requested not in ann.CHOICES:
            raise LookalikeError(f"unknown search backend {requested!r}: use one of {', '.join(ann.CHOICES)}")
        if self.manifest.get("ann") != requested:
            self.touch_manifest(ann=requested)
        conn = self._conn
        n = len(self)
        kind, params = ann.plan(requested, n, self.dim)
        recorded = self._meta(conn, "ann_file")
        if kind == "exact":
            if recorded is not None:
                self._record_ann(None)
            return {"backend": "exact", "dim": self.dim, "count": n, "dead": 0, "storage": "float32",
                    "requested": requested}
        backend = None
        path = own_file(self.path, recorded, _ANN_NAME)
        if path is not None:
            try:
                header = ann.verify(path)  # the whole file, header included, against its checksums
                fp = parse_ann_fingerprint(header.get("fingerprint"))
                same_plan = fp is not None and fp.get("kind") == kind and fp.get("params") == _jsonable(params) \
                    and fp.get("vector_file") == self._vector_file().name and fp["generation"] <= self.generation
                if same_plan and fp["generation"] == self.generation:
                    return {**_header_params(header, fp, n), "requested": requested}
                if same_plan:
                    backend = ann.load(path)
                    ids, rows = self._id_rows_by_row()
                    mm = self._open_vectors(self._vector_file().name, int(rows.max()) + 1 if len(rows) else 0)
                    backend.catch_up(ids, rows, RowVectors(mm, rows))
                    if backend.needs_rebuild():
                        backend = None
            except ann.AnnFileError as exc:
                self.notes.append(f"{exc}: rebuilt it from the vectors")
                backend = None
        if backend is None:
            if self.dead_rows() > 0:
                self.compact()  # the build reads the vectors as one memory-mapped range, in file order
            ids, rows = self._id_rows_by_row()
            vectors = self._gather(self._vector_file().name, rows)
            backend = ann.build(kind, ids, vectors, keys=rows, progress=progress, **params)
            del vectors
        self._save_ann(backend, ann_fingerprint(self._vector_file().name, self.generation, kind,
                                                _jsonable(params)))
        return {**backend.params(), "requested": requested}

    def _save_ann(self, backend, fingerprint: str) -> None:
        name = self._fresh_name(_ANN_NAME, "ann-{}.ann")
        conn = self._conn
        with self._writing():
            with self._transaction():  # no generation bump: derived state, the vectors are unchanged
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pending_ann_file', ?)", (name,))
            backend.save(self.path / name, fingerprint=fingerprint, atomic=False)
            fsync_dir(self.path)
            self._record_ann(name)

    def _record_ann(self, name: str | None) -> None:
        """Switch the database to the ANN file `name` (None: no file, exact search) and remove the old one."""
        conn = self._conn
        with self._writing():
            old = self._meta(conn, "ann_file")
            with self._transaction():
                if name is None:
                    conn.execute("DELETE FROM meta WHERE key = 'ann_file'")
                else:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('ann_file', ?)", (name,))
                if old is not None and old != name:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('retired_ann_file', ?)", (old,))
                conn.execute("DELETE FROM meta WHERE key = 'pending_ann_file'")
            self._clean_orphan_files()


class DigestChecker:
    """Whether some row of the index has a content hash: one small indexed query, from any thread."""

    def __init__(self, db: Path) -> None:
        self._conn = sqlite3.connect(db, check_same_thread=False)
        self._lock = threading.Lock()

    def __call__(self, digest: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM images WHERE digest = ? LIMIT 1", (digest,)).fetchone() \
                is not None

    def close(self) -> None:
        self._conn.close()


def _json_meta(value: str | None) -> dict | None:
    """A meta value holding a JSON object (None when absent or not one)."""
    if value is None:
        return None
    try:
        out = json.loads(value)
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


def _int_column(values: tuple) -> np.ndarray:
    """Integers read from the database as int64; ValueError naming the first value that is not one."""
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None:
        raise ValueError(f"an image's id or row is {bad!r}")
    return np.fromiter(values, np.int64, len(values))


def _column(cur) -> np.ndarray:
    """The single int64 column of a cursor, fetched in large chunks."""
    parts = []
    while True:
        chunk = cur.fetchmany(65536)
        if not chunk:
            break
        parts.append(np.fromiter((r[0] for r in chunk), np.int64, len(chunk)))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, sort_keys=True))


def _header_params(header: dict, fp: dict, n: int) -> dict:
    """`Backend.params()` as a saved file's header (and its fingerprint's plan) tells it, without loading it."""
    out = {"backend": header.get("kind"), "dim": header.get("dim"), "count": n, "storage": header.get("storage"),
           **(header.get("params") or {})}
    if (fp.get("params") or {}).get("pca"):
        out["pca"] = fp["params"]["pca"]
    if int(header.get("rerank", 1)) > 1:
        out["rerank"] = int(header["rerank"])
    return out
