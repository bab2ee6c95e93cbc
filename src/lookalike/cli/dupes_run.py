"""The steps of `lookalike dupes`: options checked before anything is read, the scan, the plan and its run with
progress bars, and the answer as a table or CSV. Only the CLI prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import LookalikeError
from ..paths import printable
from ._common import console, out, warn

CSV_FIELDS = ("group", "role", "kind", "path", "keeper", "why", "distance", "inliers", "width", "height", "size",
              "date", "action")


def check_action(action: Optional[str], *, to: Optional[Path], yes: bool, dry_run: bool,
                 apply: Optional[Path]) -> None:
    """Options that contradict each other or miss a partner: one line, before any index opens."""
    from ..cleanup import ACTIONS

    if action is not None and action not in ACTIONS:
        raise LookalikeError(f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
    if apply is not None:
        if action is not None or dry_run or to is not None:
            raise LookalikeError("--apply carries out the plan as it was made: leave out --action, --to and "
                                 "--dry-run")
        return
    if to is not None and action != "move":
        raise LookalikeError("--to goes with --action move")
    if action == "move" and to is None:
        raise LookalikeError("--action move needs --to DIR: the folder the copies are moved to")
    if dry_run and action is None:
        raise LookalikeError("--dry-run needs an --action to plan")
    if action == "delete" and not yes and not dry_run:
        raise LookalikeError("--action delete cannot be undone and needs --yes (trash and move can be undone)")


def check_csv(path: Path, index_dir: Path, protect: Sequence[Path], overwrite: bool) -> None:
    from ..cleanup.guard import check_output_path

    target = check_output_path(path, index_dir, protect, "--csv")
    if target.exists() and not overwrite:
        raise LookalikeError(f"--csv {printable(target)} exists: pass --overwrite to replace it, or name another "
                             "file")
    if target.is_dir():
        raise LookalikeError(f"--csv {printable(target)} is a folder")


class Bars:
    """Progress bars on a terminal for the verify and act stages (a context manager)."""

    LABELS = {"verify": "verifying copies", "act": "acting"}

    def __init__(self) -> None:
        self.bars: dict = {}

    def stage(self, stage: str, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if stage not in self.LABELS or not console.is_terminal:
            return
        if stage not in self.bars:
            bar = Progress(TextColumn(self.LABELS[stage]), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=console, transient=True)
            bar.start()
            self.bars[stage] = (bar, bar.add_task(stage, total=total))
        bar, task = self.bars[stage]
        bar.update(task, completed=done, total=total)

    def act(self, done: int, total: int) -> None:
        self.stage("act", done, total)

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        for bar, _ in self.bars.values():
            bar.stop()


def scan_and_act(index: Optional[Path], *, verify: int, threshold: Optional[float], neighbours: Optional[int],
                 keep: str, prefer: Sequence[Path], action: Optional[str], to: Optional[Path],
                 protect: Sequence[Path], yes: bool, dry_run: bool, csv_file: Optional[Path], overwrite: bool):
    """(answer, plan or None, result or None): the groups, and the action planned or carried out."""
    from ..cleanup.guard import check_target
    from ..cleanup.pathcodec import absolute
    from ..search.retrieve.dupes_answer import scan
    from .search_cmds import _open_index

    protect_abs = [absolute(p) for p in protect]
    with _open_index(index) as ix:
        index_dir = ix.path
        if action == "move":
            check_target(to, ix.root, ix.path, protect_abs)  # before the scan: a bad --to costs nothing
        if csv_file is not None:
            check_csv(csv_file, ix.path, protect_abs, overwrite)
        if threshold is not None and verify > 0:
            warn("--threshold decides only with --verify 0: with verification the files decide")
        elif threshold is None and verify == 0 and getattr(ix, "whitening", None) is not None:
            warn("the index's vectors are whitened: their distances run larger than the unwhitened ones the "
                 "default threshold was calibrated on, so fewer copies are found; set --threshold")
        with Bars() as bars:
            answer = scan(ix, verify=verify, threshold=threshold, neighbours=neighbours, keep=keep, prefer=prefer,
                          progress=bars.stage)
        for note in ix.notes:
            warn(note)
    if action is None:
        return answer, None, None
    from ..cleanup import plan_actions

    plan = plan_actions(answer.plan_groups(), action, index_dir=index_dir, to=to, protect=protect_abs, keep=keep,
                        prefer=prefer)
    if dry_run:
        answer.mark(plan)
        return answer, plan, None
    return answer, plan, _apply(answer, plan, index_dir, yes)


def _apply(answer: Any, plan: Any, index_dir: Path, yes: bool):
    from ..cleanup import apply_plan

    if plan.action == "delete" and not yes:  # checked before the warning, so nothing is said of a refused run
        raise LookalikeError("--action delete cannot be undone and needs --yes (trash and move can be undone)")
    for line in plan.warnings:
        warn(line)
    with Bars() as bars:
        result = apply_plan(plan, index_dir, yes=yes, progress=bars.act)
    answer.mark(plan, result)
    return result


MAX_PLAN_BYTES = 512 << 20


def apply_saved(plan_file: Path, index: Optional[Path], *, yes: bool, protect: Sequence[Path],
                csv_file: Optional[Path], overwrite: bool):
    """(answer, plan, result) of carrying out a plan `dupes --dry-run --json` wrote (or a bare `Plan.to_json`)."""
    import json

    from ..cleanup import Plan
    from ..cleanup.guard import check_output_path
    from ..cleanup.pathcodec import absolute
    from ..search.retrieve.dupes_answer import DupesAnswer

    try:
        with open(plan_file, "rb") as fh:
            text = fh.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise LookalikeError(f"cannot read the plan {printable(plan_file)}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise LookalikeError(f"{printable(plan_file)} is not a plan written by `lookalike dupes --dry-run --json`") \
            from None
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]
    plan = Plan.from_json(json.dumps(data))
    guarded = [absolute(p) for p in (*protect, *plan.protect)]
    check_output_path(plan_file, Path(plan.index), guarded, "the plan")
    if csv_file is not None:
        check_csv(csv_file, Path(plan.index), guarded, overwrite)
    answer = DupesAnswer.from_plan(plan)
    return answer, plan, _apply(answer, plan, index if index is not None else Path(plan.index), yes)


def write_csv(answer: Any, path: Path, overwrite: bool) -> None:
    """One row per image (the keeper first in each group), in a file made with the umask's permissions."""
    import csv

    rows = []
    for n, group in enumerate(answer.groups, start=1):
        for role, image in [("keeper", group.keeper)] + [("copy", m) for m in group.members]:
            rows.append({"group": n, "role": role, "kind": group.kind, "path": printable(image.path),
                         "keeper": printable(group.keeper.path), "why": group.why,
                         **{k: getattr(image, k) for k in CSV_FIELDS[6:]}})
    try:
        with open(path, "w" if overwrite else "x", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    except FileExistsError:
        raise LookalikeError(f"--csv {printable(path)} exists: pass --overwrite to replace it") from None
    except OSError as exc:
        raise LookalikeError(f"cannot write --csv {printable(path)}: {exc.strerror or exc}") from None


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def print_answer(answer: Any) -> None:
    """A table per group: the keeper and its copies with their facts; whole paths when not on a terminal."""
    from rich.markup import escape
    from rich.table import Table

    from .search_cmds import _print_unwrapped

    if not answer.groups:
        out.print("no near-duplicates found")
        return
    whole = not out.is_terminal
    for n, group in enumerate(answer.groups, start=1):
        title = escape(f"group {n} ({group.kind}, {len(group.members) + 1} images): keeps "
                       f"{printable(group.keeper.path)}, {group.why}")
        acting = any(m.action is not None for m in group.members)
        table = Table("", "path", "distance", "inliers", "pixels", "bytes", "date", *(("action",) if acting else ()),
                      title=title, title_justify="left")
        for role, image in [("keep", group.keeper)] + [("copy", m) for m in group.members]:
            pixels = f"{image.width}x{image.height}" if image.width and image.height else "-"
            distance = "-" if image.distance is None or role == "keep" else f"{image.distance:.4f}"
            table.add_row(role, escape(printable(image.path)), distance, _cell(image.inliers), pixels,
                          _cell(image.size), _cell(image.date), *((escape(_cell(image.action)),) if acting else ()))
        if whole:
            table.columns[1].no_wrap = True
            table.min_width = len(title)
            _print_unwrapped(table)
        else:
            out.print(table)


def print_result(result: Any) -> None:
    """One line on stderr: what the run did, and the journal that undoes it."""
    counts = result.to_dict()
    line = f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    if result.journal is not None:
        stem = Path(result.journal).stem
        line += f"; journal {printable(result.journal)} (`lookalike undo {stem}` reverses it)"
    console.print(line, highlight=False, markup=False, soft_wrap=True)


def index_of_journal(journal: str, index: Optional[Path]) -> Path:
    """The index a journal belongs to: --index, else the folder holding its `journals/`, else the current one."""
    from ..cleanup.journal import FOLDER

    if index is not None:
        return index
    path = Path(journal).expanduser()
    if path.is_file() and path.resolve().parent.name == FOLDER:
        return path.resolve().parent.parent
    return Path(os.getcwd())
