"""The writer's reads: the same questions a snapshot answers (`len`, `ids`, `vectors`, `path_of`, `id_of`,
`vector_of`, `stamp_of`, `lookup`, `backend`), asked of the database as it stands, and the lookups a run of
`sync` or `import` makes (entries by path or content hash, the walk table, recorded failures)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import queries
from .database import DigestChecker, FailureEntry, IndexEntry, _generation, _json_meta, _meta
from .layout import DATABASE


class WriterReads:
    """A part of `IndexWriter` (which provides the connection, the root and the vector file)."""

    def __len__(self) -> int:
        return queries.count(self._conn)

    @property
    def generation(self) -> int:
        return _generation(self._conn)

    @property
    def whitening(self) -> dict | None:
        """The record of the whitening applied to the stored vectors (committed with them), or None."""
        return _json_meta(_meta(self._conn, "whitening"))

    def ids(self) -> np.ndarray:
        """int64 image ids, ascending, aligned with `vectors()`."""
        return queries.ids_by_id(self._conn)

    def vectors(self) -> np.ndarray:
        """(N, D) float32 L2-normalised rows, aligned with `ids()`."""
        rows = queries.rows_by_id(self._conn)
        return self._gather(_meta(self._conn, "vector_file"), rows)

    def path_of(self, image_id: int) -> Path:
        return self.root / queries.path_of(self._conn, image_id)

    def id_of(self, path) -> int | None:
        return queries.id_of(self._conn, self.stored_path(path))

    def vector_of(self, image_id: int) -> np.ndarray:
        row = queries.row_of(self._conn, image_id)
        return self._gather(_meta(self._conn, "vector_file"), np.asarray([row]), scattered=True)[0]

    def stamp_of(self, image_id: int) -> tuple[int, int]:
        return queries.stamp_of(self._conn, image_id)

    def lookup(self, wanted) -> np.ndarray:
        """ids -> their vectors (KeyError for an unknown id), as a snapshot's `lookup`."""
        wanted = np.asarray(wanted, np.int64).reshape(-1)
        rows = [queries.row_of(self._conn, i) for i in wanted]
        return np.asarray(self.read_rows(rows), np.float32).reshape(len(wanted), self.dim)

    def backend(self):
        """An exact search over the committed vectors, built on each call (the writer's vectors change)."""
        from . import ann

        return ann.build("exact", self.ids(), self.vectors())

    def read_rows(self, rows) -> np.ndarray:
        """Vectors at given rows of the current vector file."""
        return self._gather(self._vector_file().name, np.asarray(rows, np.int64), scattered=True)

    def entries(self) -> dict[str, IndexEntry]:
        """{stored path: IndexEntry} of every row (small indexes and tests; `sync` looks rows up in batches)."""
        return {path: entry for path, entry in self.iter_entries()}

    def iter_entries(self, where: str = "", args: tuple = ()) -> Iterator[tuple[str, IndexEntry]]:
        """(stored path, IndexEntry) of the rows (optionally those of an SQL `where` clause), streamed."""
        return queries.iter_entries(self._conn, where, args)

    def lookup_paths(self, paths: list[str]) -> dict[str, IndexEntry]:
        """{stored path: IndexEntry} of those of `paths` that the index holds: one query per 500 paths."""
        return queries.entries_of_paths(self._conn, paths)

    def entry_by_digest(self, digest: str, exclude_ids: Iterable[int] = ()) -> tuple[str, IndexEntry] | None:
        """A row whose file has this content hash (not one of `exclude_ids`), or None."""
        skip = set(exclude_ids)
        for path, entry in queries.entries_with_digest(self._conn, digest):
            if entry.id not in skip:
                return path, entry
        return None

    def digests(self) -> set[str]:
        """The content hashes of every row, for a quick membership test while files are read."""
        return queries.digests(self._conn)

    @contextlib.contextmanager
    def walk_table(self) -> Iterator[Callable[[list[str]], None]]:
        """A temporary table of the paths a walk of the root found: yields `mark_seen(paths)`; inside the
        block, `unseen_entries()` lists the root's rows the walk did not find."""
        with queries.walk_table(self._conn) as mark_seen:
            yield mark_seen

    def seen_paths(self, paths: list[str]) -> set[str]:
        """Inside `walk_table()`: those of `paths` already marked seen."""
        return queries.seen_paths(self._conn, paths)

    def unseen_entries(self) -> Iterator[tuple[str, IndexEntry]]:
        """Inside `walk_table()`: the rows the root owns (not imported) whose path the walk did not find."""
        return queries.unseen_entries(self._conn)

    def digest_checker(self) -> DigestChecker:
        """`has(digest)` for the decoding threads (a connection of their own: SQLite connections belong to a
        thread); close it after use."""
        return DigestChecker(self.path / DATABASE)

    def failures(self) -> dict[str, FailureEntry]:
        """{relative path: FailureEntry} of the files that could not be decoded."""
        return queries.failures(self._conn)

    def failures_decoder(self) -> str | None:
        """The decoder (`images.decoder_version`) that last tried the recorded failures, None before any."""
        return _meta(self._conn, "failures_decoder")

    # --- facts still to read (`indexing/facts.py`) ------------------------------------------------------------
    def facts_missing(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, str, int]]:
        """(id, stored path, imported) of images past `after_id` whose header facts were never read."""
        return queries.facts_missing(self._conn, after_id, limit)

    def count_facts_missing(self) -> int:
        return queries.count_facts_missing(self._conn)

    def keypoints_missing(self, after_id: int = 0, limit: int = 200) -> list[tuple[int, bytes]]:
        """(id, rendition JPEG) of images past `after_id` whose rendition has no stored local features."""
        from . import renditions

        return renditions.keypoints_missing(self._conn, after_id, limit)

    def count_keypoints_missing(self) -> int:
        from . import renditions

        return renditions.count_keypoints_missing(self._conn)

