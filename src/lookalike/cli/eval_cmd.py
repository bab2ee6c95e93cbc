"""`lookalike eval-search`: retrieval quality against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from ._common import LAYERS_HELP, TRIM_HELP, console, out, print_json, warn

# Descriptor presets (figures in benchmarks/results/eval_search.md). Explicit options override them.
QUALITY_PRESETS = {
    # The first 20 results of a ground-truth benchmark re-ranked by spatial verification, as `lookalike search`
    # does (verify.DEFAULT_SHORTLIST; a literal here so that `lookalike --help` imports nothing heavy).
    "default": {"verify": 20},
    # Whole photo on a 416-pixel long side and at 1.25x, R-MAC, PCA-whitening fitted on the indexed vectors,
    # then one neighbour of query expansion and of database-side augmentation at search time, and the first 30
    # results of a ground-truth benchmark re-ranked by spatial verification.
    "high": {"size": 416, "scales": "1,1.25", "pooling": "rmac", "layers": "head", "whiten": True, "qe": 1,
             "dba": 1, "verify": 30},
}


@app.command("eval-search")
def eval_search_command(
    bench: Path = typer.Argument(..., help="Benchmark folder: holds groundtruth.json, or one sub-folder per class."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder to use (default: the evaluation's own, under $LOOKALIKE_HOME/eval or ~/.cache/lookalike/eval)."),
    model: str = typer.Option("efficientnet_lite0", "--model", help="Backbone: a registered name or a `lookalike train` checkpoint."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="avg, gem, gem:P (e.g. gem:2, whole photos only) or rmac (whole photos only); default avg."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights file for the backbone."),
    size: Optional[int] = typer.Option(None, "--size", help="Whole photo, aspect kept, this many pixels on its longer side (instead of the backbone's centre crop; 0: the crop)."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Multi-scale: factors of --size whose descriptors are summed, e.g. 1,1.25."),
    whiten: Optional[bool] = typer.Option(None, "--whiten/--no-whiten", help="PCA-whitening fitted on the indexed vectors (no labels used), stored beside the index."),
    whiten_on: Optional[Path] = typer.Option(None, "--whiten-on", help="Fit the PCA-whitening on this folder of images instead."),
    trim: Optional[bool] = typer.Option(None, "--trim/--no-trim", help=TRIM_HELP + " [default: on]"),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP + " [default: head,blocks for the centre crop of EfficientNet-Lite, head otherwise]."),
    qe: Optional[int] = typer.Option(None, "--qe", help="alpha-query expansion with this many neighbours (0: off) [default: 0; 1 with --quality high]."),
    dba: Optional[int] = typer.Option(None, "--dba", help="Database-side augmentation with this many neighbours (0: off) [default: 0; 1 with --quality high]."),
    alpha: float = typer.Option(3.0, "--alpha", help="Weight exponent of --qe and --dba neighbours."),
    verify: Optional[int] = typer.Option(None, "--verify", help="Re-rank each query's first N results by spatial verification (SIFT matches agreeing on one affine transform; ground-truth benchmarks only) [default: 20; 30 with --quality high; 0: off]."),
    quality: str = typer.Option("default", "--quality", help="Preset: default, or high (slower: whole photo at 416 and 520 px, R-MAC, whitening, --qe 1 --dba 1, --verify 30)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    runtime: str = typer.Option("auto", "--runtime", help="auto, torch or onnx."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML page of the worst queries with their top results."),
    worst: int = typer.Option(20, "--worst", help="Queries shown in --report."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Measure retrieval quality on BENCH: index it (incrementally, in an index of its own) and rank.

    Protocol. With BENCH/groundtruth.json ({"queries": [{"query", "positives", "junk"}], "database": [...]},
    paths relative to BENCH; INRIA Holidays' layout): each query ranks the database with itself left out, junk
    images are taken out of the ranking, AP is Holidays' trapezoid rule over the precision at each positive;
    prints mAP, P@1, P@5 and recall@1/5/10. With class folders (BENCH/<class>/*): every image queries all the
    others and the positives are its class; prints MAP@R and R-precision (Musgrave et al. 2020), P@1, P@10, and
    mAP and P@5 over the whole ranking. Queries with no positives are left out and counted. As `lookalike
    search` does, a ground-truth benchmark's first 20 results per query are re-ranked by spatial verification
    (--verify; class folders never are).
    """
    from ..errors import LookalikeError
    from ..search.evaluate import run_eval
    from .search_cmds import descriptor_inputs

    if quality not in QUALITY_PRESETS:
        raise LookalikeError(f"unknown --quality {quality!r}: use {' or '.join(QUALITY_PRESETS)}")
    if worst < 0:
        raise LookalikeError("--worst must be >= 0")
    preset = QUALITY_PRESETS[quality]
    inputs = descriptor_inputs(preset.get("size") if size is None else size,
                               preset.get("scales") if scales is None else scales, trim,
                               preset.get("layers") if layers is None else layers)
    whiten_mode = None
    if whiten_on is not None:
        whiten_mode = str(whiten_on)
    elif whiten if whiten is not None else preset.get("whiten", False):
        whiten_mode = "index"
    if verify is None:  # the preset verifies where geometry means something: views of one scene, not classes
        from ..search.evaluate import GROUNDTRUTH

        verify = preset.get("verify", 0) if (bench / GROUNDTRUTH).is_file() else 0
    if report is not None and report.suffix.lower() not in (".html", ".htm"):
        raise LookalikeError(f"--report {report}: give an .html file name")
    if report is not None:
        from ..search.report import is_own_report

        if not is_own_report(report):
            raise LookalikeError(f"--report {report}: that file exists and is not a Lookalike report; choose another name")
    with console.status("indexing and ranking..."):
        result = run_eval(bench, index_path=index, model=model, pooling=pooling or preset.get("pooling", "avg"),
                          weights=str(weights) if weights else None, inputs=inputs, device=device,
                          runtime=runtime, whiten=whiten_mode, qe=preset.get("qe", 0) if qe is None else qe,
                          dba=preset.get("dba", 0) if dba is None else dba, verify=verify, alpha=alpha, worst=worst)
    if report is not None:
        from ..search.report import write_report

        f = result["figures"]
        rows = [{"query": str(Path(result["benchmark"]) / r["query"]), "caption": f"AP {r['AP']:.3f}",
                 "results": [{**h, "path": str(Path(result["benchmark"]) / h["path"])} for h in r["results"]],
                 "missed": [{**h, "path": str(Path(result["benchmark"]) / h["path"])} for h in r["missed"]]}
                for r in result["worst"]]
        figures = {**{k: v for k, v in f.items()}, "model": result["descriptor"]["model"]}
        write_report(report, rows, None, [], Path(result["benchmark"]), figures,
                     keys=("model", "mAP", "mAP@R", "R-precision", "P@1", "P@5", "P@10", "queries"),
                     title="Lookalike retrieval evaluation",
                     intro="The worst queries by AP: the query (left, blue), its top results (green: a positive, "
                           "red: not), then positives ranked further down (grey) with their rank.")
        result["report"] = str(report)
    if json_out:
        print_json({**result["figures"], **result})
        return
    for item in result["skipped"]:
        warn(f"skipped {item['path']}: {item['reason']}")
    f = result["figures"]
    if result["kind"] == "groundtruth":
        line = (f"mAP {f['mAP']:.4f}  P@1 {f['P@1']:.4f}  P@5 {f['P@5']:.4f}  recall@10 {f['recall@10']:.4f}  "
                f"({f['queries']} queries")
    else:
        line = (f"mAP@R {f['mAP@R']:.4f}  R-precision {f['R-precision']:.4f}  P@1 {f['P@1']:.4f}  "
                f"P@10 {f['P@10']:.4f}  mAP {f['mAP']:.4f}  ({f['queries']} queries")
    if f["queries_without_positives"]:
        line += f", {f['queries_without_positives']} without positives left out"
    out.print(line + f", {result['indexed']} images, {result['seconds']:.1f} s)", highlight=False, soft_wrap=True)
    if result["queries_left_out"]:
        warn(f"{len(result['queries_left_out'])} queries could not be indexed and were left out")
    if result.get("report"):
        out.print(f"report: {result['report']}", highlight=False)
