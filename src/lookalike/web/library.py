"""The collection as the page browses it: pages of indexed images (`GET /api/images`), one image's facts, the
folder tree. The SQL is `search.store.listing`; this module adds the cursors, the cached totals and the answer
shapes.

One `Library` belongs to one snapshot of the index (`service.IndexView`) and holds its own read-only database
connection, opened on first use and closed when a newer snapshot replaces it. Queries take turns on it: each
is a few milliseconds, and a page never reads more than `listing.MAX_LIMIT` rows.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import LookalikeError
from ..paths import printable
from ..search.store.listing import MAX_LIMIT, SORTS, Listing, Row

TOTALS_CACHED = 256  # (folder, q) totals kept per snapshot
MAX_QUERY = 200  # characters of a name filter or folder


class BadCursor(LookalikeError):
    """A cursor this server did not write, or one of another sort."""


def iso_mtime(mtime_ns: int) -> str:
    return _dt.datetime.fromtimestamp(mtime_ns / 1e9, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def shown_path(path: str | bytes) -> str:
    return printable(path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path)


def image_json(row: Row) -> dict:
    return {"id": row.id, "path": shown_path(row.path), "width": row.width, "height": row.height,
            "size": row.size, "mtime": iso_mtime(row.mtime_ns), "date": row.taken or iso_mtime(row.mtime_ns)}


def encode_cursor(sort: str, row: Row) -> str:
    key = row.key
    packed = {"s": sort, "i": row.id, "k": key} if not isinstance(key, bytes) else {"s": sort, "i": row.id,
                                                                                      "b": key.hex()}
    return base64.urlsafe_b64encode(json.dumps(packed, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        packed = json.loads(raw)
        key = bytes.fromhex(packed["b"]) if "b" in packed else packed["k"]
        if packed["s"] != sort or type(packed["i"]) is not int or not isinstance(key, (str, int, bytes)):
            raise ValueError
        return key, packed["i"]
    except (ValueError, KeyError, TypeError):
        raise BadCursor("not a cursor of this listing: start again without `cursor` (or with the same `sort`)") \
            from None


def parse_sort(sort: str) -> tuple[str, bool]:
    """("folder" | "name" | "date", descending) of `folder`, `-date` and the like."""
    descending = sort.startswith("-")
    name = sort[1:] if descending else sort
    if name not in SORTS:
        raise LookalikeError(f"unknown sort {sort!r}: choose one of {', '.join(SORTS)} (a leading '-' reverses)")
    return name, descending


class Library:
    """The listing of one snapshot. `connect()` opens its read-only database connection."""

    def __init__(self, connect, generation: int, root: Path) -> None:
        self._connect = connect
        self.generation = generation
        self.root = root
        self._listing: Listing | None = None
        self._lock = threading.Lock()
        self._totals: OrderedDict[tuple, int] = OrderedDict()
        self._closed = False

    def _run(self, work):
        with self._lock:
            if self._closed:
                raise LookalikeError("the index changed meanwhile: ask again")
            if self._listing is None:
                self._listing = Listing(self._connect())
            return work(self._listing)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._listing is not None:
                self._listing.conn.close()
                self._listing = None

    def total(self, folder: str | None, q: str | None) -> int:
        key = (folder or "", q or "")
        with self._lock:
            if key in self._totals:
                self._totals.move_to_end(key)
                return self._totals[key]
        count = self._run(lambda listing: listing.count(folder, q))
        with self._lock:
            self._totals[key] = count
            while len(self._totals) > TOTALS_CACHED:
                self._totals.popitem(last=False)
        return count

    def images(self, *, offset: int = 0, limit: int = 100, folder: str | None = None, q: str | None = None,
               sort: str = "folder", cursor: str | None = None) -> dict:
        """The `GET /api/images` answer: total, one page of images, and the cursor after its last row (None at
        the end)."""
        name, descending = parse_sort(sort)
        for text in (folder, q):
            if text is not None and len(text) > MAX_QUERY:
                raise LookalikeError(f"folder and q take at most {MAX_QUERY} characters")
        after = decode_cursor(cursor, sort) if cursor else None
        limit = max(1, min(int(limit), MAX_LIMIT))
        rows = self._run(lambda listing: listing.page(sort=name, descending=descending, folder=folder, q=q,
                                                      offset=offset, limit=limit, after=after))
        return {"total": self.total(folder, q), "images": [image_json(r) for r in rows],
                "next": encode_cursor(sort, rows[-1]) if len(rows) == limit else None}

    def image(self, image_id: int) -> dict | None:
        """One image's facts (None when the id is unknown)."""
        row = self._run(lambda listing: listing.row(image_id))
        if row is None:
            return None
        return {**image_json(row), "taken": row.taken, "camera": row.camera}

    def digests(self, ids: list[int]) -> dict[int, str | None]:
        return self._run(lambda listing: listing.digests(ids))

    def folders(self, parent: str | None) -> dict:
        if parent is not None and len(parent) > MAX_QUERY:
            raise LookalikeError(f"folder takes at most {MAX_QUERY} characters")
        parent = (parent or "").strip("/")
        names = self._run(lambda listing: listing.folders(parent))
        return {"folder": parent, "folders": names}
