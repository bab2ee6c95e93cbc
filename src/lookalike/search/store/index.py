"""The on-disk image index: a folder holding

- `manifest.json`: backbone, preprocessing, pooling, dimension, format version, root folder (atomic replace);
- `index.db`: SQLite (WAL) with one row per image: path relative to the root, size, mtime, content hash, and the
  row of its vector in the vector file; one row per file that could not be decoded (so an unchanged bad file is
  not decoded again); a `generation` counter in `meta`, bumped by every write transaction, so that a running
  server can tell cheaply that the index changed (`change_stamp`);
- `vectors-<gen>.f32`: float32 unit vectors, row after row, memory-mappable;
- `ann-<n>.ann`: the search backend's structure (`ann/`: HNSW, IVF, IVF-PQ), derived state. The database
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
thread, the folder's write lock); `ImageIndex.open(path, readonly=...)` returns one or the other. Both answer the
same reads (`base.IndexBase`), `backend()` and `lookup()` included.

Modules: `layout` (file names, format version), `errors` (storage errors as one line), `manifest`, `database`
(schema, migrations, connections, `meta`) and `queries` (the SQL), `vectors` (memory-mapped vector files),
`base`, `snapshot`, `writer` with `writer_reads` and `ann_file`. This module opens and creates indexes and keeps
every name it has always offered.

Checks on open: the manifest's fields and types; the database's presence and readability; the vector file's
length against the highest row the database refers to. Readers refuse a short vector file; the writer repairs
it by forgetting the images whose vectors are gone, so that the run embeds them again (vectors are derived
from the image files, so nothing is lost that the run does not restore).

Paths are stored as text when they are valid UTF-8, else as the file system's bytes (a BLOB), so a file name
that is not valid UTF-8 round-trips to the same file.
"""


from __future__ import annotations

from ...errors import LookalikeError
from .ann_file import (CATCH_UP_MAX, _header_params, _jsonable, ann_fingerprint,  # noqa: F401
                       parse_ann_fingerprint)
from .base import ImageFacts, IndexBase  # noqa: F401 (re-exported)
from .database import (MIGRATIONS, DigestChecker, FailureEntry, IndexEntry, _add_failures_table,  # noqa: F401
                       _add_imported_column, _column, _connect_reader, _generation, _int_column, _json_meta, _meta,
                       _row_problem, _SCHEMA, _uri_path, change_stamp, db_path, from_db_path)
from .errors import _detail, _kind, _low_on_space, rebuild_hint, storage_error  # noqa: F401
from .layout import (_ANN_NAME, _DB_FILES, _MANIFEST_TMP, _VECTOR_NAME, _WHITENING_NAME, DATABASE,  # noqa: F401
                     FORMAT_VERSION, LOCKFILE, MANIFEST, OLDEST_READABLE, own_file)
from .manifest import (_MANIFEST_FIELDS, _PREPROCESS_FIELDS, BACKBONE_KEYS, _manifest_problem,  # noqa: F401
                       _newer_format, default_index_path, describe_backbone, now_iso, read_manifest,
                       resolve_index_dir, same_backbone, write_json_atomic)
from .snapshot import IndexSnapshot
from .vectors import RowVectors, advise_random  # noqa: F401
from .writer import IndexWriter


class ImageIndex(IndexBase):
    """Opening an index: `ImageIndex.open(path, readonly=True)` gives an `IndexSnapshot`, `readonly=False` an
    `IndexWriter`; `ImageIndex.create(...)` starts a new one (an `IndexWriter`). Both share `IndexBase`."""

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

