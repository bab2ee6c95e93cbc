"""The image listing of an index, read-only: pages of rows sorted by folder, name or date, filtered by folder and
by a substring of the path, continued by keyset cursors so that a scroll through a million rows stays cheap.

Sort keys: `folder` is the stored path ('/'-separated, relative to the root, so a folder's files sort together);
`name` is the file name (the part after the last '/'); `date` is the EXIF date taken else the file's mtime, both
as ISO 8601 text, stored once per image as `facts.date`. Every key is followed by the id, so a cursor names one
exact place.

The `facts` table (width, height, date taken, camera) may be absent in an index written before it existed, or
lack `date` (format 5 and older, read without upgrading), or lack rows while `lookalike index` reads headers: the
date is then computed per row from `facts.taken` and the mtime, which answers the same order by a scan. Paths
stored as BLOBs (not UTF-8) are listed, but a folder filter matches text paths only.

`ensure_indexes(conn)` creates what makes the name and date sorts page through an index; the writer calls it
after each index run (a reader never writes). Without it those sorts still answer, by a scan.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Optional

from .database import DATE_KEY_SQL

SORTS = ("folder", "name", "date")
MAX_LIMIT = 500
MAX_FOLDERS = 1000  # subfolders listed per folder

# The file name: rtrim strips every character that is not a '/' from the right, leaving the folder part.
NAME_SQL = "substr(i.path, length(rtrim(i.path, replace(i.path, '/', ''))) + 1)"


def _name_sql(alias: str) -> str:
    return NAME_SQL.replace("i.path", f"{alias}path")


def ensure_indexes(conn: sqlite3.Connection) -> None:
    """Create the indexes of the name and date sorts (idempotent). For a writer's connection, in its own
    transaction; the unique index on `path` already serves the folder sort and folder filters."""
    conn.execute(f"CREATE INDEX IF NOT EXISTS images_name ON images ({_name_sql('')}, id)")
    if "date" in _facts_columns(conn):
        conn.execute("CREATE INDEX IF NOT EXISTS facts_date ON facts (date, id)")
    conn.commit()


def _facts_columns(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA table_info(facts)")}


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
        columns = _facts_columns(conn)
        self.has_facts = bool(columns)
        self._stored_dates: Optional[bool] = None if "date" in columns else False

    def stored_dates(self) -> bool:
        """Whether every image has its date key stored (then the date sort pages through `facts_date`). Asked
        once per connection, that is per snapshot of the index; facts rows only go with their image."""
        if self._stored_dates is None:
            images = self.conn.execute("SELECT count(*) FROM images").fetchone()[0]
            facts = self.conn.execute("SELECT count(*) FROM facts WHERE date IS NOT NULL").fetchone()[0]
            self._stored_dates = images == facts
        return self._stored_dates

    def _select(self, sort: str) -> tuple[str, str, str]:
        """(the SELECT ... FROM ... of a listing, its sort key expression, the id column it pages by)."""
        cols = "f.width, f.height, f.taken, f.camera" if self.has_facts else "NULL, NULL, NULL, NULL"
        source = "images i LEFT JOIN facts f ON f.id = i.id" if self.has_facts else "images i"
        ident = "i.id"
        if sort == "date" and self.has_facts and self.stored_dates():
            # facts first: the planner walks the (date, id) index and looks each image up by id
            source, key, ident = "facts f JOIN images i ON i.id = f.id", "f.date", "f.id"
        elif sort == "date":
            key = DATE_KEY_SQL.format(taken="f.taken" if self.has_facts else "NULL", mtime_ns="i.mtime_ns")
        else:
            key = {"folder": "i.path", "name": NAME_SQL}[sort]
        return f"SELECT i.id, i.path, i.size, i.mtime_ns, {cols}, {key} AS sortkey FROM {source}", key, ident

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
        select, key, ident = self._select(sort)
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
            else:  # written so that the key's range alone bounds the index walk
                where.append(f"{key} {op}= ? AND ({key} {op} ? OR {ident} {op} ?)")
                args += [after[0], after[0], int(after[1])]
        sql = select + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {key} {order}" + ("" if sort == "folder" else f", {ident} {order}")
        sql += " LIMIT ? OFFSET ?"
        args += [max(1, min(int(limit), MAX_LIMIT)), 0 if after is not None else max(0, int(offset))]
        return [Row(*r) for r in self.conn.execute(sql, args)]

    def count(self, folder: str | None = None, q: str | None = None) -> int:
        where, args = self._filters(folder, q)
        sql = "SELECT count(*) FROM images i" + (" WHERE " + " AND ".join(where) if where else "")
        return int(self.conn.execute(sql, args).fetchone()[0])

    def row(self, image_id: int) -> Row | None:
        select, _, _ = self._select("folder")
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
