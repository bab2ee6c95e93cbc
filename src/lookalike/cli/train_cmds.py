"""`lookalike train` and `lookalike evaluate`."""

from __future__ import annotations

import contextlib
import inspect
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import typer

from ._app import app
from ._common import console, out, print_json, warn

_STARTED = time.time()  # the time budget counts from process start: imports and data loading are included


def _train_options() -> list[inspect.Parameter]:
    """The parameters of `lookalike train`: an option for each setting that `RunConfig` offers to the command
    line, then the run's own."""
    from ..train.config import command_line_options

    def option(name: str, kind, default, *flags: str, help: str) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(default, *flags, help=help),
                                 annotation=kind if default is not None else Optional[kind])

    return [*(option(o.field, o.kind, o.default, *o.flags, help=o.help) for o in command_line_options()),
            option("run_dir", Path, None, "--out", "--run-dir", "-o",
                   help="Run folder. [default: runs/<model>-<YYYYmmdd-HHMMSS>]"),
            option("resume", Path, None, "--resume", help="Continue the run in this folder from its last.pt."),
            option("overwrite", bool, False, "--overwrite",
                   help="Replace the run already in --out (its checkpoints, metrics, plots and config; nothing else "
                        "in the folder). Without it such a folder is refused."),
            option("json_out", bool, False, "--json", help="Print one JSON object on stdout at the end."),
            option("nproc", int, None, "--nproc",
                   help="Train with N data-parallel processes on this machine (torchrun; one per GPU with "
                        "--device cuda). --batch-size stays the global batch.")]


def train_command(*, run_dir: Optional[Path], resume: Optional[Path], overwrite: bool, json_out: bool,
                  nproc: Optional[int] = None, **settings) -> None:
    """Train a classifier on CIFAR-10 or on your own class folders; writes metrics, plots and checkpoints."""
    from ..distributed import in_torchrun
    from ..errors import LookalikeError
    from ..train.config import ConfigError

    if resume is not None and overwrite:
        raise LookalikeError("--overwrite replaces a run, --resume continues one: give one of them")
    if nproc is not None and nproc != 1 and not in_torchrun():
        _launch_train(nproc, run_dir, resume, settings.get("model") or "fast")
        return
    try:
        with _sigterm_stops_the_run():
            _train(settings, run_dir, resume, overwrite, json_out)
    except ConfigError as exc:  # the library names the setting; here it is the option that was given
        raise LookalikeError(f"{_FLAGS[exc.field]} {exc.problem}" if exc.field in _FLAGS else str(exc)) from None
    except _Terminated:
        print("terminated", file=sys.stderr)
        raise typer.Exit(143) from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM: the run stops as on Ctrl-C (finished epochs kept, the resume command named, the run folder
    released), and the process ends with the usual 128 + 15."""


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    import signal
    import threading

    from ..distributed import in_torchrun

    if in_torchrun() or threading.current_thread() is not threading.main_thread():
        yield  # a torchrun worker stops as its group decides (`distributed.join`)
        return

    def stop(signum, frame) -> None:
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM is not held up by the unwinding of the first
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launch_train(nproc: int, run_dir: Optional[Path], resume: Optional[Path], model: str) -> None:
    """`--nproc N`: the same command as N torchrun workers. The launcher names the run folder, so that a failure
    can say how to resume it."""
    import sys

    from ..distributed import argv_without_nproc, launch

    args = argv_without_nproc(sys.argv[1:])
    made = None
    folder = resume or run_dir
    if folder is None:
        from ..train.rundir import new_run_dir

        folder = made = new_run_dir("runs", model, now=_STARTED)
        args += ["--out", str(folder)]
    try:
        code = launch(args, nproc, hint=f": lookalike train --resume {folder} --nproc {nproc} continues the run "
                                       "from its last finished epoch")
    finally:
        if made is not None and made.is_dir() and not any(made.iterdir()):
            made.rmdir()
    if code:
        raise typer.Exit(code)


def _train(settings: dict, run_dir: Optional[Path], resume: Optional[Path], overwrite: bool, json_out: bool) -> None:
    from ..distributed import join
    from ..train.config import TrainConfig, command_line_options, parse_option

    parses = {o.field: o.parse for o in command_line_options() if o.parse}
    cfg = TrainConfig(**{name: parse_option(value, parses[name], name) if name in parses and value is not None
                         else value for name, value in settings.items()})
    group = join(cfg.device)  # a group of one outside torchrun
    made = None  # a default run folder this command created: removed again if the run never starts
    if resume is not None:
        folder = resume
    elif run_dir is not None:
        folder = run_dir
    elif group.is_main:
        from ..train.rundir import new_run_dir

        from ..datasets import auto_model
        from ..models import DEFAULT_MODEL

        name = cfg.model if cfg.model != "auto" else (
            DEFAULT_MODEL if cfg.pretrained else auto_model(cfg.data or "", cfg.image_size))
        folder = made = new_run_dir("runs", name, now=_STARTED)
    folder = Path(group.same(str(folder) if group.is_main else None))  # rank 0 names the run for all
    try:
        result = _run_with_progress(cfg, folder, resume is not None, overwrite, group)
    except Exception:
        if made is not None and not any(made.iterdir()):
            made.rmdir()
        raise
    finally:
        group.close()
    if not group.is_main:
        return
    if json_out:
        print_json({k: v for k, v in result.items() if k not in ("confusion",)})
    else:
        _print_summary(result)


_OPTIONS = _train_options()
train_command.__signature__ = inspect.Signature(_OPTIONS)
train_command.__annotations__ = {p.name: p.annotation for p in _OPTIONS}
_FLAGS = {p.name: p.default.param_decls[0].split("/")[0] for p in _OPTIONS}
app.command("train")(train_command)


def _run_with_progress(cfg, folder: Path, resume: bool, overwrite: bool = False, group=None) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..train.engine import fit

    if group is not None and not group.is_main:  # rank 0 prints for the group
        return fit(cfg, folder, resume=resume, started_at=_STARTED, overwrite=overwrite, group=group)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = None

    def on_event(kind: str, payload) -> None:
        nonlocal task
        if kind == "info":
            console.print(payload, highlight=False)
        elif kind == "warning":
            warn(payload)
        elif kind == "skipped":
            for line in payload:
                warn(f"skipped {line}")
        elif kind == "plan":
            small = payload.get("small_step_ratio")
            faster = f" ({1 / small:.1f}x that on small crops)" if small else ""
            console.print(
                f"time budget: {payload['images_per_second']:.0f} training images/s measured{faster}, "
                f"{payload['total_steps']} steps ({payload['epochs']:.2f} epochs) planned", highlight=False)
        elif kind == "replan":
            console.print(
                f"time budget: {payload['step_seconds']:.3f} s a step after epoch {payload['after_epoch']}, "
                f"now {payload['total_steps']} steps ({payload['epochs']:.2f} epochs)", style="dim", highlight=False)
        elif kind == "start":
            c = payload["config"]
            procs = f" x {group.size} processes" if group is not None and group.size > 1 else ""
            console.print(f"training {c['model']} on {payload['device']}{procs}: {payload['total_steps']} steps, "
                          f"{payload['steps_per_epoch']} per epoch, batch {c['batch_size']}, "
                          f"{c['optimizer']} lr {c['lr']:.4g}", highlight=False)
            progress.start()
        elif kind == "epoch_start":
            if task is not None:
                progress.remove_task(task)
            task = progress.add_task(f"epoch {payload['epoch']}", total=payload["steps"])
        elif kind == "step":
            progress.update(task, completed=payload["batch"])
        elif kind == "epoch":
            r = payload
            console.print(
                f"epoch {r['epoch']:>3}  lr {r['lr']:.4g}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
                f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%  {r['seconds']:.1f} s", highlight=False)

    def stop() -> None:
        if progress.live.is_started:  # stopping a display that never started would print an empty line
            progress.stop()

    try:
        return fit(cfg, folder, resume=resume, on_event=on_event, started_at=_STARTED, overwrite=overwrite,
                   group=group)
    except KeyboardInterrupt:
        stop()
        if (folder / "last.pt").exists() or (folder / "config.json").exists():
            console.print(f"stopped; finished epochs are kept: lookalike train --resume {folder} continues the run",
                          highlight=False, soft_wrap=True)
        raise
    finally:
        stop()


def _print_summary(result: dict) -> None:
    trend = " -> ".join(f"{100 * a:.1f}" for a in result["trend"])
    console.print(f"test accuracy by epoch (%): {trend}", highlight=False)
    _per_class_table(result["per_class"])
    out.print(
        f"test accuracy {100 * result['test_acc']:.2f}% (TTA level {result['tta']}), best {100 * result['best_test_acc']:.2f}%, "
        f"{result['epochs']} epochs in {result['seconds']:.1f} s  ->  {result['run_dir']}", highlight=False)


def _per_class_table(per_class: dict) -> None:
    from rich.table import Table

    table = Table("class", "accuracy")
    for name, acc in per_class.items():
        table.add_row(name, f"{100 * acc:.2f}%")
    console.print(table)


@app.command("evaluate")
def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `lookalike train` (best.pt or last.pt)."),
    data: str = typer.Option(..., "--data", help="'cifar10', a cifar-10-batches-py folder, or DIR with test/<class>/ images."),
    tta: Optional[int] = typer.Option(None, "--tta", help="Test-time augmentation: 0 none, 1 mirror, 2 mirror + shifts. [default: the run's]"),
    batch_size: int = typer.Option(500, "--batch-size", "-b", help="Evaluation batch size."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Test accuracy, per-class accuracy and confusion matrix of a checkpoint on a test set."""
    from ..errors import LookalikeError

    if tta is not None and tta not in (0, 1, 2):
        raise LookalikeError(f"--tta must be 0, 1 or 2, got {tta}")
    if batch_size < 1:
        raise LookalikeError(f"--batch-size must be >= 1, got {batch_size}")
    from ..train.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, tta=tta, batch_size=batch_size, device=device,
                                 on_info=lambda m: console.print(m, highlight=False))
    for line in result["skipped"]:
        warn(f"skipped {line}")
    if json_out:
        print_json(result)
        return
    from rich.table import Table

    _per_class_table(result["per_class"])
    classes = result["classes"]
    cm = Table("true \\ predicted", *[c[:8] for c in classes], title="confusion matrix")
    for name, row in zip(classes, result["confusion"]):
        cm.add_row(name, *[str(v) for v in row])
    console.print(cm)
    out.print(f"test accuracy {100 * result['test_acc']:.2f}% on {result['n']} images (TTA level {result['tta']})",
              highlight=False)
