"""The image listing of an index, read-only: pages of rows sorted by folder, name or date, filtered by folder and
by a substring of the path, continued by keyset cursors so that a scroll through a million rows stays cheap.

Sort keys: `folder` is the stored path ('/'-separated, relative to the root, so a folder's files sort together);
`name` is the file name (the part after the last '/'); `date` is the EXIF date taken (`facts.taken`) else the
file's mtime, both as ISO 8601 text. Every key is followed by the id, so a cursor names one exact place.

The `facts` table (width, height, date taken, camera) may be absent in an index written before it existed: its
columns then read as NULL and dates fall back to mtimes. Paths stored as BLOBs (not UTF-8) are listed, but a
folder filter matches text paths only.

`ensure_indexes(conn)` creates what makes the name and date sorts use an index; only a writer calls it, since a
reader never writes. Without it those sorts still answer, by a scan.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Optional

SORTS = ("folder", "name", "date")
MAX_LIMIT = 500
MAX_FOLDERS = 1000  # subfolders listed per folder

# The file name: rtrim strips every character that is not a '/' from the right, leaving the folder part.
NAME_SQL = "substr(i.path, length(rtrim(i.path, replace(i.path, '/', ''))) + 1)"
MTIME_SQL = "strftime('%Y-%m-%dT%H:%M:%S', i.mtime_ns / 1000000000, 'unixepoch')"


def _name_sql(alias: str) -> str:
    return NAME_SQL.replace("i.path", f"{alias}path")


def ensure_indexes(conn: sqlite3.Connection) -> None:
    """Create the indexes of the name and date sorts (idempotent). For a writer's connection, in its own
    transaction; the unique index on `path` already serves the folder sort and folder filters."""
    conn.execute(f"CREATE INDEX IF NOT EXISTS images_name ON images ({_name_sql('')})")
    conn.execute("CREATE INDEX IF NOT EXISTS images_mtime ON images (mtime_ns)")
    if _has_facts(conn):
        conn.execute("CREATE INDEX IF NOT EXISTS facts_taken ON facts (taken)")
    conn.commit()


def _has_facts(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'facts'").fetchone()
    return row is not None


@dataclass(frozen=True)
class Row:
    id: int
    path: str | bytes  # as stored: relative to the root
    size: int
    mtime_ns: int
    width: Optional[int]
    height: Optional[int]
    taken: Optional[str]
    camera: Optional[str]
    key: Any  # the sort key, for the next cursor


def folder_range(folder: str) -> tuple[str, str]:
    """[low, high) of the text paths under `folder` ('/' is followed by '0' in code point order)."""
    folder = folder.strip("/")
    return f"{folder}/", f"{folder}0"


class Listing:
    """Queries over one read-only connection to an index database. Not thread-safe: callers serialise."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.has_facts = _has_facts(conn)

    def _select(self, sort: str) -> tuple[str, str]:
        """(the SELECT ... FROM ... of a listing, its sort key expression)."""
        if self.has_facts:
            cols = "f.width, f.height, f.taken, f.camera"
            source = "images i LEFT JOIN facts f ON f.id = i.id"
            date = f"COALESCE(f.taken, {MTIME_SQL})"
        else:
            # mtimes alone: the integer orders as its ISO text does, and the mtime index serves it
            cols, source, date = "NULL, NULL, NULL, NULL", "images i", "i.mtime_ns"
        key = {"folder": "i.path", "name": NAME_SQL, "date": date}[sort]
        return f"SELECT i.id, i.path, i.size, i.mtime_ns, {cols}, {key} AS sortkey FROM {source}", key

    @staticmethod
    def _filters(folder: str | None, q: str | None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if folder and folder.strip("/"):
            low, high = folder_range(folder)
            where.append("i.path >= ? AND i.path < ?")
            args += [low, high]
        if q:
            escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("i.path LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        return where, args

    def page(self, *, sort: str = "folder", descending: bool = False, folder: str | None = None,
             q: str | None = None, offset: int = 0, limit: int = 100, after: tuple[Any, int] | None = None
             ) -> list[Row]:
        """Up to `limit` rows in sort order, from `after` (the (key, id) of the last row seen: keyset paging)
        or else from `offset`."""
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}")
        select, key = self._select(sort)
        where, args = self._filters(folder, q)
        op, order = ("<", "DESC") if descending else (">", "ASC")
        if after is None and offset > 0 and sort == "folder":
            # Jump through the path index alone (no table rows read), then continue from there as a cursor does.
            sql = ("SELECT i.path FROM images i" + (" WHERE " + " AND ".join(where) if where else "")
                   + f" ORDER BY i.path {order} LIMIT 1 OFFSET ?")
            found = self.conn.execute(sql, args + [int(offset)]).fetchone()
            if found is None:
                return []
            where.append(f"i.path {op}= ?")
            args.append(found[0])
            offset = 0
        if after is not None:
            if sort == "folder":  # the path is unique: one column, so the path index serves the range
                where.append(f"i.path {op} ?")
                args.append(after[0])
            else:
                where.append(f"({key}, i.id) {op} (?, ?)")
                args += [after[0], int(after[1])]
        sql = select + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {key} {order}" + ("" if sort == "folder" else f", i.id {order}")
        sql += " LIMIT ? OFFSET ?"
        args += [max(1, min(int(limit), MAX_LIMIT)), 0 if after is not None else max(0, int(offset))]
        return [Row(*r) for r in self.conn.execute(sql, args)]

    def count(self, folder: str | None = None, q: str | None = None) -> int:
        where, args = self._filters(folder, q)
        sql = "SELECT count(*) FROM images i" + (" WHERE " + " AND ".join(where) if where else "")
        return int(self.conn.execute(sql, args).fetchone()[0])

    def row(self, image_id: int) -> Row | None:
        select, _ = self._select("folder")
        found = self.conn.execute(select + " WHERE i.id = ?", (int(image_id),)).fetchone()
        return None if found is None else Row(*found)

    def digests(self, ids: list[int]) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        ids = sorted({int(i) for i in ids})
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.update(self.conn.execute(f"SELECT id, digest FROM images WHERE id IN ({marks})", chunk))
        return out

    def folders(self, parent: str | None = None) -> list[str]:
        """The names of the subfolders of `parent` ('' or None: the root), sorted, at most MAX_FOLDERS. One
        indexed look-up per subfolder: after finding one, the search jumps past all of its paths."""
        parent = (parent or "").strip("/")
        prefix = f"{parent}/" if parent else ""
        high = f"{parent}0" if parent else None
        low, names = prefix, []
        start = len(prefix) + 1
        while len(names) < MAX_FOLDERS:
            sql = ("SELECT path FROM images WHERE typeof(path) = 'text' AND path >= ?"
                   + (" AND path < ?" if high else "")
                   + " AND instr(substr(path, ?), '/') > 0 ORDER BY path LIMIT 1")
            found = self.conn.execute(sql, [low] + ([high] if high else []) + [start]).fetchone()
            if found is None:
                break
            name = found[0][len(prefix):].split("/", 1)[0]
            names.append(name)
            low = f"{prefix}{name}0"  # just past every path under prefix/name/
        return names
