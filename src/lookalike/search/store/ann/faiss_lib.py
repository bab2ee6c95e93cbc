"""FAISS, imported on first use with its threads set for this machine."""

from __future__ import annotations

import os


def faiss_module():
    """Import FAISS with one OpenMP thread per free core (more than the free cores is much slower)."""
    # Threads that wait for work by sleeping, not spinning: on shared cores a spinning OpenMP team starves its
    # own workers (benchmarks/results/ann_settings.md). It must be set before FAISS's OpenMP runtime loads; a
    # user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    from ....device import free_cores

    if not getattr(faiss_module, "_threads_set", False):
        faiss.omp_set_num_threads(free_cores())
        faiss_module._threads_set = True
    return faiss


def faiss_params(kind: str, sel, **knobs):
    """FAISS search parameters of class `kind` with `knobs`, and the id selector `sel` when there is one (FAISS
    takes no `sel=None`)."""
    cls = getattr(faiss_module(), kind)
    return cls(sel=sel, **knobs) if sel is not None else cls(**knobs)
