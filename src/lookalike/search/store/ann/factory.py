"""Making a backend: `make` an empty one of a kind, or `build` one over (ids, vectors), choosing the kind by size
for `auto`."""

from __future__ import annotations

import numpy as np

from ....errors import LookalikeError
from ..compact import Pca
from .base import CHOICES, Backend, Progress
from .exact import ExactBackend
from .faiss_backends import HnswBackend, IvfBackend, IvfPqBackend
from .choice import DEFAULT_MEMORY_BUDGET, choose

KINDS: dict[str, type[Backend]] = {"exact": ExactBackend, "hnsw": HnswBackend, "ivf": IvfBackend,
                                   "ivfpq": IvfPqBackend}


def make(kind: str, dim: int, **params) -> Backend:
    """An empty backend of this kind; `pca` may be a `Pca` or a dimension (then fitted by `build`)."""
    if kind not in KINDS:
        raise LookalikeError(f"unknown search backend {kind!r}: use one of {', '.join(CHOICES)}")
    try:
        return KINDS[kind](dim, **params)
    except TypeError as exc:
        raise LookalikeError(f"bad parameters for the {kind} backend: {exc}") from None


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
