"""Search, compare and near-duplicate grouping over L2-normalised vectors. `search` and `find_duplicates`
go through the index's search backend (`store/ann/`); `run_queries` is the one query path of the CLI and the
web service.

Distance is the Euclidean distance between unit vectors, similarity the cosine; for unit vectors
distance = sqrt(2 - 2 * similarity). Everything is matrix products and top-k selections, never an
N x N x D broadcast; duplicates use a k-nearest-neighbour graph computed in row blocks, never an N x N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ..vector_math import blocked_top_k, distance_to_similarity, rows_per_block, similarity_to_distance
from .dupes_graph import DEFAULT_DUPE_THRESHOLD, TWO_LAYER_DUPE_THRESHOLD, dupe_threshold
from .dupes_graph import find_duplicates as graph_groups

if TYPE_CHECKING:
    from ..store.index import ImageIndex
    from .results import SearchResponse
    from .verify import Verifier

def _exclusions(exclude_ids, n_queries: int) -> list[set]:
    if exclude_ids is None:
        return [set() for _ in range(n_queries)]
    items = list(exclude_ids)
    per_query = len(items) == n_queries and all(x is None or isinstance(x, (set, list, tuple, frozenset, np.ndarray))
                                                for x in items) and n_queries > 0
    if per_query:
        return [set() if x is None else {int(i) for i in x} for x in items]
    shared = {int(i) for i in items}
    return [shared for _ in range(n_queries)]


def _backend_of(index) -> tuple[Any, Any]:
    """(search backend, rerank lookup) of an opened index: a snapshot's own backend (its ANN file, or exact),
    or a writer's exact one over its vectors."""
    return index.backend(), index.lookup


def search(index: "ImageIndex", queries: np.ndarray, k: int = 5, exclude_ids=None) -> list[list[dict]]:
    """The k nearest stored images of each query vector, best first, through the index's search backend
    (`IndexSnapshot.backend()`: exact, or an ANN structure whose candidates are reranked by exact distance).

    `exclude_ids`: ids left out of every query's results, or one collection (or None) per query.
    Each hit: {"rank" (1-based), "id", "path" (str), "distance", "similarity"}.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    excluded = _exclusions(exclude_ids, len(queries))
    n = len(index)
    if n == 0 or k <= 0:
        return [[] for _ in queries]
    backend, lookup = _backend_of(index)
    fetch = min(n, k + max((len(e) for e in excluded), default=0))
    sims, found = backend.search_similarities(queries, fetch, lookup)
    results: list[list[dict]] = []
    for q in range(len(queries)):
        hits: list[dict] = []
        for s, i in zip(sims[q], found[q]):
            if len(hits) == k:
                break
            if i < 0 or int(i) in excluded[q]:
                continue
            s = float(np.clip(s, -1.0, 1.0))
            hits.append({"rank": len(hits) + 1, "id": int(i), "path": str(index.path_of(int(i))),
                         "distance": similarity_to_distance(s), "similarity": s})
        results.append(hits)
    return results


# alpha-QE and DBA (Radenovic et al., TPAMI 2019): neighbours weighted by similarity^alpha.
DEFAULT_ALPHA = 3.0
# DBA at search time re-scores this many candidates (or 4k, if more) with their augmented vectors.
DBA_SHORTLIST = 100
MAX_EXPANSION = 50  # neighbours of --qe / --dba, at most: each costs a search per query or candidate


@dataclass(frozen=True)
class Expansion:
    """Search-time options of the query path: alpha-query expansion with `qe` neighbours, database-side
    augmentation with `dba` neighbours, both weighted by similarity^`alpha` (0: off)."""

    qe: int = 0
    dba: int = 0
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        from ...errors import LookalikeError

        for name in ("qe", "dba"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXPANSION:
                raise LookalikeError(f"--{name} takes a number of neighbours from 0 to {MAX_EXPANSION}")
        if not (isinstance(self.alpha, (int, float)) and np.isfinite(self.alpha) and 0.0 <= self.alpha <= 16.0):
            raise LookalikeError("--alpha must be a number from 0 to 16")

    @property
    def active(self) -> bool:
        return bool(self.qe or self.dba)


def weighted_sum(base: np.ndarray | None, sims: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """Unit rows of `base` (or 0) + sum_j max(sim_j, 0)^alpha neighbours_j: (n, k) sims, (n, k, D) vectors.
    The one formula of alpha-QE and DBA, used by the search path and by `eval-search`."""
    w = np.clip(np.nan_to_num(sims, nan=0.0, neginf=0.0), 0.0, None) ** alpha
    out = np.einsum("qk,qkd->qd", w, neighbours).astype(np.float32)
    if base is not None:
        out += base
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _vectors_of(index, ids: np.ndarray) -> np.ndarray:
    """(n, k) ids (-1: none) -> (n, k, D) stored vectors (zeros where none)."""
    out = np.zeros((*ids.shape, index.dim), np.float32)
    for pos in zip(*np.nonzero(ids >= 0)):
        out[pos] = index.vector_of(int(ids[pos]))
    return out


def _neighbours(index, vectors: np.ndarray, k: int, exclude: list[set]) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k nearest stored vectors of each row, leaving out each row's `exclude`."""
    backend, lookup = _backend_of(index)
    fetch = min(len(index), k + max((len(e) for e in exclude), default=0))
    sims, found = backend.search_similarities(np.ascontiguousarray(vectors, np.float32), fetch, lookup)
    out_s = np.full((len(vectors), k), -np.inf, np.float32)
    out_i = np.full((len(vectors), k), -1, np.int64)
    for q in range(len(vectors)):
        n = 0
        for s, i in zip(sims[q], found[q]):
            if n == k:
                break
            if i >= 0 and int(i) not in exclude[q]:
                out_s[q, n], out_i[q, n] = s, i
                n += 1
    return out_s, out_i


def expand_queries(index: "ImageIndex", queries: np.ndarray, options: Expansion,
                   exclude: list[set]) -> np.ndarray:
    """The alpha-QE step of the query path: each query row plus its `options.qe` nearest stored vectors
    (leaving out `exclude[i]`, the ids query i may not find), weighted by similarity^alpha and re-normalised.
    The queries as they are when `qe` is 0. Rows go in blocks, so the gathered neighbours stay bounded."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if not options.qe or len(index) == 0:
        return queries
    out = np.empty_like(queries)
    block = rows_per_block(options.qe * index.dim)
    for start in range(0, len(queries), block):
        rows = slice(start, start + block)
        sims, ids = _neighbours(index, queries[rows], options.qe, exclude[rows])
        out[rows] = weighted_sum(queries[rows], sims, _vectors_of(index, ids), options.alpha)
    return out


def augmented_vectors(index: "ImageIndex", ids: np.ndarray, options: Expansion) -> np.ndarray:
    """The DBA vectors of stored images `ids`: each stored vector plus its `options.dba` nearest stored
    neighbours, weighted by similarity^alpha and re-normalised (the stored vectors when `dba` is 0)."""
    ids = np.asarray(ids, np.int64)
    own = np.zeros((len(ids), index.dim), np.float32)
    for n, i in enumerate(ids):
        own[n] = index.vector_of(int(i))
    if not options.dba:
        return own
    block = rows_per_block((options.dba + 1) * index.dim)
    for start in range(0, len(ids), block):
        rows = slice(start, start + block)
        # A stored vector's nearest stored vector is itself: dba + 1 neighbours, weight 1 for itself.
        sims, found = _neighbours(index, own[rows], options.dba + 1, [set()] * len(own[rows]))
        own[rows] = weighted_sum(None, sims, _vectors_of(index, found), options.alpha)
    return own


def expanded_search(index: "ImageIndex", queries: np.ndarray, k: int, options: Expansion,
                    exclude_ids=None) -> list[list[dict]]:
    """`search` with alpha-QE and DBA: each query is first replaced by itself plus its `qe` nearest stored
    vectors (`expand_queries`); then, with `dba`, its best candidates (`DBA_SHORTLIST`, or 4k) are re-scored
    against their augmented vectors (`augmented_vectors`), the DBA of the whole database computed only where
    it changes the top of the ranking."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    excluded = _exclusions(exclude_ids, len(queries))
    if len(index) == 0 or k <= 0:
        return [[] for _ in queries]
    queries = expand_queries(index, queries, options, excluded)
    if not options.dba:
        return search(index, queries, k=k, exclude_ids=excluded)
    shortlist = search(index, queries, k=max(DBA_SHORTLIST, 4 * k), exclude_ids=excluded)
    results = []
    for q, hits in enumerate(shortlist):
        if not hits:
            results.append([])
            continue
        augmented = augmented_vectors(index, np.asarray([h["id"] for h in hits], np.int64), options)
        scores = np.clip(augmented @ queries[q], -1.0, 1.0)
        order = np.argsort(-scores, kind="stable")[:k]
        results.append([{**hits[j], "rank": r + 1, "similarity": float(scores[j]),
                         "distance": similarity_to_distance(float(scores[j]))}
                        for r, j in enumerate(order)])
    return results


@dataclass(frozen=True)
class Query:
    """One query: an indexed image (`image_id`), a file (`path`; the index's stored vector when it holds that
    file), or an image already decoded (`image`, e.g. an upload). `name` is what the answer calls it."""

    name: str
    path: Optional[Path] = None
    image_id: Optional[int] = None
    image: Any = None


def run_queries(index: "ImageIndex", queries: Sequence[Query], k: int, embedder: Callable[[], Any],
                include_self: bool = False, expansion: Optional[Expansion] = None,
                verifier: Optional["Verifier"] = None) -> list["SearchResponse"]:
    """The query path of `lookalike search` and the web service: a vector for each query (the stored vector
    of an indexed image or file, else the embedding of its image), then the backend's k nearest (`search`),
    as one `SearchResponse` per query (`results.py`: the shape the CLI's JSON and the web API share).

    `embedder()` returns an object with `embed_images(list of PIL images)` and `min_decode_size`; it is called
    only when some query needs embedding (so a search by indexed files never loads a model). An indexed query
    is left out of its own results unless `include_self`. LookalikeError for a file that does not exist;
    KeyError for an unknown `image_id`.

    The descriptor is the index's: `embedder_for_index` embeds at the index's size, scales and pooling and
    applies its whitening, and stored vectors are already whitened. `expansion`: alpha-QE and DBA
    (`expanded_search`). `verifier`: the first `verifier.shortlist` results re-ranked by spatial verification
    (`verify.py`), each hit then carrying its "inliers"."""
    from ...errors import LookalikeError
    from ...images import load_image
    from .results import SearchResponse

    vectors: list[Optional[np.ndarray]] = []
    excludes: list[Optional[list[int]]] = []
    to_embed: list[tuple[int, Any]] = []
    for n, q in enumerate(queries):
        image_id = q.image_id
        if image_id is None and q.path is not None:
            if not Path(q.path).is_file():
                raise LookalikeError(f"query {q.path}: no such file")
            image_id = index.current_id(q.path)  # None once the file changed: embedded afresh
        if image_id is not None:
            vectors.append(np.asarray(index.vector_of(image_id), np.float32))  # KeyError when unknown
            excludes.append(None if include_self else [int(image_id)])
            continue
        vectors.append(None)
        excludes.append(None)
        to_embed.append((n, q))
    decoded: dict[int, Any] = {}  # query position -> its image, decoded once for the descriptor and the verifier
    if to_embed:
        emb = embedder()
        for n, q in to_embed:
            decoded[n] = q.image if q.image is not None else load_image(
                q.path, min_size=getattr(emb, "min_decode_size", None))
        for (n, _), vec in zip(to_embed, emb.embed_images([decoded[n] for n, _ in to_embed])):
            vectors[n] = np.asarray(vec, np.float32)
    if not vectors:
        return []
    fetch = max(k, verifier.shortlist) if verifier is not None else k
    if expansion is not None and expansion.active:
        hits = expanded_search(index, np.stack(vectors), fetch, expansion, exclude_ids=excludes)
    else:
        hits = search(index, np.stack(vectors), k=fetch, exclude_ids=excludes)
    if verifier is not None:
        hits = [_verified(index, q, found, verifier, decoded.get(n))[:k]
                for n, (q, found) in enumerate(zip(queries, hits))]
    return [SearchResponse.of(q.name, q.image_id, found) for q, found in zip(queries, hits)]


def _verified(index: "ImageIndex", query: Query, hits: list[dict], verifier: "Verifier",
              image: Any = None) -> list[dict]:
    """`hits` re-ranked by `verifier` against the query's own image (left as they are when it cannot be read):
    `image`, the one the descriptor was taken from, else the indexed image's stored rendition or file. The
    shortlisted images' local features come from the index, stored beside their renditions, where it holds fresh
    ones."""
    from ..store.renditions import read_renditions

    def renditions(ids: list) -> dict:
        return read_renditions(index.path, ids)

    if image is None and query.image is not None:
        image = query.image
    if image is not None:
        feats = verifier.query_image_features(image)
    else:
        image_id = query.image_id if query.image_id is not None else index.current_id(query.path)
        path = query.path if query.path is not None else index.path_of(query.image_id)
        stored = renditions([image_id]).get(image_id) if image_id is not None else None
        feats = verifier.query_features(path, stored)
    return verifier.rerank(hits, feats, renditions)


def compare(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise (distance, similarity) matrices, n x n float32, from unit vectors (2,000 images: 16 MB each)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    sim = v @ v.T
    np.clip(sim, -1.0, 1.0, out=sim)
    np.fill_diagonal(sim, 1.0)
    dist = similarity_to_distance(sim)
    return dist, sim


def knn_graph(vectors: np.ndarray, k: int = 10, block: int | None = None) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (row indices, neighbour indices (b, k), similarities (b, k)) block by block, self excluded."""
    n = len(vectors)
    k = max(1, min(k, n - 1))
    for rows, sims, nn in blocked_top_k(vectors, vectors, k, exclude=np.arange(n), block=block):
        yield np.arange(rows.start, rows.stop), nn, sims


def group_vectors(vectors: np.ndarray, threshold: float = DEFAULT_DUPE_THRESHOLD, k: int = 10) -> list[list[int]]:
    """Connected components (size >= 2) of the exact kNN graph whose edges are within `threshold` distance;
    groups hold row positions, sorted, largest group first (`dupes_graph` over an exact backend)."""
    from ..store import ann

    if len(vectors) < 2:
        return []
    positions = np.arange(len(vectors), dtype=np.int64)
    return graph_groups(ann.build("exact", positions, vectors), positions, vectors, threshold, k)


def find_duplicates(index: "ImageIndex", threshold: Optional[float] = None, k: int = 10,
                    progress: Optional[Callable[[int, int], None]] = None) -> list[list[int]]:
    """Groups of near-duplicate image ids: the kNN graph through the index's search backend + connected
    components (memory O(N x k), never N x N); `threshold` None: `dupe_threshold` of the index's descriptor;
    `progress(done, total)` after each block of rows."""
    if threshold is None:
        threshold = dupe_threshold(index.manifest)

    backend, lookup = _backend_of(index)
    vectors = index.row_vectors() if hasattr(index, "row_vectors") else index.vectors()
    return graph_groups(backend, index.ids(), vectors, threshold, k, progress=progress, lookup=lookup)
