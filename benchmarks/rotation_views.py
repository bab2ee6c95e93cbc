"""Rotation robustness measured: does searching with a query's sideways views find sideways photos?

    tar xzf ../shared/datasets/holidays-dev.tar.gz -C /tmp
    python benchmarks/rotation_views.py --bench /tmp/holidays-dev

Holidays has photos shot sideways with no EXIF orientation to undo it. Each query is embedded upright and turned
90 degrees each way (the database stays upright, as `lookalike index` stores it) and ranked three ways: upright
only; the best of the three views for every database image (a max over views); or one view per query, a turned
one only where its best match beats the upright view's best match by a margin. With and without the PCA-whitening
fitted on the upright database vectors (`lookalike index --whiten`). The cost: embedding time of the three views
against the upright one, side by side. Appends to benchmarks/results/rotation_views.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

ANGLES = (0, 90, 270)
MARGINS = (0.0, 0.05, 0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, default=Path("/tmp/holidays-dev"))
    args = ap.parse_args()

    import numpy as np

    import results_file
    from lookalike.images import load_image
    from lookalike.search.evaluation.evaluate import Descriptors, evaluate_groundtruth, load_benchmark
    from lookalike.search.describe.features import load_embedder
    from lookalike.search.describe.whitening import fit_whitening, power_for

    bench = load_benchmark(args.bench)
    if bench.kind != "groundtruth":
        raise SystemExit(f"{args.bench}: needs a groundtruth.json benchmark")
    emb = load_embedder()
    images = [load_image(bench.root / rel) for rel in bench.database]
    views, seconds = {}, {}
    for angle in ANGLES:
        turned = [im.rotate(angle, expand=True) if angle else im for im in images]
        start = time.perf_counter()
        views[angle] = np.concatenate([emb.embed_images(turned[i:i + 32]) for i in range(0, len(turned), 32)])
        seconds[angle] = time.perf_counter() - start

    pos = {rel: n for n, rel in enumerate(bench.database)}
    keep = [i for i, q in enumerate(bench.queries) if q["query"] in pos]
    q_rows = np.asarray([pos[bench.queries[i]["query"]] for i in keep])
    db_rows = np.arange(len(bench.database))

    def mean_ap(database, queries) -> float:
        return evaluate_groundtruth(bench, Descriptors(database, queries), q_rows, db_rows, keep)["figures"]["mAP"]

    rows = []
    for whitened in (False, True):
        if whitened:
            whitening = fit_whitening(views[0], power=power_for(emb.pooling))
            space = {a: whitening(v) for a, v in views.items()}
        else:
            space = views
        database = space[0]
        queries = np.stack([space[a][q_rows] for a in ANGLES], axis=1)  # (Q, 3, D)
        row = {"whitened": whitened, "upright": mean_ap(database, queries[:, :1]),
               "max over views": mean_ap(database, queries)}
        sims = np.einsum("qvd,nd->qvn", queries, database)
        sims[np.arange(len(q_rows)), :, q_rows] = -np.inf  # a query's own image is not its best match
        best = sims.max(axis=2)
        turned_wins = []
        for margin in MARGINS:
            pick = np.where(best[:, 1:].max(axis=1) > best[:, 0] + margin, 1 + best[:, 1:].argmax(axis=1), 0)
            row[f"choice, margin {margin:g}"] = mean_ap(database, queries[np.arange(len(q_rows)), pick][:, None])
            turned_wins.append(int(np.count_nonzero(pick)))
        row["turned queries"] = turned_wins
        rows.append(row)

    methods = ["upright", "max over views"] + [f"choice, margin {m:g}" for m in MARGINS]
    lines = [f"Rotated query views on {args.bench.name} ({len(keep)} queries, {len(bench.database)} photos), "
             f"default descriptor ({emb.model}, {emb.pooling} pooling, borders trimmed). mAP by how the three "
             "views of each query (upright, turned 90 degrees each way) are used; the database stays upright. "
             "\"choice, margin m\": one view per query, a turned one where its best match beats the upright "
             "view's by more than m in cosine similarity (queries turned, for each margin: "
             + "; ".join(f"{'whitened' if r['whitened'] else 'raw'} {r['turned queries']}" for r in rows) + ").", "",
             "| descriptor | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for r in rows:
        lines.append(f"| {'+ whitening' if r['whitened'] else 'raw'} | "
                     + " | ".join(f"{r[m]:.4f}" for m in methods) + " |")
    lines += ["", f"Cost: embedding the {len(images)} photos took {seconds[0]:.1f} s upright and "
              f"{sum(seconds.values()):.1f} s for the three views ({sum(seconds.values()) / seconds[0]:.2f}x), "
              "decoding excluded."]
    results_file.record("rotation_views", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
