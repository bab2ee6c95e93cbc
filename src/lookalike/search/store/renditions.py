"""Small renditions of indexed images: a JPEG of at most LONG_SIDE pixels, made at index time from the image the
descriptor was decoded from (one small encode, no second decode), and the image's packed local features
(`describe/local_features.py`), kept in the `renditions` table of the index database. Spatial verification reads
the features instead of running SIFT on each shortlisted image, and the duplicate check reads the JPEG instead of
decoding the photo file again (a 12 MP JPEG costs tens of ms even in draft mode; a rendition about a tenth of that).

Each row records the size and mtime of the file it was made from; a reader uses it only while the file still
has both (`fresh`), so a changed file is never answered by a stale rendition. Rows are written in their own
transaction after the batch that indexed their images, and only for rows of those images as committed: a kill in
between leaves images without renditions, which fall back to decoding the file. Old indexes and imported rows
have none and fall back the same way.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional

LONG_SIDE = 512  # the duplicate check's size (`copy_check.LONG_SIDE`); verification shrinks it further
QUALITY = 85
MAX_BYTES = 1 << 20  # a stored rendition larger than this is not read (the database is not trusted blindly)
_READ_CHUNK = 500  # ids per SELECT (SQLite's bound on variables)


class Stored(NamedTuple):
    """What index time keeps of one decoded image: its JPEG rendition and its packed local features (None when
    they could not be taken)."""

    jpeg: bytes
    keypoints: Optional[bytes] = None


class Rendition(NamedTuple):
    """A stored rendition, its packed local features (None: not stored, e.g. an index made before they were),
    and the (size, mtime_ns) of the file they were made from."""

    size: int
    mtime_ns: int
    jpeg: bytes
    keypoints: Optional[bytes] = None

    def fresh(self, size: int, mtime_ns: int) -> bool:
        """Whether the file, now of `size` bytes and `mtime_ns`, is still the one this was made from."""
        return (self.size, self.mtime_ns) == (size, mtime_ns)


def make_rendition(image: Any) -> Optional[bytes]:
    """The JPEG rendition of a decoded PIL image, at most LONG_SIDE pixels long (never enlarged); None when it
    cannot be encoded (the image is indexed all the same)."""
    from PIL import Image

    try:
        img = image if image.mode in ("RGB", "L") else image.convert("RGB")
        if max(img.size) > LONG_SIDE:
            img = img.copy()
            # The draft decode is already near this size: a cheap filter loses nothing SIFT would see.
            img.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=QUALITY)
        return out.getvalue()
    except Exception:  # an odd mode or an encoder error: no rendition, verification decodes the file instead
        return None


def write_renditions(conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """Inside a write transaction. rows: (stored path, size, mtime_ns, `Stored`); a rendition is kept only for
    an image row that is, as committed, that file at that size and mtime. `Stored` None: the row kept its bytes
    (a touched or renamed file), so its rendition, if any, is restamped with the new size and mtime."""
    from .database import db_path

    rows = list(rows)
    conn.executemany("INSERT OR REPLACE INTO renditions (id, size, mtime_ns, jpeg, keypoints) "
                     "SELECT id, size, mtime_ns, ?, ? FROM images WHERE path = ? AND size = ? AND mtime_ns = ?",
                     [(sqlite3.Binary(kept.jpeg), None if kept.keypoints is None else sqlite3.Binary(kept.keypoints),
                       db_path(rel), size, mtime) for rel, size, mtime, kept in rows if kept is not None])
    conn.executemany("UPDATE renditions SET size = ?, mtime_ns = ? WHERE id = (SELECT id FROM images "
                     "WHERE path = ? AND size = ? AND mtime_ns = ?)",
                     [(size, mtime, db_path(rel), size, mtime) for rel, size, mtime, jpeg in rows if jpeg is None])


def keypoints_missing(conn: sqlite3.Connection, after_id: int, limit: int) -> list[tuple[int, bytes]]:
    """(id, jpeg) of renditions past `after_id` without stored local features, made from the file as the index
    now has it (an image indexed before format 7)."""
    if not _has_table(conn):
        return []
    return [(int(i), bytes(jpeg)) for i, jpeg in conn.execute(
        "SELECT r.id, r.jpeg FROM renditions r JOIN images i ON i.id = r.id WHERE r.id > ? AND r.keypoints IS NULL "
        f"AND r.size = i.size AND r.mtime_ns = i.mtime_ns AND length(r.jpeg) <= {MAX_BYTES} ORDER BY r.id LIMIT ?",
        (int(after_id), int(limit)))]


def count_keypoints_missing(conn: sqlite3.Connection) -> int:
    if not _has_table(conn):
        return 0
    return int(conn.execute("SELECT count(*) FROM renditions r JOIN images i ON i.id = r.id WHERE r.keypoints IS NULL "
                            "AND r.size = i.size AND r.mtime_ns = i.mtime_ns").fetchone()[0])


def write_keypoints(conn: sqlite3.Connection, rows: Iterable[tuple[int, Optional[bytes]]]) -> None:
    """Inside a write transaction: (id, packed features) for renditions still without; None (they could not be
    taken) is kept as an empty value, which readers ignore, so that no later run tries again."""
    conn.executemany("UPDATE renditions SET keypoints = ? WHERE id = ? AND keypoints IS NULL",
                     [(sqlite3.Binary(blob if blob is not None else b""), int(i)) for i, blob in rows])


def drop_orphans(conn: sqlite3.Connection) -> None:
    """Inside a write transaction: forget the renditions of images the index no longer holds."""
    if _has_table(conn):
        conn.execute("DELETE FROM renditions WHERE id NOT IN (SELECT id FROM images)")


def _has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'renditions'").fetchone() \
        is not None


def read_renditions(index_path: Path, ids: Iterable[int], keypoints: bool = True) -> dict[int, Rendition]:
    """{id: Rendition} of those `ids` the index at `index_path` holds one for; {} for an index without any (made
    before renditions) or one that cannot be read now (the caller decodes the files). `keypoints` False: leave
    the stored local features out (their `keypoints` None), for a reader that only wants the JPEGs."""
    from ...errors import LookalikeError
    from .database import _connect_reader

    ids = [int(i) for i in ids]
    if not ids:
        return {}
    try:
        conn = _connect_reader(Path(index_path))
    except LookalikeError:
        return {}
    out: dict[int, Rendition] = {}
    try:
        if not _has_table(conn):
            return {}
        # A format-6 index read before its next `index` run has no such column yet.
        has_keypoints = keypoints and any(r[1] == "keypoints" for r in conn.execute("PRAGMA table_info(renditions)"))
        keypoints_column = (f"CASE WHEN length(keypoints) <= {MAX_BYTES} THEN keypoints END" if has_keypoints
                            else "NULL")
        for s in range(0, len(ids), _READ_CHUNK):
            part = ids[s:s + _READ_CHUNK]
            marks = ",".join("?" * len(part))
            for i, size, mtime, jpeg, keypoints in conn.execute(
                    f"SELECT id, size, mtime_ns, jpeg, {keypoints_column} FROM renditions WHERE id IN ({marks}) "
                    f"AND length(jpeg) <= {MAX_BYTES}", part):
                if isinstance(jpeg, bytes) and isinstance(size, int) and isinstance(mtime, int):
                    out[int(i)] = Rendition(size, mtime, jpeg, keypoints if isinstance(keypoints, bytes) else None)
    except sqlite3.Error:  # a damaged or busy database: verification decodes the files instead
        return {}
    finally:
        conn.close()
    return out
