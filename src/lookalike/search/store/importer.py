"""`lookalike import`: the vectors of a parquet file (computed elsewhere, or by `lookalike export`) into an index.

Everything the file says is checked before the index is touched: the backbone description in its metadata
field by field (`manifest_check`), each row as it is read (`export.iter_parquet`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ...errors import LookalikeError
from ...paths import printable
from .export import BACKBONE_FIELDS, EXPORT_BATCH, RowBatch, iter_parquet, read_metadata

if TYPE_CHECKING:
    from .index import ImageIndex

Progress = Callable[[int, int], None]


def _describe_model(model: str) -> dict:
    from ..describe.features import load_embedder

    return load_embedder(model).describe()


def _backbone_of(path: Path, meta: dict | None, dim: int, model: str | None) -> dict:
    """The backbone description of the file's vectors (its metadata's, or that of `model`), checked."""
    from .index import describe_backbone, same_backbone
    from .manifest_check import backbone_problem

    backbone = meta if meta and meta.get("model") is not None else None
    if backbone is not None:
        problem = backbone_problem(backbone)
        if problem:
            raise LookalikeError(f"{path}: the backbone description in its metadata is unusable ({problem})")
    if model:
        named = _describe_model(model)
        if backbone is not None and not same_backbone(backbone, named):
            raise LookalikeError(f"{path} holds vectors from {describe_backbone(backbone, with_dim=True)}, "
                                 f"not {describe_backbone(named, with_dim=True)}")
        backbone = named
    if backbone is None:
        raise LookalikeError(f"{path} does not name the backbone of its vectors: pass --model")
    if backbone.get("dim") != dim:
        raise LookalikeError(f"{path} holds {dim}-d vectors, but {describe_backbone(backbone, with_dim=True)} "
                             f"makes {backbone.get('dim')}-d ones")
    return backbone


def _saved_root(meta: dict | None) -> Path | None:
    """The root the file was exported from, when that folder exists here."""
    saved = meta.get("root") if meta else None
    if not isinstance(saved, str) or not saved or "\0" in saved:
        return None
    try:
        return Path(saved) if Path(saved).is_dir() else None
    except OSError:  # a name too long for this system, say
        return None


def _open_index(path: Path, index_path: Path, backbone: dict, meta: dict | None, dim: int, root,
                ann: str | None) -> tuple["ImageIndex", bool]:
    """(the index at `index_path` opened for writing, whether it was created here)."""
    from .index import IndexWriter, describe_backbone, same_backbone

    # The lock first: an index another writer started here meanwhile is reopened, never replaced.
    index = IndexWriter.take(index_path)
    try:
        if not index.reopen():
            if backbone.get("whitening") is not None:
                raise LookalikeError(f"{path} holds whitened vectors: import them into an index with the same "
                                     "whitening (the one they were exported from)")
            if root is None:
                root = _saved_root(meta) or Path.cwd()
            index.start(root=root, backbone={k: backbone.get(k) for k in BACKBONE_FIELDS}, ann=ann)
            return index, True
        if index.dim != dim or not same_backbone(index.manifest, backbone):
            raise LookalikeError(f"index {index_path} holds vectors from "
                                 f"{describe_backbone(index.manifest, with_dim=True)}, "
                                 f"not {describe_backbone(backbone, with_dim=True)}")
        return index, False
    except BaseException:
        index.close()
        raise


def _import_batch(index: "ImageIndex", batch: RowBatch, mark_seen: Callable[[list[str]], None],
                  summary: dict) -> None:
    """One batch into the index, one committed transaction."""
    # float64: a float32 vector's squared length can overflow float32 (and its normalised form become zero)
    vectors = batch.vectors.astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1)
    rows = list(batch.rows())
    keys = [index.stored_path(row.path if Path(row.path).is_absolute() else index.root / row.path) for row in rows]
    known = index.lookup_paths(keys)
    earlier = index.seen_paths(keys)
    keep_vec, pending, fresh = [], [], set()  # pending[j]: (old entry or None, key, row) of keep_vec[j]
    for i, (key, row) in enumerate(zip(keys, rows)):
        if key in earlier or key in fresh:
            summary["skipped"].append({"path": printable(row.path),
                                       "reason": "the same path appears earlier in the file"})
            continue
        if not norms[i] > 0:
            summary["skipped"].append({"path": printable(row.path), "reason": "zero vector"})
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
    if not keep_vec:
        return
    stored = index.append_vectors((vectors[keep_vec] / norms[keep_vec, None]).astype(np.float32))
    inserts, updates = [], []
    for (old, key, row), r in zip(pending, stored):
        if old is None:
            inserts.append((key, row.size, row.mtime_ns, row.digest, r))
        else:
            updates.append((old.id, key, row.size, row.mtime_ns, row.digest, r))
    index.commit(inserts=inserts, updates=updates, imported=True)
    summary["added"] += len(inserts)
    summary["updated"] += len(updates)


def import_parquet(path, index_path, *, model: str | None = None, root=None, batch_size: int = EXPORT_BATCH,
                   progress: Progress | None = None, ann: str | None = None) -> dict:
    """Bring the vectors of a parquet file (computed elsewhere) into the index at `index_path`, created when
    missing with the backbone named by `model` or by the file's metadata, and the root `root` (default: the
    root the file records, when that folder exists here, else the current folder). Refused (LookalikeError)
    when the dimension or the backbone does not match, or the metadata could not make a usable index. Rows
    are keyed by path: paths under the index's root are stored relative to it, others as they are; a row whose
    file does not exist here is kept all the same. A row whose path, size, mtime and digest the index already
    holds is left alone, so an interrupted import can be run again. Each batch is one committed transaction;
    rows are looked up batch by batch (no dict of every row). Imported rows are marked as such: a later
    `lookalike index` of the root keeps them while their file is missing, and treats them as its own once their
    file turns up and changes. The ANN file is brought in step at the end; `ann` sets the backend of the index
    (`lookalike index --ann`).

    Returns {"rows", "added", "updated", "unchanged", "skipped": [{"path", "reason"}], "index_path", "created",
    "ann", "notes"}.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"{printable(path)} is not a file")
    meta, dim, total = read_metadata(path)
    backbone = _backbone_of(path, meta, dim, model)
    if ann is not None:
        from .ann import CHOICES

        if ann not in CHOICES:
            raise LookalikeError(f"unknown search backend {ann!r}: use one of {', '.join(CHOICES)}")
    index_path = Path(index_path).expanduser().resolve()
    index, created = _open_index(path, index_path, backbone, meta, dim, root, ann)
    summary = {"rows": 0, "added": 0, "updated": 0, "unchanged": 0, "skipped": [], "index_path": str(index_path),
               "created": created}
    with index, index.walk_table() as mark_seen:  # the paths met so far, in a temporary table
        done = 0
        for batch, skipped in iter_parquet(path, batch_size, dim):
            summary["skipped"] += skipped
            done += len(batch) + len(skipped)
            _import_batch(index, batch, mark_seen, summary)
            if progress:
                progress(done, total)
        summary["ann"] = index.update_ann(ann)
        summary["rows"] = len(index)
        index.touch_manifest(count=summary["rows"])
        summary["notes"] = list(index.notes)
    return summary
