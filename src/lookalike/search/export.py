"""Vectors out and in: parquet (columns `path`, `size`, `mtime`, `digest`, `vector` as a fixed-size list of
float32, with the backbone in the schema's metadata) and `.npy` (the vectors, with the other columns in a
`<name>.metadata.parquet` beside it, the layout clip-retrieval and autofaiss read).

Both directions stream in batches: 1M rows never become 1M Python objects at once. Writes are atomic (a kill
leaves no half-written file under the final name).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

import numpy as np

from ..errors import LookalikeError

if TYPE_CHECKING:
    from .index import ImageIndex

FORMATS = ("parquet", "npy")
METADATA_KEY = b"lookalike"  # schema metadata: JSON of the backbone description (model, pooling, dim, ...)
# "whitening": the record of an index's whitening, so that whitened vectors never join unwhitened ones.
BACKBONE_FIELDS = ("model", "pooling", "dim", "preprocess", "weights", "whitening")
EXPORT_BATCH = 8192  # rows per batch and per parquet row group (8192 x 1280 float32 = 40 MB)

Progress = Callable[[int, int], None]


class ExportRow(NamedTuple):
    """One image's bookkeeping row, as exported."""

    path: str
    size: int
    mtime_ns: int
    digest: str


@dataclass
class RowBatch:
    """A batch of rows read from a file: columns as arrays, vectors as one (n, dim) float32 matrix."""

    paths: list[str]
    sizes: np.ndarray  # int64
    mtimes_ns: np.ndarray  # int64
    digests: list[str]
    vectors: np.ndarray  # (n, dim) float32

    def __len__(self) -> int:
        return len(self.paths)

    def rows(self) -> Iterator[ExportRow]:
        for i in range(len(self.paths)):
            yield ExportRow(self.paths[i], int(self.sizes[i]), int(self.mtimes_ns[i]), self.digests[i])


# --- writing -------------------------------------------------------------------------------------------------


def _schema(dim: int, backbone: dict):
    import pyarrow as pa

    fields = [pa.field("path", pa.string(), nullable=False), pa.field("size", pa.int64()),
              pa.field("mtime", pa.timestamp("ns", tz="UTC")), pa.field("digest", pa.string()),
              pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)]
    meta = {k: backbone.get(k) for k in BACKBONE_FIELDS}
    meta["dim"] = dim
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


def _table(batch: RowBatch, schema):
    import pyarrow as pa

    dim = batch.vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(batch.vectors, np.float32).reshape(-1), type=pa.float32())
    return pa.Table.from_arrays(
        [pa.array(batch.paths, pa.string()), pa.array(batch.sizes, pa.int64()),
         pa.array(batch.mtimes_ns, pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
         pa.array(batch.digests, pa.string()), pa.FixedSizeListArray.from_arrays(flat, dim)], schema=schema)


def index_batches(index: "ImageIndex", batch_size: int = EXPORT_BATCH) -> Iterator[RowBatch]:
    """The rows of an opened read-only index (`ImageIndex.open(...)`) with their vectors, batch by batch,
    absolute paths. The size, mtime and digest come from a read-only query of the index database, checked
    against the snapshot's ids (LookalikeError when the index changed in between: run again)."""
    ids = index.ids()
    vectors = index.row_vectors()  # read batch by batch, never copied whole
    if not len(ids):
        return
    db = index.path / "index.db"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise LookalikeError(f"index database {db} is unreadable ({exc})") from None
    try:
        cur = conn.execute("SELECT id, path, size, mtime_ns, digest FROM images WHERE id <= ? ORDER BY id",
                           (int(ids[-1]),))
        root = index.root
        done = 0
        while done < len(ids):
            rows = cur.fetchmany(batch_size)
            got = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            want = ids[done:done + len(rows)]
            if not rows or not np.array_equal(got, want):
                raise LookalikeError(f"index {index.path} changed during the export: run it again")
            yield RowBatch(paths=[(root / r[1]).as_posix() for r in rows],
                           sizes=np.fromiter((r[2] for r in rows), np.int64, len(rows)),
                           mtimes_ns=np.fromiter((r[3] for r in rows), np.int64, len(rows)),
                           digests=[r[4] for r in rows],
                           vectors=np.asarray(vectors[done:done + len(rows)], np.float32))
            done += len(rows)
    except sqlite3.DatabaseError as exc:
        raise LookalikeError(f"index database {db} is unreadable ({exc})") from None
    finally:
        conn.close()


def write_parquet(batches, out, dim: int, backbone: dict, progress: Progress | None = None,
                  total: int = 0) -> int:
    """Write RowBatches to `out` (atomic). Returns the number of rows."""
    import pyarrow.parquet as pq

    from ..atomic import atomic_path

    schema = _schema(dim, backbone)
    n = 0
    with atomic_path(Path(out)) as tmp:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_table(_table(batch, schema), row_group_size=max(1, len(batch)))
                n += len(batch)
                if progress:
                    progress(n, total)
    return n


def metadata_path(npy_path) -> Path:
    p = Path(npy_path)
    return p.with_name(p.stem + ".metadata.parquet")


def write_npy(batches, out, n: int, dim: int, backbone: dict, progress: Progress | None = None) -> int:
    """Write the vectors to `out` as an (n, dim) float32 `.npy` and the other columns (no vector) to
    `metadata_path(out)`, both atomic."""
    import pyarrow.parquet as pq

    from ..atomic import atomic_path

    schema = _schema(dim, backbone)
    meta_schema = schema.remove(schema.get_field_index("vector"))
    done = 0
    with atomic_path(Path(out)) as tmp_npy, atomic_path(metadata_path(out)) as tmp_meta:
        arr = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.float32, shape=(n, dim))
        with pq.ParquetWriter(str(tmp_meta), meta_schema, compression="zstd") as writer:
            for batch in batches:
                if done + len(batch) > n:
                    raise LookalikeError("more rows than announced while writing the .npy export")
                arr[done:done + len(batch)] = batch.vectors
                t = _table(batch, schema)
                writer.write_table(t.drop_columns(["vector"]).cast(meta_schema))
                done += len(batch)
                if progress:
                    progress(done, n)
        if done != n:
            raise LookalikeError(f"the index changed during the export ({done} rows instead of {n}): run it again")
        arr.flush()
        del arr
    return done


def export_index(index: "ImageIndex", out, fmt: str = "parquet", batch_size: int = EXPORT_BATCH,
                 progress: Progress | None = None) -> dict:
    """Export an opened read-only index. Returns {"rows", "out", "format", "dim", "model"}."""
    if fmt not in FORMATS:
        raise LookalikeError(f"unknown export format {fmt!r}: use parquet or npy")
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise LookalikeError(f"folder {out.parent} does not exist")
    backbone = dict(index.manifest)
    n, dim = len(index.ids()), index.dim
    batches = index_batches(index, batch_size)
    if fmt == "parquet":
        rows = write_parquet(batches, out, dim, backbone, progress, total=n)
    else:
        rows = write_npy(batches, out, n, dim, backbone, progress)
    return {"rows": rows, "out": str(out), "format": fmt, "dim": dim, "model": backbone.get("model")}


# --- reading -------------------------------------------------------------------------------------------------


def read_metadata(path) -> tuple[dict | None, int, int]:
    """(backbone description from the file's metadata or None, vector dimension, row count) of a parquet file;
    LookalikeError when it is unreadable or has no usable `vector` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path), pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise LookalikeError(f"cannot read {path} as parquet ({str(exc).splitlines()[0][:160]})") from None
    schema = pf.schema_arrow
    for col in ("path", "vector"):
        if schema.get_field_index(col) < 0:
            raise LookalikeError(f"{path} has no `{col}` column")
    vtype = schema.field("vector").type
    if pa.types.is_fixed_size_list(vtype):
        dim = vtype.list_size
    elif pa.types.is_list(vtype) or pa.types.is_large_list(vtype):
        dim = -1  # found from the first row
    else:
        raise LookalikeError(f"{path}: the `vector` column is {vtype}, not a list of floats")
    if not (pa.types.is_floating(vtype.value_type)):
        raise LookalikeError(f"{path}: the `vector` column holds {vtype.value_type}, not floats")
    meta = None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
    if dim < 0:
        first = next(pf.iter_batches(batch_size=1, columns=["vector"]), None)
        dim = len(first.column(0)[0]) if first is not None and first.num_rows else 0
    return meta, int(dim), int(pf.metadata.num_rows)


def iter_parquet(path, batch_size: int = EXPORT_BATCH, dim: int | None = None) -> Iterator[tuple[RowBatch, list[dict]]]:
    """Read a parquet file in batches: (RowBatch of the usable rows, [{"path", "reason"}] of the skipped ones:
    no path, no vector, a vector of another length, or values that are not finite). Missing `size`, `mtime`
    or `digest` columns read as 0, 0 and ""."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _, file_dim, _ = read_metadata(path)
    dim = dim or file_dim
    # Without pre-buffering: with it, Arrow reads every row group of the file ahead, so memory grows with the
    # file (5 GB for 1M rows of 1280-d); without, one row group at a time.
    pf = pq.ParquetFile(str(path), pre_buffer=False)
    names = set(pf.schema_arrow.names)
    cols = [c for c in ("path", "size", "mtime", "digest", "vector") if c in names]
    try:
        for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
            n = rb.num_rows
            paths_col = rb.column("path")
            vec = rb.column("vector")
            lengths = pc.fill_null(pc.list_value_length(vec), -1).to_numpy(zero_copy_only=False)
            ok = (lengths == dim) & paths_col.is_valid().to_numpy(zero_copy_only=False)
            skipped = []
            if not ok.all():
                for i in np.nonzero(~ok)[0]:
                    p = paths_col[int(i)].as_py()
                    reason = "no path" if p is None else ("no vector" if lengths[i] < 0 else
                                                         f"vector of length {lengths[i]}, not {dim}")
                    skipped.append({"path": p or f"row {int(i)}", "reason": reason})
            keep = np.nonzero(ok)[0]
            if len(keep) < n:
                rb = rb.take(pa.array(keep))
                vec = rb.column("vector")
            flat = vec.flatten() if len(keep) else pa.array([], pa.float32())
            vectors = np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(len(keep), dim)
            finite = np.isfinite(vectors).all(axis=1)
            paths = rb.column("path").to_pylist()
            if not finite.all():
                for i in np.nonzero(~finite)[0]:
                    skipped.append({"path": paths[int(i)], "reason": "vector has values that are not finite"})
            m = len(keep)
            sizes = (pc.fill_null(rb.column("size"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
                     if "size" in names else np.zeros(m, np.int64))
            if "mtime" in names:
                mt = rb.column("mtime")
                if pa.types.is_timestamp(mt.type):
                    mt = mt.cast(pa.timestamp("ns", tz=mt.type.tz)).cast(pa.int64())
                mtimes = pc.fill_null(mt.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            else:
                mtimes = np.zeros(m, np.int64)
            digests = ([d or "" for d in rb.column("digest").to_pylist()] if "digest" in names else [""] * m)
            if not finite.all():
                sel = np.nonzero(finite)[0]
                vectors, sizes, mtimes = vectors[sel], sizes[sel], mtimes[sel]
                paths = [paths[i] for i in sel]
                digests = [digests[i] for i in sel]
            yield RowBatch(paths, sizes, mtimes, digests, vectors), skipped
    except pa.ArrowException as exc:
        raise LookalikeError(f"cannot read {path} ({str(exc).splitlines()[0][:160]})") from None


# --- importing into an index ---------------------------------------------------------------------------------


def _describe_model(model: str) -> dict:
    from .features import load_embedder

    return load_embedder(model).describe()


def import_parquet(path, index_path, *, model: str | None = None, root=None, batch_size: int = EXPORT_BATCH,
                   progress: Progress | None = None, ann: str | None = None) -> dict:
    """Bring the vectors of a parquet file (computed elsewhere) into the index at `index_path`, created when
    missing with the backbone named by `model` or by the file's metadata. Refused (LookalikeError) when the
    dimension or the backbone does not match. Rows are keyed by path: paths under the index's root are stored
    relative to it, others as they are; a row whose file does not exist here is kept all the same. A row whose
    path, size, mtime and digest the index already holds is left alone, so an interrupted import can be run
    again. Each batch is one committed transaction; rows are looked up batch by batch (no dict of every row).
    Imported rows are marked as such: a later `lookalike index` of the root keeps them while their file is
    missing, and treats them as its own once their file turns up and changes. The ANN file is brought in step
    at the end; `ann` sets the backend of the index (`lookalike index --ann`).

    Returns {"rows", "added", "updated", "unchanged", "skipped": [{"path", "reason"}], "index_path", "created",
    "ann"}.
    """
    from .index import MANIFEST, ImageIndex, describe_backbone, same_backbone

    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"{path} is not a file")
    meta, dim, total = read_metadata(path)
    backbone = meta if meta and meta.get("model") else None
    if model:
        named = _describe_model(model)
        if backbone is not None and not same_backbone(backbone, named):
            raise LookalikeError(f"{path} holds vectors from {describe_backbone(backbone, with_dim=True)}, "
                                 f"not {describe_backbone(named, with_dim=True)}")
        backbone = named
    if backbone is not None and int(backbone.get("dim") or -1) != dim:
        raise LookalikeError(f"{path} holds {dim}-d vectors, but {describe_backbone(backbone, with_dim=True)} "
                             f"makes {backbone.get('dim')}-d ones")
    if backbone is None:
        raise LookalikeError(f"{path} does not name the backbone of its vectors: pass --model")
    if ann is not None:
        from .ann import CHOICES

        if ann not in CHOICES:
            raise LookalikeError(f"unknown search backend {ann!r}: use one of {', '.join(CHOICES)}")
    index_path = Path(index_path).expanduser().resolve()
    created = not (index_path / MANIFEST).is_file()
    if created and backbone.get("whitening") is not None:
        raise LookalikeError(f"{path} holds whitened vectors: import them into an index with the same whitening "
                             "(the one they were exported from)")
    if created:
        if root is None:
            saved = Path(str(meta.get("root") or "")) if meta else None
            root = saved if saved is not None and str(saved) and saved.is_dir() else Path.cwd()
        index = ImageIndex.create(index_path, root=root, backbone={k: backbone.get(k) for k in BACKBONE_FIELDS},
                                  ann=ann)
    else:
        index = ImageIndex.open(index_path, readonly=False)
        if index.dim != dim or not same_backbone(index.manifest, backbone):
            have = describe_backbone(index.manifest, with_dim=True)
            index.close()
            raise LookalikeError(f"index {index_path} holds vectors from {have}, "
                                 f"not {describe_backbone(backbone, with_dim=True)}")
    summary = {"rows": 0, "added": 0, "updated": 0, "unchanged": 0, "skipped": [], "index_path": str(index_path),
               "created": created}
    with index, index.walk_table() as mark_seen:  # the paths met so far, in a temporary table
        done = 0
        for batch, skipped in iter_parquet(path, batch_size, dim):
            summary["skipped"] += skipped
            done += len(batch) + len(skipped)
            norms = np.linalg.norm(batch.vectors, axis=1)
            keys = [index.stored_path(row.path) if Path(row.path).is_absolute() else Path(row.path).as_posix()
                    for row in batch.rows()]
            known = index.lookup_paths(keys)
            earlier = index.seen_paths(keys)
            keep_vec, pending, fresh = [], [], set()  # pending[j]: (old entry or None, key, row) of keep_vec[j]
            for i, (key, row) in enumerate(zip(keys, batch.rows())):
                if key in earlier or key in fresh:
                    summary["skipped"].append({"path": row.path, "reason": "the same path appears earlier in the file"})
                    continue
                if norms[i] <= 0:
                    summary["skipped"].append({"path": row.path, "reason": "zero vector"})
                    continue
                fresh.add(key)
                old = known.get(key)
                if old is not None and row.digest and (old.size, old.mtime_ns, old.digest) == (
                        row.size, row.mtime_ns, row.digest):
                    summary["unchanged"] += 1
                    continue
                keep_vec.append(i)
                pending.append((old, key, row))
            mark_seen(sorted(fresh))
            if keep_vec:
                vecs = batch.vectors[keep_vec] / norms[keep_vec, None]
                rows = index.append_vectors(vecs.astype(np.float32))
                inserts, updates = [], []
                for (old, key, row), r in zip(pending, rows):
                    if old is None:
                        inserts.append((key, row.size, row.mtime_ns, row.digest, r))
                    else:
                        updates.append((old.id, key, row.size, row.mtime_ns, row.digest, r))
                index.commit(inserts=inserts, updates=updates, imported=True)
                summary["added"] += len(inserts)
                summary["updated"] += len(updates)
            if progress:
                progress(done, total)
        summary["ann"] = index.update_ann(ann)
        summary["rows"] = len(index)
        index.touch_manifest(count=summary["rows"])
        summary["notes"] = list(index.notes)
    return summary
