"""Retrieval quality of descriptor variants side by side: holidays-dev mAP and P@1 (`lookalike eval-search`),
`lookalike demo` precision@1, and indexing time per image against the default descriptor.

    tar xzf ../shared/datasets/holidays-dev.tar.gz -C /tmp
    python benchmarks/eval_search.py --bench /tmp/holidays-dev [--whiten-on DIR] [--only NAME,...]

Appends to benchmarks/results/eval_search.md and writes .json (figures, the command, the commit). Each descriptor indexes
the benchmark once into a fresh index (timed, model load excluded); whitening, QE and DBA reuse that index.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# name -> (descriptor options, evaluation options)
VARIANTS = {
    "default (224 centre crop, avg, layers head+blocks, borders trimmed, first 20 verified)": (
        {"layers": None}, {"verify": 20}),
    "default descriptor alone (no spatial verification)": ({"layers": None}, {}),
    "default descriptor, first 10 verified": ({"layers": None}, {"verify": 10}),
    "default descriptor, first 30 verified": ({"layers": None}, {"verify": 30}),
    "--quality high (416 and 520, R-MAC, whitening, QE 1 + DBA 1, first 30 verified)": (
        {"size": 416, "scales": [1.0, 1.25], "pooling": "rmac"}, {"whiten": "index", "qe": 1, "dba": 1, "verify": 30}),
    "whole 320, R-MAC + whitening + QE 1 + DBA 1, first 20 verified": ({"size": 320, "pooling": "rmac"},
                                                                      {"whiten": "index", "qe": 1, "dba": 1,
                                                                       "verify": 20}),
    "224 centre crop, avg, head only (the default before the two-layer one)": ({}, {}),
    "224 centre crop, avg, untrimmed": ({"trim": False}, {}),
    "default + whitening, untrimmed": ({"trim": False}, {"whiten": "index"}),
    "default + whitening + QE 1 + DBA 1, untrimmed": ({"trim": False}, {"whiten": "index", "qe": 1, "dba": 1}),
    "--quality high, untrimmed": ({"size": 416, "scales": [1.0, 1.25], "pooling": "rmac", "trim": False},
                                  {"whiten": "index"}),
    "--quality high (416 and 520, R-MAC, whitening, QE 1 + DBA 1)": (
        {"size": 416, "scales": [1.0, 1.25], "pooling": "rmac"}, {"whiten": "index", "qe": 1, "dba": 1}),
    "default + whitening without the signed sqrt": ({}, {"whiten": "index", "whiten_power": 1.0}),
    "default + whitening + QE 1 + DBA 1": ({}, {"whiten": "index", "qe": 1, "dba": 1}),
    "whole 320, GeM p=3 + whitening + QE 1 + DBA 1": ({"size": 320, "pooling": "gem"},
                                                     {"whiten": "index", "qe": 1, "dba": 1}),
    "whole 416, GeM p=3 + whitening": ({"size": 416, "pooling": "gem"}, {"whiten": "index"}),
    "whole 416, GeM p=3 + whitening + QE 1 + DBA 1": ({"size": 416, "pooling": "gem"},
                                                     {"whiten": "index", "qe": 1, "dba": 1}),
    "whole 320, GeM p=3": ({"size": 320, "pooling": "gem"}, {}),
    "whole 416, GeM p=2": ({"size": 416, "pooling": "gem:2"}, {}),
    "whole 416, R-MAC": ({"size": 416, "pooling": "rmac"}, {}),
    "default + whitening": ({}, {"whiten": "index"}),
    "whole 320, GeM p=3 + whitening": ({"size": 320, "pooling": "gem"}, {"whiten": "index"}),
    "whole 416, GeM p=2 + whitening": ({"size": 416, "pooling": "gem:2"}, {"whiten": "index"}),
    "whole 416, GeM p=2 + whitening + QE 1 + DBA 1": ({"size": 416, "pooling": "gem:2"},
                                                     {"whiten": "index", "qe": 1, "dba": 1}),
    "whole 320, R-MAC": ({"size": 320, "pooling": "rmac"}, {}),
    "whole 320, R-MAC + whitening": ({"size": 320, "pooling": "rmac"}, {"whiten": "index"}),
    "whole 320, R-MAC + whitening + QE 1 + DBA 1": ({"size": 320, "pooling": "rmac"},
                                                   {"whiten": "index", "qe": 1, "dba": 1}),
    "whole 416, R-MAC + whitening": ({"size": 416, "pooling": "rmac"}, {"whiten": "index"}),
    "224 centre crop, avg, layers head+blocks": ({"layers": "head,blocks"}, {}),
    "224 centre crop, avg, layers head+blocks + whitening": ({"layers": "head,blocks"}, {"whiten": "index"}),
    "224 centre crop, avg, layers head+blocks + whitening + QE 1 + DBA 1": ({"layers": "head,blocks"},
                                                                           {"whiten": "index", "qe": 1, "dba": 1}),
    "224 centre crop, avg, layers blocks": ({"layers": "blocks"}, {}),
    "whole 320, R-MAC, layers head+blocks": ({"size": 320, "pooling": "rmac", "layers": "head,blocks"}, {}),
    "whole 320, R-MAC, layers head+blocks + whitening": ({"size": 320, "pooling": "rmac", "layers": "head,blocks"},
                                                        {"whiten": "index"}),
    "416 and 520, R-MAC, whitening (the --quality high descriptor)": (
        {"size": 416, "scales": [1.0, 1.25], "pooling": "rmac"}, {"whiten": "index"}),
}
DEFAULT_VARIANT = next(iter(VARIANTS))


def _embedder(opts: dict):
    from lookalike.search.describe.features import input_options, load_embedder

    inputs = {**input_options(opts.get("size"), opts.get("scales")), "trim": opts.get("trim", True),
              "layers": opts.get("layers", "head")}  # the rows before the two-layer default pooled the head
    return load_embedder(pooling=opts.get("pooling", "avg"), inputs=inputs)


def _demo_whitened(dopts: dict, verify: int = 0) -> float:
    """Demo precision@1 with the gallery indexed by `lookalike index --whiten` (the whitening fitted on the
    gallery, applied to the stored vectors): every edited copy searches by id, its own vector left out, the
    first `verify` results re-ranked by spatial verification."""
    from lookalike.search.demo import build_gallery, photo_of
    from lookalike.search.store.index import ImageIndex
    from lookalike.search.retrieve.query import Query, run_queries
    from lookalike.search.indexing.sync import index_folder

    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery"
        queries = build_gallery(gallery)
        index_folder(gallery, Path(tmp) / "index", embedder=_embedder(dopts), whiten=True)
        with ImageIndex.open(Path(tmp) / "index") as ix:
            from lookalike.search.retrieve.verify import Verifier

            results = run_queries(ix, [Query(name=str(q["path"]), image_id=ix.id_of(q["path"])) for q in queries],
                                  1, embedder=lambda: None, verifier=Verifier(verify) if verify else None)
        return sum(bool(h.results) and photo_of(Path(h.results[0].path)) == q["photo"]
               for q, h in zip(queries, results)) / len(queries)


def _time_indexing(embedder, folder: Path) -> float:
    from lookalike.search.indexing.sync import index_folder

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
    from lookalike.search.evaluation.evaluate import run_eval

    variants = dict(VARIANTS)
    if args.whiten_on:
        for name in list(variants):
            d, e = variants[name]
            if e.get("whiten"):
                variants[f"{name}, fitted on {args.whiten_on.name}"] = (d, {**e, "whiten": str(args.whiten_on)})
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        variants = {k: v for k, v in variants.items() if any(k.startswith(s) for s in keep)}
    rows, cache, demos = [], {}, {}
    # Each descriptor evaluates on an index of its own made in this run: the evaluation's cached index
    # (`eval_index_path`) would reuse the vectors of an earlier run, made by other code under the same options.
    indexes = tempfile.TemporaryDirectory()
    for name, (dopts, eopts) in variants.items():
        key = json.dumps(dopts, sort_keys=True)
        if key not in cache:
            emb = _embedder(dopts)
            cache[key] = {"embedder": emb, "seconds_per_image": _time_indexing(emb, args.bench),
                          "load": os.getloadavg()[0], "index": Path(indexes.name) / f"index-{len(cache)}"}
        c = cache[key]
        verify = eopts.get("verify", 0)
        demo_key = (key, eopts.get("whiten") == "index", verify)
        if demo_key not in demos:
            if demo_key[1]:
                demos[demo_key] = _demo_whitened(dopts, verify)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    demos[demo_key] = run_demo(Path(tmp), embedder=c["embedder"], write_report=False,
                                               verify=verify)["precision_at_1"]
        res = run_eval(args.bench, index_path=c["index"], embedder=c["embedder"], worst=0, **eopts)
        f = res["figures"]
        # The ranking stage of each query: whitening, QE/DBA, ranking, and spatial verification with a cold
        # local-feature cache (each run_eval decodes the images it verifies afresh).
        query_ms = 1000 * (res["seconds"] - res["indexing_seconds"]) / max(1, f["queries"])
        rows.append({"variant": name, "mAP": f["mAP"], "P@1": f["P@1"], "P@5": f["P@5"],
                     "demo_p1": demos[demo_key], "seconds_per_image": c["seconds_per_image"], "load": c["load"],
                     "query_ms": query_ms})
        print(f"{name}: mAP {f['mAP']:.4f} P@1 {f['P@1']:.4f} demo P@1 {demos[demo_key]:.3f} "
              f"{c['seconds_per_image'] * 1000:.1f} ms/image {query_ms:.0f} ms/query", flush=True)
    base = rows[0]["seconds_per_image"] if rows and rows[0]["variant"] == DEFAULT_VARIANT else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    command = "python benchmarks/eval_search.py " + " ".join(sys.argv[1:])
    lines = [f"Retrieval quality of descriptor variants ({args.bench.name}). Whitening \"index\" is fitted on the benchmark's own indexed vectors (no labels used); a whitening "
             "fitted on another folder is named so. Indexing time: seconds per image of a fresh index, model "
             "load excluded, and its ratio to the default measured in the same run, with the 1-minute load "
             "average when it was timed (2 cores shared with other work: ratios are rough). The demo column: "
             "`lookalike demo`'s precision@1 with that descriptor, its gallery indexed with `--whiten` where the "
             "variant whitens (the demo searches without QE or DBA, and verifies as the variant does). QE and "
             "DBA: alpha = 3, a query left out of its own expansion. \"Verified\": the first N results re-ranked "
             "by spatial verification (`search/retrieve/verify.py`); ms / query is each query's share of the ranking stage, "
             "local features decoded afresh in every row.", "",
             "| Variant | mAP | P@1 | P@5 | demo P@1 | ms / image | x default | load | ms / query |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['seconds_per_image'] / base:.2f}" if base else "-"
        lines.append(f"| {r['variant']} | {r['mAP']:.4f} | {r['P@1']:.4f} | {r['P@5']:.4f} | {r['demo_p1']:.3f} | "
                     f"{r['seconds_per_image'] * 1000:.1f} | {ratio} | {r['load']:.1f} | {r['query_ms']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results_file  # appends this run, with the command, commit and machine, to results/eval_search.md

    results_file.record(args.out.name, lines)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "commit": commit, "rows": rows},
                                                        indent=2) + "\n")
    print("\n".join(lines))
    indexes.cleanup()


if __name__ == "__main__":
    main()
