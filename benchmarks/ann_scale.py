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
    from lookalike.search.describe.features import load_embedder

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


# --- 2. synthetic database ----------------------------------------------------------------------------------

BLOCK = 10_000  # near-copies point to rows of their own block, so every prefix of whole blocks is self-contained


def fit_mixture(train: np.ndarray, clusters: int, rank: int, seed: int = 0) -> dict:
    """k-means, then per cluster: weight, centroid, top `rank` residual directions with their standard
    deviations, and the standard deviation of what they leave (isotropic)."""
    from lookalike.search.store.ann import faiss_module

    faiss = faiss_module()  # threads = free cores, waiting passively
    d = train.shape[1]
    km = faiss.Kmeans(d, clusters, niter=20, seed=seed, spherical=True)
    km.train(train)
    _, assign = km.index.search(train, 1)
    assign = assign[:, 0]
    weights, means, bases, sds, rest = [], [], [], [], []
    for c in range(clusters):
        x = train[assign == c].astype(np.float64)
        if len(x) < 4:
            continue
        mu = x.mean(0)
        r = x - mu
        _, s, vt = np.linalg.svd(r, full_matrices=False)
        var = s ** 2 / max(1, len(x) - 1)
        k = min(rank, len(var) - 1)
        weights.append(len(x))
        means.append(mu)
        bases.append(np.pad(vt[:k], ((0, rank - k), (0, 0))))
        sds.append(np.pad(np.sqrt(var[:k]), (0, rank - k)))
        rest.append(np.sqrt(max(0.0, (var.sum() - var[:k].sum())) / max(1, d - k)))
    w = np.asarray(weights, np.float64)
    return {"weights": w / w.sum(), "means": np.asarray(means, np.float32), "bases": np.asarray(bases, np.float32),
            "sds": np.asarray(sds, np.float32), "rest": np.asarray(rest, np.float32)}


def synthesise(mix: dict, n: int, dupe_fraction: float, out: Path, seed: int = 0) -> None:
    """Write n unit vectors (float32 .npy) sampled from the mixture, with near-copies (see the docstring)."""
    rng = np.random.default_rng(seed)
    d = mix["means"].shape[1]
    arr = np.lib.format.open_memmap(out.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, d))
    copies_meta = []
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        comp = rng.choice(len(mix["weights"]), size=m, p=mix["weights"])
        x = np.empty((m, d), np.float32)
        for c in np.unique(comp):
            sel = np.nonzero(comp == c)[0]
            z = rng.standard_normal((len(sel), mix["sds"].shape[1]), dtype=np.float32) * mix["sds"][c]
            x[sel] = mix["means"][c] + z @ mix["bases"][c] + \
                rng.standard_normal((len(sel), d), dtype=np.float32) * mix["rest"][c]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ncopy = int(round(dupe_fraction * m))
        if ncopy:
            dst = rng.choice(m, size=ncopy, replace=False)
            src = rng.integers(0, m, size=ncopy)
            keep = dst != src
            dst, src = dst[keep], src[keep]
            # Noise of norm ~t gives distance ~t between unit vectors: t uniform in 0.2-0.55.
            t = rng.uniform(0.2, 0.55, size=(len(dst), 1)).astype(np.float32)
            noise = rng.standard_normal((len(dst), d), dtype=np.float32)
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            y = x[src] + t * noise
            x[dst] = y / np.linalg.norm(y, axis=1, keepdims=True)
            copies_meta.append(start + dst)
        arr[start:start + m] = x
    arr.flush()
    del arr
    np.save(out.with_suffix(".copies.npy"), np.concatenate(copies_meta) if copies_meta else np.zeros(0, np.int64))
    os.replace(out.with_suffix(".tmp.npy"), out)


def exact_topk(db: np.ndarray, queries: np.ndarray, k: int, n: int, block: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k similarities / rows of queries against db[:n], blockwise."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, n, block):
        part = np.asarray(db[s:min(n, s + block)])
        sims = queries @ part.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        cs = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], 1)
        ci = np.concatenate([best_i, top + s], 1)
        keep = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, keep, 1), np.take_along_axis(ci, keep, 1)
    return best_s, best_i


# --- 3. measuring one backend in a fresh process -------------------------------------------------------------

CONFIGS = {
    "exact": ("exact", {}),
    "hnsw": ("hnsw", {"m": 32, "ef_construction": 64, "ef_search": 96}),
    "hnsw-pca256": ("hnsw", {"m": 32, "ef_construction": 64, "ef_search": 96, "pca": 256, "rerank": 4}),
    "ivf": ("ivf", {}),
    "ivf-pca256": ("ivf", {"pca": 256, "rerank": 4}),
    "ivfpq-opq-pca256": ("ivfpq", {"pca": 256, "pq_bytes": 32, "opq": True, "rerank": 10}),
    "auto": ("auto", {}),  # what `lookalike index` builds at this size (`ann.choose`)
}
KNOBS = {"hnsw": ("ef_search", [32, 64, 96, 160]), "ivf": ("nprobe", None), "ivfpq": ("nprobe", None)}
# IVF on a PCA: the lists scanned (nprobe) and the candidates reranked exactly (rerank x k) both bound recall.
IVF_SWEEP = [(16, 20), (24, 20), (32, 10), (32, 20), (48, 20), (64, 20)]


def rss() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def child_build(cache: Path, n: int, name: str) -> dict:
    from lookalike.search.store import ann

    db = np.load(cache / "db.npy", mmap_mode="r")[:n]
    kind, params = CONFIGS[name]
    t0, c0 = time.perf_counter(), time.process_time()
    backend = ann.build(kind, np.arange(n, dtype=np.int64), db, **params,
                        progress=lambda d, total: print(f"build {name}: added {d}/{total} "
                                                        f"{time.perf_counter() - t0:.0f} s", file=sys.stderr))
    build_s = time.perf_counter() - t0
    build_cpu_s = time.process_time() - c0
    path = cache / f"ann-{n}-{name}.ann"
    size = backend.save(path, fingerprint=f"bench-{n}") if kind != "exact" else 0
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
    return {"build_s": build_s, "build_cpu_s": build_cpu_s, "build_peak_rss": rss()["VmHWM"], "load_during": os.getloadavg()[0],
            "file_bytes": size, "params": backend.params()}


def child_serve(cache: Path, n: int, name: str, n_dupe_rows: int, full_dupes: bool = False) -> dict:
    from lookalike.search.store import ann
    from lookalike.search.retrieve.dupes_graph import knn_edges
    from lookalike.search.store.index import advise_random
    from lookalike.search.retrieve.query import distance_to_similarity

    db = np.load(cache / "db.npy", mmap_mode="r")[:n]
    # The rerank reads scattered rows through a second mapping without read-ahead, as IndexSnapshot.lookup does.
    rdb = advise_random(np.load(cache / "db.npy", mmap_mode="r"))[:n]
    gt = np.load(cache / f"gt-{n}.npz", allow_pickle=False)
    queries = np.load(cache / "queries.npy")
    kind, _ = CONFIGS[name]
    ids = np.arange(n, dtype=np.int64)
    base = rss()
    t0 = time.perf_counter()
    if kind == "exact":
        backend = ann.build("exact", ids, db)
    else:
        backend = ann.load(cache / f"ann-{n}-{name}.ann", fingerprint=f"bench-{n}")
    load_s = time.perf_counter() - t0
    lookup = (lambda w: np.asarray(rdb[np.asarray(w)], np.float32)) if backend._approximate() else None
    kind = backend.kind  # "auto" resolved
    knob, values = KNOBS.get(kind, (None, [None]))
    own = {knob: getattr(backend, knob), "rerank": backend.rerank} if knob else {}
    if kind == "ivf" and backend.pca is not None:
        settings = [{"nprobe": p, "rerank": r} for p, r in IVF_SWEEP if p <= backend.nlist]
    else:
        if knob == "nprobe":
            nl = backend.nlist
            values = sorted({max(1, nl // 64), max(1, nl // 32), max(1, nl // 16), max(1, nl // 8)})
        settings = [{knob: v} if knob else {} for v in values]
        if backend.rerank > 1 and knob:  # a wider rerank at the second-largest knob, then a wider search too
            settings.append({knob: values[-2], "rerank": 10 if backend.rerank < 10 else 20})
            settings.append({knob: values[-1] * 2, "rerank": 20 if backend.rerank < 20 else 40})
    if own and own not in settings and {knob: own[knob]} not in settings:
        settings.append(own)  # the setting the backend was built with, last: its state is kept for dupes
    rows = []
    n_single = 30 if kind == "exact" else len(queries)
    for setting in settings:
        for key, v in {**own, **setting}.items():
            setattr(backend, key, v)
        lat, cpu = [], []
        for q in queries[:n_single]:
            t, c = time.perf_counter(), time.process_time()
            backend.search(q[None], 10, lookup=lookup)
            lat.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        if kind == "exact":
            batch_s = float(gt["exact_batch_s"])  # the ground truth pass is exact's batch
            found = gt["top"]
        else:
            t = time.perf_counter()
            _, found = backend.search(queries, 10, lookup=lookup)
            batch_s = time.perf_counter() - t
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, gt["top"])]))
        rows.append({"knob": ", ".join(f"{k}={v}" for k, v in setting.items()), "p50_ms": 1e3 * float(np.percentile(lat, 50)),
                     "p99_ms": 1e3 * float(np.percentile(lat, 99)), "cpu_p50_ms": 1e3 * float(np.percentile(cpu, 50)),
                     "qps": len(queries) / batch_s,
                     "recall10": recall, "default": setting == own or setting == {knob: own.get(knob)}})
    serve_rss = rss()
    for key, v in own.items():  # dupes runs with the backend as built (and its own graph settings)
        setattr(backend, key, v)
    # dupes: the kNN graph (k=10) through the backend, as `lookalike dupes` builds it: of every row (full) or of
    # a sample of rows, timed and scaled to N
    sample = np.load(cache / f"dupes-rows-{n}.npy")
    m = min(len(sample), n_dupe_rows if kind != "exact" else 300)
    rows_t = sample[:m] if not full_dupes else np.arange(n, dtype=np.int64)
    # The sampled rows are read before the clock starts: the full pass reads them block by block, in file order.
    x = db if full_dupes else np.asarray(rdb[rows_t])
    t, c = time.perf_counter(), time.process_time()
    a, b = knn_edges(backend, rows_t, x, k=10,
                     min_similarity=distance_to_similarity(0.6), lookup=lookup,
                     progress=(lambda d, total: print(f"dupes {d}/{total} {time.perf_counter() - t:.0f} s",
                                                      file=sys.stderr, flush=True)) if full_dupes else None)
    dupes_s = (time.perf_counter() - t) * n / len(rows_t)
    dupes_cpu_s = (time.process_time() - c) * n / len(rows_t)
    judged = set(sample[:1000].tolist()) & set(rows_t.tolist())  # rows timed whose exact edges are known
    exact_pairs = {(int(x), int(y)) for x, y in zip(gt["pair_a"], gt["pair_b"]) if int(x) in judged}
    found_pairs = {(int(x), int(y)) for x, y in zip(a, b) if int(x) in judged}
    pair_recall = len(exact_pairs & found_pairs) / len(exact_pairs) if exact_pairs else float("nan")
    return {"load_s": load_s, "rss_before": base, "rss": serve_rss, "rows": rows, "dupes_s_est": dupes_s,
            "dupes_cpu_s": dupes_cpu_s, "dupes_rows_timed": len(rows_t), "dupes_full": full_dupes, "dupe_edges": int(len(a)),
            "dupe_pairs": len(exact_pairs), "dupe_pair_recall": pair_recall,
            "graph_settings": list(backend.graph_settings(11)), "load_during": os.getloadavg()[0],
            "params": backend.params()}


def run_child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"child {args} failed (its messages are above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- 4. the run ------------------------------------------------------------------------------------------------


def prepare(cache: Path, args) -> None:
    train, test = real_vectors(cache, args.cifar, args.per_class_train, args.per_class_test)
    nmax = max(max(args.sizes), args.synth_n or 0)
    dbp = cache / "db.npy"
    tag = {"clusters": args.clusters, "rank": args.rank, "dupes": args.dupe_fraction,
           "train": len(train)}
    tagp = cache / "db.json"
    have = json.loads(tagp.read_text()) if tagp.is_file() else {}
    if not (dbp.is_file() and have.get("n", 0) >= nmax and {k: have.get(k) for k in tag} == tag):
        tag["n"] = nmax
        t = time.perf_counter()
        mix = fit_mixture(train, args.clusters, args.rank)
        synthesise(mix, nmax, args.dupe_fraction, dbp)
        tagp.write_text(json.dumps(tag))
        print(f"synthesised {nmax} vectors in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for f in cache.glob("gt-*.npz"):
            f.unlink()
        for f in cache.glob("ann-*.ann"):
            f.unlink()
    np.save(cache / "queries.npy", test[:args.queries])
    db = np.load(dbp, mmap_mode="r")
    copies = np.load(dbp.with_suffix(".copies.npy"))
    queries = test[:args.queries]
    for n in args.sizes:
        gtp = cache / f"gt-{n}.npz"
        if gtp.is_file():
            continue
        rng = np.random.default_rng(n)
        own = copies[copies < n]
        pick = np.concatenate([rng.choice(own, size=min(len(own), 500), replace=False),
                               rng.choice(n, size=args.dupe_rows, replace=False)])
        pick = np.unique(pick)[rng.permutation(len(np.unique(pick)))]
        np.save(cache / f"dupes-rows-{n}.npy", pick)
        t = time.perf_counter()
        _, top = exact_topk(db, queries, 10, n)
        exact_batch_s = time.perf_counter() - t
        # exact kNN-graph edges (k=10, self left out, distance <= 0.6) of the first 1,000 sampled rows
        prow = pick[:1000]
        sims, nb = exact_topk(db, np.asarray(db[prow]), 11, n)
        pa, pb = [], []
        min_sim = 1 - 0.6 ** 2 / 2
        for r, srow, nrow in zip(prow, sims, nb):
            keep = [(j, s) for j, s in zip(nrow, srow) if j != r][:10]
            for j, s in keep:
                if s >= min_sim:
                    pa.append(r)
                    pb.append(j)
        np.savez(gtp, top=top, exact_batch_s=exact_batch_s, pair_a=np.asarray(pa, np.int64),
                 pair_b=np.asarray(pb, np.int64))
        print(f"ground truth for N={n}: {exact_batch_s:.1f} s for {len(queries)} queries; {len(pa)} exact "
              f"near-duplicate edges among {len(prow)} rows", file=sys.stderr)


# --- 5. quality of compact vectors: holidays-dev mAP -----------------------------------------------------------


def holidays_ap(ranked: list[str], positives: set[str]) -> float:
    """Holidays AP: trapezoid rule over precision at each positive (ranks 0-based, query already removed)."""
    if not positives:
        return 0.0
    ap, hits = 0.0, 0
    for rank, name in enumerate(ranked):
        if name in positives:
            before = hits / rank if rank else 1.0
            hits += 1
            ap += (before + hits / (rank + 1)) / (2 * len(positives))
    return ap


def quality(cache: Path, args) -> None:
    """holidays-dev mAP of exact search on float32, float16, and PCA-256 vectors (fitted on the 405 images
    themselves, as an index fits its own, and on the CIFAR-10 vectors), with and without exact reranking."""
    from lookalike.search.store import ann
    from lookalike.search.store.compact import Pca

    folder = Path(args.holidays)
    gt = json.loads((folder / "groundtruth.json").read_text())
    names = list(gt["database"])
    vpath = cache / "holidays_lite0.npy"
    if vpath.is_file():
        vecs = np.load(vpath)
    else:
        from lookalike.search.describe.features import load_embedder

        vecs, skipped = load_embedder().embed_paths([folder / n for n in names])
        assert not skipped, skipped
        np.save(vpath, vecs)
    ids = np.arange(len(names), dtype=np.int64)
    pos = {n: i for i, n in enumerate(names)}
    train, _ = real_vectors(cache, args.cifar, args.per_class_train, args.per_class_test)
    lookup = ann.vector_lookup(ids, vecs)
    variants = {
        "float32 (exact)": ann.build("exact", ids, vecs),
        "float16": ann.build("exact", ids, vecs, storage="float16"),
        "PCA-256 fitted on the index": ann.build("exact", ids, vecs, pca=Pca.fit(vecs, 256)),
        "PCA-256 fitted on CIFAR-10": ann.build("exact", ids, vecs, pca=Pca.fit(train, 256)),
        "PCA-128 fitted on CIFAR-10": ann.build("exact", ids, vecs, pca=Pca.fit(train, 128)),
    }
    lines = ["# Compact vectors: holidays-dev mAP", "",
             "Command: `python benchmarks/ann_scale.py --stage quality --holidays /tmp/holidays-dev`  ",
             f"Commit: {git_commit()}  ", f"Machine: {machine()}", "",
             "EfficientNet-Lite0, average pooling, 405 images, 150 queries, Holidays protocol (query removed, junk "
             "ignored). PCA rows search the reduced vectors; '+ rerank' orders the top 40 by the full vectors.", "",
             "| vectors | bytes / vector | mAP | + rerank |", "|---|---|---|---|"]
    base_map = None
    for label, backend in variants.items():
        row = [label, str(backend.inner_dim * (2 if backend.storage == "float16" else 4))]
        for use in (None, lookup) if backend.pca is not None else (None,):
            aps = []
            for q in gt["queries"]:
                qi = pos[q["query"]]
                _, found = backend.search(vecs[qi][None], len(names))
                if use is not None:  # the top 40 reordered by their full-vector similarity
                    head = found[0, :40]
                    head = head[np.argsort(-(vecs[head] @ vecs[qi]), kind="stable")]
                    found = np.concatenate([head, found[0, 40:]])[None]
                junk = set(q.get("junk", []))
                ranked = [names[j] for j in found[0] if j >= 0 and j != qi and names[j] not in junk]
                aps.append(holidays_ap(ranked, set(q["positives"])))
            m = float(np.mean(aps))
            base_map = base_map if base_map is not None else m
            row.append(f"{m:.4f} ({m - base_map:+.4f})")
        lines.append("| " + " | ".join(row + ["-"] * (4 - len(row))) + " |")
    out = Path(args.out).with_name("ann_scale.quality.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def graph_recall(cache: Path, args) -> None:
    """Share of the exact near-duplicate edges (the ground truth's 1,000 judged rows) that the kNN-graph pass of
    `dupes` finds through a saved `auto` backend, per graph setting (nprobe, rerank); recall only, no timing
    (CPU seconds are shown for a rough comparison between settings)."""
    from lookalike.search.store import ann
    from lookalike.search.retrieve.dupes_graph import knn_edges
    from lookalike.search.retrieve.query import distance_to_similarity

    n = args.sizes[0]
    db = np.load(cache / "db.npy", mmap_mode="r")[:n]
    gt = np.load(cache / f"gt-{n}.npz", allow_pickle=False)
    rows = np.load(cache / f"dupes-rows-{n}.npy")[:1000]
    backend = ann.load(cache / f"ann-{n}-auto.ann", fingerprint=f"bench-{n}")
    lookup = lambda w: np.asarray(db[np.asarray(w)], np.float32)  # noqa: E731
    exact = {(int(a), int(b)) for a, b in zip(gt["pair_a"], gt["pair_b"])}
    x = np.asarray(db[rows])
    lines = ["# dupes: near-duplicate edges found by the graph pass", "",
             f"Command: `{command_line()}`  ", f"Commit: {git_commit()}  ", f"Machine: {machine()}", "",
             f"N = {n:,}, backend {backend.params()}; {len(exact)} exact near-duplicate edges (k = 10, distance "
             "<= 0.6) of 1,000 sampled rows (half of them injected near-copies). Recall only: CPU seconds are "
             "for the 1,000 rows, taken on shared cores.", "",
             "| graph setting | edges found | CPU s |", "|---|---|---|"]
    settings = [(1, 1), (4, 1), (8, 1), (8, 2), (8, 4), (16, 1), (16, 2), (16, 4), (32, 2), (32, 4)]
    rr, knobs = backend.graph_settings(11)
    saved = knobs.get("nprobe"), rr
    own = backend.graph_settings
    for nprobe, rerank in settings:
        backend.graph_settings = lambda k, p=nprobe, r=rerank: (r, {"nprobe": p})
        c = time.process_time()
        a, b = knn_edges(backend, rows, x, k=10, min_similarity=distance_to_similarity(0.6), lookup=lookup)
        cpu = time.process_time() - c
        found = {(int(p), int(q)) for p, q in zip(a, b)}
        mark = " (default)" if (nprobe, rerank) == saved else ""
        lines.append(f"| nprobe={nprobe}, rerank={rerank}{mark} | {len(found & exact) / len(exact):.3f} | {cpu:.1f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    backend.graph_settings = own
    name = "ann_scale.graph.md" if n == 1_000_000 else f"ann_scale.graph.{n}.md"
    Path(args.out).with_name(name).write_text("\n".join(lines) + "\n")


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.platform()}, Python {platform.python_version()}"


def fmt_bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.0f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", choices=["all", "embed", "prepare", "quality", "report", "graph"])
    ap.add_argument("--holidays", default="/tmp/holidays-dev", help="extracted holidays-dev folder (quality stage)")
    ap.add_argument("--child", choices=["build", "serve"], help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--cifar", default=None)
    ap.add_argument("--per-class-train", type=int, default=1500)
    ap.add_argument("--per-class-test", type=int, default=100)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--backends", default="exact,hnsw,hnsw-pca256,ivf,ivfpq-opq-pca256",
                    help=f"configurations, of {', '.join(CONFIGS)}; per size with @N, e.g. hnsw@100000")
    ap.add_argument("--reuse", action="store_true", help="keep the build of earlier runs, re-measure serving")
    ap.add_argument("--synth-n", type=int, default=0, help="vectors to synthesise [default: the largest size]")
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--rank", type=int, default=24)
    ap.add_argument("--dupe-fraction", type=float, default=0.02)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dupe-rows", type=int, default=4000, help="rows timed for the dupes estimate")
    ap.add_argument("--dupes-full", action="store_true", help="time the kNN graph of every row, not a sample")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ann_scale.md"))
    args = ap.parse_args()
    cache = Path(args.cache) if args.cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        res = child_build(cache, args.n, args.name) if args.child == "build" else \
            child_serve(cache, args.n, args.name, args.dupe_rows, args.dupes_full)
        print(json.dumps(res))
        return
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.stage == "embed":
        real_vectors(cache, args.cifar, args.per_class_train, args.per_class_test)
        return
    if args.stage == "graph":
        graph_recall(cache, args)
        return
    if args.stage == "quality":
        quality(cache, args)
        return
    store = Path(args.out).with_suffix(".json")
    results = json.loads(store.read_text()) if store.is_file() else []
    if args.stage == "report":  # rewrite the results file from the stored rows
        write_report(args, results)
        return
    prepare(cache, args)
    if args.stage == "prepare":
        return
    for n in args.sizes:
        for spec in args.backends.split(","):
            name, _, only = spec.partition("@")
            if only and int(only) != n:
                continue
            old = [r["build"] for r in results if (r["n"], r["name"]) == (n, name)]
            kept = cache / f"ann-{n}-{name}.build.json"  # the build's figures, beside its file
            if not old and kept.is_file():
                old = [json.loads(kept.read_text())]
            if args.reuse and old and (name == "exact" or (cache / f"ann-{n}-{name}.ann").is_file()):
                build = old[0]  # the saved structure of an earlier run: measure serving again only
            else:
                build = run_child(["--child", "build", "--n", str(n), "--name", name, "--cache", str(cache)])
                kept.write_text(json.dumps(build))
            serve = run_child(["--child", "serve", "--n", str(n), "--name", name, "--cache", str(cache),
                               "--dupe-rows", str(args.dupe_rows)] + (["--dupes-full"] if args.dupes_full else []))
            results = [r for r in results if (r["n"], r["name"]) != (n, name)]
            results.append({"n": n, "name": name, "build": build, "serve": serve, "commit": git_commit(),
                            "load": os.getloadavg()[0], "command": command_line()})
            results.sort(key=lambda r: (r["n"], list(CONFIGS).index(r["name"])))
            print(json.dumps([r for r in results if (r["n"], r["name"]) == (n, name)][0]), file=sys.stderr)
            store.write_text(json.dumps(results, indent=1))
            write_report(args, results)
    write_report(args, results)


def command_line() -> str:
    home = os.environ.get("LOOKALIKE_HOME")
    return (f"LOOKALIKE_HOME={home} " if home else "") + "python benchmarks/ann_scale.py " + " ".join(sys.argv[1:])


def git_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def write_report(args, results: list[dict]) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from lookalike.search.store.ann import choose

    commit = ", ".join(sorted({r.get("commit", "?") for r in results})) or git_commit()
    commands = list(dict.fromkeys(r.get("command", "?") for r in results))
    lines = ["# Search backends at scale", "",
             "Written by `benchmarks/ann_scale.py`; rows are kept in ann_scale.json and merged by size and "
             "backend, so runs add up. Commands, in the order their rows were last measured:", ""]
    lines += [f"- `{c}`" for c in commands]
    lines += ["", f"Commit(s) measured: {commit}  ",
              f"Machine: {machine()}; FAISS threads = free cores; other people's jobs shared the cores (load avg column).",
              "", "Database: synthetic vectors from a mixture of probabilistic PCAs fitted to "
              f"{args.per_class_train * 10} real EfficientNet-Lite0 CIFAR-10 vectors ({args.clusters} clusters, rank "
              f"{args.rank}), {args.dupe_fraction:.0%} near-copies; queries: {args.queries} held-out real CIFAR-10 "
              "test vectors. Recall@10 against the exact top-10. `*`: the search setting the backend was built "
              "with (what `index` stores for that backend).", "",
              "| N | backend | search knob | build | build peak RSS | file | serving RSS (anon) | p50 | p99 | "
              "CPU p50 | batch q/s | recall@10 | dupes | dupe pairs found | load avg (build / serve) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b, s = r["build"], r["serve"]
        for i, row in enumerate(s["rows"]):
            first = i == 0
            dupes = f"{s['dupes_s_est'] / 60:.1f} min" + ("" if s.get("dupes_full") else " (est.)") + \
                (f" (CPU {s['dupes_cpu_s'] / 60:.1f} min)" if "dupes_cpu_s" in s else "")
            load = f"{b['load_during']:.1f} / " if "load_during" in b else ""
            load += f"{s['load_during']:.1f}" if "load_during" in s else (f"{r['load']:.1f}" if "load" in r else "?")
            lines.append("| " + " | ".join([
                f"{r['n']:,}", r["name"] if first else "", (row["knob"] or "-") + (" *" if row.get("default") else ""),
                (f"{b['build_s']:.0f} s" + (f" (CPU {b['build_cpu_s']:.0f} s)" if "build_cpu_s" in b else "")) if first else "", (fmt_bytes(b["build_peak_rss"]) if b.get("build_peak_rss") else "n/m") if first else "",
                fmt_bytes(b["file_bytes"]) if first and b["file_bytes"] else ("-" if first else ""),
                f"{fmt_bytes(s['rss']['VmRSS'])} ({fmt_bytes(s['rss']['RssAnon'])})" if first else "",
                f"{row['p50_ms']:.2f} ms", f"{row['p99_ms']:.2f} ms",
                f"{row['cpu_p50_ms']:.2f} ms" if "cpu_p50_ms" in row else "n/m", f"{row['qps']:.0f}", f"{row['recall10']:.3f}",
                dupes if first else "",
                (f"{s['dupe_pair_recall']:.3f} of {s['dupe_pairs']}" if first else ""),
                load if first else ""]) + " |")
    lines += ["", "## Against the targets (N >= 1M)", ""]
    for r in results:
        if r["n"] < 1_000_000:
            continue
        b, s = r["build"], r["serve"]
        ok = [row for row in s["rows"] if row["recall10"] >= 0.95]
        best = min(ok, key=lambda row: row["p50_ms"]) if ok else max(s["rows"], key=lambda row: row["recall10"])
        verdict = "met" if ok and best["p50_ms"] <= 5 else "missed"
        lines.append(
            f"- {r['n']:,} `{r['name']}` ({s['params']['backend']}): query p50 {best['p50_ms']:.2f} ms / p99 "
            f"{best['p99_ms']:.2f} ms at recall@10 {best['recall10']:.3f} ({best['knob']}; target p50 <= 5 ms at "
            f">= 0.95: {verdict}); build {b['build_s'] / 60:.1f} min (target 10: {'met' if b['build_s'] <= 600 else 'missed'}); "
            f"serving RAM {fmt_bytes(s['rss']['RssAnon'])} of its own (target 3 GB: "
            f"{'met' if s['rss']['RssAnon'] <= 3 * 2**30 else 'missed'}); dupes {s['dupes_s_est'] / 60:.1f} min"
            f"{'' if s.get('dupes_full') else ' (estimated from a sample)'} finding {s['dupe_pair_recall']:.3f} of "
            f"{s['dupe_pairs']} exact near-duplicate pairs (target 15 min at >= 0.95: "
            f"{'met' if s['dupes_s_est'] <= 900 and s['dupe_pair_recall'] >= 0.95 else 'missed'}).")
    lines += ["", "Notes:",
              "- p50/p99: wall time of one query per call (1,000 calls; exact: 30); CPU p50: the CPU time of "
              "those calls (all threads), what a query costs when the cores are not shared (n/m: not measured "
              "then); batch: all queries in one call (exact: the ground-truth pass). Approximate backends with `rerank` reorder their candidates by the exact "
              "distance, reading those rows from the memory-mapped vector file (rows measured from commit "
              "8fc5c6e on: through a mapping advised MADV_RANDOM, no read-ahead, as `IndexSnapshot.lookup` "
              "reads them).",
              "- dupes: the kNN graph (k = 10) through the backend with its graph settings "
              "(`Backend.graph_settings`, what `lookalike dupes` runs), timed over every row, or (est.) over a sample "
              "of rows and scaled to N (the graph costs the same per row); pairs found: share of the exact "
              "graph's near-duplicate edges (distance <= 0.6) of up to 1,000 sampled rows (half of them injected "
              "near-copies) that the backend's graph holds. Rows measured before graph settings existed ran the "
              "graph with the query settings.",
              "- build peak RSS includes the pages of the memory-mapped input read during the build; serving RSS "
              "is a fresh process after loading the file and answering every query (anon: its own memory, "
              "without file pages).",
              "- load avg: the 1-minute load average of the 2 cores at the end of the build and of the serving "
              "pass (older rows: when the row finished); other people's jobs shared them, so timings taken at "
              "load > 2 are slower than the machine alone would give, and single-query latencies vary between "
              "neighbouring rows.", "",
              "`auto` (`lookalike.search.store.ann.choose`, 3 GB budget): " + ", ".join(
                  f"N={n:,} -> {choose(n, 1280)[0]} {choose(n, 1280)[1]}" for n in
                  (10_000, 50_000, 100_000, 500_000, 1_000_000, 3_000_000, 10_000_000, 100_000_000))]
    extra = Path(args.out).with_name("ann_scale.notes.md")
    if extra.is_file():  # prose that needs judgement (extrapolations), kept beside the generated table
        lines += ["", extra.read_text().strip()]
    Path(args.out).write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
