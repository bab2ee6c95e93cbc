"""Search backends at scale: build time, memory, disk, latency, throughput, recall@10 and `dupes` time.

    python benchmarks/ann_scale.py --sizes 100000,1000000 [--backends exact,hnsw,ivf,ivfpq] [--cache DIR]
    python benchmarks/ann_scale.py --stage embed        # only embed (and cache) the real CIFAR-10 vectors

Data (realistic vectors, not uniform random ones):
1. Real vectors: CIFAR-10 JPEGs (from ../shared/datasets/cifar10-jpeg.tar.gz, or --cifar DIR) embedded once
   with the default backbone (EfficientNet-Lite0, average pooling; the 32-px images go through the backbone's
   own preprocessing, i.e. upsampled to 224 px) and cached under --cache (default $LOOKALIKE_HOME/bench, outside
   the repository). `--per-class-train` (default 1,500) training images per class fit the synthesiser;
   `--per-class-test` (default 100) test images per class are the held-out queries. A subset, not all 60,000,
   because the two cores are shared: the synthesiser below needs a few thousand real vectors, not 60,000.
2. Database vectors: a mixture of probabilistic PCAs fitted to the real training vectors: k-means into
   `--clusters` clusters; per cluster the top `--rank` principal directions of its residuals with their
   variances, plus an isotropic variance for the rest. A sample picks a cluster by its weight and draws
   centroid + low-rank Gaussian + isotropic noise, then is L2-normalised. Why: a diagonal Gaussian would lose the
   correlations that make real features clustered (and ANN easier than on random data); copying real vectors
   with noise would make every real image the centre of a tight blob of N/15,000 near-copies (and ANN too easy).
   On top of that, `--dupe-fraction` (default 2%) of the database are near-copies of other database vectors,
   at distances spread over 0.2-0.55 (the demo's edited copies sit at a median 0.46 from their original), so that
   `dupes` has real work. The queries are the held-out real test vectors, never in the database.
3. Ground truth: exact top-10 by a blockwise matrix product; the exact near-duplicate pairs (distance <= 0.6) of
   `--dupe-sample` database rows against the whole database.

Reported per N and backend: build time, peak RSS of the build (a fresh process per backend), RSS of the loaded
index while serving (a fresh process that loads the saved index file and queries), file size, p50/p99 latency of
one query (single thread of queries, `--query-threads` faiss threads), batch throughput (all queries in one call),
recall@10 against exact, and `dupes` time (kNN graph, k=10, through the backend) with the share of the exact
near-duplicate pairs it finds. Writes benchmarks/results/ann_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def default_cache() -> Path:
    sys.path.insert(0, str(REPO / "src"))
    from lookalike.paths import home

    return home() / "bench" / "ann_scale"


# --- 1. real vectors -----------------------------------------------------------------------------------------


def cifar_folder(cache: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    for cand in (Path("/tmp/cifar10-jpeg"), cache / "cifar10-jpeg"):
        if (cand / "train").is_dir():
            return cand
    tar = Path(os.environ.get("CIFAR_TAR", CIFAR_TAR))
    if not tar.is_file():
        tar = Path("/work/shared/datasets/cifar10-jpeg.tar.gz")
    with tarfile.open(tar) as tf:
        tf.extractall(cache, filter="data")
    return cache / "cifar10-jpeg"


def real_vectors(cache: Path, cifar: str | None, per_train: int, per_test: int) -> tuple[np.ndarray, np.ndarray]:
    """(train vectors, held-out query vectors), embedded once and cached as .npy."""
    out = cache / f"cifar_lite0_{per_train}_{per_test}.npz"
    if out.is_file():
        with np.load(out, allow_pickle=False) as z:
            return z["train"], z["test"]
    from lookalike.search.features import load_embedder

    folder = cifar_folder(cache, cifar)
    emb = load_embedder()
    parts = {}
    for split, per in (("train", per_train), ("test", per_test)):
        files = []
        for cls in sorted(p for p in (folder / split).iterdir() if p.is_dir()):
            files += sorted(cls.glob("*.jpg"))[:per]
        t0 = time.perf_counter()
        vecs, skipped = emb.embed_paths(files)
        print(f"embedded {len(vecs)} {split} images in {time.perf_counter() - t0:.0f} s ({len(skipped)} skipped)",
              file=sys.stderr)
        parts[split] = vecs.astype(np.float32)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **parts)
    os.replace(tmp, out)
    return parts["train"], parts["test"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", choices=["all", "embed"])
    ap.add_argument("--cache", default=None)
    ap.add_argument("--cifar", default=None)
    ap.add_argument("--per-class-train", type=int, default=1500)
    ap.add_argument("--per-class-test", type=int, default=100)
    args = ap.parse_args()
    cache = Path(args.cache) if args.cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    train, test = real_vectors(cache, args.cifar, args.per_class_train, args.per_class_test)
    print(train.shape, test.shape, file=sys.stderr)


if __name__ == "__main__":
    main()
