"""`lookalike eval-search`: retrieval quality against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ..models import DEFAULT_MODEL
from ._common import LAYERS_HELP, TRIM_HELP, console, out, preset_default, print_json, quality_help, warn

@app.command("eval-search")
def eval_search_command(
    bench: Path = typer.Argument(..., help="Benchmark folder: holds groundtruth.json, or one sub-folder per class."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder to use. [default: the evaluation's own, under $LOOKALIKE_HOME/eval or ~/.cache/lookalike/eval]"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Backbone: a registered name or a `lookalike train` checkpoint."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="avg, gem, gem:P (e.g. gem:2, whole photos only) or rmac (whole photos only). " + preset_default("pooling")),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights file for the backbone."),
    size: Optional[int] = typer.Option(None, "--size", help="Whole photo, aspect kept, this many pixels on its longer side (instead of the backbone's centre crop; 0: the crop). " + preset_default("size")),
    scales: Optional[str] = typer.Option(None, "--scales", help="Multi-scale: factors of --size whose descriptors are summed, e.g. 1,1.25."),
    whiten: Optional[bool] = typer.Option(None, "--whiten/--no-whiten", help="PCA-whitening fitted on the indexed vectors (no labels used), stored beside the index."),
    whiten_on: Optional[Path] = typer.Option(None, "--whiten-on", help="Fit the PCA-whitening on this folder of images instead."),
    trim: Optional[bool] = typer.Option(None, "--trim/--no-trim", help=TRIM_HELP + ". [default: on]"),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP + ". [default: head,blocks for the centre crop of EfficientNet-Lite, head otherwise]"),
    qe: Optional[int] = typer.Option(None, "--qe", help="alpha-query expansion with this many neighbours (0: off). " + preset_default("qe")),
    dba: Optional[int] = typer.Option(None, "--dba", help="Database-side augmentation with this many neighbours (0: off). " + preset_default("dba")),
    alpha: float = typer.Option(3.0, "--alpha", help="Weight exponent of --qe and --dba neighbours."),
    verify: Optional[int] = typer.Option(None, "--verify", help="Re-rank each query's first N results by spatial verification (SIFT matches agreeing on one affine transform; ground-truth benchmarks only; 0: off). " + preset_default("verify")),
    quality: str = typer.Option("default", "--quality", help=quality_help("size", "scales", "pooling", "layers", "whiten", "qe", "dba", "verify")),
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
    from ..search.evaluation.evaluate import GROUNDTRUTH, run_eval
    from ..search.presets import pick, preset
    from .search_cmds import descriptor_inputs, descriptor_preset

    chosen = preset(quality)
    if worst < 0:
        raise LookalikeError("--worst must be >= 0")
    size, scales, pooling, layers, whiten = descriptor_preset(quality, size, scales, pooling, layers, whiten)
    inputs = descriptor_inputs(size or None, scales, trim, layers)  # the crop as when no option is given
    whiten_mode = str(whiten_on) if whiten_on is not None else ("index" if whiten else None)
    if verify is None:  # the preset verifies where geometry means something: views of one scene, not classes
        verify = chosen.verify if (bench / GROUNDTRUTH).is_file() else 0
    _check_report_name(report)
    with console.status("indexing and ranking..."):
        result = run_eval(bench, index_path=index, model=model, pooling=pooling,
                          weights=str(weights) if weights else None, inputs=inputs, device=device,
                          runtime=runtime, whiten=whiten_mode, qe=pick(qe, chosen.qe), dba=pick(dba, chosen.dba),
                          verify=verify, verify_detail=chosen.verify_detail, alpha=alpha, worst=worst)
    if report is not None:
        _write_worst_report(report, result)
        result["report"] = str(report)
    if json_out:
        print_json({**result["figures"], **result})
        return
    _print_figures(result)


def _check_report_name(report: Optional[Path]) -> None:
    """`--report`: an .html name, and never a file that is not a report of ours (it would be replaced)."""
    from ..errors import LookalikeError

    if report is None:
        return
    if report.suffix.lower() not in (".html", ".htm"):
        raise LookalikeError(f"--report {report}: give an .html file name")
    from ..search.retrieve.report import is_own_report

    if not is_own_report(report):
        raise LookalikeError(f"--report {report}: that file exists and is not a Lookalike report; choose another name")


def _write_worst_report(report: Path, result: dict) -> None:
    from ..search.retrieve.report import write_report

    root = Path(result["benchmark"])
    rows = [{"query": str(root / r["query"]), "caption": f"AP {r['AP']:.3f}",
             "results": [{**h, "path": str(root / h["path"])} for h in r["results"]],
             "missed": [{**h, "path": str(root / h["path"])} for h in r["missed"]]}
            for r in result["worst"]]
    figures = {**result["figures"], "model": result["descriptor"]["model"]}
    write_report(report, rows, None, [], root, figures,
                 keys=("model", "mAP", "mAP@R", "R-precision", "P@1", "P@5", "P@10", "queries"),
                 title="Lookalike retrieval evaluation",
                 intro="The worst queries by AP: the query (left, blue), its top results (green: a positive, "
                       "red: not), then positives ranked further down (grey) with their rank.")


def _print_figures(result: dict) -> None:
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
