"""One typed config for a training run; each model's recipe fills the settings the user did not give."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from ..errors import LookalikeError

WHITENINGS = ("pairs", "linear")  # the same as lookalike.models.cifar's; this module does not import torch


@dataclass
class TrainConfig:
    data: str = ""                      # "cifar10", a cifar-10-batches-py folder, or DIR with train/ and test/
    model: str = "fast"                 # a registered "cifar" model
    widths: Optional[list[int]] = None  # fast: channels of the three conv groups
    depth: Optional[int] = None         # fast: convs per group
    whitening: Optional[str] = None     # fast: "pairs" (airbench) or "linear" (CPU runs under a 10-minute budget)
    epochs: Optional[float] = None      # may be fractional (airbench trains 9.9 epochs)
    batch_size: Optional[int] = None
    optimizer: Optional[str] = None     # "sgd" (lr as given) or "sgd-sum" (airbench: lr per 1024 examples, summed loss)
    lr: Optional[float] = None
    momentum: Optional[float] = None
    nesterov: Optional[bool] = None
    weight_decay: Optional[float] = None
    bias_lr_scale: Optional[float] = None    # sgd-sum: BatchNorm shifts learn this much faster
    label_smoothing: Optional[float] = None
    schedule: Optional[str] = None      # step, onecycle, linear, cosine, constant
    milestones: Optional[list[float]] = None  # step schedule, in epochs
    gamma: Optional[float] = None
    lookahead: Optional[bool] = None    # airbench's lookahead-style weight averaging every 5 steps
    whiten_bias_fraction: Optional[float] = None  # fast: train the whitening bias for this fraction of the steps
    translate: Optional[int] = None     # random shift in pixels (random crop with padding)
    pad_mode: Optional[str] = None      # "reflect" or "constant"
    flip: Optional[bool] = None
    alternate_flip: Optional[bool] = None  # airbench's alternating flips instead of coin flips
    crop_size: Optional[int] = None     # train the first `crop_fraction` of the steps on random crops this small
    crop_fraction: Optional[float] = None
    tta: Optional[int] = None           # final evaluation: 0 plain, 1 + mirror, 2 + mirror and 1-px shifts
    time_budget: Optional[float] = None  # seconds for training + evaluation; fixes the step count
    image_size: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    compile: bool = False               # torch.compile (CUDA only; no gain on CPU)
    eval_batch_size: Optional[int] = None  # 256 on a CPU (cache-friendly: ~20% faster than 1000), 1000 on a GPU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "TrainConfig":
        """A run's saved (resolved) config. Fields it lacks take the value every run had before they existed,
        not today's recipe default, so a resumed run rebuilds the model its checkpoint holds."""
        return cls.from_dict({**BEFORE_FIELD_EXISTED, **d})


BEFORE_FIELD_EXISTED: dict[str, Any] = {"whitening": "pairs"}


# Recipes. The `fast` net takes its optimizer settings from FAST_OPTIMIZERS: airbench94's SGD (lr 11.5 and weight
# decay 0.0153 per 1024 examples, Nesterov 0.85, triangle schedule, lookahead), Muon after airbench94_muon
# (orthogonalised filter updates, linear decay, no lookahead), or plain SGD. All use label smoothing 0.2 and
# flip+shift TTA.
RECIPES: dict[str, dict[str, Any]] = {
    "lab": dict(epochs=15, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False,
                weight_decay=5e-4, label_smoothing=0.0, schedule="step", milestones=[5, 10], gamma=0.1,
                lookahead=False, translate=4, pad_mode="constant", flip=True, tta=0),
    "resnet18": dict(epochs=15, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                     weight_decay=5e-4, label_smoothing=0.1, schedule="onecycle", milestones=[], gamma=0.1,
                     lookahead=False, translate=4, pad_mode="reflect", flip=True, tta=1),
    "fast": dict(label_smoothing=0.2, milestones=[], gamma=0.1, whiten_bias_fraction=0.3, translate=2,
                 pad_mode="reflect", flip=True, alternate_flip=True, tta=2),
}
PLAIN_SGD = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle", lookahead=False)
FAST_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd-sum": dict(lr=11.5, momentum=0.85, nesterov=True, weight_decay=0.0153, bias_lr_scale=64.0,
                    schedule="onecycle", lookahead=True),
    # No lr: Muon's (the angle of a filter step) follows the run's length, see `muon_lr`. Weight decay is per
    # example (2e-6) and momentum 0.9 averages the noisier small-batch gradients.
    "muon": dict(momentum=0.9, nesterov=True, weight_decay=2e-6, schedule="linear", lookahead=False),
    "sgd": PLAIN_SGD,
}
FAST_GPU = dict(widths=[64, 256, 256], depth=2, whitening="pairs", epochs=9.9, batch_size=1024, optimizer="sgd-sum")
# CPU sizes, measured on CIFAR-10 with 2 cores (benchmarks/train_cifar10.py). At 15 minutes 32,128,256 (11.5
# epochs) beat 32,96,192 (14.7 epochs) and 32,160,320 (8.3 epochs); a 5-minute budget affords so few epochs that
# the narrower 32,64,128 wins. Batch 256 runs ~10% more images/s than 512 on a CPU at the same accuracy per epoch.
# With Muon the 3-, 5- and 15-minute budgets reach 85.41% (mean of 7 runs, 84.89-85.78%), 87.23% (mean of 3
# seeds, 86.93-87.39%) and 90.18/90.12% (seeds 0/1); airbench94's SGD reached 86.18/86.42% and 89.90/89.65% at 5
# and 15 minutes. At 3 minutes, shifts of 1 or 0 pixels, label smoothing 0.1, widths 24,64,128 and less
# whitening-bias training all land within the spread between seeds (README).
FAST_CPU = dict(widths=[32, 128, 256], depth=2, whitening="pairs", epochs=8, batch_size=256, optimizer="muon")
SHORT_BUDGET_S = 600
# Linear whitening makes a CPU step ~1.26x as fast (benchmarks/fast_step.py: no GELU at full resolution, and the
# whitening and first conv run as one 4x4 conv) and has no bias to train, but learns a little less per epoch.
# Short runs gain: a 160-second budget reaches 85.09-85.74% over seeds 0-4, more than the pairs reached in 3
# minutes (mean 85.23%). At 15 minutes linear reached 89.78% (seed 0) against 90.18% with the pairs.
FAST_CPU_SHORT = dict(widths=[32, 64, 128], whitening="linear")
# airbench94_muon takes lr 0.24 at batch 2000 for 200 steps. At batch 256 on CIFAR-10 the best angle shrinks
# with the run: we measured 0.06 best for 2 epochs, 0.03 for the ~8 of a 5-minute budget and 0.025 for the ~11
# of a 15-minute one, which 0.085 / sqrt(epochs) fits within 3%.
MUON_LR_ONE_EPOCH = 0.085
OPTIMIZERS = tuple(FAST_OPTIMIZERS)
GENERIC = dict(epochs=15, batch_size=128, optimizer="sgd", **PLAIN_SGD, label_smoothing=0.1, milestones=[],
               gamma=0.1, translate=4, pad_mode="reflect", flip=True, tta=1)


def resolve(cfg: TrainConfig, device_type: str) -> TrainConfig:
    """Fill every unset field from the model's recipe (the `fast` size depends on the device). Muon's lr stays
    unset: it depends on the run's length, which a time budget only fixes once throughput is measured
    (`with_lr_for_length`)."""
    recipe = dict(RECIPES.get(cfg.model, GENERIC))
    if cfg.model == "fast":
        recipe.update(FAST_GPU if device_type == "cuda" else FAST_CPU)
        if device_type != "cuda" and cfg.time_budget is not None and cfg.time_budget < SHORT_BUDGET_S:
            recipe.update(FAST_CPU_SHORT)
        optimizer = cfg.optimizer or recipe["optimizer"]  # the settings follow the optimizer actually used
        recipe.update(FAST_OPTIMIZERS.get(optimizer, {}), optimizer=optimizer)
    if (cfg.optimizer or recipe.get("optimizer")) == "muon":
        recipe.pop("lr", None)  # another optimizer's lr means nothing to Muon
    recipe.setdefault("eval_batch_size", 1000 if device_type == "cuda" else 256)
    recipe.setdefault("whiten_bias_fraction", 0.0)
    recipe.setdefault("bias_lr_scale", 1.0)
    recipe.setdefault("alternate_flip", False)
    recipe.setdefault("crop_fraction", 0.0)
    d = cfg.to_dict()
    for k, v in recipe.items():
        if d.get(k) is None:
            d[k] = v
    out = TrainConfig.from_dict(d)
    validate(out)
    return out


def muon_lr(epochs: float) -> float:
    """Muon's filter-step angle for a run of `epochs` (at least one): longer runs take smaller steps."""
    return MUON_LR_ONE_EPOCH / math.sqrt(max(1.0, epochs))


def with_lr_for_length(cfg: TrainConfig, epochs: float) -> TrainConfig:
    """`cfg` with its lr set for a run of `epochs` when neither the user nor the recipe fixed one (Muon)."""
    if cfg.lr is not None:
        return cfg
    if cfg.optimizer != "muon":
        raise LookalikeError(f"--lr is needed with --optimizer {cfg.optimizer}")
    return replace(cfg, lr=muon_lr(epochs))


def validate(cfg: TrainConfig) -> None:
    from .schedules import SCHEDULES

    def bad(msg: str) -> None:
        raise LookalikeError(msg)

    if cfg.epochs is not None and cfg.epochs <= 0:
        bad(f"--epochs must be > 0, got {cfg.epochs}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        bad(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        bad(f"--optimizer {cfg.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if cfg.lr is not None and cfg.lr <= 0:
        bad(f"--lr must be > 0, got {cfg.lr}")
    if cfg.schedule is not None and cfg.schedule not in SCHEDULES:
        bad(f"--schedule {cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.gamma is not None and not 0 < cfg.gamma <= 1:
        bad(f"--gamma must be in (0, 1], got {cfg.gamma}")
    if cfg.label_smoothing is not None and not 0 <= cfg.label_smoothing < 1:
        bad(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.tta is not None and cfg.tta not in (0, 1, 2):
        bad(f"--tta must be 0, 1 or 2, got {cfg.tta}")
    if cfg.translate is not None and not 0 <= cfg.translate <= 16:
        bad(f"--translate must be between 0 and 16 pixels, got {cfg.translate}")
    if cfg.crop_size is not None and not 8 <= cfg.crop_size <= 1024:
        bad(f"--crop-size must be between 8 and 1024 pixels, got {cfg.crop_size}")
    if cfg.crop_fraction is not None and not 0 <= cfg.crop_fraction <= 1:
        bad(f"--crop-fraction must be between 0 and 1, got {cfg.crop_fraction}")
    if cfg.widths is not None and (len(cfg.widths) != 3 or min(cfg.widths) < 1):
        bad(f"--widths needs three positive numbers like 32,128,256, got {cfg.widths}")
    if cfg.whitening is not None and cfg.whitening not in WHITENINGS:
        bad(f"--whitening {cfg.whitening!r} is not one of {', '.join(WHITENINGS)}")
    if cfg.depth is not None and not 1 <= cfg.depth <= 4:
        bad(f"--depth must be 1 to 4, got {cfg.depth}")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        bad("--time-budget must be positive")
    if cfg.image_size is not None and not 8 <= cfg.image_size <= 1024:
        bad(f"--image-size must be between 8 and 1024, got {cfg.image_size}")
    if cfg.milestones and any(m <= 0 for m in cfg.milestones):
        bad(f"--milestones must be positive epochs, got {cfg.milestones}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.I)


def parse_duration(text: str) -> float:
    """"5m" -> 300.0, "90s" -> 90.0, "1.5h", or a bare number of seconds."""
    m = _DURATION.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise LookalikeError(f"--time-budget {text!r} is not a duration like 5m, 90s or 1h")
    unit = (m.group(2) or "s").lower()
    return float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]


def parse_list(text: Optional[str], kind=float, option: str = "") -> Optional[list]:
    """"5,10" -> [5.0, 10.0]; a clear error for anything else."""
    if text is None:
        return None
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise LookalikeError(f"{option} {text!r} is not a comma-separated list of numbers") from None
