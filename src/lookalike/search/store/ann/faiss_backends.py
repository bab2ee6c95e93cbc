"""The FAISS backends: `hnsw` (a graph), `ivf` (inverted lists of float32, float16 or SQ8 vectors) and `ivfpq`
(inverted lists of product-quantised codes, optionally behind an OPQ rotation). Each holds positions 0..n-1 as
FAISS's own sequential ids, searched by inner product; removed positions are masked by an ID selector."""

from __future__ import annotations

import numpy as np

from ....errors import LookalikeError
from ..compact import sample_rows
from .base import STORAGES, Backend
from .faiss_lib import faiss_module, faiss_params
from .fileformat import AnnFileError
from .choice import HNSW_M, nlist_for

_SCALAR_QUANTIZERS = {"float16": "QT_fp16", "sq8": "QT_8bit"}  # FAISS's codes for the non-float32 storages
# The kNN-graph pass of `dupes` (`Backend.graph_settings`) judges a row's candidates by their exact distance
# (rerank x k read from the vectors): 16 lists and 2 x k candidates find most exact edges at a fraction of a
# query's cost; 4 x k finds a few more but doubles the rows the rerank reads (benchmarks/results/ann_settings.md).
GRAPH_NPROBE = 16
GRAPH_EF_SEARCH = 48
GRAPH_RERANK = 2
# Training points per inverted list and k-means iterations: FAISS asks for 39-256 points per list; 50 and 10
# iterations keep the training of thousands of lists to minutes on a few cores, at a recall cost the benchmark
# measures.
TRAIN_PER_LIST = 50
KMEANS_ITERATIONS = 10


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
        return faiss_params("SearchParametersHNSW", sel, efSearch=max(1, int(ef_search or self.ef_search)))

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
        return faiss_params("SearchParametersIVF", sel, nprobe=max(1, int(nprobe or self.nprobe)))

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
