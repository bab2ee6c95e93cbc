"""What spatial verification (`search/retrieve/verify.py`, on by default) costs at search time, side by side in one run.

    python benchmarks/verify_cost.py [--n 60] [--queries 10]

1. `lookalike demo`'s gallery (19 photos + 95 edited copies) searched with the descriptor alone and with the
   first 20 results verified: precision@1 and @5, and the whole demo's seconds.
2. A search from a photo that is not in the index, over N distinct 12-megapixel JPEGs (as `index_speed.py`
   makes them): milliseconds per query through `run_queries` (the path of `lookalike search` and the web
   service) without verification, with a cold local-feature cache (every verified result decoded afresh, as a
   first `lookalike search` pays) and with a warm one (a running `lookalike serve` whose results recur).

Appends to benchmarks/results/verify_cost.md (figures, the command, the commit, the machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _demo(shortlist: int) -> dict:
    from lookalike.search.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_demo(Path(tmp), write_report=False, verify=shortlist)
        return {"P@1": result["precision_at_1"], "P@5": result["precision_at_5"],
                "seconds": time.perf_counter() - start}


def _query_ms(folder: Path, index_dir: Path, queries: list[Path], shortlist: int, warm: bool) -> float:
    from lookalike.search.describe.features import embedder_for_index
    from lookalike.search.store.index import ImageIndex
    from lookalike.search.retrieve.query import Query, run_queries
    from lookalike.search.retrieve.verify import Verifier

    with ImageIndex.open(index_dir) as ix:
        embedder = embedder_for_index(ix)
        run_queries(ix, [Query(name="warm-up", path=queries[0])], 5, embedder=lambda: embedder)  # model loaded
        verifier = Verifier(shortlist) if shortlist else None
        if warm and verifier is not None:
            for q in queries:
                run_queries(ix, [Query(name=str(q), path=q)], 5, embedder=lambda: embedder, verifier=verifier)
        start = time.perf_counter()
        for q in queries:
            if not warm and shortlist:
                verifier = Verifier(shortlist)  # cold: nothing decoded yet
            run_queries(ix, [Query(name=str(q), path=q)], 5, embedder=lambda: embedder, verifier=verifier)
        return 1000 * (time.perf_counter() - start) / len(queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60, help="12-megapixel photos in the index")
    ap.add_argument("--queries", type=int, default=10, help="queries timed (photos apart from the index)")
    ap.add_argument("--shortlist", type=int, default=20)
    args = ap.parse_args()

    import results_file
    from index_speed import make_photos

    from lookalike.search.indexing.sync import index_folder

    load = [os.getloadavg()[0]]
    demo = {0: _demo(0), args.shortlist: _demo(args.shortlist)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "all", args.n + args.queries)
        photos = sorted((tmp / "all").iterdir())
        (tmp / "photos").mkdir()
        for p in photos[:args.n]:
            p.rename(tmp / "photos" / p.name)
        queries = photos[args.n:]
        index_folder(tmp / "photos", tmp / "index")
        load.append(os.getloadavg()[0])
        timed = {"descriptor alone": _query_ms(tmp / "photos", tmp / "index", queries, 0, False),
                 f"first {args.shortlist} verified, cold cache": _query_ms(tmp / "photos", tmp / "index", queries,
                                                                          args.shortlist, False),
                 f"first {args.shortlist} verified, warm cache": _query_ms(tmp / "photos", tmp / "index", queries,
                                                                          args.shortlist, True)}
    load.append(os.getloadavg()[0])
    lines = ["Spatial verification at search time (the default: the first "
             f"{args.shortlist} results re-ranked), side by side.", "",
             "| `lookalike demo` (19 photos + 95 edited copies) | precision@1 | precision@5 | whole demo, s |",
             "|---|---|---|---|"]
    for shortlist, d in demo.items():
        name = f"first {shortlist} verified" if shortlist else "descriptor alone (`--verify 0`)"
        lines.append(f"| {name} | {d['P@1']:.3f} | {d['P@5']:.3f} | {d['seconds']:.1f} |")
    lines += ["", f"| Search from a photo outside the index, {args.n} photos of 4000x3000 px, "
                  f"{args.queries} queries | ms / query | x descriptor alone |", "|---|---|---|"]
    base = timed["descriptor alone"]
    for name, ms in timed.items():
        lines.append(f"| {name} | {ms:.0f} | {ms / base:.1f} |")
    lines += ["", "Load average (1 min) at the start, after indexing and at the end: "
              + ", ".join(f"{x:.1f}" for x in load) + " (2 cores)."]
    results_file.record("verify_cost", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
