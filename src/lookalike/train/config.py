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


# The command-line option of each field, for messages that both CLI and Python callers can act on.
OPTIONS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum",
           "weight_decay": "--weight-decay", "label_smoothing": "--label-smoothing", "gamma": "--gamma",
           "milestones": "--milestones", "widths": "--widths", "depth": "--depth", "translate": "--translate",
           "crop_size": "--crop-size", "crop_fraction": "--crop-fraction", "tta": "--tta",
           "time_budget": "--time-budget", "image_size": "--image-size", "seed": "--seed", "optimizer": "--optimizer",
           "schedule": "--schedule", "whitening": "--whitening", "flip": "--flip", "lookahead": "--lookahead",
           "model": "--model", "data": "--data", "device": "--device", "compile": "--compile"}

MAX_SEED = 2**32 - 1
# Numeric fields: (integer?, lowest, highest, lowest allowed?, highest allowed?). Every number must be finite; the
# highest values are far beyond any useful run, there to turn typos into errors rather than hours of work.
_RANGES: dict[str, tuple[bool, float, float, bool, bool]] = {
    "epochs": (False, 0, 100_000, False, True),
    "batch_size": (True, 1, 1_000_000, True, True),
    "lr": (False, 0, math.inf, False, False),  # any finite step: a diverging run stops with a clear error
    "momentum": (False, 0, 1, True, False),
    "weight_decay": (False, 0, math.inf, True, False),
    "bias_lr_scale": (False, 0, math.inf, False, False),
    "label_smoothing": (False, 0, 1, True, False),
    "gamma": (False, 0, 1, False, True),
    "whiten_bias_fraction": (False, 0, 1, True, True),
    "translate": (True, 0, 16, True, True),
    "crop_size": (True, 8, 1024, True, True),
    "crop_fraction": (False, 0, 1, True, True),
    "tta": (True, 0, 2, True, True),
    "time_budget": (False, 0, 366 * 86400, False, True),
    "image_size": (True, 8, 1024, True, True),
    "seed": (True, 0, MAX_SEED, True, True),
    "depth": (True, 1, 4, True, True),
    "eval_batch_size": (True, 1, 1_000_000, True, True),
}
_CHOICES = {"pad_mode": ("reflect", "constant"), "whitening": WHITENINGS, "optimizer": OPTIMIZERS}
_FLAGS = ("nesterov", "lookahead", "flip", "alternate_flip", "compile")


def _name(field: str) -> str:
    option = OPTIONS.get(field)
    return f"{field} ({option})" if option else field


def _range_text(low: float, high: float, low_ok: bool, high_ok: bool) -> str:
    if high == math.inf:
        return f">= {low:g}" if low_ok else f"> {low:g}"
    return f"in {'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float))


def validate(cfg: TrainConfig) -> None:
    """Check every setting once, whoever gave it (the CLI, a Python caller, a saved run): types, finiteness and
    ranges. A `LookalikeError` names the field and its command-line option."""
    from .schedules import SCHEDULES

    def bad(field: str, what: str, value: Any) -> None:
        raise LookalikeError(f"{_name(field)} must be {what}, got {value!r}")

    for field, (integer, low, high, low_ok, high_ok) in _RANGES.items():
        value = getattr(cfg, field)
        if value is None:
            continue
        kind = "a whole number" if integer else "a number"
        if not _is_number(value, integer) or not math.isfinite(value):
            bad(field, f"{kind} {_range_text(low, high, low_ok, high_ok)}", value)
        if value < low or value > high or (value == low and not low_ok) or (value == high and not high_ok):
            bad(field, f"{kind} {_range_text(low, high, low_ok, high_ok)}", value)
    for field, choices in {**_CHOICES, "schedule": SCHEDULES}.items():
        value = getattr(cfg, field)
        if value is not None and value not in choices:
            bad(field, f"one of {', '.join(choices)}", value)
    for field in _FLAGS:
        value = getattr(cfg, field)
        if value is not None and not isinstance(value, bool):
            bad(field, "True or False", value)
    for field in ("data", "model", "device"):
        if not isinstance(getattr(cfg, field), str):
            bad(field, "a string", getattr(cfg, field))
    if cfg.widths is not None and (not isinstance(cfg.widths, (list, tuple)) or len(cfg.widths) != 3
                                   or not all(_is_number(w, True) and 1 <= w <= 8192 for w in cfg.widths)):
        bad("widths", "three whole numbers from 1 to 8192 like 32,128,256", cfg.widths)
    if cfg.milestones is not None and (
            not isinstance(cfg.milestones, (list, tuple))
            or not all(_is_number(m, False) and math.isfinite(m) and 0 < m <= 100_000 for m in cfg.milestones)):
        bad("milestones", "positive epochs like 5,10", cfg.milestones)


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
