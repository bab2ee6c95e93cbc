"""alpha-QE and DBA of `eval-search`, through the query path's own steps (`query.expand_queries`,
`query.augmented_vectors`), so the evaluation measures what `lookalike search --qe --dba` ranks.

The benchmark's vectors (whitened when the evaluation fits a whitening) stand in for the index: ids are
benchmark positions and the search backend is exact. The ranking measured is the one `lookalike search` gives
when asked for every result: its DBA re-scores each candidate, here the whole database.
"""

from __future__ import annotations

import numpy as np

from ..retrieve.query import Expansion, augmented_vectors, expand_queries


class BenchmarkVectors:
    """The part of an index the query path reads (`backend`, `lookup`, `vector_of`, `dim`, `len`), over the
    vectors of a benchmark's indexed images; ids are their positions in the benchmark's database."""

    lookup = None  # an exact backend ranks by exact similarities: nothing to rerank

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._ids = np.asarray(ids, np.int64)
        self._vectors = np.ascontiguousarray(vectors, np.float32)
        self._row = {int(i): n for n, i in enumerate(self._ids)}
        self.dim = int(self._vectors.shape[1])
        self._backend = None

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids

    def vectors(self) -> np.ndarray:
        return self._vectors

    def backend(self):
        """The exact search backend over these vectors, built on first use."""
        if self._backend is None:
            from ..store import ann

            self._backend = ann.build("exact", self._ids, self._vectors)
        return self._backend

    def vector_of(self, image_id: int) -> np.ndarray:
        return self._vectors[self._row[int(image_id)]]


def expanded(database: np.ndarray, indexed: np.ndarray, queries: np.ndarray, query_positions: np.ndarray,
             options: Expansion) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) as the query path scores them under `options`: each query through alpha-QE over
    the indexed database vectors, leaving out its own database position (`query_positions[i]`, -1: none), as
    a search leaves an indexed query out of its results; each indexed database vector through DBA. `indexed`:
    the database positions that hold a vector; the other rows are returned as they are."""
    if not options.active or not len(indexed):
        return database, queries
    view = BenchmarkVectors(indexed, database[indexed])
    exclude = [set() if p < 0 else {int(p)} for p in query_positions]
    queries = expand_queries(view, queries, options, exclude)
    if options.dba:
        database = database.copy()
        database[indexed] = augmented_vectors(view, indexed, options)
    return database, queries
