"""By-id search through `lookalike serve` on a large index of imported vectors: HTTP against the engine alone.

    python benchmarks/serve_by_id.py [--n 1000000] [--dim 1600] [--index /tmp/lookalike-bench/serve-by-id]

1. An index of N random unit vectors of the default backbone's width (1600), written through the writer API as
   imported rows (no image files), then its ANN structure built as `lookalike index` would (`auto`: IVF at 1M).
   Built once and reused while its manifest holds N rows. Random vectors make the IVF's recall meaningless, but
   not its cost per query, which is what is timed here.
2. `lookalike serve --index IDX --port 0` in a fresh process; one plain client (`http.client`, one keep-alive
   connection) sends `GET /api/search?id=...&k=K` for `--requests` random ids after `--warmup` others.
3. The same ids in this process: `SearchService.search_id` (everything but HTTP and JSON) and the ANN backend's
   own query of the stored vector.

Reports p50/p99 of each in benchmarks/results/serve_by_id.md, with the load average before and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ann_scale import fmt_bytes  # noqa: E402  (the 1M benchmark's helpers)
from results_file import record  # noqa: E402


def build_index(ix: Path, n: int, dim: int, batch: int = 50_000) -> dict:
    """The index at `ix` with `n` imported random unit vectors and its ANN built; reused when already there."""
    from lookalike.search.describe.features import load_embedder
    from lookalike.search.store.index import ImageIndex, IndexWriter

    manifest = ix / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("count") == n:
        with IndexWriter.take(ix) as w:
            w.reopen()
            return {"built": "reused", **w.update_ann()}
    backbone = load_embedder().describe()
    if backbone["dim"] != dim:
        backbone = {**backbone, "dim": dim}  # a narrower index when the disk cannot hold 1600-d rows
    rng = np.random.default_rng(0)
    ix.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ImageIndex.create(ix, root=ix.parent, backbone=backbone, ann="auto", replace=True) as w:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            vecs = rng.standard_normal((m, dim), dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            rows = w.append_vectors(vecs)
            w.commit(inserts=[(f"/imported/{start + j:07d}.jpg", 0, 0, "", r) for j, r in enumerate(rows)],
                     imported=True)
        w.touch_manifest(count=n)
        t1 = time.perf_counter()
        params = w.update_ann("auto")
    return {"built": f"rows {t1 - t0:.0f} s, ANN {time.perf_counter() - t1:.0f} s", **params}


def percentiles(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return statistics.median(ms), q[98]


def time_http(url_port: int, ids: list[int], warmup: int, k: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=60)
    out = []
    for i, image_id in enumerate(ids):
        t = time.perf_counter()
        conn.request("GET", f"/api/search?id={image_id}&k={k}")
        resp = conn.getresponse()
        body = resp.read()
        dt = (time.perf_counter() - t) * 1e3
        if resp.status != 200:
            raise SystemExit(f"GET /api/search?id={image_id}: {resp.status} {body[:200]!r}")
        if i >= warmup:
            out.append(dt)
    conn.close()
    return out


def time_engine(ix: Path, ids: list[int], warmup: int, k: int,
                verify: bool = True) -> tuple[list[float], list[float]]:
    """(SearchService.search_id, the ANN backend on the stored vector) in ms, per id; `verify`: with the
    verifier `serve` re-ranks with by default."""
    from lookalike.search.retrieve.verify import DEFAULT_SHORTLIST, Verifier
    from lookalike.web.service import SearchService

    svc = SearchService(ix, embedder=_NoEmbedder(ix), verifier=Verifier(DEFAULT_SHORTLIST) if verify else None)
    service, backend = [], []
    try:
        view = svc.view()
        for i, image_id in enumerate(ids):
            t = time.perf_counter()
            svc.search_id(image_id, k)
            dt = (time.perf_counter() - t) * 1e3
            vec = view.index.vector_of(image_id)[None, :].astype(np.float32)
            t = time.perf_counter()
            view.backend.search(vec, k + 1)
            db = (time.perf_counter() - t) * 1e3
            if i >= warmup:
                service.append(dt)
                backend.append(db)
    finally:
        svc.close()
    return service, backend


class _NoEmbedder:
    """By-id searches never embed: this stands in for the backbone, with its width."""

    def __init__(self, ix: Path) -> None:
        self.dim = json.loads((ix / "manifest.json").read_text())["dim"]

    def embed_images(self, images):  # pragma: no cover - never called by by-id searches
        raise RuntimeError("by-id searches do not embed")


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1600)
    ap.add_argument("--index", default="/tmp/lookalike-bench/serve-by-id")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    from helpers.cli import ServeProcess

    ix = Path(args.index)
    t = time.perf_counter()
    built = build_index(ix, args.n, args.dim)
    print(f"index ready in {time.perf_counter() - t:.0f} s: {built}", flush=True)
    rng = np.random.default_rng(1)
    ids = [int(i) for i in rng.integers(1, args.n + 1, args.warmup + args.requests)]
    load_before = loadavg()
    env = {**os.environ, "LOOKALIKE_HOME": str(ix.parent / "home")}
    with ServeProcess(["--index", ix, "--host", "127.0.0.1"], env, timeout=600) as server:
        http_ms = time_http(server.port, ids, args.warmup, args.k)
    service_ms, backend_ms = time_engine(ix, ids, args.warmup, args.k)
    plain_ms, _ = time_engine(ix, ids, args.warmup, args.k, verify=False)
    load_after = loadavg()
    rows = [("GET /api/search?id= over HTTP (one keep-alive connection)", http_ms),
            ("SearchService.search_id in-process, serve's default verifier", service_ms),
            ("SearchService.search_id in-process, no verifier", plain_ms),
            ("ANN backend query of the stored vector", backend_ms)]
    lines = [f"N={args.n:,} imported random unit vectors, dim {args.dim}, k={args.k}; "
             f"{args.requests} requests after {args.warmup} warm-up; ANN: {built}. "
             f"Vector file {fmt_bytes(args.n * args.dim * 4)}. Load average before {load_before}, "
             f"after {load_after}." + (f" {args.note}" if args.note else ""), "",
             "| path | p50 ms | p99 ms |", "|---|---|---|"]
    for name, ms in rows:
        p50, p99 = percentiles(ms)
        lines.append(f"| {name} | {p50:.2f} | {p99:.2f} |")
        print(f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    record("serve_by_id", lines)


if __name__ == "__main__":
    main()
