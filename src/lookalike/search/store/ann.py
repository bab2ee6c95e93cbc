"""Search backends behind one small interface: `exact` (matrix product + top-k, the ground truth), and FAISS
`hnsw`, `ivf` (IVF-Flat) and `ivfpq` (IVF-PQ, optionally behind an OPQ rotation).

Every backend holds (id, vector) entries of L2-normalised vectors, searched by inner product and answered as
the Euclidean distance between unit vectors (sqrt(2 - 2 * cosine)), like `query.search`:

    backend = build("auto", ids, vectors)             # or "exact" | "hnsw" | "ivf" | "ivfpq"
    distances, found = backend.search(queries, k)     # (Q, k) float32, (Q, k) int64; -1 / inf pad
    backend.add(new_ids, new_vectors); backend.remove(old_ids)
    backend.save(path, fingerprint=vectors_fingerprint(ids, vectors))
    backend = load(path, fingerprint=...)             # AnnFileError when damaged, StaleAnnError when stale

Entries are kept in insertion order ("positions"); `remove` masks positions (a bitmap that FAISS reads as an
ID selector) instead of editing the structure, since HNSW cannot delete; `dead` counts them, and
`needs_rebuild` says when a compaction (a fresh `build` from the vectors) is due. An id removed and added
again (a changed file) has one dead and one live position.

The saved file is derived state, never trusted over the vectors: it records a fingerprint of the vectors it
was built from (`vectors_fingerprint`), and its payload carries a CRC-32 that is checked before FAISS parses
a byte of it (FAISS's reader is not hardened against damaged input).

Optional parts: `pca=256` reduces vectors before they enter the structure (`compact.Pca`, fitted on the
build vectors, saved inside the file, applied to queries); `storage="float16"` halves the stored vectors of
`exact`, `hnsw` and `ivf`, and `storage="sq8"` (IVF only) keeps one byte per dimension, trained per dimension;
`rerank=R` with a `lookup` (ids -> full vectors, e.g. from the memory-mapped vector file) searches R x k
candidates and orders them by their exact distance, which recovers the recall a PCA or the codes lose.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import LookalikeError
from .compact import Pca, as_float16, sample_rows

BACKENDS = ("exact", "hnsw", "ivf", "ivfpq")
STORAGES = ("float32", "float16", "sq8")  # of the vectors inside a structure; sq8: IVF only
_STORED_BYTES = {"float32": 4, "float16": 2, "sq8": 1}  # per stored dimension
_SCALAR_QUANTIZERS = {"float16": "QT_fp16", "sq8": "QT_8bit"}  # FAISS's codes for the non-float32 storages
CHOICES = ("auto",) + BACKENDS
FILE_VERSION = 2  # 2: the header carries a checksum of its own (`header_crc32`); 1 is read, and rebuilt by a writer
_READABLE_VERSIONS = (1, 2)
_MAGIC = b"LKANN01\n"
_TRAILER = struct.Struct("<Q8s")  # header length, magic again: the header sits at the end of the file
_CHUNK = 1 << 24  # bytes per read while checking the CRC
_ADD_BLOCK = 65_536  # rows per add() call into FAISS: bounds the float32 copy of a memory-mapped input
_EXACT_BLOCK_BYTES = 64 * 2**20  # (queries x block) similarities per exact step
_RERANK_BLOCK_BYTES = 32 * 2**20  # candidate vectors gathered at a time by a rerank

Lookup = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


class AnnFileError(LookalikeError):
    """The saved ANN file is missing, damaged or of another version: rebuild it from the vectors."""


class StaleAnnError(AnnFileError):
    """The saved ANN file was built from other vectors than the index holds now: rebuild it."""


# --- choosing ------------------------------------------------------------------------------------------------

# Thresholds of `choose`, from benchmarks/results/ann_scale.md (2 x86-64 cores shared with other busy processes,
# synthetic vectors fitted to EfficientNet-Lite0 CIFAR-10 features, d = 1280). Exact took 23.8 ms per query at
# 20k vectors and 204 ms at 100k (~0.56 us per vector on a quiet machine), so it answers in a few ms up to ~10k.
# Full-dimension HNSW answered in ~1-2 ms at recall@10 0.97-0.99 at 20k and 100k, but its build took 17 s at
# 20k and 474 s at 100k, and HNSW on a 256-d PCA 21 min at 1M: above HNSW_FULL_MAX_ROWS, IVF on a 256-d PCA
# (k-means on a sample, then one assignment per vector: minutes at 1M) with one byte per dimension (SQ8) whose
# candidates are reranked exactly (IVF_PCA), while its lists fit the memory budget; IVF-PQ (OPQ, 32-byte codes,
# rerank 20 x k: recall@10 0.972 at 100k, 0.923 at 1M) beyond.
EXACT_MAX_ROWS = 10_000
HNSW_FULL_MAX_ROWS = 100_000
# HNSW on PCA-256 (when asked for by name over HNSW_FULL_MAX_ROWS): recall@10 0.963 at 1M with ef_search 320 and
# rerank 20 (p50 6.5 ms).
HNSW_PCA = {"m": 32, "pca": 256, "ef_search": 320, "rerank": 20}
# IVF on PCA-256: lists = IVF_LISTS_PER_SQRT x sqrt(n) (2,048 at 1M), nprobe = nlist / IVF_PROBE_DIVISOR
# (48 at 1M: 2.3% of the vectors scanned per query), rerank 20 x k: the fewest lists that keep recall@10 >= 0.95
# at 1M (benchmarks/results/ann_scale.md: nprobe 32 gives 0.945, 48 gives 0.966). SQ8 codes give the same
# recall after the rerank as float32 lists, in a quarter of the memory and with ~40% less scanning time; 8,192
# lists instead of 2,048 needed more probes for the same recall and were no faster (ann_ivf_codes.md).
IVF_LISTS_PER_SQRT = 2.0
IVF_PROBE_DIVISOR = 42
IVF_PCA = {"pca": 256, "rerank": 20, "storage": "sq8"}
DEFAULT_MEMORY_BUDGET = 3 * 2**30  # bytes the backend's structure may take in RAM
HNSW_M = 32
# The kNN-graph pass of `dupes` (`Backend.graph_settings`): a row's candidates are judged by their exact
# distance (rerank x k read from the vectors). benchmarks/results/ann_scale.graph.md: at 1M (IVF on PCA-256)
# the edges missed with rerank 1 belong to rows with many neighbours inside the threshold, whose exact top-k the
# PCA orders differently. 16 lists and 2 x k candidates find 0.972 of the exact edges at 1M (6.9 min for every
# row) and 0.931 at 3M (ann_scale.graph.3000000.md). 4 x k found 0.992 and 0.961, but doubles the rows the
# rerank reads: 8.2 min at 1M, and an estimated 107 min against 24 at 3M, where the vectors outgrow the page
# cache (ann_scale.notes.md).
GRAPH_NPROBE = 16
GRAPH_EF_SEARCH = 48
GRAPH_RERANK = 2
# Training points per inverted list and k-means iterations: FAISS asks for 39-256 points per list; 50 and 10
# iterations keep the training of 4,096 lists on 2 cores to minutes, at a recall cost the benchmark measures.
TRAIN_PER_LIST = 50
KMEANS_ITERATIONS = 10


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M, storage: str = "float32") -> int:
    """Approximate RAM of an HNSW over n vectors: the vectors plus ~2 x M neighbour links (int32) each."""
    return n * (dim * _STORED_BYTES[storage] + 2 * m * 4)


def ivf_bytes(n: int, dim: int, storage: str = "float32") -> int:
    """Approximate RAM of an IVF over n vectors: the stored vectors and a 64-bit id each."""
    return n * (dim * _STORED_BYTES[storage] + 8)


def nlist_for(n: int, per_sqrt: float = 4.0) -> int:
    """Inverted lists for n vectors: the power of two nearest per_sqrt x sqrt(n) (4: the FAISS guideline that
    autofaiss also follows), with at least 39 training points per list."""
    target = 2 ** round(math.log2(max(1.0, per_sqrt * math.sqrt(max(n, 1)))))
    return int(max(1, min(target, n // 39)))


def pq_bytes_for(dim: int, budget_per_vector: float) -> int:
    """The largest PQ code size (bytes per vector) that divides `dim` into sub-vectors of >= 8 dimensions and
    fits the per-vector budget. (FAISS trains sub-quantizers of 4 dimensions ~35x slower than of 8: 50 s
    against 1.4 s for 16k vectors of 256-d on 2 cores.)"""
    for m in (128, 96, 64, 48, 40, 32, 24, 16, 8):
        if m <= dim // 8 and dim % m == 0 and m + 8 <= budget_per_vector:  # + 8: the id stored beside each code
            return m
    return 8 if dim % 8 == 0 else 1


def _ivf_params(n: int, dim: int) -> dict:
    nlist = nlist_for(n, IVF_LISTS_PER_SQRT)
    return {"nlist": nlist, "nprobe": max(8, nlist // IVF_PROBE_DIVISOR),
            **(IVF_PCA if dim > IVF_PCA["pca"] else {})}


def _ivfpq_params(n: int, dim: int, memory_budget: int) -> dict:
    code = pq_bytes_for(min(dim, 256), memory_budget / max(n, 1))
    nlist = nlist_for(n)
    return {"nlist": nlist, "nprobe": max(16, min(nlist // 16, 256)), "pq_bytes": code, "opq": True, "rerank": 20,
            **({"pca": 256} if dim > 256 else {})}


def choose(n: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[str, dict]:
    """(backend kind, its build parameters) for an index of n vectors of dimension dim.

    exact up to EXACT_MAX_ROWS; full-dimension HNSW up to HNSW_FULL_MAX_ROWS (while it fits the memory
    budget); then IVF-Flat (on a 256-d PCA with exact reranking when dim > 256) while its lists fit the budget;
    else IVF-PQ on a 256-d PCA with OPQ and exact reranking from the vector file.
    """
    if n <= EXACT_MAX_ROWS:
        return "exact", {}
    if n <= HNSW_FULL_MAX_ROWS and hnsw_bytes(n, dim) <= memory_budget:
        return "hnsw", {"m": HNSW_M}
    if ivf_bytes(n, min(dim, IVF_PCA["pca"]), IVF_PCA["storage"]) <= memory_budget \
            and n >= 39 * nlist_for(n, IVF_LISTS_PER_SQRT):
        return "ivf", _ivf_params(n, dim)
    return "ivfpq", _ivfpq_params(n, dim, memory_budget)


# Fewest vectors a kind is built for when asked by name: below them an index is searched exactly (IVF needs
# >= 39 training points per list; IVF-PQ's sub-quantizers fit 256 centroids each).
MIN_ROWS = {"exact": 0, "hnsw": 1, "ivf": 39 * 4, "ivfpq": 64 * 256}


def plan(requested: str, n: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[str, dict]:
    """(kind, build parameters) for an index of n vectors whose manifest asks for `requested` (auto or a kind):
    `auto` is `choose`; a named kind takes the parameters `choose` would give it at this size (HNSW on a 256-d
    PCA over HNSW_FULL_MAX_ROWS, IVF-PQ's code size from the budget), and exact while n is below MIN_ROWS[kind]."""
    if requested == "auto":
        return choose(n, dim, memory_budget)
    if requested not in _KINDS:
        raise LookalikeError(f"unknown search backend {requested!r}: use one of {', '.join(CHOICES)}")
    if n < MIN_ROWS[requested]:
        return "exact", {}
    if requested == "exact":
        return "exact", {}
    if requested == "hnsw":
        if n <= HNSW_FULL_MAX_ROWS or dim <= 256:
            return "hnsw", {"m": HNSW_M}
        return "hnsw", dict(HNSW_PCA)
    if requested == "ivf":
        if n <= HNSW_FULL_MAX_ROWS:  # full dimension (a PCA pays off for large indexes only)
            nlist = nlist_for(n)
            return "ivf", {"nlist": nlist, "nprobe": max(8, min(nlist // 16, 256))}
        return "ivf", _ivf_params(n, dim)
    return "ivfpq", _ivfpq_params(n, dim, memory_budget)


def needs_switch(backend: "Backend", n: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> bool:
    """Whether an `auto` index of n live vectors should be rebuilt with another backend kind (it grew or
    shrank past a threshold); the caller rebuilds at its next compaction."""
    return choose(n, backend.dim, memory_budget)[0] != backend.kind


# --- helpers -------------------------------------------------------------------------------------------------


def _faiss_params(kind: str, sel, **knobs):
    """FAISS search parameters of class `kind` with `knobs`, and the id selector `sel` when there is one (FAISS
    takes no `sel=None`)."""
    cls = getattr(faiss_module(), kind)
    return cls(sel=sel, **knobs) if sel is not None else cls(**knobs)


def faiss_module():
    """Import FAISS with one OpenMP thread per free core (more than the free cores is much slower)."""
    import os

    # Threads that wait for work by sleeping, not spinning: on shared cores a spinning OpenMP team starves
    # its own workers (IVF-PQ training of 20k vectors, 2 busy cores: 13.7 s spinning, 1.1 s passive). It must be
    # set before FAISS's OpenMP runtime loads; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    from ...device import free_cores

    if not getattr(faiss_module, "_threads_set", False):
        faiss.omp_set_num_threads(free_cores())
        faiss_module._threads_set = True
    return faiss


def similarity_to_distance(sim: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(2.0 - 2.0 * sim, 0.0, None)).astype(np.float32)


def vectors_fingerprint(ids: np.ndarray, vectors: np.ndarray, sample: int = 1024) -> str:
    """A cheap fingerprint of (ids, vectors): every id, and `sample` rows spread over the vectors. Equal
    fingerprints do not prove equal vectors, but any add, delete, reorder or rebuild changes the ids or the
    sampled rows; it is one part of the staleness check, the index's own generation counter the other."""
    ids = np.ascontiguousarray(ids, np.int64)
    h = hashlib.sha256()
    h.update(struct.pack("<Q", len(ids)))
    h.update(ids.tobytes())
    if len(ids):
        rows = np.unique(np.linspace(0, len(ids) - 1, min(sample, len(ids))).astype(np.int64))
        h.update(np.ascontiguousarray(vectors[rows], np.float32).tobytes())
    return h.hexdigest()[:32]


def vector_lookup(ids: np.ndarray, vectors: np.ndarray) -> Lookup:
    """ids -> rows of `vectors` (aligned with `ids`, e.g. ImageIndex.ids() / vectors()), for `rerank`."""
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def lookup(wanted: np.ndarray) -> np.ndarray:
        wanted = np.asarray(wanted, np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(0, len(sorted_ids) - 1))
        if len(wanted) and (not len(sorted_ids) or not np.array_equal(sorted_ids[pos], wanted)):
            raise KeyError("ids missing from the vectors")
        return np.asarray(vectors[order[pos]], np.float32)

    return lookup


def _as_rows(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    vectors = np.atleast_2d(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise LookalikeError(f"{what} have shape {vectors.shape}, expected (n, {dim})")
    return vectors


def _topk(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values of each row, best first."""
    if k >= sims.shape[1]:
        return np.argsort(-sims, axis=1, kind="stable")
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# --- the interface ---------------------------------------------------------------------------------------------


class Backend:
    """Common part: id bookkeeping, the removal mask, the optional PCA and rerank, distances, the file."""

    kind = ""
    storages: tuple[str, ...] = ("float32", "float16")

    def __init__(self, dim: int, *, pca: Pca | None = None, rerank: int = 1, storage: str = "float32") -> None:
        if storage not in self.storages:
            raise LookalikeError(f"the {self.kind} backend stores {' or '.join(self.storages)} vectors, not {storage!r}"
                                 if storage in STORAGES else
                                 f"unknown storage {storage!r}: use one of {', '.join(STORAGES)}")
        self.dim = int(dim)  # of the vectors given to add/search
        self.pca = pca
        self.rerank = max(1, int(rerank))
        self.storage = storage
        self.labels = np.zeros(0, np.int64)  # position -> id
        self.keys = np.zeros(0, np.int64)  # position -> version of the id's vector (e.g. its vector-file row)
        self.live = np.zeros(0, bool)  # position -> still searchable
        self.fingerprint: str | None = None
        self._bitmap: np.ndarray | None = None

    # sizes
    @property
    def inner_dim(self) -> int:
        return self.pca.dim if self.pca is not None else self.dim

    def __len__(self) -> int:
        return int(np.count_nonzero(self.live))  # ~8x faster than sum() on booleans: it runs on every query

    @property
    def dead(self) -> int:
        return int(len(self.live) - np.count_nonzero(self.live))

    def needs_rebuild(self) -> bool:
        """Dead (masked) entries outnumber a quarter of the live ones: a rebuild reclaims memory and speed."""
        return self.dead > max(1024, len(self) // 4)

    # entries
    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.pca is not None:
            x = self.pca.apply(x)
        return x

    def train(self, vectors: np.ndarray) -> None:
        """Fit what the structure needs (centroids, codebooks) on a sample; a no-op for exact and HNSW."""

    def add(self, ids: np.ndarray, vectors: np.ndarray, progress: Progress | None = None,
            keys: np.ndarray | None = None) -> None:
        """Append entries (a memory-mapped `vectors` is read block by block). `keys` (default -1) tag each
        entry's vector version for `catch_up`, e.g. the row of the vector in the index's vector file."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        vectors = _as_rows(vectors, self.dim, "vectors")
        if len(ids) != len(vectors):
            raise LookalikeError(f"{len(ids)} ids for {len(vectors)} vectors")
        for s in range(0, len(ids), _ADD_BLOCK):
            self._add(self._prepare(vectors[s:s + _ADD_BLOCK]))
            if progress:
                progress(min(len(ids), s + _ADD_BLOCK), len(ids))
        self._append_ids(ids, keys)

    def _append_ids(self, ids: np.ndarray, keys: np.ndarray | None) -> None:
        keys = np.full(len(ids), -1, np.int64) if keys is None else np.asarray(keys, np.int64).reshape(-1)
        if len(keys) != len(ids):
            raise LookalikeError(f"{len(keys)} keys for {len(ids)} ids")
        self.labels = np.concatenate([self.labels, ids])
        self.keys = np.concatenate([self.keys, keys])
        self.live = np.concatenate([self.live, np.ones(len(ids), bool)])
        self._bitmap = None

    def catch_up(self, ids: np.ndarray, keys: np.ndarray, vectors: np.ndarray) -> tuple[int, int]:
        """Make the live entries exactly the pairs (ids[i], keys[i]): mask live entries whose (id, key) is not
        among them (deleted, or changed: a new key), add the pairs that are missing, reading only their rows
        of `vectors` (aligned with ids). Returns (added, masked). A loaded file that is a few commits behind
        the index catches up this way instead of being rebuilt."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        keys = np.asarray(keys, np.int64).reshape(-1)
        want = _pairs(ids, keys)
        live = np.nonzero(self.live)[0]
        have = _pairs(self.labels[live], self.keys[live])
        drop = live[~np.isin(have, want)]
        self.live[drop] = False
        self._bitmap = None
        missing = np.nonzero(~np.isin(want, have))[0]
        if len(missing):
            self.add(ids[missing], np.asarray(vectors[missing]), keys=keys[missing])
        return int(len(missing)), int(len(drop))

    def remove(self, ids) -> int:
        """Mask every live entry of these ids; returns how many were masked."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64).reshape(-1)
        if not len(ids) or not len(self.labels):
            return 0
        hit = np.isin(self.labels, ids) & self.live
        self.live &= ~hit
        self._bitmap = None
        return int(hit.sum())

    def _selector(self):
        """A FAISS ID selector of the live positions, or None when nothing is masked."""
        if self.dead == 0:
            return None
        faiss = faiss_module()
        if self._bitmap is None:
            self._bitmap = np.packbits(self.live, bitorder="little")
        return faiss.IDSelectorBitmap(len(self.live), faiss.swig_ptr(self._bitmap))

    # search
    def search_similarities(self, queries: np.ndarray, k: int, lookup: Lookup | None = None, *,
                            rerank: int | None = None, knobs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) cosine similarities (-inf pad) and ids (-1 pad), best first. `rerank` and `knobs` (e.g.
        {"nprobe": 8}) override the backend's own settings for this call only (see `graph_settings`)."""
        queries = _as_rows(queries, self.dim, "queries")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq = len(q)
        if k <= 0 or len(self) == 0 or nq == 0:
            return np.full((nq, max(k, 0)), -np.inf, np.float32), np.full((nq, max(k, 0)), -1, np.int64)
        fetch = k * max(1, int(rerank or self.rerank)) if lookup is not None else k
        fetch = min(fetch, len(self.live))
        sims, pos = self._search(self._prepare(q), fetch, knobs or {})
        found = np.where(pos >= 0, self.labels[np.clip(pos, 0, None)], -1)
        sims = np.where(pos >= 0, sims, -np.inf).astype(np.float32)
        if lookup is not None and self._approximate():
            sims, found = _rerank(q, found, lookup, k)
        if sims.shape[1] < k:  # fewer entries than k
            pad = k - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
        return sims[:, :k], found[:, :k]

    def search(self, queries: np.ndarray, k: int, lookup: Lookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) Euclidean distances between unit vectors (inf pad) and ids (-1 pad), nearest first.
        `lookup` (ids -> full vectors) enables the exact rerank of `rerank` x k candidates."""
        sims, found = self.search_similarities(queries, k, lookup)
        dist = similarity_to_distance(np.clip(sims, -1.0, 1.0))
        dist[found < 0] = np.inf
        return dist, found

    def _approximate(self) -> bool:
        """Whether the structure's similarities are approximate (then a lookup reranks them)."""
        return self.rerank > 1 or self.pca is not None or self.storage == "sq8"

    def graph_settings(self, k: int) -> tuple[int, dict]:
        """(rerank, knobs) for the kNN-graph pass of `dupes`: near-duplicates are each other's nearest
        neighbours by a wide margin, so that pass searches less widely than a query (see the constants)."""
        return self.rerank, {}

    def _add(self, x: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _search(self, x: np.ndarray, k: int, knobs: dict) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    # description
    def _own_params(self) -> dict:
        return {}

    def params(self) -> dict:
        """What `GET /api/stats` and `index --json` show: kind, parameters, sizes."""
        p = {"backend": self.kind, "dim": self.dim, "count": len(self), "dead": self.dead,
             "storage": self.storage, **self._own_params()}
        if self.pca is not None:
            p["pca"] = self.pca.dim
        if self.rerank > 1:
            p["rerank"] = self.rerank
        return p

    # files
    def _blob_sections(self) -> list[tuple[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path, fingerprint: str | None = None, atomic: bool = True) -> int:
        """Write the whole backend to `path` atomically (temporary file, fsync, rename); returns its size.
        `fingerprint` (default: the one it was loaded or built with) ties it to the vectors it came from.
        `atomic=False` writes `path` itself (created new, fsynced): for a caller that records the name as
        pending before writing and switches to it afterwards, so that a kill leaves no temporary name behind."""
        import contextlib

        from ...atomic import atomic_path

        if fingerprint is not None:
            self.fingerprint = fingerprint
        sections: list[tuple[str, Any]] = [("labels", self.labels), ("keys", self.keys),
                                           ("live", self.live.view(np.uint8))]
        if self.pca is not None:
            sections += [("pca_mean", self.pca.mean), ("pca_components", self.pca.components)]
        sections += self._blob_sections()
        path = Path(path)
        with (atomic_path(path) if atomic else contextlib.nullcontext(path)) as tmp, open(tmp, "wb") as fh:
            crc = 0
            table = []

            def write(data) -> None:
                nonlocal crc
                mv = memoryview(data).cast("B")
                crc = zlib.crc32(mv, crc)
                fh.write(mv)

            fh.write(_MAGIC)
            for name, value in sections:
                start = fh.tell()
                if isinstance(value, np.ndarray):
                    arr = np.ascontiguousarray(value)
                    write(arr)
                    table.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                                  "offset": start, "nbytes": fh.tell() - start})
                else:  # a FAISS index, streamed
                    faiss = faiss_module()
                    writer = faiss.PyCallbackIOWriter(lambda b: write(b) or len(b))
                    faiss.write_index(value, writer)
                    del writer
                    table.append({"name": name, "faiss": True, "offset": start, "nbytes": fh.tell() - start})
            header = {"version": FILE_VERSION, "kind": self.kind, "dim": self.dim, "storage": self.storage,
                      "rerank": self.rerank, "params": self._own_params(), "fingerprint": self.fingerprint,
                      "entries": int(len(self.labels)), "sections": table, "crc32": crc,
                      "payload_end": fh.tell()}
            header["header_crc32"] = _header_crc(header)
            raw = json.dumps(header, sort_keys=True).encode()
            fh.write(raw)
            fh.write(_TRAILER.pack(len(raw), _MAGIC))
            size = fh.tell()
            if not atomic:
                fh.flush()
                os.fsync(fh.fileno())
        return size


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a[i], b[i]) as one comparable value each (a structured view), for set operations."""
    both = np.ascontiguousarray(np.stack([a.astype(np.int64), b.astype(np.int64)], axis=1))
    return both.view([("a", "<i8"), ("b", "<i8")]).reshape(-1)


def _rerank(q: np.ndarray, cand: np.ndarray, lookup: Lookup, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Order candidate ids by their exact similarity to full-dimension queries."""
    sims = np.full(cand.shape, -np.inf, np.float32)
    valid = cand >= 0
    flat = np.unique(cand[valid])
    if len(flat):
        vecs = lookup(flat)
        where = np.searchsorted(flat, np.where(valid, cand, flat[0]))
        step = max(1, _RERANK_BLOCK_BYTES // max(1, 4 * cand.shape[1] * q.shape[1]))
        for s in range(0, len(q), step):  # (step x fetch x D) floats at a time
            part = np.einsum("qfd,qd->qf", vecs[where[s:s + step]], q[s:s + step])
            sims[s:s + step] = np.where(valid[s:s + step], part, -np.inf)
    top = _topk(sims, min(k, sims.shape[1]))
    return np.take_along_axis(sims, top, axis=1), np.take_along_axis(cand, top, axis=1)


class ExactBackend(Backend):
    """Today's search: one matrix product against every stored vector, block by block, and a top-k."""

    kind = "exact"

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self._chunks: list[np.ndarray] = []  # stored (prepared) vectors, in position order
        self._owned: list[bool] = []  # False: a view of the caller's (memory-mapped) vectors

    def add(self, ids, vectors, progress=None, keys=None) -> None:
        vectors = _as_rows(vectors, self.dim, "vectors")
        if self.pca is None and self.storage == "float32" and vectors.dtype == np.float32 and len(vectors) > _ADD_BLOCK:
            # Built from the index's (memory-mapped) vectors: keep a view instead of copying them.
            ids = np.asarray(ids, np.int64).reshape(-1)
            if len(ids) != len(vectors):
                raise LookalikeError(f"{len(ids)} ids for {len(vectors)} vectors")
            self._chunks.append(vectors)
            self._owned.append(False)
            self._append_ids(ids, keys)
            if progress:
                progress(len(ids), len(ids))
            return
        super().add(ids, vectors, progress, keys)

    def _add(self, x: np.ndarray) -> None:
        x = as_float16(x) if self.storage == "float16" else x
        if self._chunks and self._owned[-1] and len(self._chunks[-1]) < _ADD_BLOCK:
            # Many small incremental adds: merge them, so a search does not loop over thousands of chunks.
            self._chunks[-1] = np.concatenate([self._chunks[-1], x])
        else:
            self._chunks.append(x)
            self._owned.append(True)

    def _search(self, x: np.ndarray, k: int, knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        nq = len(x)
        best_s = np.full((nq, 0), -np.inf, np.float32)
        best_p = np.zeros((nq, 0), np.int64)
        block = max(1024, _EXACT_BLOCK_BYTES // max(1, 4 * nq))
        offset = 0
        for chunk in self._chunks:
            for s in range(0, len(chunk), block):
                part = np.asarray(chunk[s:s + block], dtype=np.float32)
                sims = x @ part.T
                live = self.live[offset + s:offset + s + len(part)]
                if not live.all():
                    sims[:, ~live] = -np.inf
                kk = min(k, sims.shape[1])
                top = _topk(sims, kk)
                cand_s = np.concatenate([best_s, np.take_along_axis(sims, top, axis=1)], axis=1)
                cand_p = np.concatenate([best_p, top + offset + s], axis=1)
                keep = _topk(cand_s, min(k, cand_s.shape[1]))
                best_s = np.take_along_axis(cand_s, keep, axis=1)
                best_p = np.take_along_axis(cand_p, keep, axis=1)
            offset += len(chunk)
        best_p = np.where(np.isfinite(best_s), best_p, -1)
        return best_s, best_p

    def _blob_sections(self):
        stored = np.concatenate([np.asarray(c) for c in self._chunks]) if self._chunks else \
            np.zeros((0, self.inner_dim), np.float16 if self.storage == "float16" else np.float32)
        return [("vectors", stored)]

    def _restore(self, sections: dict) -> None:
        self._chunks, self._owned = [sections["vectors"]], [True]
        if len(self._chunks[0]) != len(self.labels):
            raise AnnFileError("ANN file is inconsistent (vectors and id map differ)")


class FaissBackend(Backend):
    """A FAISS index holding positions 0..n-1 (FAISS's own sequential ids), searched by inner product."""

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self.index = None

    def _add(self, x: np.ndarray) -> None:
        if self.index is None:
            self.index = self._make(x)
        self.index.add(x)

    def _make(self, x: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def _search_params(self, sel, **knobs):  # pragma: no cover - abstract
        raise NotImplementedError

    def _search(self, x: np.ndarray, k: int, knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            return np.full((len(x), k), -np.inf, np.float32), np.full((len(x), k), -1, np.int64)
        sel = self._selector()
        sims, pos = self.index.search(x, k, params=self._search_params(sel, **knobs))
        return sims, pos.astype(np.int64)

    def _blob_sections(self):
        return [("faiss", self.index)] if self.index is not None else []

    def _restore(self, sections: dict) -> None:
        self.index = sections.get("faiss")
        if self.index is not None:
            if self.index.ntotal != len(self.labels) or self.index.d != self.inner_dim:
                raise AnnFileError("ANN file is inconsistent (FAISS index and id map differ)")
            self._apply_search_knobs()

    def _apply_search_knobs(self) -> None:
        pass


class HnswBackend(FaissBackend):
    """HNSW graph (flat float32 or float16 vectors). Fast and accurate, but all vectors stay in RAM and
    entries cannot be deleted: removed ones are masked until a rebuild."""

    kind = "hnsw"

    def __init__(self, dim: int, *, m: int = HNSW_M, ef_construction: int = 64, ef_search: int = 96, **kw) -> None:
        super().__init__(dim, **kw)
        self.m, self.ef_construction, self.ef_search = int(m), int(ef_construction), int(ef_search)

    def _make(self, x):
        faiss = faiss_module()
        if self.storage == "float16":
            index = faiss.IndexHNSWSQ(self.inner_dim, faiss.ScalarQuantizer.QT_fp16, self.m,
                                      faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWFlat(self.inner_dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def _search_params(self, sel, ef_search: int | None = None):
        return _faiss_params("SearchParametersHNSW", sel, efSearch=max(1, int(ef_search or self.ef_search)))

    def graph_settings(self, k: int) -> tuple[int, dict]:
        return min(self.rerank, GRAPH_RERANK), {"ef_search": max(GRAPH_EF_SEARCH, 2 * (k + 1))}

    def _own_params(self) -> dict:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _apply_search_knobs(self) -> None:
        self.index.hnsw.efSearch = self.ef_search


class IvfBackend(FaissBackend):
    """Inverted lists over k-means cells (IVF-Flat, or float16 scalar-quantised vectors)."""

    kind = "ivf"
    storages = STORAGES

    def __init__(self, dim: int, *, nlist: int = 0, nprobe: int = 0, **kw) -> None:
        super().__init__(dim, **kw)
        self.nlist, self.nprobe = int(nlist), int(nprobe)

    def train(self, vectors: np.ndarray) -> None:
        if not self.nlist:
            self.nlist = nlist_for(len(vectors))
        if len(vectors) < 39 * self.nlist:
            raise LookalikeError(f"{len(vectors)} vectors are too few to train {self.nlist} inverted lists: "
                                 "use the exact backend")
        rows = sample_rows(len(vectors), max(TRAIN_PER_LIST * self.nlist, self._min_train_rows()))
        x = self._prepare(np.asarray(vectors[rows]))
        if not self.nprobe:
            self.nprobe = max(1, min(self.nlist, self._default_nprobe()))
        self.index = self._make(x)
        ivf = self._ivf()
        ivf.cp.niter = KMEANS_ITERATIONS
        if hasattr(ivf, "pq"):
            ivf.pq.cp.niter = KMEANS_ITERATIONS
        self.index.train(x)

    def _default_nprobe(self) -> int:
        return max(8, self.nlist // 16)

    def _min_train_rows(self) -> int:
        return 0

    def _make(self, x):
        faiss = faiss_module()
        if self.index is not None:
            return self.index
        if not self.nlist:
            raise LookalikeError("an IVF backend must be trained before vectors are added (use build())")
        quantizer = faiss.IndexFlatIP(self.inner_dim)
        if self.storage in _SCALAR_QUANTIZERS:
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.inner_dim, self.nlist,
                                                  getattr(faiss.ScalarQuantizer, _SCALAR_QUANTIZERS[self.storage]),
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, self.inner_dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        return index

    def _ivf(self):
        """The IndexIVF inside (behind an OPQ transform for IVF-PQ)."""
        faiss = faiss_module()
        index = self.index
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        return index

    def _search_params(self, sel, nprobe: int | None = None):
        return _faiss_params("SearchParametersIVF", sel, nprobe=max(1, int(nprobe or self.nprobe)))

    def graph_settings(self, k: int) -> tuple[int, dict]:
        return min(self.rerank, GRAPH_RERANK), {"nprobe": min(self.nprobe, GRAPH_NPROBE)}

    def _own_params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe}


class IvfPqBackend(IvfBackend):
    """IVF with product-quantised codes (`pq_bytes` per vector), optionally behind an OPQ rotation: for
    indexes whose float vectors do not fit in RAM. With a `lookup`, candidates are reranked exactly."""

    kind = "ivfpq"
    storages = Backend.storages  # its codes are PQ's own; the setting is kept for the file's header only

    def __init__(self, dim: int, *, pq_bytes: int = 32, opq: bool = True, **kw) -> None:
        kw.setdefault("rerank", 8)
        super().__init__(dim, **kw)
        self.pq_bytes, self.opq = int(pq_bytes), bool(opq)
        if self.inner_dim % self.pq_bytes:
            raise LookalikeError(f"pq_bytes {self.pq_bytes} must divide the dimension {self.inner_dim}")

    def _default_nprobe(self) -> int:
        return max(16, self.nlist // 8)

    def _min_train_rows(self) -> int:
        return 64 * 256  # each PQ sub-quantizer fits 256 centroids: FAISS asks for >= 39 points per centroid

    def _make(self, x):
        faiss = faiss_module()
        if self.index is not None:
            return self.index
        quantizer = faiss.IndexFlatIP(self.inner_dim)
        ivf = faiss.IndexIVFPQ(quantizer, self.inner_dim, self.nlist, self.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = True
        quantizer.this.disown()
        if not self.opq:
            return ivf
        rot = faiss.OPQMatrix(self.inner_dim, self.pq_bytes)
        rot.niter = KMEANS_ITERATIONS
        index = faiss.IndexPreTransform(rot, ivf)
        index.own_fields = True
        rot.this.disown()
        ivf.this.disown()
        return index

    def _search_params(self, sel, nprobe: int | None = None):
        faiss = faiss_module()
        ivf = super()._search_params(sel, nprobe)
        if not self.opq:
            return ivf
        p = faiss.SearchParametersPreTransform()
        p.index_params = ivf
        p._keep = ivf  # the SWIG object must outlive the call
        return p

    def _own_params(self) -> dict:
        return {**super()._own_params(), "pq_bytes": self.pq_bytes, "opq": self.opq}

    def _approximate(self) -> bool:
        return True


_KINDS: dict[str, type[Backend]] = {"exact": ExactBackend, "hnsw": HnswBackend, "ivf": IvfBackend,
                                    "ivfpq": IvfPqBackend}


def make(kind: str, dim: int, **params) -> Backend:
    """An empty backend of this kind; `pca` may be a `Pca` or a dimension (then fitted by `build`)."""
    if kind not in _KINDS:
        raise LookalikeError(f"unknown search backend {kind!r}: use one of {', '.join(CHOICES)}")
    try:
        return _KINDS[kind](dim, **params)
    except TypeError as exc:
        raise LookalikeError(f"bad parameters for the {kind} backend: {exc}") from None


def exact_view(vectors: np.ndarray, labels: np.ndarray, keys: np.ndarray | None = None) -> "ExactBackend":
    """An exact backend over `vectors` as they are (e.g. a memory-mapped range of the vector file, no copy):
    row i belongs to id labels[i]; rows labelled -1 (dead rows of the file) are masked."""
    vectors = _as_rows(vectors, vectors.shape[1] if np.ndim(vectors) == 2 else 0, "vectors")
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(labels) != len(vectors):
        raise LookalikeError(f"{len(labels)} labels for {len(vectors)} vectors")
    backend = ExactBackend(vectors.shape[1])
    if len(labels):
        backend._chunks, backend._owned = [vectors], [False]
        backend.labels = labels.copy()
        backend.keys = np.full(len(labels), -1, np.int64) if keys is None else np.asarray(keys, np.int64).copy()
        backend.live = labels >= 0
    return backend


def build(kind: str, ids: np.ndarray, vectors: np.ndarray, *, memory_budget: int = DEFAULT_MEMORY_BUDGET,
          fingerprint: str | None = None, progress: Progress | None = None, keys: np.ndarray | None = None,
          **params) -> Backend:
    """A backend of `kind` ("auto" chooses by size) over (ids, vectors); vectors may be memory-mapped.
    `params` override the chosen ones, e.g. pca=256, storage="float16", rerank=4, nprobe=32, ef_search=128."""
    vectors = np.atleast_2d(vectors)
    n, dim = vectors.shape
    if kind == "auto":
        kind, chosen = choose(n, dim, memory_budget)
        params = {**chosen, **params}
    pca = params.pop("pca", None)
    if isinstance(pca, int) and pca:
        if pca >= dim:
            pca = None
        else:
            pca = Pca.fit(vectors, pca)
    backend = make(kind, dim, pca=pca or None, **params)
    if n:
        backend.train(vectors)
        backend.add(ids, vectors, progress, keys=keys)
    backend.fingerprint = fingerprint
    return backend


# --- loading -------------------------------------------------------------------------------------------------


def _read_header(fh, path: Path) -> dict:
    fh.seek(0, 2)
    size = fh.tell()
    if size < len(_MAGIC) + _TRAILER.size:
        raise AnnFileError(f"ANN file {path} is truncated")
    fh.seek(0)
    if fh.read(len(_MAGIC)) != _MAGIC:
        raise AnnFileError(f"{path} is not a Lookalike ANN file")
    fh.seek(size - _TRAILER.size)
    hlen, magic = _TRAILER.unpack(fh.read(_TRAILER.size))
    if magic != _MAGIC or hlen > size - len(_MAGIC) - _TRAILER.size:
        raise AnnFileError(f"ANN file {path} is truncated or damaged")
    fh.seek(size - _TRAILER.size - hlen)
    try:
        header = json.loads(fh.read(hlen))
    except ValueError:
        raise AnnFileError(f"ANN file {path} has a damaged header") from None
    if not isinstance(header, dict) or header.get("version") not in _READABLE_VERSIONS:
        raise AnnFileError(f"ANN file {path} has an unknown version")
    if header["version"] >= 2 and header.get("header_crc32") != _header_crc(header):
        raise AnnFileError(f"ANN file {path} has a damaged header (checksum mismatch)")
    if header.get("payload_end") != size - _TRAILER.size - hlen or header.get("kind") not in _KINDS:
        raise AnnFileError(f"ANN file {path} is damaged")
    return header


def _header_crc(header: dict) -> int:
    """CRC-32 of the header's fields other than this one: entry counts, sections and the fingerprint are
    checked like the payload, so an edited header is damage, not a different structure."""
    rest = {k: v for k, v in header.items() if k != "header_crc32"}
    return zlib.crc32(json.dumps(rest, sort_keys=True).encode())


def _check_crc(fh, header: dict, path: Path) -> None:
    end = header["payload_end"]
    fh.seek(len(_MAGIC))
    crc, left = 0, end - len(_MAGIC)
    while left > 0:
        chunk = fh.read(min(_CHUNK, left))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    if left or crc != header.get("crc32"):
        raise AnnFileError(f"ANN file {path} is damaged (checksum mismatch)")


def verify(path) -> dict:
    """The header of a saved backend after checking it and its whole payload against their CRCs (without
    parsing the payload); AnnFileError when missing, truncated, damaged, or of the older format whose header
    had no checksum (a writer then rebuilds it)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            header = _read_header(fh, path)
            if header["version"] < FILE_VERSION:
                raise AnnFileError(f"ANN file {path} has the older format {header['version']}")
            _check_crc(fh, header, path)
            return header
    except OSError as exc:
        raise AnnFileError(f"cannot read ANN file {path} ({exc.strerror or exc})") from None


def read_params(path) -> dict:
    """The header of a saved backend (kind, parameters, fingerprint) without loading it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _read_header(fh, path)
    except OSError as exc:
        raise AnnFileError(f"cannot read ANN file {path} ({exc.strerror or exc})") from None


def load(path, fingerprint: str | None = None) -> Backend:
    """Load a backend saved by `Backend.save`. AnnFileError when the file is missing, truncated or damaged
    (checked by CRC before FAISS reads it); StaleAnnError when `fingerprint` is given and differs from the
    one it was saved with. Either way the caller rebuilds it from the vectors."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise AnnFileError(f"cannot read ANN file {path} ({exc.strerror or exc})") from None
    with fh:
        header = _read_header(fh, path)
        if fingerprint is not None and header.get("fingerprint") != fingerprint:
            raise StaleAnnError(f"ANN file {path} was built from other vectors than the index holds")
        _check_crc(fh, header, path)
        end = header["payload_end"]
        sections: dict[str, Any] = {}
        try:
            for sec in header["sections"]:
                off, nbytes = int(sec["offset"]), int(sec["nbytes"])
                if off < len(_MAGIC) or off + nbytes > end:
                    raise AnnFileError(f"ANN file {path} is damaged (section out of bounds)")
                fh.seek(off)
                if sec.get("faiss"):
                    sections[sec["name"]] = _read_faiss(fh, nbytes)
                else:
                    dtype = np.dtype(sec["dtype"])
                    if dtype.hasobject:
                        raise AnnFileError(f"ANN file {path} is damaged (object section)")
                    shape = tuple(int(s) for s in sec["shape"])
                    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
                        raise AnnFileError(f"ANN file {path} is damaged (section size)")
                    sections[sec["name"]] = np.frombuffer(fh.read(nbytes), dtype=dtype).reshape(shape).copy()
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnFileError(f"ANN file {path} is damaged ({exc.__class__.__name__})") from None
        except RuntimeError as exc:  # FAISS's own checks
            raise AnnFileError(f"ANN file {path} is damaged ({str(exc).splitlines()[0][:120]})") from None
    try:
        pca = Pca(sections["pca_mean"], sections["pca_components"]) if "pca_mean" in sections else None
        backend = make(header["kind"], int(header["dim"]), pca=pca, storage=header.get("storage", "float32"),
                       rerank=int(header.get("rerank", 1)), **header.get("params", {}))
        backend.labels = sections["labels"].astype(np.int64)
        backend.live = sections["live"].astype(bool)
        backend.keys = sections["keys"].astype(np.int64)
        n = len(backend.labels)
        if not n == len(backend.live) == len(backend.keys) == int(header["entries"]):
            raise AnnFileError(f"ANN file {path} is damaged (id map)")
        backend._restore(sections)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnFileError(f"ANN file {path} is damaged ({exc.__class__.__name__})") from None
    backend.fingerprint = header.get("fingerprint")
    return backend


def _read_faiss(fh, nbytes: int):
    faiss = faiss_module()
    left = [nbytes]

    def read(n: int) -> bytes:
        n = min(n, left[0])
        data = fh.read(n)
        left[0] -= len(data)
        return data

    reader = faiss.PyCallbackIOReader(read)
    index = faiss.read_index(reader)
    del reader
    return index
