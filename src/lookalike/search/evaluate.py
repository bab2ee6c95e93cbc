"""Retrieval quality of an index against ground truth (`lookalike eval-search`).

Two forms of benchmark folder:

- `groundtruth.json` (INRIA Holidays' layout): `{"queries": [{"query", "positives", "junk"}], "database": [...]}`,
  paths relative to the folder. Each query ranks the database with itself left out; junk images are taken out
  of its ranking; the figures are mAP with Holidays' trapezoid AP, P@1, P@5 and recall@k.
- a class-folder tree (`DIR/<class>/*`): every image queries all the others, and the positives are the other
  images of its class; the figures are MAP@R and R-precision (Musgrave et al. 2020), P@1, P@10, and the
  same mAP, P@5 and recall@k as above over the whole ranking.

Queries with no positives are left out of every mean and counted. Images that could not be indexed are named:
as queries they are left out, as positives they count as missed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import LookalikeError
from ..images import is_image_path, list_image_files
from .metrics import holidays_ap, map_at_r, precision_at_k, r_precision, recall_at_k

if TYPE_CHECKING:
    from .index import ImageIndex

GROUNDTRUTH = "groundtruth.json"
RECALL_KS = (1, 5, 10)
# Query rows per similarity block: block x N float32 scores and int64 orders stay under ~64 MB.
_BLOCK_BYTES = 64 * 2**20
MAX_GROUNDTRUTH_BYTES = 64 * 2**20  # a ground-truth file is read whole: bound it


@dataclass
class Benchmark:
    """A retrieval benchmark: the database (paths relative to `root`) and either explicit queries or labels."""

    root: Path
    kind: str  # "groundtruth" or "classes"
    database: list[str]
    queries: list[dict] = field(default_factory=list)  # groundtruth: {"query", "positives", "junk"}
    labels: list[str] = field(default_factory=list)  # classes: the class of each database image


def _rel(root: Path, value, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise LookalikeError(f"{root / GROUNDTRUTH}: {what} must be a non-empty path string, not {value!r}")
    p = Path(value)
    if p.is_absolute() or ".." in p.parts:
        raise LookalikeError(f"{root / GROUNDTRUTH}: {what} {value!r} must be a path inside the benchmark folder")
    return p.as_posix()


def _load_groundtruth(root: Path) -> Benchmark:
    path = root / GROUNDTRUTH
    try:
        if path.stat().st_size > MAX_GROUNDTRUTH_BYTES:
            raise LookalikeError(f"{path} is larger than {MAX_GROUNDTRUTH_BYTES // 2**20} MB")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LookalikeError(f"cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise LookalikeError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("queries"), list) or not isinstance(
            doc.get("database"), list):
        raise LookalikeError(f"{path} needs a \"queries\" list and a \"database\" list")
    database = list(dict.fromkeys(_rel(root, p, "database entry") for p in doc["database"]))
    queries = []
    for n, q in enumerate(doc["queries"]):
        if not isinstance(q, dict) or "query" not in q:
            raise LookalikeError(f"{path}: query {n} needs a \"query\" path")
        lists = {}
        for key in ("positives", "junk"):
            items = q.get(key, [])
            if not isinstance(items, list):
                raise LookalikeError(f"{path}: \"{key}\" of query {n} must be a list")
            lists[key] = [_rel(root, p, key[:-1] if key == "positives" else key) for p in items]
        queries.append({"query": _rel(root, q["query"], "query"), **lists})
    if not queries:
        raise LookalikeError(f"{path} lists no queries")
    if not database:
        raise LookalikeError(f"{path} lists no database images")
    return Benchmark(root=root, kind="groundtruth", database=database, queries=queries)


def _load_classes(root: Path) -> Benchmark:
    database, labels = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in list_image_files(sub):
            database.append(f.relative_to(root).as_posix())
            labels.append(sub.name)
    if len(set(labels)) < 1 or len(database) < 2:
        raise LookalikeError(f"{root} holds neither {GROUNDTRUTH} nor class folders of images (DIR/<class>/*)")
    return Benchmark(root=root, kind="classes", database=database, labels=labels)


def load_benchmark(folder) -> Benchmark:
    """Read a benchmark folder: `groundtruth.json` if it holds one, else its class sub-folders."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LookalikeError(f"{folder} is not a folder")
    root = root.resolve()
    if (root / GROUNDTRUTH).is_file():
        return _load_groundtruth(root)
    return _load_classes(root)


# --- ranking ---------------------------------------------------------------------------------------------------


def _positions(index: "ImageIndex", root: Path, rels: list[str]) -> np.ndarray:
    """Row of each benchmark path among the index's vectors, -1 where it is not indexed."""
    row_of = {int(i): n for n, i in enumerate(index.ids())}
    out = np.full(len(rels), -1, np.int64)
    for n, rel in enumerate(rels):
        image_id = index.id_of(root / rel) if is_image_path(rel) else None
        if image_id is not None:
            out[n] = row_of[int(image_id)]
    return out


def _trapezoid_ap_rows(rel: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """Holidays' AP of each row of a boolean relevance matrix (vectorised `metrics.holidays_ap`)."""
    found = np.cumsum(rel, axis=1)  # positives up to and including each place
    rank = np.arange(rel.shape[1])[None, :]
    before = np.where(rank == 0, 1.0, (found - rel) / np.maximum(rank, 1))
    at = found / (rank + 1)
    return np.where(rel, (before + at) / 2.0, 0.0).sum(axis=1) / np.maximum(n_pos, 1)


def rank_database(scores: np.ndarray) -> np.ndarray:
    """Database order of each query row, best first (ties kept in database order)."""
    return np.argsort(-scores, axis=1, kind="stable")


@dataclass
class Descriptors:
    """Query vectors (or several views of each query) against database vectors; scores are dot products."""

    database: np.ndarray  # (N, D)
    queries: np.ndarray  # (Q, V, D): V views per query, the best-scoring view counts


def _scores(desc: Descriptors, rows: slice) -> np.ndarray:
    q = desc.queries[rows]
    s = np.einsum("qvd,nd->qvn", q, desc.database, optimize=True) if q.shape[1] > 1 else (
        q[:, 0, :] @ desc.database.T)[:, None, :]
    return s.max(axis=1)


def evaluate_groundtruth(bench: Benchmark, desc: Descriptors, query_rows: np.ndarray, db_rows: np.ndarray,
                         keep: list[int], worst: int = 0, top: int = 5) -> dict:
    """Figures of a ground-truth benchmark. `query_rows[i]`: the database position of query `keep[i]` (or -1)."""
    db_pos = {rel: n for n, rel in enumerate(bench.database)}
    n_db = len(bench.database)
    per_query, no_positives = [], []
    block = max(1, _BLOCK_BYTES // max(1, n_db * 16))
    for start in range(0, len(keep), block):
        sl = slice(start, min(len(keep), start + block))
        scores = _scores(desc, sl)
        for j, qi in enumerate(keep[sl]):
            q = bench.queries[qi]
            row = scores[j].copy()
            self_pos = int(query_rows[start + j])
            if self_pos >= 0:
                row[self_pos] = -np.inf
            row[db_rows < 0] = -np.inf  # not indexed: ranked nowhere
            order = np.argsort(-row, kind="stable")
            valid = np.ones(n_db, bool)
            if self_pos >= 0:
                valid[self_pos] = False
            positives = {db_pos[p] for p in q["positives"] if p in db_pos and p != q["query"]}
            junk = {db_pos[p] for p in q["junk"] if p in db_pos} - positives
            valid[list(junk)] = False
            valid[db_rows < 0] = False
            pos_mask = np.zeros(n_db, bool)
            pos_mask[list(positives)] = True
            order = order[valid[order]]
            rel = pos_mask[order]
            n_pos = len(positives)
            if n_pos == 0:
                no_positives.append(q["query"])
                continue
            ranks = np.flatnonzero(rel)
            entry = {"query": q["query"], "AP": holidays_ap(ranks, n_pos), "P@1": precision_at_k(rel, 1),
                     "P@5": precision_at_k(rel, 5), "positives": n_pos}
            for k in RECALL_KS:
                entry[f"recall@{k}"] = recall_at_k(rel, k, n_pos)
            entry["_top"] = [(int(d), float(row[d])) for d in order[:top]]
            entry["_missed"] = [(int(order[r]), int(r) + 1, float(row[order[r]])) for r in ranks if r >= top][:top]
            per_query.append(entry)
    figures = {"mAP": _mean(per_query, "AP"), "P@1": _mean(per_query, "P@1"), "P@5": _mean(per_query, "P@5")}
    for k in RECALL_KS:
        figures[f"recall@{k}"] = _mean(per_query, f"recall@{k}")
    figures["queries"] = len(per_query)
    figures["queries_without_positives"] = len(no_positives)
    return {"figures": figures, "per_query": per_query}


def evaluate_classes(bench: Benchmark, desc: Descriptors, db_rows: np.ndarray, top: int = 5) -> dict:
    """Figures of a class-folder benchmark: every indexed image queries all the other indexed images."""
    labels = np.unique(np.asarray(bench.labels), return_inverse=True)[1]
    indexed = np.flatnonzero(db_rows >= 0)
    lab = labels[indexed]
    counts = np.bincount(lab, minlength=labels.max() + 1)
    n = len(indexed)
    block = max(1, _BLOCK_BYTES // max(1, n * 16))
    per_query = []
    for start in range(0, n, block):
        sl = slice(start, min(n, start + block))
        scores = _scores(desc, sl)
        rows = np.arange(sl.start, sl.stop)
        scores[np.arange(len(rows)), rows] = -np.inf  # itself: last, then dropped
        order = rank_database(scores)[:, :-1]
        rel = lab[order] == lab[rows][:, None]
        n_pos = counts[lab[rows]] - 1
        aps = _trapezoid_ap_rows(rel, n_pos)
        for j, r in enumerate(rows):
            npos = int(n_pos[j])
            if npos == 0:
                per_query.append({"query": bench.database[indexed[r]], "positives": 0})
                continue
            e = {"query": bench.database[indexed[r]], "AP": float(aps[j]), "mAP@R": map_at_r(rel[j], npos),
                 "R-precision": r_precision(rel[j], npos), "P@1": precision_at_k(rel[j], 1),
                 "P@5": precision_at_k(rel[j], 5), "P@10": precision_at_k(rel[j], 10), "positives": npos}
            for k in RECALL_KS:
                e[f"recall@{k}"] = recall_at_k(rel[j], k, npos)
            e["_top"] = [(int(indexed[d]), float(scores[j, d])) for d in order[j, :top]]
            e["_missed"] = []
            per_query.append(e)
    scored = [e for e in per_query if e["positives"] > 0]
    figures = {"mAP": _mean(scored, "AP"), "mAP@R": _mean(scored, "mAP@R"),
               "R-precision": _mean(scored, "R-precision"), "P@1": _mean(scored, "P@1"),
               "P@5": _mean(scored, "P@5"), "P@10": _mean(scored, "P@10")}
    for k in RECALL_KS:
        figures[f"recall@{k}"] = _mean(scored, f"recall@{k}")
    figures["queries"] = len(scored)
    figures["queries_without_positives"] = len(per_query) - len(scored)
    return {"figures": figures, "per_query": scored}


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")
