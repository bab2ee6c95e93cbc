"""IVF on a 256-d PCA at 1M vectors: what the stored codes (float32, float16, SQ8) and the number of lists cost
and give, side by side in one run, through `lookalike.search.store.ann` as `lookalike index` builds it.

For each variant: build time, file size, then one query at a time (1,000 held-out queries, the exact rerank of
rerank x k candidates read from the vector file) at several nprobe: p50 and recall@10 against the exact top-10;
and the list search of the `dupes` graph pass (its graph settings) over 20,000 rows, scaled to 1M rows.

Uses the cache `benchmarks/ann_scale.py` builds (db.npy, queries.npy, gt-N.npz under
$LOOKALIKE_HOME/bench/ann_scale): run that first, e.g. `python benchmarks/ann_scale.py --sizes 1000000 --backends auto`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ann_scale import default_cache  # noqa: E402
from results_file import record  # noqa: E402

NPROBES = (16, 32, 48, 64)
GRAPH_ROWS = 20_000


def measure(variant: str, n: int, cache: Path) -> list[str]:
    from lookalike.search.store import ann
    from lookalike.search.store.index import advise_random

    nlist, storage = variant.split(":")
    db = np.load(cache / "db.npy", mmap_mode="r")[:n]
    rdb = advise_random(np.load(cache / "db.npy", mmap_mode="r"))[:n]
    queries = np.load(cache / "queries.npy").astype(np.float32)
    truth = np.load(cache / f"gt-{n}.npz", allow_pickle=False)["top"]
    lookup = lambda w: np.asarray(rdb[np.asarray(w)], np.float32)  # noqa: E731
    t0 = time.perf_counter()
    backend = ann.build("ivf", np.arange(n, dtype=np.int64), db, nlist=int(nlist), nprobe=48, pca=256, rerank=20,
                        storage=storage)
    build_s = time.perf_counter() - t0
    size = backend.save(cache / f"codes-{n}-{nlist}-{storage}.ann")
    (cache / f"codes-{n}-{nlist}-{storage}.ann").unlink()
    cells = []
    for nprobe in NPROBES:
        backend.nprobe = nprobe
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(backend.search(q[None], 10, lookup=lookup)[1][0])
            lat.append(time.perf_counter() - t)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
        cells.append(f"{recall:.3f} / {1e3 * np.median(lat):.2f} ms")
    backend.nprobe = 48
    rerank, knobs = backend.graph_settings(11)
    rows = np.asarray(db[:GRAPH_ROWS], np.float32)
    t = time.perf_counter()
    backend.search_similarities(rows, 11 * rerank, None, rerank=1, knobs=knobs)
    graph_min = (time.perf_counter() - t) * n / GRAPH_ROWS / 60
    return [f"| {int(nlist):,} | {storage} | {build_s:.0f} s | {size / 2**20:.0f} MB | " + " | ".join(cells)
            + f" | {graph_min:.1f} min |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database size (a gt-N.npz of ann_scale.py must exist)")
    ap.add_argument("--variants", default="2048:float32,2048:float16,2048:sq8,8192:float32",
                    help="comma-separated NLIST:STORAGE")
    args = ap.parse_args()
    cache = default_cache()
    if not (cache / f"gt-{args.n}.npz").is_file():
        raise SystemExit(f"no ground truth for {args.n} vectors in {cache}: run benchmarks/ann_scale.py first")
    load = [os.getloadavg()[0]]
    lines = [f"IVF on a 256-d PCA over {args.n:,} synthetic vectors (ann_scale.py's set), 1,000 held-out real queries "
             "one at a time, exact rerank of 20 x k candidates. Cells: recall@10 / p50. Graph: the list search of "
             f"`dupes`' graph pass (its settings) over {GRAPH_ROWS:,} rows, scaled to {args.n:,} rows.", "",
             "| lists | codes | build | file | " + " | ".join(f"nprobe {p}" for p in NPROBES) + " | graph search |",
             "|---|---|---|---|" + "---|" * len(NPROBES) + "---|"]
    for variant in args.variants.split(","):
        lines += measure(variant, args.n, cache)
        load.append(os.getloadavg()[0])
        print(lines[-1], flush=True)
    lines += ["", "Load average (1 min) at the start and after each variant: "
              + ", ".join(f"{v:.1f}" for v in load) + " (2 cores)."]
    print(f"written to {record('ann_ivf_codes', lines)}")


if __name__ == "__main__":
    main()
