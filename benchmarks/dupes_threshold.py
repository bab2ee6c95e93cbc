"""The near-duplicate threshold, measured: distances of same-photo pairs against different-photo pairs, and the
pairwise precision and recall of `dupes` (kNN graph + connected components) at a threshold.

Two sets: the `lookalike demo` gallery (each photo and its five edited copies: true near-duplicates) and
holidays-dev (each group is one scene shot several times: same place, not the same photo).

    python benchmarks/dupes_threshold.py --bench /tmp/holidays-dev [--thresholds 0.5,0.6,0.7,0.8]

Writes benchmarks/results/dupes_threshold.md and .json (figures, the command, the commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _pairs(vectors: np.ndarray, groups: list[str], thresholds: list[float]) -> dict:
    from lookalike.search.retrieve.query import compare, group_vectors

    dist, _ = compare(vectors)
    g = np.asarray(groups)
    same = g[:, None] == g[None, :]
    upper = np.triu(np.ones_like(same), 1)
    pos, neg = dist[same & upper], dist[~same & upper]
    out = {"same_pairs": int(len(pos)), "different_pairs": int(len(neg)),
           "same_distance": {q: float(np.quantile(pos, p)) for q, p in (("min", 0), ("median", .5), ("p90", .9),
                                                                           ("max", 1))},
           "different_distance": {q: float(np.quantile(neg, p)) for q, p in (("min", 0), ("p1", .01),
                                                                             ("median", .5))},
           "at": {}}
    for t in thresholds:
        label = np.full(len(g), -1)
        for n, members in enumerate(group_vectors(vectors, t)):
            label[members] = n
        together = (label[:, None] == label[None, :]) & (label[:, None] >= 0)
        tp = int((together & same & upper).sum())
        predicted = int((together & upper).sum())
        out["at"][str(t)] = {"precision": tp / predicted if predicted else float("nan"),
                             "recall": tp / len(pos) if len(pos) else float("nan"), "pairs_grouped": predicted}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, default=Path("/tmp/holidays-dev"))
    ap.add_argument("--thresholds", default="0.4,0.5,0.55,0.6,0.7,0.8")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dupes_threshold")
    args = ap.parse_args()
    thresholds = [float(x) for x in args.thresholds.split(",")]

    from lookalike.search.sample_photos import build_gallery, photo_of
    from lookalike.search.evaluation.evaluate import load_benchmark
    from lookalike.search.describe.features import load_embedder
    from lookalike.search.store.index import ImageIndex
    from lookalike.search.retrieve.query import dupe_threshold
    from lookalike.search.indexing.sync import index_folder

    from lookalike.search.store.index import describe_backbone

    # The default descriptor, and the head alone (the default before the two-layer one), side by side.
    embedders = [load_embedder(), load_embedder(inputs={"layers": "head"})]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery"
        build_gallery(gallery)
        bench = load_benchmark(args.bench)
        for n, emb in enumerate(embedders):
            name = describe_backbone(emb.describe())
            results[name] = {"default_threshold": dupe_threshold(emb.describe())}
            index_folder(gallery, Path(tmp) / f"index-{n}", embedder=emb)
            with ImageIndex.open(Path(tmp) / f"index-{n}") as ix:
                groups = [photo_of(ix.path_of(int(i))) for i in ix.ids()]
                results[name]["demo"] = _pairs(np.asarray(ix.vectors()), groups, thresholds)
            # An index made in this run: eval-search's cached one may hold vectors made by earlier code.
            path = index_folder(bench.root, Path(tmp) / f"bench-index-{n}", embedder=emb)["index_path"]
            with ImageIndex.open(path) as ix:
                groups = [Path(ix.path_of(int(i))).name[:4] for i in ix.ids()]  # Holidays: the first four digits
                results[name]["holidays-dev"] = _pairs(np.asarray(ix.vectors()), groups, thresholds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    command = "python benchmarks/dupes_threshold.py " + " ".join(sys.argv[1:])
    lines = ["# Near-duplicate threshold", "", f"Command: `{command}`  ", f"Commit: {commit}", "",
             "| Descriptor (its default threshold) | Set | same-photo pairs: median / p90 / max distance | "
             "different: min / 1st pct / median |" + "".join(f" P / R at {t} |" for t in thresholds),
             "|---|---|---|---|" + "---|" * len(thresholds)]
    for desc, sets in results.items():
        for name, r in sets.items():
            if name == "default_threshold":
                continue
            s, d = r["same_distance"], r["different_distance"]
            lines.append(f"| {desc} ({sets['default_threshold']}) | {name} ({r['same_pairs']} / "
                         f"{r['different_pairs']} pairs) | {s['median']:.3f} / {s['p90']:.3f} / {s['max']:.3f} | "
                         f"{d['min']:.3f} / {d['p1']:.3f} / {d['median']:.3f} |"
                         + "".join(f" {r['at'][str(t)]['precision']:.3f} / {r['at'][str(t)]['recall']:.3f} |"
                                   for t in thresholds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "commit": commit, **results},
                                                        indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
