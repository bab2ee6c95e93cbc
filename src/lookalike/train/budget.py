"""Time budgets: how many steps fit the time a run is given.

`plan_steps` measures a few real steps before the run, `refit_steps` fits the remaining steps again after every
epoch to the pace measured since; both count one plain evaluation per epoch and the final, test-time-augmented
one. A last stretch of under a quarter epoch joins the epoch before (`epoch_steps`, `epochs_between`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, NamedTuple

from ..errors import LookalikeError
from .config import RunConfig
from .evaluation import TTA_PASSES
from .optimizers import build_optimizer

# Seconds of a budget left unplanned for what no measurement foresees (a slow write, another process's load): one
# margin for the first plan and every re-fit, a share of the whole budget plus a fixed part.
MARGIN_SHARE, MARGIN_S = 0.015, 2.0


def safety_margin(budget: float) -> float:
    """Seconds of a run's `budget` that its step count leaves free."""
    return MARGIN_SHARE * budget + MARGIN_S


class EpochTiming(NamedTuple):
    """How one epoch spent its time, what `refit_steps` fits the rest of a run by."""

    small_steps: int  # steps trained on small crops
    full_steps: int  # steps trained at full size
    train_s: float  # seconds training
    eval_s: float  # seconds evaluating
    files_s: float  # seconds writing the checkpoint, metrics and plots


def time_training_steps(model, opt, batches: Callable[[int], tuple], warm: int, timed: int, device) -> float:
    """Seconds per training step (batch preparation included), timed after `warm` untimed steps: CPU steps keep
    speeding up over the first few (allocator and oneDNN caches)."""
    import torch
    import torch.nn.functional as F

    t = 0.0
    for i in range(warm + timed):
        if i == warm:
            _sync(device)
            t = time.perf_counter()
        x, y = batches(i)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
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


def refit_steps(timings: list[EpochTiming], seconds_left: float, budget: float, tta: int,
                steps_per_epoch: int, done: int, small_ratio: float = 1.0,
                small_fraction: float = 0.0) -> tuple[int, float]:
    """After an epoch: the step count that fits `seconds_left` at the pace of the last (up to three; the first only
    while it is the only one) epochs' `timings`; and that pace in seconds a full-size step. The probe steps of
    `plan_steps` run before the caches warm and while the whitening bias still learns, so they run slower than
    later steps: this is what lets a run use its whole budget.
    `small_ratio` (a small-crop step's time over a full-size one's, from the probe) splits the pace of epochs
    that mixed both sizes; `small_fraction` is the share of the total still trained on small crops, 0 once that
    phase is over."""
    recent = (timings[1:] or timings)[-3:]  # the first epoch warms up (and trains the whitening bias): slower
    weighted_steps = sum(t.small_steps * small_ratio + t.full_steps for t in recent)
    step_s = sum(t.train_s for t in recent) / max(1.0, weighted_steps)
    eval_s = sum(t.eval_s for t in recent) / len(recent)
    files_s = sum(t.files_s for t in recent) / len(recent)
    # The last epoch's evaluation grows into the TTA one (its plain pass is the first), plus the confusion plot.
    final_s = eval_s * (TTA_PASSES[tta] - 1) + 1.0
    total = steps_that_fit(seconds_left - final_s - safety_margin(budget), step_s, eval_s + files_s, steps_per_epoch,
                           done=done, small_step_s=step_s * small_ratio, small_fraction=small_fraction)
    return max(done + 1, total), step_s


def plan_steps(cfg: RunConfig, model, batches, test, budget_left: float, device, wrap=None,
               eval_share: float = 1.0) -> dict[str, Any]:
    """Measure training and evaluation throughput on a few real steps of a throw-away copy of the model (at both
    sizes when the run starts on small crops), then the largest step count whose training, per-epoch
    evaluations and final (TTA) evaluation fit `budget_left`. `batches` are the run's `Batches`, `test` its
    test split. Data-parallel runs: `wrap` makes the probe model the one every rank trains, so its steps keep the
    group's pace; each rank evaluates `eval_share` of the test set."""
    import torch

    generator = torch.Generator().manual_seed(cfg.seed + 7919)  # the run's own generators stay untouched
    probe = copy.deepcopy(model)
    warm, timed = (2, 6) if device.type == "cpu" else (5, 20)  # a rough pace: each epoch re-fits it
    opt = build_optimizer(probe, cfg)
    probe = wrap(probe) if wrap is not None else probe
    step_s = time_training_steps(probe, opt, lambda i: batches.probe(generator), warm, timed, device)
    small_fraction = cfg.crop_fraction  # `fit` has set crop_size wherever this is > 0
    small_step_s = 0.0
    if small_fraction > 0:
        small_step_s = time_training_steps(probe, opt, lambda i: batches.probe(generator, cfg.crop_size), warm,
                                           timed, device)
    del probe, opt
    eval_img_s = forward_seconds_per_image(model, test, batches, min(len(test), cfg.eval_batch_size), device)
    n_test, spe = len(test) * eval_share, batches.steps_per_epoch
    passes = TTA_PASSES[cfg.tta]
    per_epoch = n_test * eval_img_s + 1.5  # plain evaluation, checkpoint and curves
    final = n_test * eval_img_s * (passes - 1) + 1.5  # the last evaluation's TTA passes, confusion plot
    steps = steps_that_fit(budget_left - final - safety_margin(cfg.time_budget or budget_left), step_s, per_epoch, spe,
                           small_step_s=small_step_s, small_fraction=small_fraction)
    if steps < 1:
        raise LookalikeError(
            f"the time budget is too short: one training step takes {step_s:.2f} s and evaluation "
            f"{n_test * eval_img_s * passes:.1f} s here; give more time or a smaller model"
        )
    plan = {"total_steps": steps, "epochs": steps / spe, "step_seconds": step_s,
            "images_per_second": batches.batch_size / step_s, "eval_seconds_per_epoch": per_epoch,
            "final_eval_seconds": final}
    if small_fraction > 0:
        plan.update(small_step_seconds=small_step_s, small_step_ratio=small_step_s / step_s)
    return plan


def forward_seconds_per_image(model, test, batches, n: int, device) -> float:
    """Seconds of one plain forward pass per test image, timed on the first `n` test images after one untimed
    pass."""
    import torch

    from .augment import to_float

    xb, _ = test.batch(torch.arange(n))
    x = to_float(xb.to(device), batches.mean, batches.std)
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model(x)
        _sync(device)
        t = time.perf_counter()
        model(x)
        _sync(device)
        dt = time.perf_counter() - t
    model.train()
    return dt / n


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
