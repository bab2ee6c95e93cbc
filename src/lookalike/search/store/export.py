"""Vectors out and in: parquet (columns `path`, `path_bytes`, `size`, `mtime`, `digest`, `vector` as a fixed-size
list of float32, with the backbone and the index's root in the schema's metadata) and `.npy` (the vectors, with the
other columns in a `<name>.metadata.parquet` beside it, the layout clip-retrieval and autofaiss read).

`path` is text. A file name that is not valid UTF-8 (Linux names are bytes) has its undecodable bytes escaped
there (`z\\xe9.jpg`) and its exact bytes in `path_bytes`, null for every other row; import prefers `path_bytes`.

Both directions stream in batches: 1M rows never become 1M Python objects at once. Writes are atomic (a kill
leaves no half-written file under the final name).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

import numpy as np

from ...errors import LookalikeError
from ...paths import printable

if TYPE_CHECKING:
    from .index import ImageIndex

FORMATS = ("parquet", "npy")
METADATA_KEY = b"lookalike"  # schema metadata: JSON of the backbone description (model, pooling, dim, ...)
# "whitening": the record of an index's whitening, so that whitened vectors never join unwhitened ones.
BACKBONE_FIELDS = ("model", "pooling", "dim", "preprocess", "weights", "whitening", "model_digest")
EXPORT_BATCH = 8192  # rows per batch and per parquet row group (8192 x 1280 float32 = 40 MB)
MAX_PATH_BYTES = 4096  # Linux's PATH_MAX: a longer path names no file and only costs memory
F32_MAX = float(np.finfo(np.float32).max)

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

    fields = [pa.field("path", pa.string(), nullable=False), pa.field("path_bytes", pa.binary()),
              pa.field("size", pa.int64()), pa.field("mtime", pa.timestamp("ns", tz="UTC")),
              pa.field("digest", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)]
    meta = {k: backbone.get(k) for k in BACKBONE_FIELDS}
    meta["dim"] = dim
    if backbone.get("root") is not None:  # import's default root for a new index
        meta["root"] = str(backbone["root"])
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


def _table(batch: RowBatch, schema):
    import pyarrow as pa

    dim = batch.vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(batch.vectors, np.float32).reshape(-1), type=pa.float32())
    text, raw = [], []
    for p in batch.paths:
        try:
            p.encode("utf-8")
            text.append(p)
            raw.append(None)
        except UnicodeEncodeError:  # a name read through surrogateescape: escaped here, exact in path_bytes
            text.append(printable(p))
            raw.append(os.fsencode(p))
    return pa.Table.from_arrays(
        [pa.array(text, pa.string()), pa.array(raw, pa.binary()), pa.array(batch.sizes, pa.int64()),
         pa.array(batch.mtimes_ns, pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
         pa.array(batch.digests, pa.string()), pa.FixedSizeListArray.from_arrays(flat, dim)], schema=schema)


def index_batches(index: "ImageIndex", batch_size: int = EXPORT_BATCH) -> Iterator[RowBatch]:
    """The rows of an opened read-only index (`ImageIndex.open(...)`) with their vectors, batch by batch,
    absolute paths. The size, mtime and digest come from a read-only query of the index database, checked
    against the snapshot's ids (LookalikeError when the index changed in between: run again)."""
    from .queries import export_rows

    ids = index.ids()
    vectors = index.row_vectors()  # read batch by batch, never copied whole
    if not len(ids):
        return
    batches = export_rows(index.path, int(ids[-1]), batch_size)
    try:
        root = index.root
        done = 0
        while done < len(ids):
            rows = next(batches, [])
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
    finally:
        batches.close()


def write_parquet(batches, out, dim: int, backbone: dict, progress: Progress | None = None,
                  total: int = 0) -> int:
    """Write RowBatches to `out` (atomic). Returns the number of rows."""
    import pyarrow.parquet as pq

    from ...atomic import atomic_path

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

    from ...atomic import atomic_path

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


def _is_index_folder(folder: Path) -> bool:
    from .layout import DATABASE, MANIFEST

    return folder.name == ".lookalike" or ((folder / MANIFEST).is_file() and (folder / DATABASE).exists())


def export_targets(index_dir, out, fmt: str) -> list[Path]:
    """The files an export to `out` writes (a .npy's metadata file too), checked: LookalikeError when one is a
    folder, or lies inside the index folder `index_dir` or any other index folder (symlinks resolved), whose
    files an export must never replace."""
    if fmt not in FORMATS:
        raise LookalikeError(f"unknown export format {fmt!r}: use parquet or npy")
    out = Path(out).expanduser()
    own = Path(os.path.realpath(Path(index_dir).expanduser()))
    targets = [out, metadata_path(out)] if fmt == "npy" else [out]
    for target in targets:
        real = Path(os.path.realpath(target))
        if real.is_dir():
            raise LookalikeError(f"--out {printable(target)} is a folder: name a file to write")
        for folder in real.parents:
            if folder == own or _is_index_folder(folder):
                raise LookalikeError(f"--out {printable(target)} lies inside the index folder {printable(folder)}: "
                                     "write the export outside it")
    return targets


def export_index(index: "ImageIndex", out, fmt: str = "parquet", batch_size: int = EXPORT_BATCH,
                 progress: Progress | None = None) -> dict:
    """Export an opened read-only index (refused when `out` is unfit: `export_targets`). Returns {"rows", "out",
    "format", "dim", "model"}."""
    export_targets(index.path, out, fmt)
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


def _check_column_types(path, schema) -> None:
    """LookalikeError naming the first column whose type import cannot use (an integer `path`, ...)."""
    import pyarrow as pa

    t = pa.types
    wanted = {"path": ("text", lambda x: t.is_string(x) or t.is_large_string(x)),
              "path_bytes": ("binary", lambda x: t.is_binary(x) or t.is_large_binary(x)),
              "size": ("integers", t.is_integer),
              "mtime": ("timestamps or integers", lambda x: t.is_timestamp(x) or t.is_integer(x)),
              "digest": ("text", lambda x: t.is_string(x) or t.is_large_string(x))}
    for name, (kind, fits) in wanted.items():
        if schema.get_field_index(name) >= 0 and not fits(schema.field(name).type) \
                and not t.is_null(schema.field(name).type):
            raise LookalikeError(f"{path}: the `{name}` column holds {schema.field(name).type}, not {kind}")


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
    _check_column_types(path, schema)
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
        if not isinstance(meta, dict):
            meta = None
    if dim < 0:
        first = next(pf.iter_batches(batch_size=1, columns=["vector"]), None)
        dim = len(first.column(0)[0]) if first is not None and first.num_rows else 0
    return meta, int(dim), int(pf.metadata.num_rows)


def _path_problem(p: str | None) -> str | None:
    if p is None:
        return "no path"
    if not p:
        return "empty path"
    if "\0" in p:  # no file name holds one, and every later use of the path (a thumbnail, a search) would fail
        return "path holds a NUL byte"
    if len(p) > MAX_PATH_BYTES // 4 and len(os.fsencode(p)) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    return None


def _row_paths(rb) -> list[str | None]:
    """Each row's path: from `path_bytes` (exact, through surrogateescape) where a row has them, else `path`."""
    paths = rb.column("path").to_pylist()
    if "path_bytes" in rb.schema.names:
        for i, raw in enumerate(rb.column("path_bytes").to_pylist()):
            if raw is not None:
                paths[i] = os.fsdecode(raw)
    return paths


def _vector_problems(vectors: np.ndarray) -> list[str | None]:
    """Per row of a float64 matrix: why it cannot be stored as float32 (values that are not finite, or beyond
    float32's range, which the cast would turn into infinities), else None."""
    finite = np.isfinite(vectors).all(axis=1)
    with np.errstate(invalid="ignore"):
        fits = (np.abs(vectors) <= F32_MAX).all(axis=1)
    return [None if ok else ("vector has values that are not finite" if not f else "vector has values beyond float32")
            for ok, f in zip(finite & fits, finite)]


def _row_columns(rb, names: set, m: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(sizes, mtimes in ns, digests) of a record batch; missing columns read as 0, 0 and ""."""
    import pyarrow as pa
    import pyarrow.compute as pc

    sizes = (pc.fill_null(rb.column("size"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
             if "size" in names else np.zeros(m, np.int64))
    if "mtime" in names:
        mt = rb.column("mtime")
        if pa.types.is_timestamp(mt.type):
            mt = mt.cast(pa.timestamp("ns", tz=mt.type.tz)).cast(pa.int64())
        mtimes = pc.fill_null(mt.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        mtimes = np.zeros(m, np.int64)
    digests = [d or "" for d in rb.column("digest").to_pylist()] if "digest" in names else [""] * m
    return sizes, mtimes, digests


def _read_batch(rb, names: set, dim: int, first: int) -> tuple[RowBatch, list[dict]]:
    """One record batch (its first row is row `first` of the file) -> (RowBatch of its usable rows, skipped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    paths = _row_paths(rb)
    lengths = pc.fill_null(pc.list_value_length(rb.column("vector")), -1).to_numpy(zero_copy_only=False)
    problems = [_path_problem(p) or (None if n == dim else "no vector" if n < 0 else f"vector of length {n}, not {dim}")
                for p, n in zip(paths, lengths)]
    shaped = np.array([i for i, why in enumerate(problems) if why is None], np.int64)
    if len(shaped) < rb.num_rows:
        rb = rb.take(pa.array(shaped))
    flat = rb.column("vector").flatten() if len(shaped) else pa.array([], pa.float64())
    # float64 first: a float64 value beyond float32 is caught here, not cast to an infinity
    vectors = np.asarray(flat.to_numpy(zero_copy_only=False), np.float64).reshape(len(shaped), dim)
    for i, why in zip(shaped, _vector_problems(vectors)):
        problems[int(i)] = why
    sizes, mtimes, digests = _row_columns(rb, names, len(shaped))
    good = np.array([j for j, i in enumerate(shaped) if problems[int(i)] is None], np.int64)
    skipped = [{"path": printable(p).replace("\0", "\\x00") if p else f"row {first + i}",
                "reason": why if p is None or "\0" not in p else f"{why} (row {first + i})"}
               for i, (p, why) in enumerate(zip(paths, problems)) if why is not None]
    batch = RowBatch([paths[int(shaped[j])] for j in good], sizes[good], mtimes[good], [digests[j] for j in good],
                     vectors[good].astype(np.float32))
    return batch, skipped


def iter_parquet(path, batch_size: int = EXPORT_BATCH, dim: int | None = None) -> Iterator[tuple[RowBatch, list[dict]]]:
    """Read a parquet file in batches: (RowBatch of the usable rows, [{"path", "reason"}] of the skipped ones:
    no path, an empty one, one with a NUL byte or longer than MAX_PATH_BYTES, no vector, a vector of another
    length, or values that are not finite or beyond float32). Missing `size`, `mtime` or `digest` columns read
    as 0, 0 and ""; a `path_bytes` value (a name that is not UTF-8, as export writes it) stands for `path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, file_dim, _ = read_metadata(path)
    dim = dim or file_dim
    # Without pre-buffering: with it, Arrow reads every row group of the file ahead, so memory grows with the
    # file (5 GB for 1M rows of 1280-d); without, one row group at a time.
    pf = pq.ParquetFile(str(path), pre_buffer=False)
    names = set(pf.schema_arrow.names)
    cols = [c for c in ("path", "path_bytes", "size", "mtime", "digest", "vector") if c in names]
    first = 0
    try:
        for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield _read_batch(rb, names, dim, first)
            first += rb.num_rows
    except pa.ArrowException as exc:
        raise LookalikeError(f"cannot read {path} ({str(exc).splitlines()[0][:160]})") from None
