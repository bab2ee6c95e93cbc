"""The exact backend: one matrix product against every stored vector, block by block, and a top-k. The ground
truth the approximate backends are measured against, and the backend of small indexes."""

from __future__ import annotations

import numpy as np

from ....errors import LookalikeError
from ...vector_math import merge_top_k, rows_per_block
from ..compact import as_float16
from .base import ADD_BLOCK, Backend, as_rows
from .fileformat import AnnFileError


class ExactBackend(Backend):
    """Today's search: one matrix product against every stored vector, block by block, and a top-k."""

    kind = "exact"

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self._chunks: list[np.ndarray] = []  # stored (prepared) vectors, in position order
        self._owned: list[bool] = []  # False: a view of the caller's (memory-mapped) vectors

    def add(self, ids, vectors, progress=None, keys=None) -> None:
        vectors = as_rows(vectors, self.dim, "vectors")
        if self.pca is None and self.storage == "float32" and vectors.dtype == np.float32 and len(vectors) > ADD_BLOCK:
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
        if self._chunks and self._owned[-1] and len(self._chunks[-1]) < ADD_BLOCK:
            # Many small incremental adds: merge them, so a search does not loop over thousands of chunks.
            self._chunks[-1] = np.concatenate([self._chunks[-1], x])
        else:
            self._chunks.append(x)
            self._owned.append(True)

    def _search(self, x: np.ndarray, k: int, knobs: dict) -> tuple[np.ndarray, np.ndarray]:
        nq = len(x)
        best_s = np.full((nq, 0), -np.inf, np.float32)
        best_p = np.zeros((nq, 0), np.int64)
        block = max(1024, rows_per_block(nq))  # stored rows per step: (queries x block) similarities
        offset = 0
        for chunk in self._chunks:
            for s in range(0, len(chunk), block):
                part = np.asarray(chunk[s:s + block], dtype=np.float32)
                sims = x @ part.T
                live = self.live[offset + s:offset + s + len(part)]
                if not live.all():
                    sims[:, ~live] = -np.inf
                best_s, best_p = merge_top_k(best_s, best_p, sims, offset + s, k)
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


def exact_view(vectors: np.ndarray, labels: np.ndarray, keys: np.ndarray | None = None) -> ExactBackend:
    """An exact backend over `vectors` as they are (e.g. a memory-mapped range of the vector file, no copy):
    row i belongs to id labels[i]; rows labelled -1 (dead rows of the file) are masked."""
    vectors = as_rows(vectors, vectors.shape[1] if np.ndim(vectors) == 2 else 0, "vectors")
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
