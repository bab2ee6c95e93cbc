"""The index database (`index.db`, SQLite in WAL mode): its schema and the upgrades of older formats, read-only
and writing connections, the `meta` records, and every SQL statement the index runs.

One row per image: path relative to the root, size, mtime, content hash, and the row of its vector in the vector
file; one row per file that could not be decoded (so an unchanged bad file is not decoded again); a `generation`
counter in `meta`, bumped by every write transaction, so that a running server can tell cheaply that the index
changed (`change_stamp`).

Paths are stored as text when they are valid UTF-8, else as the file system's bytes (a BLOB), so a file name
that is not valid UTF-8 round-trips to the same file."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from ...errors import LookalikeError
from .errors import _kind, storage_error
from .layout import DATABASE, MANIFEST

# The date an image sorts by: taken (`facts.taken`), else the file's mtime (UTC), both ISO 8601 text.
DATE_KEY_SQL = "COALESCE({taken}, strftime('%Y-%m-%dT%H:%M:%S', {mtime_ns} / 1000000000, 'unixepoch'))"

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
CREATE TABLE IF NOT EXISTS facts (  -- what a photo's header says, read after its vector (`indexing/facts.py`)
    id INTEGER PRIMARY KEY,         -- images.id; dropped when the image changes or goes, read again by `index`
    width INTEGER,                  -- as shown (EXIF orientation applied); NULL when the header could not be read
    height INTEGER,
    taken TEXT,                     -- EXIF DateTimeOriginal as ISO 8601 (local time, as the camera wrote it)
    camera TEXT,                    -- EXIF Make and Model
    date TEXT                       -- the library's date sort key: taken, else the file's mtime (DATE_KEY_SQL)
);
CREATE TABLE IF NOT EXISTS renditions (  -- small JPEGs read by spatial verification (`renditions.py`)
    id INTEGER PRIMARY KEY,         -- images.id
    size INTEGER NOT NULL,          -- of the file it was made from: used only while the file still has both
    mtime_ns INTEGER NOT NULL,
    jpeg BLOB NOT NULL,
    keypoints BLOB                  -- packed local features (`describe/local_features.py`); NULL: not stored
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


def _add_column(path: Path, table: str, column: str, declaration: str, then: str | None = None) -> None:
    """`ALTER TABLE table ADD COLUMN column declaration` where the table exists without the column (a run killed
    after it finds it there), then the SQL `then`, in one commit. No database yet: the writer creates the whole
    schema."""
    db = path / DATABASE
    if not db.is_file():
        return
    conn = sqlite3.connect(db)
    try:
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if columns and column not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            if then:
                conn.execute(then)
            conn.commit()
    finally:
        conn.close()


def _add_imported_column(path: Path) -> None:
    """Format 2 -> 3: rows are the root's own unless `lookalike import` brought them in."""
    _add_column(path, "images", "imported", "INTEGER NOT NULL DEFAULT 0")


MIGRATIONS[2] = _add_imported_column


def _add_facts_table(path: Path) -> None:
    """Format 3 -> 4: the `facts` table, created empty; the next `lookalike index` reads the headers of the images
    already indexed (no image is embedded again)."""
    _add_failures_table(path)  # the whole schema, IF NOT EXISTS


MIGRATIONS[3] = _add_facts_table


def _add_renditions_table(path: Path) -> None:
    """Format 4 -> 5: the `renditions` table, created empty; images indexed before it have none, and verification
    decodes their files as before."""
    _add_failures_table(path)  # the whole schema, IF NOT EXISTS


MIGRATIONS[4] = _add_renditions_table


def _add_date_key(path: Path) -> None:
    """Format 5 -> 6: `facts.date`, the library's date sort key, computed here for the facts already read."""
    key = DATE_KEY_SQL.format(taken="facts.taken", mtime_ns="images.mtime_ns")
    _add_column(path, "facts", "date", "TEXT",
                then=f"UPDATE facts SET date = (SELECT {key} FROM images WHERE images.id = facts.id)")


MIGRATIONS[5] = _add_date_key


def _add_keypoints_column(path: Path) -> None:
    """Format 6 -> 7: `renditions.keypoints`, NULL for the images indexed before it (verification runs SIFT on
    their renditions, as before); images indexed or changed from now on get them (`indexing/keypoints.py`
    stores the others' from their renditions)."""
    _add_column(path, "renditions", "keypoints", "BLOB")


MIGRATIONS[6] = _add_keypoints_column


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
                # Reads the schema and the table's first page: a file that is no database, or that this user
                # cannot read, fails here; a count would scan every row, on each verified search.
                conn.execute("SELECT 1 FROM images LIMIT 1").fetchone()
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
        generation = int(_meta(conn, "generation", "0"))
    except (sqlite3.Error, ValueError):
        return None
    finally:
        conn.close()
    return (st.st_ino, st.st_mtime_ns, st.st_size, generation)


def _meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


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



# --- the writer's connection and transactions -----------------------------------------------------------------
def connect_writer(path: Path) -> sqlite3.Connection:
    """The writer's connection to the database in `path` (created with the schema when missing)."""
    conn = sqlite3.connect(path / DATABASE, isolation_level=None)  # explicit BEGIN/COMMIT
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


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
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


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def delete_meta(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM meta WHERE key = ?", (key,))


def bump_generation(conn: sqlite3.Connection) -> None:
    """Inside a write transaction: tell readers (`change_stamp`) that the committed state changed."""
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")


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

