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
from typing import TYPE_CHECKING, Callable

import numpy as np

from ...errors import LookalikeError
from ...images import is_image_path, list_image_files
from ...models.registry import DEFAULT_MODEL
from ..vector_math import rows_per_block, similarity_to_distance
from .metrics import holidays_ap, holidays_ap_rows, map_at_r, precision_at_k, r_precision, recall_at_k

if TYPE_CHECKING:
    from ..store.index import ImageIndex

GROUNDTRUTH = "groundtruth.json"
RECALL_KS = (1, 5, 10)
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
                         keep: list[int], top: int = 5, rescore: Callable[[str, np.ndarray], np.ndarray] | None = None,
                         shortlist: int = 0) -> dict:
    """Figures of a ground-truth benchmark. `query_rows[i]`: the database position of query `keep[i]` (or -1).
    `rescore(query, positions)`: what to add to the scores of a query's first `shortlist` results (spatial
    verification) before the ranking is measured."""
    db_pos = {rel: n for n, rel in enumerate(bench.database)}
    n_db = len(bench.database)
    per_query, no_positives = [], []
    block = rows_per_block(n_db, 16)  # float32 scores and int64 orders
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
            shown = row  # the descriptor's scores: what the report's distances come from
            if rescore is not None and shortlist > 0:
                head = np.argsort(-row, kind="stable")[:shortlist]
                head = head[np.isfinite(row[head])]
                shown = row.copy()
                row[head] += rescore(q["query"], head)
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
            entry["_top"] = [(int(d), float(shown[d])) for d in order[:top]]
            entry["_missed"] = [(int(order[r]), int(r) + 1, float(shown[order[r]])) for r in ranks if r >= top][:top]
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
    block = rows_per_block(n, 16)  # float32 scores and int64 orders
    per_query = []
    for start in range(0, n, block):
        sl = slice(start, min(n, start + block))
        scores = _scores(desc, sl)
        rows = np.arange(sl.start, sl.stop)
        scores[np.arange(len(rows)), rows] = -np.inf  # itself: last, then dropped
        order = rank_database(scores)[:, :-1]
        rel = lab[order] == lab[rows][:, None]
        n_pos = counts[lab[rows]] - 1
        aps = holidays_ap_rows(rel, n_pos)
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


# --- the whole evaluation ----------------------------------------------------------------------------------------


def eval_index_path(root: Path, backbone: dict) -> Path:
    """The evaluation's own index of a benchmark folder: under `$LOOKALIKE_HOME/eval` (or the user cache), one
    per folder and descriptor, so that benchmarks stay read-only and each descriptor keeps its incremental index."""
    import hashlib

    from ...paths import home

    key = json.dumps({"root": str(root), "backbone": backbone}, sort_keys=True)
    return home() / "eval" / f"{root.name or 'root'}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _index(folder: Path, index_path, embedder, progress) -> dict:
    from ..indexing.sync import index_folder

    path = Path(index_path) if index_path else eval_index_path(folder, embedder.describe())
    return index_folder(folder, path, embedder=embedder, progress=progress)


def run_eval(folder, *, index_path=None, model: str = DEFAULT_MODEL, pooling: str = "avg",
             weights: str | None = None, inputs: dict | None = None, device: str = "cpu", runtime: str = "auto",
             whiten: str | None = None, whiten_dims: int | None = None, whiten_power: float | None = None,
             qe: int = 0, dba: int = 0, verify: int = 0, verify_detail: str = "fast",
             alpha: float = 3.0, worst: int = 20, top: int = 5, embedder=None, progress=None) -> dict:
    """Index `folder` (incrementally, in its own index unless `index_path`) and measure retrieval on it.

    `whiten`: None, "index" (PCA-whitening fitted on the benchmark's own indexed vectors, no labels used) or a
    folder to fit it on (indexed with the same descriptor); stored beside the index. `whiten_dims`, `whiten_power`:
    axes kept and signed power applied first (`whitening.fit_whitening`; default: all axes and
    `whitening.power_for(pooling)`, as `lookalike index` fits it). `qe`, `dba`, `alpha`: alpha-QE and DBA as
    `lookalike search` runs them (`search_path.py`; 0: off). `verify`: results per query re-ranked by spatial
    verification (`verify.py`; 0: off; ground-truth benchmarks only: images of one class are not views of one
    scene), at `verify_detail` (`verify.DETAILS`). Returns {"benchmark", "kind", "figures", "worst": per-query
    rows, "skipped", "index_path", "descriptor", "seconds"}.
    """
    import time

    from ..describe.features import load_embedder
    from ..describe.whitening import folder_key
    from ..retrieve.query import Expansion

    if qe < 0 or dba < 0:
        raise LookalikeError("--qe and --dba take a number of neighbours >= 0")
    options = Expansion(qe=qe, dba=dba, alpha=alpha)  # the bounds `lookalike search` sets
    bench = load_benchmark(folder)
    rescore = _verification(bench, verify, verify_detail) if verify else None  # checks the number first
    if verify and bench.kind != "groundtruth":
        raise LookalikeError("--verify needs a groundtruth.json benchmark: class folders hold different objects "
                             "of a class, which no geometry links")
    whiten_dir = None
    if whiten and whiten != "index":
        whiten_dir = Path(whiten).expanduser()
        if not whiten_dir.is_dir():
            raise LookalikeError(f"--whiten-on {whiten}: not a folder")
    started = time.perf_counter()
    if embedder is None:
        embedder = load_embedder(model, device=device, pooling=pooling, weights=weights, runtime=runtime,
                                 inputs=inputs)
    summary = _index(bench.root, index_path, embedder, progress)
    index_dir = Path(summary["index_path"])
    indexing_seconds = time.perf_counter() - started
    vectors, db_rows, q_rows = _indexed_vectors(index_dir, bench)
    if whiten:
        vectors = _whitened(vectors, db_rows, index_dir, whiten_dir, embedder, whiten_dims, whiten_power)
    database = np.zeros((len(bench.database), vectors.shape[1]), np.float32)
    database[db_rows >= 0] = vectors[db_rows[db_rows >= 0]]
    skipped = [rel for rel, r in zip(bench.database, db_rows) if r < 0]
    if bench.kind == "groundtruth":
        result = _measure_groundtruth(bench, vectors, database, db_rows, q_rows, options, top, rescore, verify)
        missing_queries = [bench.queries[i]["query"] for i, r in enumerate(q_rows) if r < 0]
    else:
        result = _measure_classes(bench, database, db_rows, options, top)
        missing_queries = skipped
    descriptor = embedder.describe()
    descriptor.update({"whiten": (whiten if whiten in (None, "index") else folder_key(whiten)),
                       "qe": qe, "dba": dba, "alpha": alpha, "verify": verify})
    return {"benchmark": str(bench.root), "kind": bench.kind, "figures": result["figures"],
            "worst": _worst_rows(bench, result["per_query"], worst),
            "skipped": summary["skipped"], "unindexed": skipped, "queries_left_out": missing_queries,
            "index_path": str(index_dir), "descriptor": descriptor, "indexed": summary["indexed"],
            "indexing_seconds": indexing_seconds, "seconds": time.perf_counter() - started}


def _indexed_vectors(index_dir: Path, bench: Benchmark) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the index's vectors, row of each database image among them, row of each ground-truth query), -1 where
    an image is not indexed."""
    from ..store.index import ImageIndex

    with ImageIndex.open(index_dir) as ix:
        db_rows = _positions(ix, bench.root, bench.database)
        q_rows = _positions(ix, bench.root, [q["query"] for q in bench.queries])
        return np.asarray(ix.vectors(), np.float32), db_rows, q_rows


def _whitened(vectors: np.ndarray, db_rows: np.ndarray, index_dir: Path, whiten_dir: Path | None, embedder,
              dims: int | None, power: float | None) -> np.ndarray:
    """`vectors` through a whitening fitted on the benchmark's indexed vectors (or on `whiten_dir`'s, indexed
    with the same descriptor), saved beside the index as `lookalike index` saves its own."""
    from ..describe.whitening import fit_whitening, folder_key, power_for, save_whitening
    from ..store.index import ImageIndex

    if whiten_dir is not None:
        wsum = _index(whiten_dir.resolve(), None, embedder, None)
        with ImageIndex.open(wsum["index_path"]) as wix:
            fit_on = np.asarray(wix.vectors(), np.float32)
        source = folder_key(whiten_dir)
    else:
        fit_on = vectors[db_rows[db_rows >= 0]]
        source = "index"
    whitening = fit_whitening(fit_on, dims, power=power_for(embedder.pooling) if power is None else power)
    save_whitening(index_dir, whitening, {"fitted_on": source, "vectors": int(len(fit_on)),
                                          "backbone": embedder.describe()})
    return whitening(vectors)


def _measure_groundtruth(bench: Benchmark, vectors: np.ndarray, database: np.ndarray, db_rows: np.ndarray,
                         q_rows: np.ndarray, options, top: int, rescore, verify: int) -> dict:
    """`evaluate_groundtruth` of the indexed queries (`vectors[q_rows]`), each ranking the database as the
    query path ranks it."""
    from .search_path import expanded

    pos = {rel: n for n, rel in enumerate(bench.database)}
    keep = [i for i, r in enumerate(q_rows) if r >= 0]
    qvec = vectors[q_rows[keep]] if keep else np.zeros((0, database.shape[1]), np.float32)
    self_pos = np.asarray([pos.get(bench.queries[i]["query"], -1) for i in keep], np.int64)
    database, qvec = expanded(database, np.flatnonzero(db_rows >= 0), qvec, self_pos, options)
    return evaluate_groundtruth(bench, Descriptors(database, qvec[:, None, :]), self_pos, db_rows, keep,
                                top=top, rescore=rescore, shortlist=verify)


def _measure_classes(bench: Benchmark, database: np.ndarray, db_rows: np.ndarray, options, top: int) -> dict:
    """`evaluate_classes` over the indexed images, each querying all the others as the query path does."""
    from .search_path import expanded

    indexed = np.flatnonzero(db_rows >= 0)
    database, qvec = expanded(database, indexed, database[indexed], indexed, options)
    sub = Benchmark(bench.root, "classes", [bench.database[i] for i in indexed],
                    labels=[bench.labels[i] for i in indexed])
    result = evaluate_classes(sub, Descriptors(database[indexed], qvec[:, None, :]), np.arange(len(indexed)),
                              top=top)
    for e in result["per_query"]:  # positions in `sub` -> positions in the benchmark
        e["_top"] = [(int(indexed[d]), s) for d, s in e["_top"]]
    return result


def _worst_rows(bench: Benchmark, per_query: list[dict], worst: int) -> list[dict]:
    """The report's rows of the `worst` queries (lowest AP): their top results and the positives they missed."""
    rows = sorted(per_query, key=lambda e: (e["AP"], e["query"]))[:max(0, worst)]
    return [{"query": e["query"], "AP": e["AP"], "P@1": e["P@1"],
             "results": [{"rank": r + 1, "path": bench.database[d], "distance": _distance(s),
                          "relevant": _is_positive(bench, e["query"], bench.database[d])}
                         for r, (d, s) in enumerate(e["_top"])],
             "missed": [{"rank": rank, "path": bench.database[d], "distance": _distance(s)}
                        for d, rank, s in e["_missed"]]} for e in rows]


def _verification(bench: Benchmark, shortlist: int, detail: str = "fast") -> Callable[[str, np.ndarray], np.ndarray]:
    """`evaluate_groundtruth`'s rescore: the spatial-verification gains of a query's shortlisted database images
    (the local features of every image kept, since each is verified against many queries); a query's own
    features are taken as a search takes those of a query photo."""
    from ..retrieve.verify import CACHE_IMAGES, Verifier

    verifier = Verifier(shortlist, cache_images=min(len(bench.database) + len(bench.queries), 4 * CACHE_IMAGES),
                        detail=detail)

    def rescore(query: str, positions: np.ndarray) -> np.ndarray:
        return verifier.gains(verifier.query_features(bench.root / query),
                              [bench.root / bench.database[int(p)] for p in positions])

    return rescore


def _distance(score: float) -> float:
    return similarity_to_distance(float(score))


def _is_positive(bench: Benchmark, query: str, path: str) -> bool:
    if bench.kind == "classes":
        return Path(query).parts[0] == Path(path).parts[0]
    for q in bench.queries:  # the report lists a few rows: a scan is fine
        if q["query"] == query:
            return path in q["positives"]
    return False
