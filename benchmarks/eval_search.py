"""Retrieval quality of descriptor variants side by side: holidays-dev mAP and P@1 (`lookalike eval-search`),
`lookalike demo` precision@1, and indexing time per image against the default descriptor.

    tar xzf ../shared/datasets/holidays-dev.tar.gz -C /tmp
    python benchmarks/eval_search.py --bench /tmp/holidays-dev [--whiten-on DIR] [--only NAME,...]

Writes benchmarks/results/eval_search.md and .json (figures, the command, the commit). Each descriptor indexes
the benchmark once into a fresh index (timed, model load excluded); whitening, QE and DBA reuse that index.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# name -> (descriptor options, evaluation options)
VARIANTS = {
    "default (224 centre crop, avg)": ({}, {}),
    "whole 320, GeM p=3": ({"size": 320, "pooling": "gem"}, {}),
    "whole 416, GeM p=2": ({"size": 416, "pooling": "gem:2"}, {}),
    "whole 416, R-MAC": ({"size": 416, "pooling": "rmac"}, {}),
    "default + whitening": ({}, {"whiten": "index"}),
    "whole 320, GeM p=3 + whitening": ({"size": 320, "pooling": "gem"}, {"whiten": "index"}),
    "whole 416, GeM p=2 + whitening": ({"size": 416, "pooling": "gem:2"}, {"whiten": "index"}),
    "whole 416, GeM p=2 + whitening + QE 1 + DBA 1": ({"size": 416, "pooling": "gem:2"},
                                                     {"whiten": "index", "qe": 1, "dba": 1}),
    "--quality high (416 and 520, R-MAC, whitening)": ({"size": 416, "scales": [1.0, 1.25], "pooling": "rmac"},
                                                        {"whiten": "index"}),
}


def _embedder(opts: dict):
    from lookalike.search.features import input_options, load_embedder

    inputs = input_options(opts.get("size"), opts.get("scales")) or None
    return load_embedder(pooling=opts.get("pooling", "avg"), inputs=inputs)


def _time_indexing(embedder, folder: Path) -> float:
    from lookalike.search.sync import index_folder

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = index_folder(folder, Path(tmp) / "index", embedder=embedder)
        return (time.perf_counter() - start) / max(1, summary["indexed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, default=Path("/tmp/holidays-dev"))
    ap.add_argument("--whiten-on", type=Path, help="also fit the whitening on this folder (a set apart from the benchmark)")
    ap.add_argument("--only", help="comma-separated variant names (prefixes) to run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_search")
    args = ap.parse_args()

    from lookalike.search.demo import run_demo
    from lookalike.search.evaluate import run_eval

    variants = dict(VARIANTS)
    if args.whiten_on:
        for name in list(variants):
            d, e = variants[name]
            if e.get("whiten"):
                variants[f"{name}, fitted on {args.whiten_on.name}"] = (d, {**e, "whiten": str(args.whiten_on)})
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        variants = {k: v for k, v in variants.items() if any(k.startswith(s) for s in keep)}
    rows, cache = [], {}
    for name, (dopts, eopts) in variants.items():
        key = json.dumps(dopts, sort_keys=True)
        if key not in cache:
            emb = _embedder(dopts)
            with tempfile.TemporaryDirectory() as tmp:
                demo = run_demo(Path(tmp), embedder=emb, write_report=False)
            cache[key] = {"embedder": emb, "seconds_per_image": _time_indexing(emb, args.bench),
                          "demo_p1": demo["precision_at_1"]}
        c = cache[key]
        res = run_eval(args.bench, embedder=c["embedder"], worst=0, **eopts)
        f = res["figures"]
        rows.append({"variant": name, "mAP": f["mAP"], "P@1": f["P@1"], "P@5": f["P@5"],
                     "demo_p1": c["demo_p1"], "seconds_per_image": c["seconds_per_image"]})
        print(f"{name}: mAP {f['mAP']:.4f} P@1 {f['P@1']:.4f} demo P@1 {c['demo_p1']:.3f} "
              f"{c['seconds_per_image'] * 1000:.1f} ms/image", flush=True)
    base = rows[0]["seconds_per_image"] if rows and rows[0]["variant"].startswith("default (") else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    command = "python benchmarks/eval_search.py " + " ".join(sys.argv[1:])
    lines = [f"# Retrieval quality of descriptor variants ({args.bench.name})", "",
             f"Command: `{command}`  ", f"Commit: {commit}  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work while measured)", "",
             "Whitening \"index\" is fitted on the benchmark's own indexed vectors (no labels used); a whitening "
             "fitted on another folder is named so. Indexing time: seconds per image of a fresh index, model "
             "load excluded, and its ratio to the default measured in the same run. The demo column is the "
             "descriptor alone (no whitening, QE or DBA).", "",
             "| Variant | mAP | P@1 | P@5 | demo P@1 | ms / image | x default |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['seconds_per_image'] / base:.2f}" if base else "-"
        lines.append(f"| {r['variant']} | {r['mAP']:.4f} | {r['P@1']:.4f} | {r['P@5']:.4f} | {r['demo_p1']:.3f} | "
                     f"{r['seconds_per_image'] * 1000:.1f} | {ratio} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "commit": commit, "rows": rows},
                                                        indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
