"""`IndexWriter`: the writer of an index (`lookalike index`, `lookalike import`), one thread holding the folder's
write lock. Taking a folder, starting or reopening (and upgrading, and repairing) the index there, appending
vectors, committing batches, compaction and clean-up; its reads are in `writer_reads.py`, its ANN file in
`ann_file.py`."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ...atomic import fsync_dir
from ...errors import LookalikeError
from . import queries
from .ann_file import AnnBookkeeping
from .base import IndexBase
from .database import (MIGRATIONS, _connect_reader, _meta, bump_generation, connect_writer, delete_meta, set_meta,
                       transaction)
from .errors import rebuild_hint, storage_error
from .layout import (_ANN_NAME, _DB_FILES, _MANIFEST_TMP, _VECTOR_NAME, _WHITENING_NAME, DATABASE, FORMAT_VERSION,
                     LOCKFILE, MANIFEST, own_file)
from .manifest import _newer_format, now_iso, write_json_atomic
from .writer_reads import WriterReads


class IndexWriter(AnnBookkeeping, WriterReads, IndexBase):
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
        """Start a new, empty index in the taken folder (see `index.ImageIndex.create`); returns self."""
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
            names, whitening, has_images = queries.named_files(conn)
        except sqlite3.Error:
            return []
        finally:
            conn.close()
        if not any(_VECTOR_NAME.fullmatch(n) for n in names) and not has_images:
            names.append("vectors-0.f32")  # the name older versions wrote to before their first commit recorded it
        if whitening is not None and isinstance(whitening.get("file"), str):
            names.append(whitening["file"])
        return [n for n in names if _VECTOR_NAME.fullmatch(n) or _ANN_NAME.fullmatch(n) or _WHITENING_NAME.fullmatch(n)]

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
            self._conn = connect_writer(self.path)
            recorded = _meta(self._conn, "vector_file")
            if recorded is None:
                # A new database starts a vector file of its own, after any file already there, so it never
                # appends to rows it cannot account for. An existing one without the record was written by an
                # older version, which used vectors-0.f32 until its first commit recorded it.
                name = self._fresh_name(_VECTOR_NAME, "vectors-{}.f32") if missing else "vectors-0.f32"
                set_meta(self._conn, "vector_file", name)
            elif own_file(self.path, recorded, _VECTOR_NAME) is None:
                # Not a name this index writes (or a link): never opened, truncated or appended to. The rows
                # that referred to it are forgotten below (`_check_vector_file`) and embedded again.
                name = self._fresh_name(_VECTOR_NAME, "vectors-{}.f32")
                set_meta(self._conn, "vector_file", name)
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
            bad = queries.forget_impossible_rows(conn)
            if bad:
                self.notes.append(f"{DATABASE} held {bad} images with impossible vector rows: forgot them, so that "
                                  "this run embeds them again")
            queries.reset_bad_generation(conn)
            if bad:
                self._bump_generation()

    def _check_vector_file(self) -> None:
        """Repair a vector file shorter than the database says (deleted, truncated, restored from an older
        backup): forget the images whose vectors are gone, so this run embeds them again. Refusing instead would
        leave only --rebuild, which embeds every image again; this re-embeds only those that lost their vector,
        and the rows that remain are whole rows written and fsynced before their commit."""
        conn = self._conn
        top = queries.top_row(conn)
        vfile = self._vector_file()
        try:
            have = vfile.stat().st_size // (self.dim * 4)
        except FileNotFoundError:
            have = None
        if top is not None and top >= (have or 0):
            with self._transaction():
                lost = queries.forget_rows_from(conn, have or 0)
                self._bump_generation()
            state = "is missing" if have is None else f"holds {have} vectors"
            self.notes.append(f"vector file {vfile} {state}, fewer than {DATABASE} refers to: forgot the {lost} "
                              "images whose vectors were lost, so that this run embeds them again")
        top = queries.top_row(conn)
        self._rows_needed = 0 if top is None else top + 1

    def _fresh_name(self, pattern: "re.Pattern", template: str) -> str:
        """A file name of `pattern` not used in the folder, numbered after every one there."""
        numbers = [int(m.group(1)) for f in self.path.iterdir() if (m := pattern.fullmatch(f.name))]
        return template.format(max(numbers) + 1 if numbers else 0)

    def _fresh_vector_name(self) -> str:
        return self._fresh_name(_VECTOR_NAME, "vectors-{}.f32")

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

    def _transaction(self) -> contextlib.AbstractContextManager:
        return transaction(self._conn)

    def _vector_file(self) -> Path:
        name = (_meta(self._conn, "vector_file") if self._conn is not None else None) or "vectors-0.f32"
        path = own_file(self.path, name, _VECTOR_NAME)
        if path is None:  # repaired on open: only a change made while this writer runs gets here
            raise self._damaged(f"it names the vector file {name!r}, which is not the index's own")
        return path

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
        with self._writing(), self._transaction():
            queries.write_batch(conn, inserts, updates, deletes, failed, cleared, decoder, imported)
            self._bump_generation()

    def store_facts(self, rows: Iterable[tuple]) -> None:
        """One transaction of (id, width, height, taken, camera) read from the images' headers."""
        with self._writing(), self._transaction():
            queries.write_facts(self._conn, rows)
            self._bump_generation()

    def ensure_listing_indexes(self) -> None:
        """The indexes the library's name and date sorts page through (`listing.ensure_indexes`); built once, kept
        up to date by SQLite from then on."""
        from .listing import ensure_indexes

        with self._writing():
            ensure_indexes(self._conn)

    def store_keypoints(self, rows: Iterable[tuple]) -> None:
        """One transaction of (id, packed local features or None) for renditions stored without them."""
        from . import renditions

        with self._writing(), self._transaction():
            renditions.write_keypoints(self._conn, rows)

    def store_renditions(self, rows: Iterable[tuple], drop_orphans: bool = False) -> None:
        """One transaction of (stored path, size, mtime_ns, `renditions.Stored`) renditions (`renditions.py`) of
        committed rows; `drop_orphans`: also forget those of images the index no longer holds."""
        from . import renditions

        with self._writing(), self._transaction():
            renditions.write_renditions(self._conn, rows)
            if drop_orphans:
                renditions.drop_orphans(self._conn)
            self._bump_generation()

    def _bump_generation(self) -> None:
        """Inside a write transaction: tell readers (`change_stamp`) that the committed state changed."""
        bump_generation(self._conn)

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
        ids, rows = queries.ids_by_id(conn), queries.rows_by_id(conn)
        mm = self._open_vectors(old.name, int(rows.max()) + 1 if len(rows) else 0)
        new = self.path / self._fresh_vector_name()
        with self._writing():
            set_meta(conn, "pending_vector_file", new.name)
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
                queries.switch_vector_file(conn, ids, new.name, old.name, meta)
                self._bump_generation()
            self._rows_needed = len(ids)
            self._clean_orphan_files()

    def _clean_orphan_files(self) -> None:
        """Remove the vector and ANN files the database records as pending (a compaction or an ANN save cut
        short) or retired (one finished); never any other file."""
        conn = self._conn
        current = {self._vector_file().name, _meta(conn, "ann_file")}
        for key in ("pending_vector_file", "retired_vector_file", "pending_ann_file", "retired_ann_file"):
            name = _meta(conn, key)
            if name is None:
                continue
            if name not in current and (_VECTOR_NAME.fullmatch(name) or _ANN_NAME.fullmatch(name)):
                try:
                    (self.path / name).unlink(missing_ok=True)
                except OSError:
                    continue  # kept on record: tried again next time
            delete_meta(conn, key)

    def touch_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.manifest["updated_at"] = now_iso()
        with self._writing():
            write_json_atomic(self.path / MANIFEST, self.manifest)

    # --- the ANN file --------------------------------------------------------------------------------------
