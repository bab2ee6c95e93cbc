"""The training loop: `fit` composes data, model, optimizer, schedule, evaluation and checkpoints.

Determinism and resume: shuffling and augmentation use a generator seeded by (seed, epoch), the schedule is a
pure function of the step, and each epoch ends with an atomic checkpoint holding the model, the optimizer, the
lookahead weights, the step counter, the fixed total step count and the metrics so far. A run killed at any
moment and resumed from `last.pt` therefore repeats the uninterrupted run exactly (same device and threads).

The library never prints: progress goes to the `on_event(kind, payload)` callback.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..atomic import atomic_write
from ..errors import LookalikeError
from .config import TrainConfig, resolve, validate, with_lr_for_length

Event = Callable[[str, Any], None]
METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
LOOKAHEAD_EVERY = 5
TTA_PASSES = {0: 1, 1: 2, 2: 6}  # forward passes per image at each test-time augmentation level
DIVERGENCE_CHECK_EVERY = 32  # steps between checks that the loss is finite (each check waits for a GPU)


# ---------------------------------------------------------------- pieces


def model_kwargs(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"num_classes": num_classes}
    if cfg.model == "fast":
        kw.update(widths=list(cfg.widths), depth=int(cfg.depth), whitening=cfg.whitening)
    return kw


def build_optimizer(model, cfg: TrainConfig):
    """SGD, or Muon for the conv filters. "sgd-sum" is airbench's parametrisation: lr and weight decay per 1024
    examples for a summed loss, decoupled from momentum, and BatchNorm shifts learning `bias_lr_scale` times
    faster."""
    from torch import nn

    cfg = with_lr_for_length(cfg, cfg.epochs or 1)  # no-op once `fit` set the lr for the planned length
    norm_ids = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.bias is not None}
    whiten_bias = getattr(getattr(model, "whiten", None), "bias", None)
    params = [p for p in model.parameters() if p.requires_grad or p is whiten_bias]
    norm = [p for p in params if id(p) in norm_ids]
    other = [p for p in params if id(p) not in norm_ids]
    if cfg.optimizer == "sgd-sum":
        scale = 1024 * (1 + 1 / (1 - cfg.momentum))
        lr = cfg.lr / scale
        wd = cfg.weight_decay * cfg.batch_size / scale
        lr_bias = lr * cfg.bias_lr_scale
        groups = [dict(params=norm, lr=lr_bias, weight_decay=wd / lr_bias),
                  dict(params=other, lr=lr, weight_decay=wd / lr)]
    elif cfg.optimizer == "sgd":
        groups = [dict(params=norm, lr=cfg.lr * cfg.bias_lr_scale, weight_decay=cfg.weight_decay),
                  dict(params=other, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    elif cfg.optimizer == "muon":
        groups = _muon_groups(model, cfg, norm, other)
    else:
        raise LookalikeError(f"unknown optimizer {cfg.optimizer!r}: use sgd, sgd-sum or muon")
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    from .muon import Muon

    if cfg.optimizer == "muon":
        return Muon(groups, nesterov=True)
    # Without orthogonal groups Muon steps exactly like torch.optim.SGD, without SGD's one-off TorchDynamo import.
    return Muon(groups, momentum=cfg.momentum, nesterov=bool(cfg.nesterov and cfg.momentum > 0))


# airbench94_muon's settings for the parameters Muon does not take, for a summed loss: SGD with Nesterov
# momentum 0.85, lr 0.053 for the norm and whitening biases, 0.67 for a unit-variance head divided by its width,
# weight decay 2e-6 per example.
MUON_SGD_MOMENTUM = 0.85
MUON_BIAS_LR = 0.053
MUON_HEAD_LR = 0.67


def _muon_groups(model, cfg: TrainConfig, norm: list, other: list) -> list[dict]:
    filters = [p for p in other if p.ndim == 4]
    rest = [p for p in other if p.ndim != 4]
    head = [p for p in rest if p.ndim == 2]
    biases = norm + [p for p in rest if p.ndim != 2]
    # Our head multiplies by `logit_scale` instead of 1/width: the same logit steps need lr x (1/width / scale)^2.
    width = getattr(model, "num_features", 1)
    head_lr = MUON_HEAD_LR * ((1 / width) / getattr(model, "logit_scale", 1 / width)) ** 2
    wd = cfg.weight_decay * cfg.batch_size  # per example -> per step of a summed loss
    return [dict(params=filters, lr=cfg.lr, momentum=cfg.momentum, orthogonal=True),
            dict(params=biases, lr=MUON_BIAS_LR, momentum=MUON_SGD_MOMENTUM, weight_decay=wd / MUON_BIAS_LR),
            dict(params=head, lr=head_lr, momentum=MUON_SGD_MOMENTUM, weight_decay=wd / head_lr)]


class Lookahead:
    """airbench's lookahead: every few steps the weights move to an average that trails them, with an averaging
    strength that grows through the run (decay 0.95^5 * progress^3); at the end the average replaces the weights."""

    def __init__(self, model, state: Optional[dict] = None):
        live = model.state_dict()
        if state is not None:
            self.avg = {k: state[k].to(live[k].device) for k in live}
        else:
            self.avg = {k: v.detach().clone() for k, v in live.items()}

    def update(self, model, decay: float) -> None:
        import torch

        with torch.no_grad():
            for (k, live), avg in zip(model.state_dict().items(), self.avg.values()):
                if live.is_floating_point():
                    avg.lerp_(live, 1 - decay)
                    live.copy_(avg)


def tta_logits(model, x, level: int):
    """(plain logits, test-time-augmented logits). 0: plain; 1: mean with the mirror image; 2: also with 1-pixel
    shifts (reflect-padded), as airbench. The plain pass is the first of the augmented ones, so one sweep gives
    both."""
    import torch
    import torch.nn.functional as F

    plain = model(x)
    if level == 0:
        return plain, plain
    logits = 0.5 * plain + 0.5 * model(x.flip(-1))
    if level >= 2:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[..., 0:h, 0:w].contiguous(memory_format=torch.channels_last),
                   padded[..., 2 : h + 2, 2 : w + 2].contiguous(memory_format=torch.channels_last)]
        views = [0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted]
        logits = 0.5 * logits + 0.5 * torch.stack(views).mean(0)
    return plain, logits


def evaluate(model, split, mean, std, device, tta: int = 0, batch_size: int = 1000,
             num_classes: Optional[int] = None, images_on_device=None) -> dict[str, Any]:
    """Loss (per sample, plain cross-entropy), accuracy and confusion matrix of `model` on `split` at TTA level
    `tta`; with TTA, also the plain loss and accuracy (`plain_loss`, `plain_acc`) from the same sweep."""
    import torch
    import torch.nn.functional as F

    from .augment import to_float

    was_training = model.training
    model.eval()
    k = num_classes or int(split.labels.max()) + 1
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    plain_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    plain_correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    amp = device.type == "cuda"
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(split)))
            if images_on_device is not None:
                xb, yb = images_on_device[idx.to(device)], split.labels[idx]
            else:
                xb, yb = split.batch(idx)
            if xb.shape[0] == 0:
                continue
            x = to_float(xb.to(device, non_blocking=True), mean, std)
            y = yb.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                plain, logits = (t.float() for t in tta_logits(model, x, tta))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k)
            plain_loss_sum += F.cross_entropy(plain, y, reduction="sum").double()
            plain_correct += (plain.argmax(1) == y).sum()
            n += y.shape[0]
    model.train(was_training)
    cm = confusion.view(k, k).cpu()
    correct = int(cm.diag().sum())
    per_class = (cm.diag().double() / cm.sum(1).clamp_min(1)).tolist()
    return {"loss": float(loss_sum) / max(1, n), "acc": correct / max(1, n), "n": n,
            "plain_loss": float(plain_loss_sum) / max(1, n), "plain_acc": int(plain_correct) / max(1, n),
            "confusion": cm.tolist(), "per_class": per_class}


# ---------------------------------------------------------------- files of a run


def write_metrics(history: list[dict], path: Path) -> None:
    """Rewrite metrics.csv from the history (atomic), so a resumed run never duplicates rows."""
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _diverged(value: float, epoch: int, step: int, cfg: TrainConfig) -> LookalikeError:
    kept = (f"last.pt and best.pt are as they were after epoch {epoch}" if epoch else "no checkpoint was written")
    return LookalikeError(f"training diverged: the loss became {value} in epoch {epoch + 1} (step {step}); {kept}. "
                          f"train again into a new --out with a lower --lr than {cfg.lr:.4g}")


def _saved_config(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise LookalikeError(f"{path} holds no run config (not written by `lookalike train`, or damaged)")
    return saved["config"]


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


def _write_json(obj: Any, path: Path) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- time budget


def time_training_steps(model, opt, batches: Callable[[int], tuple], warm: int, timed: int, device) -> float:
    """Seconds per training step (batch preparation included), timed after `warm` untimed steps: CPU steps keep
    speeding up over the first few (allocator and oneDNN caches)."""
    import torch
    import torch.nn.functional as F

    t = 0.0
    for i in range(warm + timed):
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        x, y = batches(i)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / timed


def _tail_joins(tail: int, steps_per_epoch: int) -> bool:
    """Whether a run's last `tail` steps (after whole epochs) join the epoch before: a last epoch of under a
    quarter epoch would pay a whole evaluation for little training."""
    return tail < steps_per_epoch // 4


def epoch_steps(step: int, total: int, steps_per_epoch: int) -> int:
    """Steps of the epoch that starts at `step`: a whole epoch, or the rest of the run when that is at most one
    epoch plus a tail that joins it (`_tail_joins`; those steps draw from a second shuffle of the data)."""
    spe = max(1, steps_per_epoch)
    rest = total - step
    return rest if rest <= spe or _tail_joins(rest - spe, spe) else spe


def epochs_between(done: int, total: int, steps_per_epoch: int) -> int:
    """How many epochs (and so evaluations) run from step `done` (a whole number of epochs) to `total`."""
    spe = max(1, steps_per_epoch)
    rest = max(0, total - done)
    full, tail = divmod(rest, spe)
    return full if full and _tail_joins(tail, spe) else full + (tail > 0)


def steps_that_fit(avail: float, step_s: float, eval_s: float, steps_per_epoch: int, done: int = 0,
                   small_step_s: float = 0.0, small_fraction: float = 0.0) -> int:
    """The largest step count, counted from 0 with `done` (a whole number of epochs) already taken, whose remaining
    training plus one evaluation of `eval_s` per epoch (`epochs_between`) fits `avail` seconds. A step takes
    `step_s`, except the steps before `small_fraction` of the total, which train on small crops and take
    `small_step_s`."""
    spe = max(1, steps_per_epoch)

    def seconds(total: int) -> float:
        more = total - done
        small = max(0, min(total, math.ceil(small_fraction * total)) - done)
        return small * small_step_s + (more - small) * step_s + epochs_between(done, total, spe) * eval_s

    fits, over = done, done + 1  # `seconds` grows with `total`: the largest fit is found by bisection
    while seconds(over) <= avail:
        fits, over = over, done + 2 * (over - done)
    while over - fits > 1:
        mid = (fits + over) // 2
        fits, over = (mid, over) if seconds(mid) <= avail else (fits, mid)
    return fits


def refit_steps(timings: list[tuple[int, int, float, float, float]], seconds_left: float, budget: float, tta: int,
                steps_per_epoch: int, done: int, small_ratio: float = 1.0,
                small_fraction: float = 0.0) -> tuple[int, float]:
    """After an epoch: the step count that fits `seconds_left` at the pace of the last (up to three; the first only
    while it is the only one) epochs, each timed as (small-crop steps, full-size steps, training s, evaluation s,
    file-writing s); and that pace in seconds a full-size step. The probe steps of `plan_steps` run before the
    caches warm and while the whitening bias still learns, so they run slower than later steps: this is what
    lets a run use its whole budget.
    `small_ratio` (a small-crop step's time over a full-size one's, from the probe) splits the pace of epochs
    that mixed both sizes; `small_fraction` is the share of the total still trained on small crops, 0 once that
    phase is over."""
    recent = (timings[1:] or timings)[-3:]  # the first epoch warms up (and trains the whitening bias): slower
    weighted_steps = sum(t[0] * small_ratio + t[1] for t in recent)
    step_s = sum(t[2] for t in recent) / max(1.0, weighted_steps)
    eval_s, files_s = (sum(t[i] for t in recent) / len(recent) for i in (3, 4))
    # The last epoch's evaluation grows into the TTA one (its plain pass is the first), plus the confusion plot.
    final_s = eval_s * (TTA_PASSES[tta] - 1) + 1.0
    margin = 0.015 * budget + 2.0
    total = steps_that_fit(seconds_left - final_s - margin, step_s, eval_s + files_s, steps_per_epoch, done=done,
                           small_step_s=step_s * small_ratio, small_fraction=small_fraction)
    return max(done + 1, total), step_s


def plan_steps(cfg: TrainConfig, model, batches: Callable[[int, Optional[int]], tuple],
               eval_probe: Callable[[], float], n_train_batches: int, n_test: int, budget_left: float,
               forward_images_per_step: int, device) -> dict[str, Any]:
    """Measure training and evaluation throughput on a few real steps of a throw-away copy of the model (at both
    sizes when the run starts on small crops), then the largest step count whose training, per-epoch
    evaluations and final (TTA) evaluation fit `budget_left`."""
    probe = copy.deepcopy(model)
    warm, timed = (2, 6) if device.type == "cpu" else (5, 20)  # a rough pace: each epoch re-fits it
    opt = build_optimizer(probe, cfg)
    step_s = time_training_steps(probe, opt, lambda i: batches(i, None), warm, timed, device)
    small_fraction = cfg.crop_fraction  # `fit` has set crop_size wherever this is > 0
    small_step_s = 0.0
    if small_fraction > 0:
        small_step_s = time_training_steps(probe, opt, lambda i: batches(i, cfg.crop_size), warm, timed, device)
    del probe, opt
    eval_img_s = eval_probe()  # seconds per image, one plain forward
    passes = TTA_PASSES[cfg.tta]
    per_epoch = n_test * eval_img_s + 1.5  # plain evaluation, checkpoint and curves
    final = n_test * eval_img_s * (passes - 1) + 1.5  # the last evaluation's TTA passes, confusion plot
    steps = steps_that_fit(budget_left - final - (0.04 * budget_left + 2.0), step_s, per_epoch, n_train_batches,
                           small_step_s=small_step_s, small_fraction=small_fraction)
    if steps < 1:
        raise LookalikeError(
            f"--time-budget is too short: one training step takes {step_s:.2f} s and evaluation "
            f"{n_test * eval_img_s * passes:.1f} s here; give more time or a smaller model"
        )
    plan = {"total_steps": steps, "epochs": steps / n_train_batches, "step_seconds": step_s,
            "images_per_second": forward_images_per_step / step_s, "eval_seconds_per_epoch": per_epoch,
            "final_eval_seconds": final}
    if small_fraction > 0:
        plan.update(small_step_seconds=small_step_s, small_step_ratio=small_step_s / step_s)
    return plan


# ---------------------------------------------------------------- fit


def fit(cfg: TrainConfig, run_dir: os.PathLike, resume: bool = False, on_event: Optional[Event] = None,
        started_at: Optional[float] = None, overwrite: bool = False) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`, writing config.json, metrics.csv, curves.png, confusion.png, last.pt and
    best.pt into `run_dir`. Returns the final summary (also written to result.json). A `run_dir` that holds a run
    already is refused unless `resume` (continue it) or `overwrite` (replace that run's files)."""
    import torch
    import torch.nn.functional as F

    from ..datasets import load_data
    from ..device import resolve_device
    from ..models import create_model, get_model_entry
    from . import plots
    from .augment import alternating_flips, augment, to_float
    from .checkpoint import load_resume_state, save_checkpoint
    from .rundir import check_restartable, prepare_new_run
    from .schedules import lr_factor

    t0 = started_at if started_at is not None else time.time()
    emit: Event = on_event or (lambda kind, payload: None)
    run_dir = Path(run_dir)

    state = None
    if resume:
        if not run_dir.is_dir():
            raise LookalikeError(f"--resume {run_dir}: no such run folder")
        if (run_dir / "last.pt").exists():
            state = load_resume_state(run_dir / "last.pt")
            cfg = TrainConfig.from_saved(state["config"])
        elif (run_dir / "config.json").exists():  # killed before its first checkpoint: start it again
            check_restartable(run_dir)
            cfg = TrainConfig.from_saved(_saved_config(run_dir / "config.json"))
        else:
            raise LookalikeError(f"--resume {run_dir}: no last.pt or config.json there, nothing to resume")
    else:
        prepare_new_run(run_dir, overwrite, check_only=True)  # refuse before the data loads
    validate(cfg)

    entry = get_model_entry(cfg.model)
    if entry.kind != "cifar":
        raise LookalikeError(f"model {cfg.model!r} is a {entry.kind} backbone, not trainable here: "
                             "choose one of the cifar models in `lookalike models`")
    device = resolve_device(cfg.device)
    cfg = resolve(cfg, device.type)

    data = load_data(cfg.data, cfg.image_size, progress=lambda m: emit("info", m))
    if data.skipped:
        emit("skipped", list(data.skipped))
    train, test = data.train, data.test
    classes, k = data.classes, len(data.classes)
    n_train = len(train)
    bs = min(cfg.batch_size, n_train)
    spe = max(1, n_train // bs)  # full batches only, like airbench and the usual drop_last loaders
    if cfg.crop_fraction and not cfg.crop_size:  # small crops default to 3/4 of the side (24 px on CIFAR)
        cfg = dataclasses.replace(cfg, crop_size=max(8, round(0.75 * data.input_size)))

    _check_classes(train.labels, test.labels, classes, emit)
    if state is None and not resume:
        prepare_new_run(run_dir, overwrite)  # with --overwrite, the earlier run's files go only now
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs = model_kwargs(cfg, k)
    meta = {"model": cfg.model, "model_kwargs": kwargs, "classes": classes, "mean": list(data.mean),
            "std": list(data.std), "input_size": data.input_size, "epoch": 0}

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **kwargs)
    mean_d = torch.tensor(data.mean, device=device)
    std_d = torch.tensor(data.std, device=device)
    if state is None and hasattr(model, "init_whitening"):
        # An even spread over the training set: class folders are stored class by class.
        # ~5M pixels (5000 CIFAR images) estimate the 2x2 patch covariance well and keep memory small.
        n_white = max(16, 5_000_000 // (data.input_size**2))
        idx = torch.linspace(0, n_train - 1, min(n_train, n_white)).long()
        model.init_whitening(to_float(train.batch(idx)[0], mean_d.cpu(), std_d.cpu(), channels_last=False))
    model = model.to(device=device, memory_format=torch.channels_last)
    if state is not None:
        model.load_state_dict(state["model_state"])

    # Small datasets live on the compute device; the loop then never copies images.
    train_images = train.images.to(device) if (train.in_memory and device.type == "cuda") else None
    test_images = test.images.to(device) if (test.in_memory and device.type == "cuda") else None

    def get_batch(indices, generator, epoch: int = 0, size: Optional[int] = None):
        if train_images is not None:
            xb, yb = train_images[indices.to(device)], train.labels[indices]
        else:
            xb, yb = train.batch(indices)  # a streamed batch may drop unreadable files: flips only for in-memory
        xb = xb.to(device, non_blocking=True)
        flips = None
        if cfg.flip and cfg.alternate_flip and train.in_memory:
            flips = alternating_flips(indices, epoch, cfg.seed, n_train)
        xb = augment(xb, generator, cfg.translate, cfg.flip, cfg.pad_mode, flips=flips, size=size)
        return to_float(xb, mean_d, std_d), yb.to(device, non_blocking=True)

    step, start_epoch, history, best_acc, elapsed_before, train_seconds = 0, 0, [], -1.0, 0.0, 0.0
    plan: dict[str, Any] = {}
    if state is not None:
        sched = state["scheduler"]
        step, total_steps = int(sched["step"]), int(sched["total_steps"])
        crop_steps = int(sched.get("crop_steps", 0))
        start_epoch = int(state["meta"]["epoch"])
        history = list(state["history"])
        best_acc = float(state["best_test_acc"])
        elapsed_before = float(state.get("elapsed", 0.0))
        train_seconds = float(state.get("train_seconds", 0.0))
        plan = dict(state.get("plan") or {})
        torch.set_rng_state(state["rng"]["torch"])
        emit("info", f"resuming {run_dir} after epoch {start_epoch} (step {step} of {total_steps})")
    elif cfg.time_budget:
        plots.load_pyplot()  # a one-off second or two: paid before the pace is measured, not inside an epoch
        probe_gen = torch.Generator().manual_seed(cfg.seed + 7919)

        def probe_batch(i, size=None):
            return get_batch(torch.randperm(n_train, generator=probe_gen)[:bs], probe_gen, size=size)

        def eval_probe() -> float:
            nb = min(len(test), cfg.eval_batch_size)
            xb, _ = test.batch(torch.arange(nb))
            x = to_float(xb.to(device), mean_d, std_d)
            model.eval()
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
            model.train()
            return dt / nb

        budget_left = cfg.time_budget - (time.time() - t0)
        plan = plan_steps(cfg, model, probe_batch, eval_probe, spe, len(test), budget_left, bs, device)
        total_steps = plan["total_steps"]
        emit("plan", plan)
    else:
        total_steps = max(1, math.ceil(cfg.epochs * spe))
    # Muon's lr follows the planned length. Re-plans after each epoch move the schedule's end, not this angle.
    cfg = with_lr_for_length(cfg, total_steps / spe)
    optimizer = build_optimizer(model, cfg)
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, IndexError) as exc:
            raise LookalikeError(f"--resume {run_dir}: the optimizer state in last.pt does not fit the model "
                                 f"({exc})") from None
    lookahead = Lookahead(model, state.get("lookahead") if state else None) if cfg.lookahead else None
    train_model = model
    if cfg.compile and device.type == "cuda":
        train_model = torch.compile(model)
    crop_fraction = cfg.crop_fraction
    if state is None:
        crop_steps = math.ceil(crop_fraction * total_steps)  # the first steps train on small crops
    n_epochs = start_epoch + epochs_between(step, total_steps, spe)

    if state is None:
        _write_json({"config": cfg.to_dict(), "classes": classes, "mean": list(data.mean), "std": list(data.std),
                     "input_size": data.input_size, "total_steps": total_steps, "steps_per_epoch": spe,
                     "batch_size": bs, "train_images": n_train, "test_images": len(test), "plan": plan,
                     "data_source": data.source}, run_dir / "config.json")
    write_metrics(history, run_dir / "metrics.csv")  # drops rows after the checkpoint's epoch

    sum_loss = cfg.optimizer in ("sgd-sum", "muon")  # both calibrated for a loss summed over the batch
    whiten_bias = getattr(getattr(model, "whiten", None), "bias", None)
    freeze_step = int(cfg.whiten_bias_fraction * total_steps)
    t_start = t0  # the seconds column counts start-up, data loading and planning too
    model.train()
    emit("start", {"epochs": n_epochs, "total_steps": total_steps, "steps_per_epoch": spe, "start_epoch": start_epoch,
                   "step": step, "device": str(device), "config": cfg.to_dict()})

    replan = bool(cfg.time_budget) and plan.get("total_steps") is not None
    # Per epoch: small-crop steps, full-size steps; seconds training, evaluating, writing files.
    timings: list[tuple[int, int, float, float, float]] = []
    epoch = start_epoch
    final = None
    while epoch < n_epochs:
        if replan and timings:
            seconds_left = cfg.time_budget - elapsed_before - (time.time() - t0)  # a resumed run spent some already
            cropping = step < crop_steps  # while small crops last, their share of the new total stays the same
            new_total, step_s = refit_steps(timings, seconds_left, cfg.time_budget, cfg.tta, spe, done=step,
                                            small_ratio=plan.get("small_step_ratio", 1.0),
                                            small_fraction=crop_fraction if cropping else 0.0)
            if new_total != total_steps:
                total_steps = new_total
                if cropping:
                    crop_steps = math.ceil(crop_fraction * total_steps)
                n_epochs = epoch + epochs_between(step, total_steps, spe)
                freeze_step = int(cfg.whiten_bias_fraction * total_steps)
                plan.setdefault("replans", []).append({"after_epoch": epoch, "total_steps": total_steps})
                emit("replan", {"after_epoch": epoch, "total_steps": total_steps, "epochs": total_steps / spe,
                                "step_seconds": step_s})
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(n_train, generator=gen)
        steps_now = epoch_steps(step, total_steps, spe)
        if steps_now > spe:  # the run's last few steps joined this epoch: they draw from a second shuffle
            perm = torch.cat([perm[: spe * bs], torch.randperm(n_train, generator=gen)])
        emit("epoch_start", {"epoch": epoch + 1, "steps": steps_now})
        loss_acc = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        lr_now = 0.0
        small_steps = 0
        t_epoch = time.perf_counter()
        for b in range(steps_now):
            if whiten_bias is not None:
                whiten_bias.requires_grad_(step < freeze_step)
            small = step < crop_steps
            small_steps += small
            x, y = get_batch(perm[b * bs : (b + 1) * bs], gen, epoch + (b >= spe), cfg.crop_size if small else None)
            if y.shape[0] == 0:
                continue
            factor = lr_factor(step, total_steps, spe, cfg.schedule, cfg.milestones or (), cfg.gamma)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            lr_now = cfg.lr * factor
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = train_model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing,
                                   reduction="sum" if sum_loss else "mean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            with torch.no_grad():
                loss_acc += F.cross_entropy(logits.detach(), y, reduction="sum").double()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.shape[0]
            if b % DIVERGENCE_CHECK_EVERY == DIVERGENCE_CHECK_EVERY - 1 and not math.isfinite(float(loss_acc)):
                raise _diverged(float(loss_acc), epoch, step, cfg)
            if lookahead is not None:
                if step % LOOKAHEAD_EVERY == 0:
                    lookahead.update(model, decay=0.95**5 * (step / total_steps) ** 3)
                if step == total_steps:
                    lookahead.update(model, decay=1.0)  # end on the averaged weights
            emit("step", {"epoch": epoch + 1, "batch": b + 1, "steps": steps_now})

        if device.type == "cuda":
            torch.cuda.synchronize()
        t_trained = time.perf_counter()
        train_seconds += t_trained - t_epoch  # the optimisation alone, without evaluation and files
        # The last epoch's plain evaluation is the first pass of the final, test-time-augmented one.
        ev = evaluate(model, test, mean_d, std_d, device, tta=cfg.tta if step >= total_steps else 0,
                      batch_size=cfg.eval_batch_size, num_classes=k, images_on_device=test_images)
        if step >= total_steps:
            final = ev
            ev = {"loss": final["plain_loss"], "acc": final["plain_acc"]}
        for value in (float(loss_acc), ev["loss"], final["loss"] if final else 0.0):
            if not math.isfinite(value):  # before any file: best.pt and last.pt keep the last finite epoch
                raise _diverged(value, epoch, step, cfg)
        t_evaluated = time.perf_counter()
        seconds = elapsed_before + (time.time() - t_start)
        row = {"epoch": epoch + 1, "step": step, "lr": lr_now, "train_loss": float(loss_acc) / max(1, seen),
               "train_acc": int(correct) / max(1, seen), "test_loss": ev["loss"], "test_acc": ev["acc"],
               "seconds": round(seconds, 2)}
        history.append(row)
        meta = {**meta, "epoch": epoch + 1, "test_acc": ev["acc"], "config": cfg.to_dict()}
        ckpt = {"meta": meta, "model_state": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {"kind": cfg.schedule, "step": step, "total_steps": total_steps, "steps_per_epoch": spe,
                              "crop_steps": crop_steps},
                "lookahead": lookahead.avg if lookahead is not None else None,
                "rng": {"torch": torch.get_rng_state()}, "history": history,
                "best_test_acc": max(best_acc, ev["acc"]), "elapsed": seconds, "train_seconds": train_seconds, "config": cfg.to_dict(), "plan": plan}
        if device.type == "cuda":
            ckpt["rng"]["cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(ckpt, run_dir / "last.pt")
        if ev["acc"] > best_acc:
            best_acc = ev["acc"]
            save_checkpoint({"meta": meta, "model_state": model.state_dict()}, run_dir / "best.pt")
        # After the checkpoint: metrics.csv never runs ahead of what a resume can restore.
        write_metrics(history, run_dir / "metrics.csv")
        plots.plot_curves(history, run_dir / "curves.png")
        emit("epoch", row)
        timings.append((small_steps, max(1, steps_now) - small_steps, t_trained - t_epoch, t_evaluated - t_trained,
                        time.perf_counter() - t_evaluated))
        epoch += 1

    if final is None:  # resumed after the last epoch's checkpoint
        final = evaluate(model, test, mean_d, std_d, device, tta=cfg.tta, batch_size=cfg.eval_batch_size,
                         num_classes=k, images_on_device=test_images)
    plots.plot_confusion(final["confusion"], classes, run_dir / "confusion.png",
                         title=f"Confusion matrix (test, accuracy {100 * final['acc']:.2f}%)")
    seconds = elapsed_before + (time.time() - t_start)
    result = {
        "run_dir": str(run_dir), "model": cfg.model, "device": str(device),
        "test_acc": final["acc"], "test_loss": final["loss"], "tta": cfg.tta,
        "last_epoch_test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max([best_acc, final["acc"]]),
        "epochs": len(history), "steps": step, "seconds": round(seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.time() - t0, 2),
        "trend": [round(r["test_acc"], 4) for r in history],
        "per_class": dict(zip(classes, [round(a, 4) for a in final["per_class"]])),
        "confusion": final["confusion"], "classes": classes,
        "skipped": list(data.skipped), "time_budget": cfg.time_budget, "plan": plan,
    }
    _write_json(result, run_dir / "result.json")
    return result
