"""One epoch of a training run: its steps (`train_epoch`), its metrics row (`record_epoch`), and the error that
stops a run whose loss is no longer finite (`diverged`)."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from ..errors import LookalikeError

Event = Callable[[str, Any], None]  # on_event(kind, payload)
DIVERGENCE_CHECK_EVERY = 32  # steps between checks that the loss is finite (each check waits for a GPU)


class EpochTraining(NamedTuple):
    loss_sum: float  # plain cross-entropy summed over the images seen
    correct: int
    seen: int
    lr: float  # the lr of the epoch's last step
    steps: int
    small_steps: int  # steps trained on small crops


def train_epoch(run, batches, train_model, emit: Event) -> EpochTraining:
    """One epoch of training steps (a whole epoch, or the rest of the run when a short tail joins it)."""
    import torch
    import torch.nn.functional as F

    from .budget import epoch_steps
    from .schedules import lr_factor

    cfg, spe, bs, device = run.cfg, run.steps_per_epoch, batches.batch_size, batches.device
    steps = epoch_steps(run.step, run.total_steps, spe)
    order, generator = batches.shuffle(run.epoch, steps)
    emit("epoch_start", {"epoch": run.epoch + 1, "steps": steps})
    sum_loss = cfg.optimizer in ("sgd-sum", "muon")  # both calibrated for a loss summed over the batch
    whiten_bias = getattr(getattr(run.model, "whiten", None), "bias", None)
    freeze_step = int(cfg.whiten_bias_fraction * run.total_steps)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, lr, small_steps = 0, 0.0, 0
    for b in range(steps):
        if whiten_bias is not None:
            whiten_bias.requires_grad_(run.step < freeze_step)
        small = run.step < run.crop_steps
        small_steps += small
        x, y = batches.take(order[b * bs : (b + 1) * bs], generator, run.epoch + (b >= spe),
                            cfg.crop_size if small else None)
        if y.shape[0] == 0:
            continue
        factor = lr_factor(run.step, run.total_steps, spe, cfg.schedule, cfg.milestones or (), cfg.gamma)
        for g in run.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        lr = cfg.lr * factor
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = train_model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="sum" if sum_loss else "mean")
        if hasattr(batches, "scale_loss"):  # data-parallel: this rank's share of the global batch's loss
            loss = batches.scale_loss(loss, y, sum_loss)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.step += 1
        with torch.no_grad():
            loss_sum += F.cross_entropy(logits.detach(), y, reduction="sum").double()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
        if b % DIVERGENCE_CHECK_EVERY == DIVERGENCE_CHECK_EVERY - 1 and not math.isfinite(float(loss_sum)):
            raise diverged(float(loss_sum), run)
        if run.lookahead is not None:
            run.lookahead.step(run.model, run.step, run.total_steps)
        emit("step", {"epoch": run.epoch + 1, "batch": b + 1, "steps": steps})
    if device.type == "cuda":
        torch.cuda.synchronize()
    return EpochTraining(float(loss_sum), int(correct), seen, lr, steps, small_steps)


def diverged(value: float, run) -> LookalikeError:
    epoch = run.epoch
    kept = (f"last.pt and best.pt are as they were after epoch {epoch}" if epoch else "no checkpoint was written")
    return LookalikeError(f"training diverged: the loss became {value} in epoch {epoch + 1} (step {run.step}); "
                          f"{kept}. train again into a new run folder with a lower lr than {run.cfg.lr:.4g}")


def record_epoch(run, trained: EpochTraining, tested: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The epoch's metrics row, added to the run's history; the run counts the epoch as finished."""
    seen = max(1, trained.seen)
    row = {"epoch": run.epoch + 1, "step": run.step, "lr": trained.lr, "train_loss": trained.loss_sum / seen,
           "train_acc": trained.correct / seen, "test_loss": tested["loss"], "test_acc": tested["acc"],
           "seconds": round(seconds, 2)}
    run.history.append(row)
    run.epoch += 1
    return row
