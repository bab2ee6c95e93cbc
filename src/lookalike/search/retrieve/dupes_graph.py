"""Near-duplicate groups at scale: the k-nearest-neighbour graph comes from a search backend (`ann.Backend`),
block by block, and only its edges within the threshold are kept, so memory is O(N x k) at worst (O(edges) in
practice), never N x N. Groups are the connected components of those edges (`query.group_vectors` runs this
over an exact backend).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..store.ann import Backend, Lookup
from ..vector_math import distance_to_similarity

# Distance under which two images count as near-duplicates, with the head layer alone: it sits between the
# demo gallery's edited copies and its closest two different photos, with a margin below the latter.
DEFAULT_DUPE_THRESHOLD: float = 0.6
# The two-layer descriptor (`features.DEFAULT_CROP_LAYERS`) packs different photos closer, so it takes a
# tighter threshold for a better precision at little cost in recall. The measurements behind both values:
# benchmarks/results/dupes_threshold.md and dupes_threshold.notes.md.
TWO_LAYER_DUPE_THRESHOLD: float = 0.55


def dupe_threshold(manifest: dict) -> float:
    """The default near-duplicate distance for an index's descriptor (its manifest, or `Embedder.describe()`)."""
    layers = (manifest.get("preprocess") or {}).get("layers") or []
    return TWO_LAYER_DUPE_THRESHOLD if len(layers) > 1 else DEFAULT_DUPE_THRESHOLD


# Query rows per backend call: (block x (k + 1)) results, small, and a progress step every few seconds at 1M.
DUPES_BLOCK = 4096


def knn_edges(backend: Backend, ids: np.ndarray, vectors: np.ndarray, k: int = 10,
              min_similarity: float = -1.0, block: int = DUPES_BLOCK,
              progress: Callable[[int, int], None] | None = None,
              lookup: Lookup | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Edges (a, b) of the kNN graph of the backend's entries with similarity >= `min_similarity`, as two
    int64 arrays of ids. Row i of `vectors` belongs to `ids[i]`; each row's own id is left out of its
    neighbours. `progress(done, total)` after each block (the library never prints). `lookup` (ids -> full
    vectors) lets an approximate backend (PCA, PQ) rerank its candidates exactly, as in `Backend.search`."""
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    k = max(1, min(k, n - 1)) if n > 1 else 1
    rerank, knobs = backend.graph_settings(k + 1)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims, found = backend.search_similarities(np.asarray(vectors[start:stop], np.float32), k + 1, lookup,
                                                  rerank=rerank, knobs=knobs)
        own = ids[start:stop, None]
        self_hit = found == own
        # Keep the first k neighbours that are not the row itself (it is usually, not always, first).
        keep = ~self_hit & (found >= 0)
        rank = np.cumsum(keep, axis=1)
        keep &= rank <= k
        keep &= sims >= min_similarity
        r, c = np.nonzero(keep)
        src.append(ids[start + r])
        dst.append(found[r, c])
        if progress:
            progress(stop, n)
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src), np.concatenate(dst)


def component_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One label per position 0..n-1, the same within each connected component of the undirected edges (a, b):
    union-find in whole-array steps (each root hooked under the smallest root it touches, then every position
    pointed at its root), so a graph of millions of edges takes no Python loop over them."""
    label = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    while True:
        before = label.copy()
        ra, rb = label[a], label[b]
        low = np.minimum(ra, rb)
        np.minimum.at(label, ra, low)  # a parent is never above its child: no cycles
        np.minimum.at(label, rb, low)
        while True:
            root = label[label]
            if np.array_equal(root, label):
                break
            label = root
        if np.array_equal(label, before):
            return label


def components(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the edges (a, b) over `ids`, each sorted, largest group first
    (ties: smallest first id), with the ids in place of positions."""
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    if n < 2 or len(a) == 0:
        return []
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pa = order[np.searchsorted(sorted_ids, a)]
    pb = order[np.searchsorted(sorted_ids, b)]
    label = component_labels(n, pa, pb)
    sizes = np.bincount(label)
    members = np.nonzero(sizes[label] > 1)[0]
    groups: dict[int, list[int]] = {}
    for pos in members[np.argsort(ids[members], kind="stable")]:
        groups.setdefault(int(label[pos]), []).append(int(ids[pos]))
    out = list(groups.values())
    out.sort(key=lambda g: (-len(g), g[0]))
    return out


def find_duplicates(backend: Backend, ids: np.ndarray, vectors: np.ndarray,
                    threshold: float = DEFAULT_DUPE_THRESHOLD, k: int = 10,
                    progress: Callable[[int, int], None] | None = None,
                    lookup: Lookup | None = None) -> list[list[int]]:
    """Groups of near-duplicate ids (distance <= threshold) through `backend`, whose live entries are
    (ids, vectors) (e.g. ImageIndex.ids() / vectors()); groups sorted, largest first. Pass `lookup`
    (`ann.vector_lookup(ids, vectors)`) with a PCA or PQ backend, so edges are judged by exact distances."""
    a, b = knn_edges(backend, ids, vectors, k, distance_to_similarity(float(threshold)), progress=progress,
                     lookup=lookup)
    return components(ids, a, b)
