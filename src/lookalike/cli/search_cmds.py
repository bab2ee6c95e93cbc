"""`lookalike index`, `search`, `compare` and `demo`: search images by content (`dupes` is in dupes_cmd.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ..paths import printable
from ..models import DEFAULT_MODEL
from ..search.presets import PRESETS
from ._common import (LAYERS_HELP, TRIM_HELP, VERIFY_HELP, console, out, preset_default, print_json, quality_help,
                      ranking, warn)

MODEL_HELP = "Backbone: a registered name (see `lookalike models`) or a checkpoint file from `lookalike train`."
QE_HELP = "alpha-query expansion: add this many nearest indexed images to each query, weighted by similarity^alpha (0: off)."
DBA_HELP = "Database-side augmentation: re-score the best candidates by their vectors plus this many nearest neighbours each (0: off)."
ALPHA_HELP = "Weight exponent of the --qe and --dba neighbours (0 to 16)."


def _open_index(index: Optional[Path]):
    from ..errors import LookalikeError
    from ..search.store.index import ImageIndex

    try:
        return ImageIndex.open(index or Path.cwd(), readonly=True)
    except LookalikeError:
        if index is None:
            raise LookalikeError("no index in the current folder: pass --index PATH (an index, or a folder "
                                 "indexed with `lookalike index FOLDER`)") from None
        raise


def _fmt_dist(x: float) -> str:
    return f"{x:.4f}"


@app.command("index")
def index_command(
    folder: Path = typer.Argument(..., help="Folder of images, walked recursively."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder. [default: FOLDER/.lookalike, or under $LOOKALIKE_HOME]"),
    quality: Optional[str] = typer.Option(None, "--quality", help=quality_help("size", "scales", "pooling", "layers", "whiten") + " [default: the index's descriptor, else default]"),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + f" [default: the index's, else {DEFAULT_MODEL}]"),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="Global pooling of the feature map: avg, gem, gem:P (e.g. gem:2, with --size) or rmac (with --size). [default: the index's, else avg]"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights file for the backbone (offline use of resnet50 etc.)."),
    size: Optional[int] = typer.Option(None, "--size", help="Whole photo, aspect kept, this many pixels on its longer side, instead of the backbone's centre crop (0: the crop). [default: the index's, else the crop]"),
    scales: Optional[str] = typer.Option(None, "--scales", help="Multi-scale (with --size): factors of --size whose descriptors are summed, e.g. 1,1.25."),
    whiten: Optional[bool] = typer.Option(None, "--whiten/--no-whiten", help="PCA-whitening fitted on the indexed images (no labels), stored in the index and applied to its vectors and every query; turning it off later needs --rebuild. [default: the index's, else off]"),
    whiten_on: Optional[Path] = typer.Option(None, "--whiten-on", help="Fit the PCA-whitening on this folder of images instead."),
    trim: Optional[bool] = typer.Option(None, "--trim/--no-trim", help=TRIM_HELP + ". [default: the index's, else on]"),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP + ". [default: the index's, else head,blocks for the centre crop of EfficientNet-Lite, head otherwise]"),
    rebuild: bool = typer.Option(False, "--rebuild", help="Start the index over (another backbone, or a damaged index)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    runtime: str = typer.Option("auto", "--runtime", help="Inference runtime: auto (ONNX Runtime on CPU when installed), torch or onnx."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per pipeline batch, the unit committed to the index."),
    ann: Optional[str] = typer.Option(None, "--ann", help="Search backend: auto (by size, switching as the index grows), exact, hnsw, ivf or ivfpq; stored in the index. [default: the index's, else auto]"),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Embed with N processes on this machine (torchrun; one per GPU with --device cuda); one writes the index."),
) -> None:
    """Index the images under FOLDER (only new or changed files are read again; safe to interrupt and rerun)."""
    from ..distributed import in_torchrun
    from ..errors import LookalikeError

    if whiten_on is not None and whiten is False:
        raise LookalikeError("--whiten-on and --no-whiten contradict each other")
    size, scales, pooling, layers, whiten = descriptor_preset(quality, size, scales, pooling, layers, whiten)
    inputs = descriptor_inputs(size, scales, trim, layers)
    if nproc is not None and nproc > 1 and not in_torchrun():  # the same command as torchrun workers
        from ..distributed import argv_without_nproc, launch

        code = launch(argv_without_nproc(sys.argv[1:]), nproc,
                      hint=": committed batches are kept, the same command again resumes")
        if code:
            raise typer.Exit(code)
        return
    summary = _run_index(folder, index, device, model=model, pooling=pooling,
                         weights=str(weights) if weights else None, rebuild=rebuild, runtime=runtime,
                         batch_size=batch_size, ann=ann, inputs=inputs,
                         whiten=str(whiten_on) if whiten_on is not None else whiten)
    if summary is None:  # a process of a torchrun group other than rank 0: rank 0 reports
        return
    if json_out:
        print_json(summary)
        return
    _print_index_summary(summary)


def descriptor_preset(quality: Optional[str], size: Optional[int], scales: Optional[str], pooling: Optional[str],
                      layers: Optional[str], whiten: Optional[bool]) -> tuple:
    """(size, scales, pooling, layers, whiten): `--quality`'s descriptor with the options given over it; the
    options as given without `--quality` (None: the index's own)."""
    if quality is None:
        return size, scales, pooling, layers, whiten
    from ..search.presets import pick, preset

    chosen = preset(quality)
    size = pick(size, chosen.size)
    scales = pick(scales, chosen.scales if size else None)  # the preset's scales are factors of a whole photo
    return size, scales, pick(pooling, chosen.pooling), pick(layers, chosen.layers), pick(whiten, chosen.whiten)


def _run_index(folder: Path, index: Optional[Path], device: str, **options) -> Optional[dict]:
    """`sync.index_folder` with progress bars on stderr; under torchrun each process embeds a share and rank 0
    writes (`search/indexing/sharded.py`), the others get None."""
    from ..distributed import join
    from ..search.indexing.sync import index_folder

    group = join(device)
    run_index = index_folder
    if group.size > 1:
        from functools import partial

        from ..search.indexing.sharded import index_sharded

        run_index = partial(index_sharded, group=group)
    bars = _IndexBars()
    try:
        return run_index(folder, index, device=device, progress=bars.indexing, ann_progress=bars.ann,
                         facts_progress=bars.facts, keypoints_progress=bars.keypoints, **options)
    finally:
        bars.stop()
        group.close()


class _IndexBars:
    """The progress bars of `lookalike index`: images embedded, then the search structure built."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def indexing(self, done: int, total: int) -> None:
        # The bar starts with the first batch, so errors found before it (bad options, a mixed-up index)
        # print as one clean line.
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        if total == 0 or len(self.bars.keys() - {"index"}):  # a later stage has begun
            return
        if "index" not in self.bars:
            bar = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                           TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
            bar.start()
            self.bars["index"] = (bar, bar.add_task("index", total=total, rate=""))
        bar, task = self.bars["index"]
        elapsed = bar.tasks[0].elapsed or 0.0
        bar.update(task, completed=done, total=total, rate=f"{done / elapsed:.1f} img/s" if done and elapsed else "")

    def ann(self, done: int, total: int) -> None:
        self._stage("ann", "search structure", done, total)

    def facts(self, done: int, total: int) -> None:
        self._stage("facts", "reading image facts", done, total)

    def keypoints(self, done: int, total: int) -> None:
        self._stage("keypoints", "storing local features of images indexed before", done, total)

    def _stage(self, key: str, label: str, done: int, total: int) -> None:
        """A bar for a later stage of the run, replacing the bars before it."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if key not in self.bars:
            for earlier in [k for k in self.bars if k != key]:
                self.bars.pop(earlier)[0].stop()
            bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=console, transient=True)
            bar.start()
            self.bars[key] = (bar, bar.add_task(key, total=total))
        bar, task = self.bars[key]
        bar.update(task, completed=done, total=total)

    def stop(self) -> None:
        for bar, _task in self.bars.values():
            bar.stop()


def _print_index_summary(summary: dict) -> None:
    for note in summary.get("notes", []):
        warn(note)
    skipped, n_known = summary["skipped"], summary.get("skipped_known", 0)
    fresh, known = skipped[:len(skipped) - n_known], skipped[len(skipped) - n_known:]  # known failures come last
    for item in fresh:
        warn(f"skipped {item['path']}: {item['reason']}")
    if known:
        warn(_known_failures_line(known))
    unsupported = summary.get("unsupported", [])
    for ext, count in _count_by_extension(unsupported).items():
        reason = next(item["reason"] for item in unsupported if item["path"].lower().endswith(ext))
        warn(f"skipped {count} {ext} file{'s' if count != 1 else ''}: {reason}; --json lists them")
    out.print(f"{summary['indexed']} images indexed in {printable(summary['index_path'])}: {summary['added']} added, "
              f"{summary['updated']} updated, {summary['renamed']} renamed, {summary['removed']} removed, "
              f"{summary['unchanged']} unchanged, {len(skipped) + len(unsupported)} skipped", highlight=False,
              soft_wrap=True)
    if summary.get("ann"):
        out.print(f"search backend: {_describe_backend(summary['ann'])}", highlight=False, soft_wrap=True)


def parse_scales(text: Optional[str]) -> Optional[list[float]]:
    """`--scales 1,1.25` -> [1.0, 1.25] (None when not given); LookalikeError on anything else."""
    import math

    from ..errors import LookalikeError

    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise LookalikeError(f"--scales {text!r}: give factors separated by commas, e.g. 1,1.25")
    return values


def descriptor_inputs(size: Optional[int], scales: Optional[str], trim: Optional[bool] = None,
                      layers: Optional[str] = None) -> Optional[dict]:
    """`--size`, `--scales`, `--trim/--no-trim` and `--layers` as `features.input_options` takes them: None when
    none is given (an index keeps its own); only the keys given otherwise (`long_side` 0: the centre crop)."""
    from ..errors import LookalikeError
    from ..search.describe.features import input_options, parse_layers

    factors = parse_scales(scales)
    extra = {"trim": trim} if trim is not None else {}
    if layers is not None:
        extra["layers"] = parse_layers(layers)  # one line for a bad value
    if size is None and factors is None:
        return extra or None
    if size is not None and size < 0:
        raise LookalikeError("--size must be 0 (the centre crop) or a number of pixels")
    if not size and factors is not None and factors != [1.0]:
        raise LookalikeError("--scales needs a whole-photo --size")
    input_options(size, factors)  # checks the ranges: one line for a bad value
    return {"long_side": size or 0, "scales": factors if size else None, **extra}


def _describe_backend(params: dict) -> str:
    """`hnsw (m=32, pca=256, rerank=10), asked: auto` from `Backend.params()`."""
    skip = {"backend", "dim", "count", "dead", "storage", "requested"}
    knobs = ", ".join(f"{key}={value}" for key, value in params.items() if key not in skip)
    if params.get("storage") in ("float16", "sq8"):
        knobs = ", ".join(x for x in (knobs, params["storage"]) if x)
    text = params.get("backend", "?") + (f" ({knobs})" if knobs else "")
    requested = params.get("requested")
    return text + (f", chosen by {requested}" if requested == "auto" else "")


def _count_by_extension(items: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        ext = Path(item["path"]).suffix.lower()
        counts[ext] = counts.get(ext, 0) + 1
    return counts


def _known_failures_line(known: list[dict], shown: int = 3) -> str:
    """One line for files that failed before and have not changed since, however many there are."""
    names = [Path(item["path"]).name for item in known[:shown]]
    more = f" and {len(known) - shown} more" if len(known) > shown else ""
    files, they = ("file", "it") if len(known) == 1 else ("files", "they")
    return (f"skipped {len(known)} {files} unchanged since {they} failed to decode ({', '.join(names)}{more}); "
            "--json lists the reasons")


@app.command("search")
def search_command(
    queries: List[Path] = typer.Argument(..., metavar="QUERY", help="Query images (inside the index or not)."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder, or a folder indexed with `lookalike index`. [default: the current folder]"),
    k: int = typer.Option(5, "-k", "--top", min=1, help="Results per query."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep an indexed query among its own results."),
    quality: str = typer.Option("default", "--quality", help=quality_help("qe", "dba", "verify")),
    qe: Optional[int] = typer.Option(None, "--qe", help=QE_HELP + " " + preset_default("qe")),
    dba: Optional[int] = typer.Option(None, "--dba", help=DBA_HELP + " " + preset_default("dba")),
    alpha: float = typer.Option(3.0, "--alpha", help=ALPHA_HELP),
    verify: Optional[int] = typer.Option(None, "--verify", help=VERIFY_HELP + " " + preset_default("verify")),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Rank the indexed images by distance to each QUERY (Euclidean distance of L2-normalised features; the
    index's descriptor: its size, scales, pooling and whitening apply to the queries), then re-rank the first
    --verify results by spatial verification (the inliers column: local features that agree on one transform)."""
    from ..search.describe.features import embedder_for_index
    from ..search.retrieve.query import Query, run_queries

    expansion, verifier = ranking(quality, qe, dba, alpha, verify)  # checked before the index opens
    with _open_index(index) as ix:
        results = run_queries(ix, [Query(name=str(q), path=q) for q in queries], k,
                              embedder=lambda: embedder_for_index(ix, device=device), include_self=include_self,
                              expansion=expansion, verifier=verifier)
        for note in ix.notes:
            warn(note)
    if json_out:
        print_json([answer.cli_json() for answer in results])
        return
    from rich.markup import escape
    from rich.table import Table

    from ..search.retrieve.results import CLI_HIT_FIELDS

    whole = not out.is_terminal  # piped or redirected: whole paths, never cut to the terminal's width
    for answer in results:
        verified = any(h.inliers is not None for h in answer.results)
        table = Table(*CLI_HIT_FIELDS, *(("inliers",) if verified else ()), title=escape(answer.query),
                      title_justify="left")
        for h in answer.results:
            inliers = (("-" if h.inliers is None else str(h.inliers)),) if verified else ()
            table.add_row(str(h.rank), escape(h.path), _fmt_dist(h.distance), f"{h.similarity:.4f}", *inliers)
        if whole:
            table.columns[1].no_wrap = True
            table.min_width = len(answer.query)  # the title, on one line too
            _print_unwrapped(table)
        else:
            out.print(table)


def _print_unwrapped(table) -> None:
    """Print `table` as wide as its content needs: a pipe or a file takes whole lines, however long."""
    from rich.console import Console

    width = max(out.width, out.measure(table, options=out.options.update_width(1 << 16)).maximum)
    Console(file=out.file, width=width).print(table)


@app.command("compare")
def compare_command(
    images: List[Path] = typer.Argument(..., metavar="IMAGE", help="Two or more images."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    pooling: str = typer.Option("avg", "--pooling", help="avg or gem."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights file for the backbone."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Print the pairwise distance table of the images (Euclidean distance of L2-normalised features)."""
    from ..errors import LookalikeError
    from ..search.describe.features import load_embedder
    from ..search.retrieve.query import compare

    if len(images) < 2:
        raise LookalikeError("compare needs at least two images")
    embedder = load_embedder(model, device=device, pooling=pooling, weights=str(weights) if weights else None)
    vectors, skipped = embedder.embed_paths([str(p) for p in images])
    bad = {s["path"] for s in skipped}
    paths = [printable(p) for p in images if str(p) not in bad]
    if len(paths) < 2:
        reasons = "; ".join(f"{printable(s['path'])}: {s['reason']}" for s in skipped)
        raise LookalikeError(f"fewer than two readable images to compare ({reasons})")
    for s in skipped:
        warn(f"skipped {s['path']}: {s['reason']}")
    dist, sim = compare(vectors)
    write = sys.stdout.write
    # Streamed row by row: 2,000 images make 4 million numbers, never one big string in memory.
    if json_out:
        write('{\n  "paths": ' + _json_list(paths) + ',\n')
        for key, mat in (("distance", dist), ("similarity", sim)):
            write(f'  "{key}": [\n')
            for i, row in enumerate(mat):
                write("    [" + ", ".join(f"{x:.6f}" for x in row) + ("]\n" if i == len(mat) - 1 else "],\n"))
            write("  ]" + (",\n" if key == "distance" else "\n"))
        write("}\n")
        return
    for i, p in enumerate(paths, start=1):
        write(f"[{i}] {p}\n")
    width = max(6, len(str(len(paths))) + 2)
    write(" " * width + "".join(f"{f'[{j}]':>{width + 2}}" for j in range(1, len(paths) + 1)) + "\n")
    for i, row in enumerate(dist, start=1):
        write(f"{f'[{i}]':<{width}}" + "".join(f"{x:>{width + 2}.4f}" for x in row) + "\n")
    sys.stdout.flush()


def _json_list(items: list) -> str:
    import json

    return json.dumps(items)


@app.command("demo")
def demo_command(
    out_dir: Path = typer.Option(Path("lookalike-demo"), "--out", help="Folder for the gallery, its index and report.html."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    verify: int = typer.Option(PRESETS["default"].verify, "--verify", help=VERIFY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON on stdout."),
) -> None:
    """Build a gallery of real photos (shipped with Lookalike) and edited copies, index it, search with every
    copy as `lookalike search` does, print precision@1 and @5, and write report.html."""
    from ..search.demo import run_demo

    with console.status("building the gallery, indexing and searching..."):
        result = run_demo(out_dir, model=model, verify=verify)
    if json_out:
        print_json(result)
        return
    out.print(f"gallery: {result['originals']} photos + {result['queries']} edited copies in {result['gallery']}",
              highlight=False)
    out.print(f"precision@1 = {result['precision_at_1']:.3f}   precision@5 = {result['precision_at_5']:.3f}   "
              f"({result['model']}, {result['seconds']:.1f} s)", highlight=False)
    out.print(f"report: {result['report']}", highlight=False)
