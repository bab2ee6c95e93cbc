"""`lookalike train` and `lookalike evaluate`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from . import app
from ._common import console, out, print_json, warn

_STARTED = time.time()  # the time budget counts from process start: imports and data loading are included


@app.command("train")
def train_command(
    data: Optional[str] = typer.Option(None, "--data", help="'cifar10', a cifar-10-batches-py folder, or DIR with train/<class>/ and test/<class>/ images."),
    model: str = typer.Option("fast", "--model", "-m", help="A cifar model from `lookalike models`: fast (default), lab, resnet18."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs (fractions allowed). Default: the model's recipe."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall time for training + evaluation, e.g. 5m: throughput is measured on the first steps and the step count fitted to it."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Training batch size."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd, sgd-sum (airbench's parametrisation; fast on a GPU) or muon (orthogonalised conv-filter updates; fast on a CPU)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (sgd-sum: per 1024 examples of a summed loss; muon: the angle of a filter step)."),
    momentum: Optional[float] = typer.Option(None, "--momentum", help="Momentum (muon: of the filter updates)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay (sgd-sum: per 1024 examples, decoupled; muon: per example, for biases and head)."),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="Label smoothing of the training loss."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="step, onecycle, linear, cosine or constant."),
    milestones: Optional[str] = typer.Option(None, "--milestones", help="step schedule: epochs where the lr is multiplied by --gamma, e.g. 5,10."),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="step schedule: lr multiplier at each milestone."),
    widths: Optional[str] = typer.Option(None, "--widths", help="fast: channels of the three conv groups, e.g. 32,128,256 (the CPU default; 32,64,128 under a 10-minute budget; GPU 64,256,256)."),
    depth: Optional[int] = typer.Option(None, "--depth", help="fast: convolutions per group (2; 3 is deeper and slower)."),
    whitening: Optional[str] = typer.Option(None, "--whitening", help="fast: first layer 'linear' (12 whitened channels: faster steps; the default for CPU budgets under 10 minutes) or 'pairs' (airbench's +/- pairs with a GELU: more accuracy per epoch; the default otherwise)."),
    translate: Optional[int] = typer.Option(None, "--translate", help="Random shift augmentation in pixels (0: off)."),
    crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Side in pixels of the small random crops that the first --crop-fraction of the steps train on (default 3/4 of the image side); steps run faster, testing stays at full size."),
    crop_fraction: Optional[float] = typer.Option(None, "--crop-fraction", help="Fraction of the steps trained on --crop-size crops (0: none)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips."),
    lookahead: Optional[bool] = typer.Option(None, "--lookahead/--no-lookahead", help="Lookahead weight averaging."),
    tta: Optional[int] = typer.Option(None, "--tta", help="Final test-time augmentation: 0 none, 1 mirror, 2 mirror + shifts."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Side images are resized to (default: their own size when <= 64 px, else 128)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (shuffling, augmentation, initialisation)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (CUDA only)."),
    run_dir: Optional[Path] = typer.Option(None, "--out", "--run-dir", "-o", help="Run folder (default runs/<model>-<YYYYmmdd-HHMMSS>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out (its checkpoints, metrics, plots and config; nothing else in the folder). Without it such a folder is refused."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout at the end."),
) -> None:
    """Train a classifier on CIFAR-10 or on your own class folders; writes metrics, plots and checkpoints."""
    from ..errors import LookalikeError
    from ..train.config import TrainConfig, parse_duration, parse_list, validate

    if resume is None and not data:
        raise LookalikeError("--data is required (cifar10 or a folder with train/ and test/), or --resume RUNDIR")
    if compile_ and device == "cpu":
        raise LookalikeError("--compile is for CUDA only (it gives no gain on CPU)")
    cfg = TrainConfig(
        data=data or "", model=model, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        momentum=momentum, weight_decay=weight_decay, label_smoothing=label_smoothing, schedule=schedule,
        milestones=parse_list(milestones, float, "--milestones"), gamma=gamma,
        widths=parse_list(widths, int, "--widths"), depth=depth, whitening=whitening, translate=translate, flip=flip,
        crop_size=crop_size, crop_fraction=crop_fraction,
        lookahead=lookahead, tta=tta, image_size=image_size, seed=seed, device=device, compile=compile_,
        time_budget=parse_duration(time_budget) if time_budget else None,
    )
    if schedule and schedule != "step" and milestones:
        raise LookalikeError("--milestones only applies to --schedule step")
    if resume is not None and overwrite:
        raise LookalikeError("--overwrite replaces a run, --resume continues one: give one of them")
    validate(cfg)
    made = None  # a default run folder this command created: removed again if the run never starts
    if resume is not None:
        folder = resume
    elif run_dir is not None:
        folder = run_dir
    else:
        from ..train.rundir import new_run_dir

        folder = made = new_run_dir("runs", model, now=_STARTED)
    try:
        result = _run_with_progress(cfg, folder, resume is not None, overwrite)
    except Exception:
        if made is not None and not any(made.iterdir()):
            made.rmdir()
        raise
    if json_out:
        print_json({k: v for k, v in result.items() if k not in ("confusion",)})
    else:
        _print_summary(result)


def _run_with_progress(cfg, folder: Path, resume: bool, overwrite: bool = False) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..train.engine import fit

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
            console.print(f"training {c['model']} on {payload['device']}: {payload['total_steps']} steps, "
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

    try:
        return fit(cfg, folder, resume=resume, on_event=on_event, started_at=_STARTED, overwrite=overwrite)
    except KeyboardInterrupt:
        progress.stop()
        if (folder / "last.pt").exists() or (folder / "config.json").exists():
            console.print(f"stopped; finished epochs are kept: lookalike train --resume {folder} continues the run",
                          highlight=False, soft_wrap=True)
        raise
    finally:
        progress.stop()


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
    tta: Optional[int] = typer.Option(None, "--tta", help="Test-time augmentation: 0 none, 1 mirror, 2 mirror + shifts (default: the run's)."),
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
