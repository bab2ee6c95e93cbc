"""The library listing (`GET /api/images`) at scale: a cursor page, an offset jump, a name filter, the name and date
sorts, over an index database of N rows made with the store's own schema (rows only: the listing reads no vector);
and the first screen of the library at 100,000 rows: the first page of `GET /api/images` plus the thumbnails of
one screen (48 tiles), from a warm thumbnail cache and from a cold one over 12-MP photos.

    python benchmarks/web_library.py [--rows 1000000] [--out benchmarks/results/web_library.md]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path


def make_db(folder: Path, rows: int, facts: bool) -> Path:
    from lookalike.search.store.database import _SCHEMA

    db = folder / "index.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)
    rng = random.Random(0)
    batch = []
    for i in range(1, rows + 1):
        year, trip = 2000 + i % 25, (i // 97) % 400
        batch.append((i, f"{year}/trip-{trip:03d}/IMG_{i:07d}.jpg", rng.randrange(10**5, 10**7),
                      1_600_000_000_000_000_000 + rng.randrange(10**17), f"{i:064x}", i - 1))
        if len(batch) == 50_000:
            conn.executemany("INSERT INTO images (id, path, size, mtime_ns, digest, row) VALUES (?,?,?,?,?,?)", batch)
            batch.clear()
    if batch:
        conn.executemany("INSERT INTO images (id, path, size, mtime_ns, digest, row) VALUES (?,?,?,?,?,?)", batch)
    if facts:
        from lookalike.search.store.database import DATE_KEY_SQL

        conn.execute("INSERT INTO facts (id, width, height, taken, camera) SELECT id, 4000, 3000, CASE WHEN id % 3 "
                     "THEN strftime('%Y-%m-%dT%H:%M:%S', 1500000000 + id * 37, 'unixepoch') END, 'Camera' FROM images")
        key = DATE_KEY_SQL.format(taken="facts.taken", mtime_ns="images.mtime_ns")
        conn.execute(f"UPDATE facts SET date = (SELECT {key} FROM images WHERE images.id = facts.id)")
    conn.commit()
    conn.close()
    return db


def timed(fn, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure(db: Path, rows: int) -> list[tuple[str, float]]:
    from lookalike.search.store.listing import Listing, ensure_indexes

    out = []
    for indexed in (False, True):
        if indexed:
            conn = sqlite3.connect(db)
            t = time.perf_counter()
            ensure_indexes(conn)
            out.append(("ensure_indexes (once, by a writer)", (time.perf_counter() - t) * 1000))
            conn.close()
        listing = Listing(sqlite3.connect(f"file:{db}?mode=ro", uri=True))
        tag = " (listing indexes)" if indexed else ""
        for sort in ("folder", "name", "date"):
            mid = listing.page(sort=sort, offset=rows // 2, limit=1)[0]
            out.append((f"page of 100 by cursor, sort={sort}{tag}",
                        timed(lambda: listing.page(sort=sort, limit=100, after=(mid.key, mid.id)))))
        out.append((f"offset jump to {rows // 2:,}, sort=folder{tag}",
                    timed(lambda: listing.page(sort="folder", offset=rows // 2, limit=100), 5)))
        out.append((f"name filter q=IMG_0123 (count + first page){tag}",
                    timed(lambda: (listing.count(q="IMG_0123"), listing.page(q="IMG_0123", limit=100)), 5)))
        out.append((f"folder filter 2010 (count + first page){tag}",
                    timed(lambda: (listing.count(folder="2010"), listing.page(folder="2010", limit=100)), 5)))
        out.append((f"subfolders of 2010{tag}", timed(lambda: listing.folders("2010"), 5)))
        out.append((f"total (count(*), cached per generation after){tag}", timed(lambda: listing.count(), 3)))
        listing.conn.close()
    return out


SCREEN = 48  # tiles of one screen of the grid at 256 px


def first_screen(folder: Path, rows: int = 100_000) -> list[tuple[str, float]]:
    """The first page of the listing (a fresh `web.library.Library`, so its total is counted) plus one screen of
    256-px thumbnails; every row points at one of SCREEN real 12-MP JPEGs, as photos from a camera."""
    import numpy as np
    from PIL import Image

    from lookalike.search.store.database import _connect_reader
    from lookalike.search.store.listing import ensure_indexes
    from lookalike.web.library import Library
    from lookalike.web.thumbnails import ThumbnailCache

    db = make_db(folder, rows, facts=True)
    conn = sqlite3.connect(db)
    ensure_indexes(conn)
    conn.close()
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for n in range(SCREEN):
        small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((4000, 3000), Image.BILINEAR).save(photos / f"{n}.jpg", quality=90)

    def screen(cache: ThumbnailCache) -> None:
        library = Library(lambda: _connect_reader(folder), 0, photos)
        page = library.images(limit=100, sort="-date")
        for k, image in enumerate(page["images"][:SCREEN]):
            cache.get(photos / f"{k}.jpg", 256)  # one file per tile: a cold screen decodes them all
        library.close()

    cache = ThumbnailCache(folder / "thumbs")
    t = time.perf_counter()
    screen(cache)
    cold = (time.perf_counter() - t) * 1000
    warm_disk = timed(lambda: screen(ThumbnailCache(folder / "thumbs")), 5)  # a restarted server: disk cache
    warm = timed(lambda: screen(cache), 5)
    return [(f"first screen at {rows:,}: page + {SCREEN} thumbnails, cold cache, 12-MP JPEGs", cold),
            (f"first screen at {rows:,}: page + {SCREEN} thumbnails, warm disk cache", warm_disk),
            (f"first screen at {rows:,}: page + {SCREEN} thumbnails, warm memory cache", warm)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        db = make_db(Path(tmp), args.rows, facts=True)
        built = time.perf_counter() - t
        results = measure(db, args.rows)
        screen_dir = Path(tmp) / "screen"
        screen_dir.mkdir()
        results += first_screen(screen_dir)
    lines = [f"# Library listing at {args.rows:,} rows", "",
             f"Rows with a `facts` table (two thirds with a date taken); built in {built:.0f} s. Median of repeated "
             "runs, one read-only connection, SQLite " + sqlite3.sqlite_version + ".", "",
             "| query | ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in results]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
