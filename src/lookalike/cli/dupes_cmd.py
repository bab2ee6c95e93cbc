"""`lookalike dupes` (find byte-identical files and copies, and act on them) and `lookalike undo`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ._common import console, out, print_json

THRESHOLD_HELP = ("With --verify 0: the largest descriptor distance between two copies. With verification the "
                  "files decide (matching local features and aligned pixels), and --threshold is not used. "
                  "[default: 0.55 for the two-layer default descriptor, 0.6 for others]")
VERIFY_HELP = ("Neighbours verified per image from the files (0: decide by descriptor distance, --threshold, for "
               "imported vectors whose files are elsewhere and the fastest pass over millions).")
NEIGHBOURS_HELP = "Neighbours per image in the kNN graph. [default: --verify's N; 10 with --verify 0]"
ACTION_HELP = ("What to do with the copies that are not kept: move (with --to), trash, hardlink or symlink "
               "(byte-identical copies only), delete (with --yes; cannot be undone). [default: nothing]")
MAX_VERIFY = 50


@app.command("dupes")
def dupes_command(
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder, or a folder indexed with `lookalike index`. [default: the current folder]"),
    verify: int = typer.Option(5, "--verify", min=0, max=MAX_VERIFY, help=VERIFY_HELP),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=2.0, help=THRESHOLD_HELP),
    neighbours: Optional[int] = typer.Option(None, "--neighbours", "-k", min=1, help=NEIGHBOURS_HELP),
    keep: str = typer.Option("resolution", "--keep", help="Which copy stays: resolution (most pixels, then largest file, then oldest), size, newest, oldest or shortest-path."),
    prefer: List[Path] = typer.Option([], "--prefer", metavar="DIR", help="Keep a copy under DIR first (repeatable; an earlier one wins)."),
    action: Optional[str] = typer.Option(None, "--action", help=ACTION_HELP),
    to: Optional[Path] = typer.Option(None, "--to", metavar="DIR", help="Where --action move puts the copies (their layout under the library kept); outside the library."),
    protect: List[Path] = typer.Option([], "--protect", metavar="DIR", help="Files under DIR are never acted on (repeatable)."),
    yes: bool = typer.Option(False, "--yes", help="Confirm --action delete."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan the action and touch nothing; with --json the output is a plan for --apply."),
    apply: Optional[Path] = typer.Option(None, "--apply", metavar="PLAN", help="Carry out exactly the plan a `--dry-run --json` wrote."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", metavar="FILE", help="Also write one row per image to FILE."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Let --csv replace an existing file."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Group byte-identical files and copies (the same photo resized, recompressed, cropped, recoloured, turned,
    mirrored), each group with the copy it keeps and why; with --action, act on the others (journalled: see
    `lookalike undo`). Another shot of the same scene is not a copy."""
    from ..cleanup.keep import check_rule
    from . import dupes_run as run

    check_rule(keep)
    run.check_action(action, to=to, yes=yes, dry_run=dry_run, apply=apply)
    if apply is not None:
        answer, plan, result = run.apply_saved(apply, index, yes=yes, protect=protect, csv_file=csv_file,
                                               overwrite=overwrite)
    else:
        answer, plan, result = run.scan_and_act(index, verify=verify, threshold=threshold, neighbours=neighbours,
                                                keep=keep, prefer=prefer, action=action, to=to, protect=protect,
                                                yes=yes, dry_run=dry_run, csv_file=csv_file, overwrite=overwrite)
    if csv_file is not None:
        run.write_csv(answer, csv_file, overwrite)
    if json_out:
        data = answer.to_json()
        if dry_run and plan is not None:
            import json

            data["plan"] = json.loads(plan.to_json())  # what --apply reads back
        print_json(data)
    else:
        run.print_answer(answer)
    if result is not None:
        run.print_result(result)
        if result.exit_code:
            raise typer.Exit(result.exit_code)


@app.command("undo")
def undo_command(
    journal: str = typer.Argument(..., metavar="JOURNAL", help="A journal of `lookalike dupes --action`: its path, or its name without .jsonl."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder, or a folder indexed with `lookalike index`. [default: the journal's index, else the current folder]"),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Reverse what a `dupes --action` run did: moved and trashed files go back, links become files of their own
    again. Nothing is written over; deleted files cannot be restored."""
    from ..cleanup import undo
    from . import dupes_run as run

    result = undo(journal, run.index_of_journal(journal, index))
    if json_out:
        print_json(result.to_dict())
    else:
        for outcome in result.outcomes:
            line = f"{outcome.status}: {outcome.path}" + (f" ({outcome.reason})" if outcome.reason else "")
            out.print(line, highlight=False, markup=False, soft_wrap=True)
        counts = result.to_dict()
        console.print(f"undo: {counts['done']} put back, {counts['skipped']} skipped, {counts['failed']} failed",
                      highlight=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)

