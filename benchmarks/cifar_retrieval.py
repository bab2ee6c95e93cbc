"""CIFAR-10 test-set retrieval with trained checkpoints against the pretrained default: every one of the 10,000
test images queries the other 9,999 and its class is the ground truth (`lookalike eval-search DIR/test`, the
class-folder protocol: MAP@R and R-precision after Musgrave et al. 2020, P@1, P@10).

    tar xzf ../shared/datasets/cifar10-jpeg.tar.gz -C /tmp
    lookalike train --data /tmp/cifar10-jpeg --time-budget 5m --out runs/fast-5m     # and 15m
    flock /work/wt/bench.lock python benchmarks/cifar_retrieval.py --data /tmp/cifar10-jpeg \\
        --checkpoint 5-minute=runs/fast-5m/best.pt --checkpoint 15-minute=runs/fast-15m/best.pt

Writes benchmarks/results/cifar_retrieval.md (figures, indexing time, the command, the commit, the load average).
A checkpoint's pre-logit features (its global pool) are the descriptor; the pretrained backbone sees the 32-px
images upscaled to its own input (EfficientNet-Lite0: 224 px), as `lookalike index` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _checkpoint_facts(path: Path) -> str:
    """Test accuracy, epochs and budget of a `lookalike train` run, from its result.json."""
    try:
        doc = json.loads((path.parent / "result.json").read_text())
    except (OSError, ValueError):
        return ""
    facts = []
    if isinstance(doc.get("test_acc"), (int, float)):
        facts.append(f"test accuracy {doc['test_acc'] * 100:.2f}%")
    if doc.get("epochs") is not None:
        facts.append(f"{doc['epochs']} epochs ({doc.get('steps', '?')} steps)")
    if doc.get("time_budget"):
        facts.append(f"budget {doc['time_budget']:.0f} s, training {doc.get('train_seconds', 0):.0f} s, "
                     f"run {doc.get('wall_seconds', 0):.0f} s")
    return "; ".join(facts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpeg"), help="CIFAR-10 class folders (train/, test/)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                    help="a `lookalike train` checkpoint to measure (repeatable)")
    ap.add_argument("--pretrained", default="efficientnet_lite0", help="the pretrained backbone to compare with ('' to skip)")
    ap.add_argument("--limit", type=int, default=0, help="first N test images per class only (0: all)")
    args = ap.parse_args()

    import results_file

    from lookalike.search.evaluation.evaluate import run_eval

    bench = args.data / "test"
    if args.limit:
        # A smaller class-folder tree of links, for a quick look (the recorded figures use all 10,000).
        tmp = Path(tempfile.mkdtemp(prefix="cifar-retrieval-"))
        for cls in sorted(p for p in bench.iterdir() if p.is_dir()):
            (tmp / cls.name).mkdir()
            for f in sorted(cls.iterdir())[:args.limit]:
                (tmp / cls.name / f.name).symlink_to(f.resolve())
        bench = tmp
    models = [(name, path) for name, _, path in (c.partition("=") for c in args.checkpoint)]
    if args.pretrained:
        models.append((f"pretrained {args.pretrained} (the search default)", args.pretrained))
    rows, load = [], []
    with tempfile.TemporaryDirectory() as home:
        os.environ["LOOKALIKE_HOME"] = home  # fresh indexes: the timing includes every image
        for name, model in models:
            load.append(os.getloadavg()[0])
            start = time.perf_counter()
            result = run_eval(bench, model=model, worst=0)
            seconds = time.perf_counter() - start
            f = result["figures"]
            facts = _checkpoint_facts(Path(model)) if model.endswith(".pt") else ""
            rows.append({"name": name, "model": model, "facts": facts, "mAP@R": f["mAP@R"], "P@10": f["P@10"],
                         "P@1": f["P@1"], "R-precision": f["R-precision"], "queries": f["queries"],
                         "seconds": seconds, "indexing_seconds": result["indexing_seconds"],
                         "dim": result["descriptor"]["dim"]})
            print(f"{name}: mAP@R {f['mAP@R']:.4f}  P@10 {f['P@10']:.4f}  P@1 {f['P@1']:.4f}  "
                  f"({f['queries']} queries, {seconds:.0f} s)", flush=True)
    load.append(os.getloadavg()[0])
    subset = (f"the first {args.limit} test images of each class, " if args.limit else "the whole test set, ")
    lines = [f"CIFAR-10 retrieval on {subset}{rows[0]['queries'] if rows else 0} queries, each against all the "
             "other images of that set; positives: its class.", "",
             "| Backbone | Checkpoint | dim | mAP@R | R-precision | P@1 | P@10 | index + rank, s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['facts'] or '-'} | {r['dim']} | {r['mAP@R']:.4f} | {r['R-precision']:.4f} | "
                     f"{r['P@1']:.4f} | {r['P@10']:.4f} | {r['seconds']:.0f} |")
    lines += ["", f"Load average (1 min) at each start and at the end: {', '.join(f'{x:.1f}' for x in load)} "
              "(2 cores, shared with other work)."]
    print(f"results: {results_file.record('cifar_retrieval', lines)}")


if __name__ == "__main__":
    main()
