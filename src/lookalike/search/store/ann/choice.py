"""Which backend an index gets, with which parameters: `choose` by size and memory budget (`auto`), `plan` for a
kind asked for by name, and the size estimates they compare against the budget.

The thresholds and settings are measured: the figures behind each are in benchmarks/results/ann_settings.md.
"""

from __future__ import annotations

import math

from ....errors import LookalikeError
from .base import BACKENDS, CHOICES

_STORED_BYTES = {"float32": 4, "float16": 2, "sq8": 1}  # per stored dimension

# Exact answers in a few milliseconds up to EXACT_MAX_ROWS. Full-dimension HNSW is fast and accurate, but its
# build time grows too fast beyond HNSW_FULL_MAX_ROWS; above it, IVF on a 256-d PCA with one byte per
# dimension (SQ8) and an exact rerank (IVF_PCA) while its lists fit the memory budget, then IVF-PQ.
EXACT_MAX_ROWS = 10_000
HNSW_FULL_MAX_ROWS = 100_000
# HNSW on PCA-256, when asked for by name over HNSW_FULL_MAX_ROWS.
HNSW_PCA = {"m": 32, "pca": 256, "ef_search": 320, "rerank": 20}
# IVF on PCA-256: lists = IVF_LISTS_PER_SQRT x sqrt(n), nprobe = nlist / IVF_PROBE_DIVISOR, rerank 20 x k: the
# fewest lists and probes that keep recall@10 >= 0.95 at 1M; SQ8 codes lose nothing after the rerank, in a
# quarter of float32's memory.
IVF_LISTS_PER_SQRT = 2.0
IVF_PROBE_DIVISOR = 42
IVF_PCA = {"pca": 256, "rerank": 20, "storage": "sq8"}
DEFAULT_MEMORY_BUDGET = 3 * 2**30  # bytes the backend's structure may take in RAM
HNSW_M = 32
# Fewest vectors a kind is built for when asked by name: below them an index is searched exactly (IVF needs
# >= 39 training points per list; IVF-PQ's sub-quantizers fit 256 centroids each).
MIN_ROWS = {"exact": 0, "hnsw": 1, "ivf": 39 * 4, "ivfpq": 64 * 256}


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
    fits the per-vector budget. (FAISS trains sub-quantizers of 4 dimensions far slower than of 8:
    benchmarks/results/ann_settings.md.)"""
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


def plan(requested: str, n: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[str, dict]:
    """(kind, build parameters) for an index of n vectors whose manifest asks for `requested` (auto or a kind):
    `auto` is `choose`; a named kind takes the parameters `choose` would give it at this size (HNSW on a 256-d
    PCA over HNSW_FULL_MAX_ROWS, IVF-PQ's code size from the budget), and exact while n is below MIN_ROWS[kind]."""
    if requested == "auto":
        return choose(n, dim, memory_budget)
    if requested not in BACKENDS:
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
