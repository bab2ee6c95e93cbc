"""The statements the index runs on its `images` and `failures` tables (the schema, connections and `meta`
records are in `database.py`): what a snapshot loads, what the writer looks up, commits, repairs and compacts,
and what an export streams. Callers hold the transactions; these functions only run SQL."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from ...errors import LookalikeError
from .database import (DATE_KEY_SQL, FailureEntry, IndexEntry, _column, _generation, _int_column, _json_meta,
                       _meta, db_path, delete_meta, from_db_path, set_meta)
from .layout import DATABASE

_IMPOSSIBLE_ROWS = ("typeof(row) != 'integer' OR row < 0 OR typeof(path) NOT IN ('text', 'blob') "
                    "OR row IN (SELECT row FROM images GROUP BY row HAVING count(*) > 1)")
_ENTRY_COLUMNS = "path, id, size, mtime_ns, digest, row, imported"


class SnapshotRows(NamedTuple):
    """What a reader loads in one read transaction: the rows, and the files and generation of that commit."""

    ids: list[np.ndarray]
    rows: list[np.ndarray]
    paths: list
    stamps: list[np.ndarray]
    vector_file: str
    ann_file: str | None
    generation: int
    whitening: dict | None


def read_snapshot(conn: sqlite3.Connection) -> SnapshotRows:
    """Every image row (in chunks, by id) with the vector file, ANN file, generation and whitening of the same
    commit. sqlite3.Error, or ValueError / TypeError for contents the index did not write."""
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
    out = SnapshotRows(ids, rows, paths, stamps, _meta(conn, "vector_file") or "vectors-0.f32",
                       _meta(conn, "ann_file"), _generation(conn), _json_meta(_meta(conn, "whitening")))
    conn.execute("COMMIT")
    return out


def named_files(conn: sqlite3.Connection) -> tuple[list[str], dict | None, bool]:
    """(the vector and ANN file names `meta` records, current, pending or retired; the whitening record;
    whether any image row exists)."""
    names = [row[0] for row in conn.execute(
        "SELECT value FROM meta WHERE key IN ('vector_file', 'pending_vector_file', 'retired_vector_file',"
        " 'ann_file', 'pending_ann_file', 'retired_ann_file')")]
    whitening = _json_meta(_meta(conn, "whitening"))
    has_images = conn.execute("SELECT 1 FROM images LIMIT 1").fetchone() is not None
    return names, whitening, has_images


# --- the writer's repairs on open -----------------------------------------------------------------------------
def forget_impossible_rows(conn: sqlite3.Connection) -> int:
    """Delete the rows the index cannot have written (see `IndexWriter._repair_rows`); how many there were."""
    bad = conn.execute(f"SELECT count(*) FROM images WHERE {_IMPOSSIBLE_ROWS}").fetchone()[0]
    if bad:
        conn.execute(f"DELETE FROM images WHERE {_IMPOSSIBLE_ROWS}")
    return bad


def reset_bad_generation(conn: sqlite3.Connection) -> None:
    try:
        _generation(conn)
    except ValueError:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', '0')")


def top_row(conn: sqlite3.Connection) -> int | None:
    """The highest vector row an image refers to, None when there are no images."""
    return conn.execute("SELECT max(row) FROM images").fetchone()[0]


def forget_rows_from(conn: sqlite3.Connection, first: int) -> int:
    """Delete the images whose vector row is `first` or later; how many there were."""
    lost = conn.execute("SELECT count(*) FROM images WHERE row >= ?", (first,)).fetchone()[0]
    conn.execute("DELETE FROM images WHERE row >= ?", (first,))
    return lost


# --- the writer's reads ----------------------------------------------------------------------------------------
def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])


def ids_by_id(conn: sqlite3.Connection) -> np.ndarray:
    return _column(conn.execute("SELECT id FROM images ORDER BY id"))


def rows_by_id(conn: sqlite3.Connection) -> np.ndarray:
    """The vector rows of the images, in id order (aligned with `ids_by_id`)."""
    return _column(conn.execute("SELECT row FROM images ORDER BY id"))


def ids_rows_by_row(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vector rows) of the images in vector-file order."""
    ids = _column(conn.execute("SELECT id FROM images ORDER BY row"))
    rows = _column(conn.execute("SELECT row FROM images ORDER BY row"))
    return ids, rows


def _one(conn: sqlite3.Connection, columns: str, image_id: int) -> tuple:
    row = conn.execute(f"SELECT {columns} FROM images WHERE id = ?", (int(image_id),)).fetchone()
    if row is None:
        raise KeyError(image_id)
    return row


def path_of(conn: sqlite3.Connection, image_id: int) -> str:
    """The stored path of an image id (KeyError if unknown)."""
    return from_db_path(_one(conn, "path", image_id)[0])


def row_of(conn: sqlite3.Connection, image_id: int) -> int:
    """The vector row of an image id (KeyError if unknown)."""
    return _one(conn, "row", image_id)[0]


def stamp_of(conn: sqlite3.Connection, image_id: int) -> tuple[int, int]:
    """(size, mtime_ns) of an image id (KeyError if unknown)."""
    size, mtime = _one(conn, "size, mtime_ns", image_id)
    return size, mtime


def id_of(conn: sqlite3.Connection, stored: str) -> int | None:
    row = conn.execute("SELECT id FROM images WHERE path = ?", (db_path(stored),)).fetchone()
    return None if row is None else int(row[0])


def iter_entries(conn: sqlite3.Connection, where: str = "", args: tuple = ()) -> Iterator[tuple[str, IndexEntry]]:
    """(stored path, IndexEntry) of the rows (optionally those of an SQL `where` clause), streamed."""
    cur = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM images " + (f"WHERE {where}" if where else ""), args)
    for r in cur:
        yield from_db_path(r[0]), IndexEntry(r[1], r[2], r[3], r[4], r[5], bool(r[6]))


def entries_of_paths(conn: sqlite3.Connection, paths: list[str]) -> dict[str, IndexEntry]:
    """{stored path: IndexEntry} of those of `paths` that the index holds: one query per 500 paths."""
    out: dict[str, IndexEntry] = {}
    for s in range(0, len(paths), 500):
        part = [db_path(p) for p in paths[s:s + 500]]
        marks = ",".join("?" * len(part))
        for path, entry in iter_entries(conn, f"path IN ({marks})", tuple(part)):
            out[path] = entry
    return out


def entries_with_digest(conn: sqlite3.Connection, digest: str) -> Iterator[tuple[str, IndexEntry]]:
    return iter_entries(conn, "digest = ?", (digest,))


def digests(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT digest FROM images")}


def failures(conn: sqlite3.Connection) -> dict[str, FailureEntry]:
    return {from_db_path(r[0]): FailureEntry(r[1], r[2], r[3])
            for r in conn.execute("SELECT path, size, mtime_ns, reason FROM failures")}


# --- a walk of the root ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def walk_table(conn: sqlite3.Connection) -> Iterator[Callable[[list[str]], None]]:
    """A temporary table of the paths a walk found: yields `mark_seen(paths)`."""
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


def seen_paths(conn: sqlite3.Connection, paths: list[str]) -> set[str]:
    out: set[str] = set()
    for s in range(0, len(paths), 500):
        part = [db_path(p) for p in paths[s:s + 500]]
        marks = ",".join("?" * len(part))
        out.update(from_db_path(r[0]) for r in conn.execute(
            f"SELECT path FROM temp.walk_seen WHERE path IN ({marks})", part))
    return out


def unseen_entries(conn: sqlite3.Connection) -> Iterator[tuple[str, IndexEntry]]:
    return iter_entries(conn, "imported = 0 AND path NOT IN (SELECT path FROM temp.walk_seen)")


# --- the writer's changes (inside its transactions) -------------------------------------------------------------
def write_batch(conn: sqlite3.Connection, inserts: Iterable[tuple], updates: Iterable[tuple], deletes: Iterable[int],
                failed: Iterable[tuple], cleared: Iterable[str], decoder: str | None, imported: bool) -> None:
    """The statements of `IndexWriter.commit` (the caller bumps the generation)."""
    flag = int(bool(imported))
    deletes, updates = [int(i) for i in deletes], list(updates)
    # What a header said no longer holds for an image that changed or went: read again (`facts_missing`).
    conn.executemany("DELETE FROM facts WHERE id = ?", [(i,) for i in deletes] + [(int(u[0]),) for u in updates])
    conn.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in deletes])
    conn.executemany("UPDATE images SET path = ?, size = ?, mtime_ns = ?, digest = ?, row = ?, imported = ? "
                     "WHERE id = ?", [(db_path(p), s, m, d, r, flag, i) for i, p, s, m, d, r in updates])
    conn.executemany("INSERT INTO images (path, size, mtime_ns, digest, row, imported) "
                     "VALUES (?, ?, ?, ?, ?, ?)", [(db_path(p), s, m, d, r, flag) for p, s, m, d, r in inserts])
    conn.executemany("DELETE FROM failures WHERE path = ?", [(db_path(p),) for p in cleared])
    conn.executemany("INSERT OR REPLACE INTO failures (path, size, mtime_ns, reason) VALUES (?, ?, ?, ?)",
                     [(db_path(p), s, m, r) for p, s, m, r in failed])
    if decoder is not None:
        set_meta(conn, "failures_decoder", decoder)


def switch_vector_file(conn: sqlite3.Connection, ids: np.ndarray, new: str, old: str,
                       meta: dict[str, str] | None) -> None:
    """A compaction's switch: the images renumbered 0.. in id order into the vector file `new`, `old` retired
    (the caller bumps the generation)."""
    conn.executemany("UPDATE images SET row = ? WHERE id = ?", ((n, int(i)) for n, i in enumerate(ids)))
    set_meta(conn, "vector_file", new)
    set_meta(conn, "retired_vector_file", old)
    delete_meta(conn, "pending_vector_file")
    for key, value in (meta or {}).items():
        set_meta(conn, key, value)


def switch_ann_file(conn: sqlite3.Connection, name: str | None, old: str | None) -> None:
    """Record the ANN file `name` (None: no file, exact search), the previous one `old` retired."""
    if name is None:
        delete_meta(conn, "ann_file")
    else:
        set_meta(conn, "ann_file", name)
    if old is not None and old != name:
        set_meta(conn, "retired_ann_file", old)
    delete_meta(conn, "pending_ann_file")


# --- export ------------------------------------------------------------------------------------------------------
def export_rows(index_dir: Path, last_id: int, batch_size: int) -> Iterator[list[tuple]]:
    """(id, stored path, size, mtime_ns, digest) of the images up to `last_id`, by id, `batch_size` at a time,
    from a read-only connection; LookalikeError when the database cannot be read."""
    db = index_dir / DATABASE
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise LookalikeError(f"index database {db} is unreadable ({exc})") from None
    try:
        cur = conn.execute("SELECT id, path, size, mtime_ns, digest FROM images WHERE id <= ? ORDER BY id",
                           (int(last_id),))
        while True:
            chunk = cur.fetchmany(batch_size)
            if not chunk:
                return
            yield [(r[0], from_db_path(r[1]), r[2], r[3], r[4]) for r in chunk]
    except sqlite3.DatabaseError as exc:
        raise LookalikeError(f"index database {db} is unreadable ({exc})") from None
    finally:
        conn.close()


# --- facts read from the images' headers ----------------------------------------------------------------------
FACT_COLUMNS = ("width", "height", "taken", "camera")


def has_facts_table(conn: sqlite3.Connection) -> bool:
    """False for a database of format 3 or older that no writer has opened since."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'facts'").fetchone() is not None


def facts_missing(conn: sqlite3.Connection, after_id: int, limit: int) -> list[tuple[int, str, int]]:
    """(id, stored path, imported) of up to `limit` images past `after_id` whose facts were never read."""
    return [(r[0], from_db_path(r[1]), r[2]) for r in conn.execute(
        "SELECT images.id, images.path, images.imported FROM images LEFT JOIN facts ON facts.id = images.id "
        "WHERE facts.id IS NULL AND images.id > ? ORDER BY images.id LIMIT ?", (int(after_id), int(limit)))]


def count_facts_missing(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM images LEFT JOIN facts ON facts.id = images.id "
                        "WHERE facts.id IS NULL").fetchone()[0]


def write_facts(conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """rows: (id, width, height, taken, camera); an image deleted meanwhile gets none. The date sort key is
    taken, else the stored mtime."""
    key = DATE_KEY_SQL.format(taken="?4", mtime_ns="mtime_ns")
    conn.executemany("INSERT OR REPLACE INTO facts (id, width, height, taken, camera, date) "
                     f"SELECT ?1, ?2, ?3, ?4, ?5, {key} FROM images WHERE id = ?1", list(rows))


def read_facts(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, tuple]:
    """{id: (width, height, taken, camera)} of those `ids` whose facts are known."""
    ids = [int(i) for i in ids]
    if not has_facts_table(conn):
        return {}
    out = {}
    for s in range(0, len(ids), 500):
        part = ids[s:s + 500]
        marks = ",".join("?" * len(part))
        for r in conn.execute(f"SELECT id, width, height, taken, camera FROM facts WHERE id IN ({marks})", part):
            out[r[0]] = tuple(r[1:])
    return out
