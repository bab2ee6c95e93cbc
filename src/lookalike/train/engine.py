"""The training loop: `fit` composes data, model, optimizer, schedule, evaluation and checkpoints.

Each epoch trains (`epoch.train_epoch`), evaluates, and saves the run's state (`state.RunState`) atomically as
last.pt before metrics.csv and the plots, so a run killed at any moment and resumed from last.pt repeats the
uninterrupted run exactly (same device and threads): batches come from generators seeded by (seed, epoch)
(`batches.Batches`) and the schedule is a pure function of the step.

The library never prints: progress goes to the `on_event(kind, payload)` callback.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import LookalikeError
from .config import ConfigError, RunConfig, TrainConfig, resolve, validate, with_planned_length
from .epoch import Event, EpochTraining, diverged, record_epoch, train_epoch

if TYPE_CHECKING:
    from .budget import EpochTiming


def fit(cfg: TrainConfig, run_dir: os.PathLike, resume: bool = False, on_event: Optional[Event] = None,
        started_at: Optional[float] = None, overwrite: bool = False, group=None) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`, writing config.json, metrics.csv, curves.png, confusion.png, last.pt and
    best.pt into `run_dir`. Returns the final summary (also written to result.json). A `run_dir` that holds a run
    already is refused unless `resume` (continue it) or `overwrite` (replace that run's files), and so is one
    where another process trains (`runlock`), from the first check to the last write.
    `group` (`distributed.join()`): data-parallel training under torchrun (`train/distributed.py`); only rank 0
    writes files and emits events."""
    import contextlib

    from ..distributed import Group
    from .runlock import hold_run_dir

    group = group or Group()
    with contextlib.ExitStack() as held:
        refused = None
        if group.is_main:
            try:
                held.enter_context(hold_run_dir(Path(run_dir), new=not resume))
            except LookalikeError as exc:
                refused = exc
        if group.same(str(refused) if refused else None):  # every rank stops when rank 0 cannot hold the folder
            raise refused or LookalikeError(f"{run_dir}: the run folder cannot be used")
        return _fit(cfg, Path(run_dir), resume, on_event, started_at, overwrite, group)


@dataclasses.dataclass
class _Setup:
    """What a run has decided and built before its first epoch (`_prepare`)."""

    cfg: RunConfig  # resolved once; a time budget then sets Muon's lr for the planned length
    run_dir: Path
    group: Any
    emit: Event
    t0: float  # when the run started: the seconds column counts start-up too
    device: Any
    data: Any
    batches: Any
    model: Any
    meta: dict[str, Any]
    probed: Any  # a pretrained backbone's linear probe: the run's "epoch 0" (every rank fits the same one), or None


def _fit(cfg: TrainConfig, run_dir: Path, resume: bool, on_event: Optional[Event], started_at: Optional[float],
         overwrite: bool, group) -> dict[str, Any]:
    """`fit` in the run folder it holds: prepare, start or resume the run, train the epochs left, finish."""
    from .rundir import write_metrics

    emit: Event = (on_event if group.is_main else None) or (lambda kind, payload: None)
    t0 = started_at if started_at is not None else time.time()
    saved, request = _open_run(cfg, run_dir, resume, overwrite)
    setup = _prepare(request, run_dir, overwrite, group, emit, t0, new_run=saved is None and not resume,
                     initialise=saved is None)
    run = _resume_run(setup, saved) if saved is not None else _start_run(setup, request)
    if saved is None and group.is_main:
        _write_config(setup, run)
    if setup.probed is not None:
        _record_probe(setup, run)
    if group.is_main:
        write_metrics(run.history, run_dir / "metrics.csv")  # drops rows after the checkpoint's epoch
    evaluate_test = _test_evaluator(setup)
    final = _train_epochs(setup, run, evaluate_test)
    return _finish(setup, run, final, evaluate_test)


def _prepare(request: TrainConfig, run_dir: Path, overwrite: bool, group, emit: Event, t0: float, new_run: bool,
             initialise: bool) -> _Setup:
    """Device, data, the run's settings (resolved once, from the request and the data), the run folder and the
    model. `new_run`: not a resume; `initialise`: the model starts from scratch (no checkpoint to resume)."""
    from . import distributed as ddp

    from ..device import resolve_device
    from .batches import Batches
    from .rundir import prepare_new_run

    device = group.device(resolve_device(request.device))
    with group.main_first():  # rank 0 fills the tensor cache, the others read it
        data = _load_data(request, emit)
    cfg = resolve(_fit_request_to_data(request, data), device.type, data.input_size)
    if group.is_main:
        if new_run:
            prepare_new_run(run_dir, overwrite)  # with --overwrite, the earlier run's files go only now
        run_dir.mkdir(parents=True, exist_ok=True)
    batches = Batches(data.train, cfg, min(cfg.batch_size, len(data.train)), data.mean, data.std, device)
    batches = ddp.shard_batches(batches, group)
    probed = None
    if cfg.pretrained:
        from .probe import build_pretrained

        model, meta, probed = build_pretrained(cfg, data, batches, initialise=initialise, emit=emit)
    else:
        model, meta = _build_model(cfg, data, batches, initialise=initialise)
    return _Setup(cfg, run_dir, group, emit, t0, device, data, batches, model, meta, probed)


def _resume_run(s: _Setup, saved: dict[str, Any]):
    from .state import RunState

    run = RunState.resume(saved, s.cfg, s.meta, s.model, s.batches.steps_per_epoch, s.run_dir)
    s.emit("info", f"resuming {s.run_dir} after epoch {run.epoch} (step {run.step} of {run.total_steps})")
    return run


def _start_run(s: _Setup, request: TrainConfig):
    """A new run's state: its length, planned to the time budget when there is one."""
    from . import distributed as ddp
    from . import plots
    from .budget import plan_steps
    from .state import RunState

    cfg, spe = s.cfg, s.batches.steps_per_epoch
    plan = {}
    if cfg.time_budget and not (cfg.pretrained and not cfg.finetune):
        plots.load_pyplot()  # a one-off cost: paid before the pace is measured, not inside an epoch
        plan = plan_steps(cfg, s.model, s.batches, s.data.test, cfg.time_budget - (time.time() - s.t0), s.device,
                          wrap=lambda m: ddp.wrap(m, s.group, s.device), eval_share=1 / s.group.size)
        plan = s.group.same(plan)  # rank 0's pace: its probe steps waited for the whole group
        s.emit("plan", plan)
    total_steps = plan["total_steps"] if plan else max(1, math.ceil(cfg.epochs * spe))
    if cfg.pretrained and not cfg.finetune:
        total_steps = 0  # the linear probe is the whole run
    # Muon's lr follows the planned length. Re-plans after each epoch move the schedule's end, not this angle.
    s.cfg = with_planned_length(cfg, request, total_steps / spe)
    return RunState.start(s.cfg, s.meta, s.model, spe, total_steps, plan)


def _write_config(s: _Setup, run) -> None:
    from .rundir import write_json

    data = s.data
    write_json({"config": s.cfg.to_dict(), "classes": data.classes, "mean": list(data.mean),
                "std": list(data.std), "input_size": data.input_size, "total_steps": run.total_steps,
                "steps_per_epoch": s.batches.steps_per_epoch, "batch_size": s.batches.batch_size,
                "train_images": len(data.train), "test_images": len(data.test), "plan": run.plan,
                "data_source": data.source, "world_size": s.group.size, "layout": data.layout},
               s.run_dir / "config.json")


def _record_probe(s: _Setup, run) -> None:
    """The linear probe's row, saved at once: a fine-tune interrupted later resumes after the probe."""
    from . import plots
    from .rundir import write_metrics

    run.history.append({**s.probed.row, "seconds": round(time.time() - s.t0, 2)})
    run.plan["probe_weight_decay"] = s.probed.weight_decay
    if s.group.is_main:
        run.save(s.run_dir, s.probed.evaluation["acc"], time.time() - s.t0)
        write_metrics(run.history, s.run_dir / "metrics.csv")
        plots.plot_curves(run.history, s.run_dir / "curves.png")
    s.emit("epoch", run.history[-1])


def _test_evaluator(s: _Setup) -> Callable[..., dict[str, Any]]:
    """`evaluate` on this rank's share of the test split, called with `tta`."""
    from . import distributed as ddp
    from .evaluation import evaluate

    test = ddp.shard_split(s.data.test, s.group)
    test_images = test.images.to(s.device) if (test.in_memory and s.device.type == "cuda") else None
    return functools.partial(evaluate, s.model, test, s.batches.mean, s.batches.std, s.device,
                             batch_size=s.cfg.eval_batch_size, num_classes=len(s.data.classes),
                             images_on_device=test_images, reduce=ddp.reducer(s.group))


def _train_epochs(s: _Setup, run, evaluate_test: Callable[..., dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The epochs left to train, each evaluated and saved; the final (test-time-augmented) evaluation when the
    last epoch ran here, else None."""
    import torch

    from . import distributed as ddp
    from .budget import EpochTiming

    cfg, group, device = s.cfg, s.group, s.device
    train_model = torch.compile(s.model) if cfg.compile and device.type == "cuda" else s.model
    train_model = ddp.wrap(train_model, group, device)  # data-parallel: DDP, BatchNorm synchronised
    s.model.train()
    s.emit("start", {"epochs": run.n_epochs, "total_steps": run.total_steps,
                     "steps_per_epoch": s.batches.steps_per_epoch, "start_epoch": run.epoch, "step": run.step,
                     "device": str(device), "config": cfg.to_dict()})
    refit = bool(cfg.time_budget) and run.plan.get("total_steps") is not None
    timings: list[EpochTiming] = []  # per epoch, see `budget.refit_steps`
    final = None
    while run.epoch < run.n_epochs:
        if refit and timings:  # every rank fits to rank 0's clock, so all agree on the steps left
            _refit_to_budget(run, timings,
                             group.same(cfg.time_budget - run.elapsed_before - (time.time() - s.t0)), s.emit)
        t_epoch = time.perf_counter()
        trained = ddp.reduce_epoch(train_epoch(run, s.batches, train_model, s.emit), group)
        t_trained = time.perf_counter()
        run.train_seconds += t_trained - t_epoch
        # The last epoch's plain evaluation is the first pass of the final, test-time-augmented one.
        if run.step >= run.total_steps:
            final = evaluate_test(tta=cfg.tta)
            tested = {"loss": final["plain_loss"], "acc": final["plain_acc"]}
        else:
            tested = evaluate_test(tta=0)
        for value in (trained.loss_sum, tested["loss"], final["loss"] if final else 0.0):
            if not math.isfinite(value):  # before any file: best.pt and last.pt keep the last finite epoch
                raise diverged(value, run)
        t_evaluated = time.perf_counter()
        _end_epoch(s, run, trained, tested)
        # Every rank re-plans from rank 0's timings, so all agree on the steps left.
        small, full, train_s, eval_s, files_s = group.same([
            trained.small_steps, max(1, trained.steps) - trained.small_steps,
            t_trained - t_epoch, t_evaluated - t_trained, time.perf_counter() - t_evaluated])
        timings.append(EpochTiming(small_steps=int(small), full_steps=int(full), train_s=train_s, eval_s=eval_s,
                                   files_s=files_s))
    return final


def _end_epoch(s: _Setup, run, trained: EpochTraining, tested: dict[str, Any]) -> None:
    """The epoch's row in the history; rank 0 saves the run, then metrics.csv and the curves."""
    from . import plots
    from .rundir import write_metrics

    seconds = run.elapsed_before + (time.time() - s.t0)
    row = record_epoch(run, trained, tested, seconds)
    if s.group.is_main:
        run.save(s.run_dir, tested["acc"], seconds)
        # After the checkpoint: metrics.csv never runs ahead of what a resume can restore.
        write_metrics(run.history, s.run_dir / "metrics.csv")
        plots.plot_curves(run.history, s.run_dir / "curves.png")
    else:
        run.best_acc = max(run.best_acc, tested["acc"])
    s.emit("epoch", row)


def _finish(s: _Setup, run, final: Optional[dict[str, Any]],
            evaluate_test: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The final evaluation (unless the last epoch made it here), the confusion plot and result.json."""
    from . import plots
    from .rundir import write_json

    if final is None and s.probed is not None and run.total_steps == 0:
        final = s.probed.evaluation  # the probe scored the held-out features already
    if final is None:  # resumed after the last epoch's checkpoint
        final = evaluate_test(tta=s.cfg.tta)
    if s.group.is_main:
        plots.plot_confusion(final["confusion"], s.data.classes, s.run_dir / "confusion.png",
                             title=f"Confusion matrix (test, accuracy {100 * final['acc']:.2f}%)")
    result = _summary(run, final, s.data, s.device, s.run_dir, seconds=run.elapsed_before + (time.time() - s.t0),
                      wall_seconds=time.time() - s.t0)
    result["world_size"] = s.group.size
    if s.group.is_main:
        write_json(result, s.run_dir / "result.json")
    return result


# ---------------------------------------------------------------- the steps of `fit`


def _open_run(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool):
    """(the resume state of last.pt or None, the config to run): a resumed run takes its saved config."""
    from .checkpoint import load_resume_state
    from .rundir import check_restartable, prepare_new_run, saved_config

    saved = None
    if not resume and not cfg.data:
        raise ConfigError("data", "is required: 'cifar10', a cifar-10-batches-py folder or a folder with train/ "
                          "and test/")
    if resume:
        if not run_dir.is_dir():
            raise LookalikeError(f"--resume {run_dir}: no such run folder")
        if (run_dir / "last.pt").exists():
            saved = load_resume_state(run_dir / "last.pt")
            cfg = TrainConfig.from_saved(saved["config"])
        elif (run_dir / "config.json").exists():  # killed before its first checkpoint: start it again
            check_restartable(run_dir)
            cfg = TrainConfig.from_saved(saved_config(run_dir / "config.json"))
        else:
            raise LookalikeError(f"--resume {run_dir}: no last.pt or config.json there, nothing to resume")
    else:
        prepare_new_run(run_dir, overwrite, check_only=True)  # refuse before the data loads
    validate(cfg)
    from ..models import DEFAULT_MODEL, get_model_entry
    from .probe import check_pretrained_request

    if cfg.model != "auto":
        problem = check_pretrained_request(cfg.model, bool(cfg.pretrained), get_model_entry(cfg.model).kind)
        if problem:
            raise LookalikeError(problem)
    elif cfg.pretrained:
        cfg = dataclasses.replace(cfg, model=DEFAULT_MODEL)
    if cfg.pretrained and not resume:  # before any photo is decoded: offline, a missing download stops at once
        from .probe import ensure_weights

        ensure_weights(cfg.model)
    if cfg.pretrained and cfg.image_size is None:
        from ..datasets import typical_side
        from .probe import pretrained_input_side

        cfg = dataclasses.replace(cfg, image_size=pretrained_input_side(cfg.model, typical_side(cfg.data or "")))
    return saved, cfg


def _fit_request_to_data(request: TrainConfig, data) -> TrainConfig:
    """The request once the data is known: `auto` picks `fast` for images up to 64 px and `photo` above; the split
    made of a single folder is recorded; a pretrained backbone normalises as its weights were trained."""
    changes: dict[str, Any] = {}
    if request.model == "auto":
        from ..datasets import model_for_side

        changes["model"] = model_for_side(data.input_size)
    if data.layout.get("val_fraction"):
        changes["val_fraction"] = data.layout["val_fraction"]
    if request.pretrained:
        from .probe import pretrained_preprocess

        pre = pretrained_preprocess(request.model)
        data.mean, data.std = tuple(pre["mean"]), tuple(pre["std"])
    return dataclasses.replace(request, **changes) if changes else request


def _load_data(cfg: TrainConfig, emit: Event):
    from ..datasets import load_data

    data = load_data(cfg.data, cfg.image_size, progress=lambda m: emit("info", m),
                     val_fraction=cfg.val_fraction or None, cache_bytes=_cache_budget())
    if data.skipped:
        emit("skipped", list(data.skipped))
    _check_classes(data.train.labels, data.test.labels, data.classes, emit)
    return data


def _cache_budget():
    """Bytes of decoded photos kept in memory-mapped caches: $LOOKALIKE_CACHE_MB, else the default."""
    mb = os.environ.get("LOOKALIKE_CACHE_MB", "").strip()
    if not mb:
        return None
    try:
        return max(0, int(float(mb) * (1 << 20)))
    except ValueError:
        raise LookalikeError(f"LOOKALIKE_CACHE_MB must be a number of megabytes, got {mb!r}") from None


def _check_classes(train_labels, test_labels, classes: list[str], emit: Event) -> None:
    """A classifier needs two classes to learn from; classes missing from a split are named."""
    import torch

    k = len(classes)
    in_train = torch.bincount(train_labels, minlength=k)[:k]
    in_test = torch.bincount(test_labels, minlength=k)[:k]
    learnable = int((in_train > 0).sum())
    if learnable < 2:
        only = f" ({classes[int(in_train.argmax())]})" if learnable else ""
        raise LookalikeError(f"the training images hold {learnable} class{'' if learnable == 1 else 'es'}{only}: "
                             "a classifier needs at least two, one sub-folder of train/ and test/ per class")
    missing = [c for c, n in zip(classes, in_train.tolist()) if n == 0]
    if missing:
        emit("warning", f"no readable training images for {', '.join(missing)}: the model cannot predict "
                        f"{'it' if len(missing) == 1 else 'them'}")
    untested = [c for c, n in zip(classes, in_test.tolist()) if n == 0]
    if untested:
        emit("warning", f"no readable test images for {', '.join(untested)}: accuracy leaves "
                        f"{'it' if len(untested) == 1 else 'them'} out")



def _build_model(cfg: RunConfig, data, batches, initialise: bool):
    """(the model on the training device, the meta that its checkpoints carry). A new run's whitening layer is
    fitted to the training images; a resumed one takes its weights from last.pt."""
    import torch

    from ..models import create_model
    from .augment import to_float

    kwargs: dict[str, Any] = {"num_classes": len(data.classes)}
    if cfg.model == "fast":
        kwargs.update(widths=list(cfg.widths), depth=int(cfg.depth), whitening=cfg.whitening)
    elif cfg.model == "photo":
        kwargs.update(widths=list(cfg.widths), depth=int(cfg.depth))
    meta = {"model": cfg.model, "model_kwargs": kwargs, "classes": data.classes, "mean": list(data.mean),
            "std": list(data.std), "input_size": data.input_size, "epoch": 0}
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **kwargs)
    if initialise and hasattr(model, "init_whitening"):
        # An even spread over the training set: class folders are stored class by class.
        # ~5M pixels (5000 CIFAR images) estimate the 2x2 patch covariance well and keep memory small.
        n = len(data.train)
        idx = torch.linspace(0, n - 1, min(n, max(16, 5_000_000 // (data.input_size**2)))).long()
        model.init_whitening(to_float(data.train.batch(idx)[0], batches.mean.cpu(), batches.std.cpu(),
                                      channels_last=False))
    return model.to(device=batches.device, memory_format=torch.channels_last), meta


def _refit_to_budget(run, timings: list[EpochTiming], seconds_left: float, emit: Event) -> None:
    """After an epoch of a time-budgeted run: fit the remaining steps to the time left at the measured pace."""
    from .budget import epochs_between, refit_steps

    cfg, spe = run.cfg, run.steps_per_epoch
    cropping = run.step < run.crop_steps  # while small crops last, their share of the new total stays the same
    total, step_s = refit_steps(timings, seconds_left, cfg.time_budget, cfg.tta, spe, done=run.step,
                                small_ratio=run.plan.get("small_step_ratio", 1.0),
                                small_fraction=cfg.crop_fraction if cropping else 0.0)
    if total == run.total_steps:
        return
    run.total_steps = total
    if cropping:
        run.crop_steps = math.ceil(cfg.crop_fraction * total)
    run.n_epochs = run.epoch + epochs_between(run.step, total, spe)
    run.plan.setdefault("replans", []).append({"after_epoch": run.epoch, "total_steps": total})
    emit("replan", {"after_epoch": run.epoch, "total_steps": total, "epochs": total / spe, "step_seconds": step_s})


def _summary(run, final: dict[str, Any], data, device, run_dir: Path, seconds: float,
             wall_seconds: float) -> dict[str, Any]:
    """result.json: the final (test-time-augmented) evaluation and the run's figures."""
    cfg, classes, history = run.cfg, data.classes, run.history
    return {
        "run_dir": str(run_dir), "model": cfg.model, "device": str(device),
        "test_acc": final["acc"], "test_loss": final["loss"], "tta": cfg.tta,
        "last_epoch_test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max([run.best_acc, final["acc"]]),
        "epochs": len(history), "steps": run.step, "seconds": round(seconds, 2),
        "train_seconds": round(run.train_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "trend": [round(r["test_acc"], 4) for r in history],
        "per_class": dict(zip(classes, [round(a, 4) for a in final["per_class"]])),
        "confusion": final["confusion"], "classes": classes,
        "skipped": list(data.skipped), "time_budget": cfg.time_budget, "plan": run.plan,
    }
