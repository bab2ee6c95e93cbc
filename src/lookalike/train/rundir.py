"""Run folders and their files: a new run never writes over an earlier one, and a resume never restarts over a
finished epoch.

A run owns exactly the files in RUN_FILES: config.json (the resolved settings, the data and the plan),
metrics.csv (one row per epoch), last.pt and best.pt (`state.RunState`), curves.png and confusion.png (`plots`),
result.json (the summary). `lookalike train --out RUN` refuses a folder that holds any of them
unless told `--overwrite`, and even then replaces only those, never the folder's other files.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_write
from ..errors import LookalikeError

RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt", "curves.png", "confusion.png", "result.json")
METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]


def run_files_in(run_dir: Path) -> list[str]:
    """The run files that `run_dir` holds already."""
    return [name for name in RUN_FILES if os.path.lexists(run_dir / name)]


def new_run_dir(parent: os.PathLike, model: str, now: Optional[float] = None) -> Path:
    """A folder `parent/<model>-<YYYYmmdd-HHMMSS>` made for this run alone: runs started in the same second (or
    a folder already there) get `-2`, `-3`, ... The folder is created here, so two processes never pick one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{model}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    for n in range(1, 1000):
        folder = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise LookalikeError(f"no free run folder name {stem}-N under {parent}: give one with --out")


def prepare_new_run(run_dir: Path, overwrite: bool = False, check_only: bool = False) -> None:
    """Check that a new run may write into `run_dir`; with `overwrite`, remove the earlier run's own files (only
    from a folder that provably holds a Lookalike run, and only RUN_FILES) unless `check_only`."""
    if run_dir.exists() and not run_dir.is_dir():
        raise LookalikeError(f"--out {run_dir} is a file, not a folder")
    existing = run_files_in(run_dir) if run_dir.is_dir() else []
    if not existing:
        return
    if not overwrite:
        raise LookalikeError(
            f"{run_dir} already holds a run ({', '.join(existing)}): continue it with --resume {run_dir}, "
            "or train into a new --out folder")
    if not _holds_a_run(run_dir):
        raise LookalikeError(
            f"{run_dir} holds {', '.join(existing)} but no Lookalike run (no readable config.json or checkpoint): "
            "--overwrite replaces only a run's own files; train into a new --out folder")
    if check_only:
        return
    for name in existing:
        try:
            (run_dir / name).unlink()
        except OSError as exc:
            raise LookalikeError(f"--overwrite: cannot remove {run_dir / name}: {exc.strerror or exc}") from None


def _holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` was written by `lookalike train`: its config.json, or a checkpoint with our marker."""
    try:
        saved_config(run_dir / "config.json")
        return True
    except LookalikeError:
        pass
    from .checkpoint import load_checkpoint

    for name in ("last.pt", "best.pt"):
        try:
            load_checkpoint(run_dir / name)
            return True
        except LookalikeError:
            continue
    return False


def finished_epochs(run_dir: Path) -> int:
    """Rows of the run's metrics.csv (epochs it finished), 0 when there is none."""
    try:
        with open(run_dir / "metrics.csv", newline="") as fh:
            return sum(1 for _ in csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return 0


def check_restartable(run_dir: Path) -> None:
    """A run without last.pt may start again from its config.json only if it never finished an epoch: otherwise
    a restart would write over its best.pt and metrics."""
    kept = [n for n in ("best.pt", "result.json") if (run_dir / n).exists()]
    epochs = finished_epochs(run_dir)
    if kept or epochs:
        what = ", ".join(kept + ([f"metrics of {epochs} epochs"] if epochs else []))
        raise LookalikeError(
            f"--resume {run_dir}: its last.pt is missing, so the run cannot continue where it stopped; "
            f"its {what} are left as they are: train again into a new --out folder")


def write_metrics(history: list[dict], path: Path) -> None:
    """Rewrite metrics.csv from the history (atomic), so a resumed run never duplicates rows."""
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_json(obj: Any, path: Path) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(obj, indent=2) + "\n")


def saved_config(path: Path) -> dict[str, Any]:
    """The run settings in a config.json."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise LookalikeError(f"{path} holds no run config (not written by `lookalike train`, or damaged)")
    return saved["config"]
