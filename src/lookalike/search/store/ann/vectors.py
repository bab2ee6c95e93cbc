"""The vectors a backend is built from, seen from outside it: a fingerprint that ties a saved file to them, and
a lookup of full vectors by id for the exact rerank."""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from .base import Lookup


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
