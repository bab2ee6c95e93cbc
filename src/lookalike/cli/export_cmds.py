"""`lookalike export` and `lookalike import`: vectors out to parquet or .npy, and back into an index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ..paths import printable
from ._common import console, out, print_json, warn


def _bar(label: str):
    """A progress callback drawing a bar on stderr once work starts; returns (callback, stop)."""
    state: dict = {}

    def progress(done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if "bar" not in state:
            bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=console, transient=True)
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(label, total=total or None)
        state["bar"].update(state["task"], completed=done, total=total or None)

    def stop() -> None:
        if "bar" in state:
            state["bar"].stop()

    return progress, stop


@app.command("export")
def export_command(
    source: Path = typer.Argument(..., help="An index folder, or a folder indexed with `lookalike index`."),
    fmt: str = typer.Option("parquet", "--format", help="parquet (path, path_bytes, size, mtime, digest, vector) or npy (vectors, with FILE.metadata.parquet beside them)."),
    out_file: Path = typer.Option(..., "--out", help="File to write (a new file, written atomically; never a folder, nor inside an index folder)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out (and, for npy, its metadata file) if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Export an index's vectors with their paths, sizes, mtimes and content digests, for autofaiss, LanceDB,
    Qdrant, DuckDB or pandas."""
    from ..errors import LookalikeError
    from ..search.store.export import export_index, export_targets
    from ..search.store.index import ImageIndex, resolve_index_dir

    # never a folder, nor a file of an index (this one's or another's), --overwrite or not
    targets = export_targets(resolve_index_dir(source), out_file, fmt)
    taken = [t for t in targets if os.path.lexists(t)]
    if taken and not overwrite:  # never replace a file that nothing says is an export of ours
        raise LookalikeError(f"{printable(taken[0])} already exists: choose another --out")
    progress, stop = _bar("exporting")
    try:
        with ImageIndex.open(source, readonly=True) as ix:
            summary = export_index(ix, out_file, fmt, progress=progress)
    finally:
        stop()
    if json_out:
        print_json(summary)
        return
    out.print(f"{summary['rows']} vectors ({summary['dim']}-d, {summary['model']}) written to {summary['out']}",
              highlight=False, soft_wrap=True)


@app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="A parquet file with `path` and `vector` columns (as `lookalike export` writes)."),
    index: Path = typer.Option(..., "--index", help="Index folder to extend, created when missing."),
    model: Optional[str] = typer.Option(None, "--model", help="Backbone that made the vectors. [default: the file's metadata]"),
    root: Optional[Path] = typer.Option(None, "--root", help="Root folder of a new index. [default: the root the file was exported from, if that folder exists here, else the current folder]"),
    ann: Optional[str] = typer.Option(None, "--ann", help="Search backend of the index: auto, exact, hnsw, ivf or ivfpq. [default: the index's, else auto]"),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Bring vectors computed elsewhere into an index (rows keyed by path; files missing here stay searchable)."""
    from ..search.store.importer import import_parquet

    progress, stop = _bar("importing")
    try:
        summary = import_parquet(file, index, model=model, root=root, progress=progress, ann=ann)
    finally:
        stop()
    if json_out:
        print_json(summary)
        return
    for note in summary.get("notes", []):
        warn(note)
    for item in summary["skipped"][:20]:
        warn(f"skipped {item['path']}: {item['reason']}")
    if len(summary["skipped"]) > 20:
        warn(f"... and {len(summary['skipped']) - 20} more skipped rows (--json lists them)")
    verb = "created" if summary["created"] else "updated"
    out.print(f"index {summary['index_path']} {verb}: {summary['added']} added, {summary['updated']} updated, "
              f"{summary['unchanged']} unchanged, {len(summary['skipped'])} skipped; {summary['rows']} images in all",
              highlight=False, soft_wrap=True)
