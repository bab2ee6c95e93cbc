"""Verified search speed, side by side with another commit: index a folder of 12 MP JPEGs with the default
settings, then search from photos outside the index (1600x1200 crops of the indexed ones) with the first 20
results verified, each query in a fresh verifier (none of the shortlisted images' local features in the process
yet), after the model is loaded.

    python benchmarks/search_speed.py --n 120 --queries 10 --against HEAD~1 [--grain 10]

The photos are sample photos enlarged to 4000x3000. Enlarged alone they are smooth, so their JPEGs are small
(~1 MB) and decode in ~12 ms, where a phone's 12 MP photo is 4-5 MB and takes 60-80 ms: indexing, which decodes
every file, then looks far cheaper than it is. `--grain` adds sensor-like noise of that standard deviation to the
brightness, which brings the files to ~4.5 MB and ~50 ms a decode (0: the smooth files).

`--against` checks the commit out with `git worktree` under /tmp and runs the same measurement with its code in the
same run, alternating, so both see the same machine load. Appends a section to results/search_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def make_photos(folder: Path, queries: Path, n: int, n_queries: int, grain: float = 0.0) -> None:
    """n JPEGs of 4000x3000 from the bundled sample photos (each a different crop, tint and turn, with `grain`),
    and `n_queries` 1600x1200 crops of some of them, saved outside the indexed folder."""
    import numpy as np
    from PIL import Image

    from lookalike.search.sample_photos import load_photo

    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "clock", "coins", "grass", "gravel",
             "immunohistochemistry", "retina", "hubble_deep_field", "colorwheel", "moon", "page", "text", "logo"]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    queries.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = load_photo(names[i % len(names)], 512).convert("RGB")
        w, h = base.size
        box = rng.uniform(0, 0.25, 2)
        crop = base.crop((int(box[0] * w), int(box[1] * h), w, h)).rotate(float(rng.uniform(-8, 8)))
        tint = Image.new("RGB", crop.size, tuple(int(x) for x in rng.integers(0, 255, 3)))
        big = Image.blend(crop, tint, 0.15).resize((4000, 3000), Image.Resampling.BICUBIC)
        if grain > 0:
            noise = rng.normal(0, grain, (3000, 4000, 1)).astype(np.float32)
            big = Image.fromarray(np.clip(np.asarray(big, np.float32) + noise, 0, 255).astype(np.uint8))
        big.save(folder / f"p{i:04d}.jpg", quality=90)
        if i < n_queries:
            x, y = int(rng.integers(0, 2400)), int(rng.integers(0, 1800))
            big.crop((x, y, x + 1600, y + 1200)).save(queries / f"q{i:04d}.jpg", quality=90)


def worker(photos: Path, index: Path, queries: Path) -> dict:
    """Index `photos` into `index` (timed), then time each verified query from a fresh verifier."""
    from lookalike.search.describe.features import embedder_for_index
    from lookalike.search.indexing.sync import index_folder
    from lookalike.search.retrieve.query import Query, run_queries
    from lookalike.search.retrieve.verify import Verifier
    from lookalike.search.store.index import ImageIndex

    t = time.perf_counter()
    summary = index_folder(photos, index)
    index_s = time.perf_counter() - t
    with ImageIndex.open(index) as ix:
        emb = embedder_for_index(ix)
        emb.embed_images([__import__("PIL.Image").Image.new("RGB", (64, 64))])  # warm the runtime
        times, right = [], 0
        for q in sorted(queries.iterdir()):
            verifier = Verifier()
            t = time.perf_counter()
            hits = run_queries(ix, [Query(q.name, path=q)], 10, lambda: emb, verifier=verifier)[0].results
            times.append((time.perf_counter() - t) * 1000)
            # q0003.jpg is a crop of p0003.jpg: its source should come first, verified.
            first = hits[0] if hits else None
            right += (first is not None and Path(str(first.path)).stem == "p" + q.stem[1:]
                      and (getattr(first, "inliers", 0) or 0) >= 8)
    db_mb = sum(f.stat().st_size for f in index.iterdir() if f.name.startswith("index.db")) / 1e6
    return {"images": summary["indexed"], "index_s": index_s, "ms": times, "db_mb": db_mb, "right": right}


def run_side(src: Path, photos: Path, index: Path, queries: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--worker", str(photos), str(index), str(queries)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--against", default="HEAD~1")
    ap.add_argument("--grain", type=float, default=0.0, help="sensor-like noise, standard deviation (0: smooth)")
    ap.add_argument("--worker", nargs=3)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*map(Path, args.worker))))
        return
    work = Path(tempfile.mkdtemp(prefix="search_speed-"))
    photos, queries = work / "photos", work / "queries"
    make_photos(photos, queries, args.n, args.queries, args.grain)
    old_tree = work / "old"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), args.against],
                   check=True, capture_output=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    old_commit = subprocess.run(["git", "-C", str(old_tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    load = [os.getloadavg()[0]]
    try:
        old = run_side(old_tree / "src", photos, work / "ix-old", queries)
        new = run_side(REPO / "src", photos, work / "ix-new", queries)
        load.append(os.getloadavg()[0])
        args.photos = photos
        write_results(args, commit, old_commit, old, new, load)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)  # 12 MP photos: hundreds of MB


def write_results(args, commit: str, old_commit: str, old: dict, new: dict, load: list) -> None:
    sys.path.insert(0, str(HERE))
    from results_file import record  # noqa: E402

    def row(name: str, r: dict) -> str:
        p50 = statistics.median(r["ms"])
        return (f"| {name} | {r['images'] / r['index_s']:.1f} | {r['db_mb'] / max(1, r['images']) * 1000:.0f} | "
                f"{p50:.0f} | {max(r['ms']):.0f} | {r.get('right', '?')}/{len(r['ms'])} |")

    mb = sum(f.stat().st_size for f in args.photos.iterdir()) / max(1, args.n) / 1e6
    lines = [f"{args.n} photos of 4000x3000 px indexed with the default settings (grain {args.grain:g}: JPEGs of "
             f"{mb:.1f} MB on average); {args.queries} searches from 1600x1200 crops of them (files outside the "
             "index), the first 20 results verified, each from a fresh verifier (no local features in the process), "
             "model loaded.", "",
             "| Code | index images/s | index.db kB / image | verified search p50, ms | slowest, ms | source first, verified |",
             "|---|---|---|---|---|---|", row(f"{old_commit} (before)", old), row(f"{commit}", new), "",
             f"Ratios new/old: indexing rate {new['images'] / new['index_s'] / (old['images'] / old['index_s']):.2f}x, "
             f"search p50 {statistics.median(new['ms']) / statistics.median(old['ms']):.2f}x.",
             f"Load average (1 min) at the start and the end: {', '.join(f'{x:.1f}' for x in load)} (2 cores)."]
    print("\n".join(lines))
    record("search_speed", lines)


if __name__ == "__main__":
    main()
