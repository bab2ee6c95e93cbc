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

Modules: `base` (the interface and what every kind shares), `exact`, `faiss_backends`, `choice` (which kind,
with which parameters), `factory` (make, build), `fileformat` and `files` (the saved file), `vectors`
(fingerprint and lookup).
"""

from __future__ import annotations

from ...vector_math import similarity_to_distance
from .base import BACKENDS, CHOICES, STORAGES, Backend, Lookup, Progress
from .factory import KINDS, build, make
from .exact import ExactBackend, exact_view
from .faiss_backends import (GRAPH_EF_SEARCH, GRAPH_NPROBE, GRAPH_RERANK, KMEANS_ITERATIONS, TRAIN_PER_LIST,
                             FaissBackend, HnswBackend, IvfBackend, IvfPqBackend)
from .faiss_lib import faiss_module
from .files import load, read_params, verify
from .fileformat import FILE_VERSION, AnnFileError, StaleAnnError
from .choice import (DEFAULT_MEMORY_BUDGET, EXACT_MAX_ROWS, HNSW_FULL_MAX_ROWS, HNSW_M, HNSW_PCA, IVF_LISTS_PER_SQRT,
                   IVF_PCA, IVF_PROBE_DIVISOR, MIN_ROWS, choose, hnsw_bytes, ivf_bytes, nlist_for, plan,
                   pq_bytes_for)
from .vectors import vector_lookup, vectors_fingerprint

__all__ = [
    "BACKENDS", "CHOICES", "STORAGES", "Backend", "Lookup", "Progress", "similarity_to_distance", "KINDS", "build",
    "make", "ExactBackend", "exact_view", "GRAPH_EF_SEARCH", "GRAPH_NPROBE", "GRAPH_RERANK", "KMEANS_ITERATIONS",
    "TRAIN_PER_LIST", "FaissBackend", "HnswBackend", "IvfBackend", "IvfPqBackend",
    "faiss_module", "load", "read_params", "verify", "FILE_VERSION", "AnnFileError", "StaleAnnError",
    "DEFAULT_MEMORY_BUDGET", "EXACT_MAX_ROWS", "HNSW_FULL_MAX_ROWS", "HNSW_M", "HNSW_PCA", "IVF_LISTS_PER_SQRT",
    "IVF_PCA", "IVF_PROBE_DIVISOR", "MIN_ROWS", "choose", "hnsw_bytes",
    "ivf_bytes", "nlist_for", "plan", "pq_bytes_for", "vector_lookup", "vectors_fingerprint",
]
