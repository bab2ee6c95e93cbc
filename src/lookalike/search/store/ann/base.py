"""What every search backend shares: id bookkeeping, the removal mask, the optional PCA and rerank, distances,
and writing the file (`fileformat`). Kinds: `exact.ExactBackend`, and the FAISS ones in `faiss_backends`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ....errors import LookalikeError
from ...vector_math import rows_per_block, similarity_to_distance, top_k
from ..compact import Pca
from .faiss_lib import faiss_module
from .fileformat import write_file

BACKENDS = ("exact", "hnsw", "ivf", "ivfpq")
STORAGES = ("float32", "float16", "sq8")  # of the vectors inside a structure; sq8: IVF only
CHOICES = ("auto",) + BACKENDS
ADD_BLOCK = 65_536  # rows per add() call into a structure: bounds the float32 copy of a memory-mapped input
_RERANK_BLOCK_BYTES = 32 * 2**20  # candidate vectors gathered at a time by a rerank

Lookup = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


def as_rows(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    """`vectors` as (n, dim) rows; LookalikeError naming `what` when they are of another shape."""
    vectors = np.atleast_2d(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise LookalikeError(f"{what} have shape {vectors.shape}, expected (n, {dim})")
    return vectors


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
        # count_nonzero, not sum(): it runs on every query (benchmarks/results/ann_settings.md)
        return int(np.count_nonzero(self.live))

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
        vectors = as_rows(vectors, self.dim, "vectors")
        if len(ids) != len(vectors):
            raise LookalikeError(f"{len(ids)} ids for {len(vectors)} vectors")
        for s in range(0, len(ids), ADD_BLOCK):
            self._add(self._prepare(vectors[s:s + ADD_BLOCK]))
            if progress:
                progress(min(len(ids), s + ADD_BLOCK), len(ids))
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
        queries = as_rows(queries, self.dim, "queries")
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

    def _restore(self, sections: dict) -> None:  # pragma: no cover - abstract
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
        if fingerprint is not None:
            self.fingerprint = fingerprint
        sections: list[tuple[str, Any]] = [("labels", self.labels), ("keys", self.keys),
                                           ("live", self.live.view(np.uint8))]
        if self.pca is not None:
            sections += [("pca_mean", self.pca.mean), ("pca_components", self.pca.components)]
        sections += self._blob_sections()
        fields = {"kind": self.kind, "dim": self.dim, "storage": self.storage, "rerank": self.rerank,
                  "params": self._own_params(), "fingerprint": self.fingerprint, "entries": int(len(self.labels))}
        return write_file(Path(path), sections, fields, atomic)


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
        step = rows_per_block(cand.shape[1] * q.shape[1], 4, _RERANK_BLOCK_BYTES)
        for s in range(0, len(q), step):  # (step x fetch x D) floats at a time
            part = np.einsum("qfd,qd->qf", vecs[where[s:s + step]], q[s:s + step])
            sims[s:s + step] = np.where(valid[s:s + step], part, -np.inf)
    top = top_k(sims, min(k, sims.shape[1]))
    return np.take_along_axis(sims, top, axis=1), np.take_along_axis(cand, top, axis=1)
