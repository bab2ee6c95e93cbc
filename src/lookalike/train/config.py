"""A training run's settings, defined once: `RunConfig` (every setting decided), `TrainConfig` (what a caller asks
for; a setting left at None takes the model's recipe), `resolve` (recipe + request -> RunConfig) and `validate`.

Each field of `RunConfig` carries its command-line option and help text, from which `lookalike train` builds its
options; errors name the field (`ConfigError.field`), which the command line shows as its option.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass, replace
from typing import Any, NamedTuple, Optional, get_type_hints

from ..errors import LookalikeError

WHITENINGS = ("pairs", "linear")  # the same as lookalike.models.cifar's; this module does not import torch


class ConfigError(LookalikeError):
    """A setting that cannot be used: `field` names it, `problem` says why ("must be ..., got ...")."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _setting(flags: Any = (), help: str = "", default: Any = MISSING, parse: Optional[str] = None) -> Any:
    """A field of RunConfig: `flags`, the command-line option (none: Python callers only); `parse`, how the
    command line's text becomes the value ("ints", "floats", "duration")."""
    flags = (flags,) if isinstance(flags, str) else tuple(flags)
    return field(default=default, metadata={"flags": flags, "help": help, "parse": parse})


@dataclass(kw_only=True)
class RunConfig:
    data: str = _setting("--data", "'cifar10', a cifar-10-batches-py folder, DIR with train/<class>/ and "
                         "val/<class>/ or test/<class>/ images, or one folder of class folders (split by "
                         "--val-fraction).", default="")
    val_fraction: float = _setting(
        "--val-fraction", "Share of each class held out for evaluation when --data has no val/ or test/ (the same "
        "split every run; default 0.2 for one folder of classes).", default=0.0)
    model: str = _setting(("--model", "-m"), "auto (default: fast for images up to 64 px, photo above), fast, lab, "
                          "resnet18, photo; with --pretrained: efficientnet_lite0, efficientnet_lite2, resnet50, "
                          "mobilenet_v3_large.", default="auto")
    pretrained: bool = _setting("--pretrained", "Start from the --model's ImageNet weights: fit a new head for your "
                                "classes as a linear probe on features embedded once.", default=False)
    finetune: bool = _setting("--finetune", "With --pretrained: then fine-tune the whole net (the body at "
                              "--body-lr-scale of the lr) for --epochs or --time-budget.", default=False)
    body_lr_scale: float = _setting("--body-lr-scale", "--finetune: the pretrained body's lr as a share of the "
                                    "head's.")
    widths: Optional[list[int]] = _setting(
        "--widths", "fast, photo: channels of the three conv groups, e.g. 32,128,256 (the CPU default; 32,64,128 under a "
        "10-minute budget; GPU 64,256,256).", default=None, parse="ints")
    depth: Optional[int] = _setting("--depth", "fast, photo: convolutions per group (2; 3 is deeper and slower).",
                                    default=None)
    whitening: Optional[str] = _setting(
        "--whitening", "fast: first layer 'linear' (12 whitened channels: faster steps; the default for CPU budgets "
        "under 10 minutes) or 'pairs' (airbench's +/- pairs with a GELU: more accuracy per epoch; the default "
        "otherwise).", default=None)
    epochs: float = _setting("--epochs", "Epochs (fractions allowed). Default: the model's recipe.")
    batch_size: int = _setting(("--batch-size", "-b"), "Training batch size.")
    optimizer: str = _setting("--optimizer", "sgd, sgd-sum (airbench's parametrisation; fast on a GPU) or muon "
                              "(orthogonalised conv-filter updates; fast on a CPU).")
    lr: float = _setting("--lr", "Peak learning rate (sgd-sum: per 1024 examples of a summed loss; muon: the angle "
                         "of a filter step, by default set for the run's length).")
    momentum: float = _setting("--momentum", "Momentum (muon: of the filter updates).")
    nesterov: bool = _setting()
    weight_decay: float = _setting("--weight-decay", "Weight decay (sgd-sum: per 1024 examples, decoupled; muon: "
                                   "per example, for biases and head).")
    bias_lr_scale: float = _setting()  # sgd-sum: BatchNorm shifts learn this much faster
    label_smoothing: float = _setting("--label-smoothing", "Label smoothing of the training loss.")
    schedule: str = _setting("--schedule", "step, onecycle, linear, cosine or constant.")
    milestones: list[float] = _setting("--milestones", "step schedule: epochs where the lr is multiplied by "
                                       "--gamma, e.g. 5,10.", parse="floats")
    gamma: float = _setting("--gamma", "step schedule: lr multiplier at each milestone.")
    lookahead: bool = _setting("--lookahead/--no-lookahead", "Lookahead weight averaging.")
    whiten_bias_fraction: float = _setting()  # fast: train the whitening bias for this fraction of the steps
    translate: int = _setting("--translate", "Random shift augmentation in pixels (0: off).")
    pad_mode: str = _setting()  # of the shifts: "reflect" or "constant"
    flip: bool = _setting("--flip/--no-flip", "Random horizontal flips.")
    crop_scale: float = _setting("--crop-scale", "Random-resized crops (photos): smallest share of the image's "
                                 "area a crop covers (0: off, shifts instead).")
    alternate_flip: bool = _setting()  # airbench's alternating flips instead of coin flips
    crop_size: int = _setting("--crop-size", "Side in pixels of the small random crops that the first "
                              "--crop-fraction of the steps train on (default 3/4 of the image side); steps run "
                              "faster, testing stays at full size.")
    crop_fraction: float = _setting("--crop-fraction", "Fraction of the steps trained on --crop-size crops "
                                    "(0: none).")
    tta: int = _setting("--tta", "Final test-time augmentation: 0 none, 1 mirror, 2 mirror + shifts.")
    time_budget: Optional[float] = _setting(
        "--time-budget", "Wall time for training + evaluation, e.g. 5m: throughput is measured on the first steps "
        "and the step count fitted to it.", default=None, parse="duration")
    image_size: Optional[int] = _setting("--image-size", "Side images are resized to (default: their own size when "
                                         "<= 64 px, else 128).", default=None)
    seed: int = _setting("--seed", "Random seed (shuffling, augmentation, initialisation).", default=0)
    device: str = _setting("--device", "auto, cpu or cuda.", default="auto")
    compile: bool = _setting("--compile", "torch.compile the model (CUDA only).", default=False)
    eval_batch_size: int = _setting()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def _from_saved(cls, d: dict[str, Any]):
    """A run's saved (resolved) config. Fields it lacks take the value every run had before they existed, not
    today's recipe default, so a resumed run rebuilds the model its checkpoint holds."""
    return cls.from_dict({**BEFORE_FIELD_EXISTED, **d})


# What a caller asks for: RunConfig's fields, each None (the recipe's value) unless RunConfig gives it a default.
TrainConfig = make_dataclass(
    "TrainConfig",
    [(f.name, Optional[Any], field(default=None if f.default is MISSING else f.default)) for f in fields(RunConfig)],
    namespace={"to_dict": lambda self: asdict(self), "from_dict": classmethod(_from_dict),
               "from_saved": classmethod(_from_saved),
               "__doc__": "The settings a caller asks for: RunConfig's fields; one left at None takes the "
                          "recipe's value (`resolve`)."},
)
TrainConfig.__module__ = __name__
BEFORE_FIELD_EXISTED: dict[str, Any] = {"whitening": "pairs", "crop_scale": 0.0, "body_lr_scale": 1.0,
                                         "pretrained": False, "finetune": False, "val_fraction": 0.0}


class CommandLineOption(NamedTuple):
    field: str
    flags: tuple[str, ...]  # "--flip/--no-flip" for a switch with both forms
    help: str
    kind: type  # of the value the option takes: str for the options that `parse_option` reads
    default: Any
    parse: Optional[str]


def command_line_options() -> list[CommandLineOption]:
    """Every setting that `lookalike train` offers as an option, in RunConfig's order."""
    hints = get_type_hints(RunConfig)
    options = []
    for f in fields(RunConfig):
        if not f.metadata["flags"]:
            continue
        hint = hints[f.name]  # Optional[X] -> X
        kind = str if f.metadata["parse"] else next((a for a in getattr(hint, "__args__", ()) if a is not type(None)),
                                                     hint)
        options.append(CommandLineOption(f.name, f.metadata["flags"], f.metadata["help"], kind,
                                         None if f.default is MISSING else f.default, f.metadata["parse"]))
    return options


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
    # Photos from scratch (96-160 px): Muon as `fast` on a CPU, random-resized crops and flips, the first half of
    # the steps at 3/4 of the side (progressive resizing), mirror TTA.
    "photo": dict(widths=[64, 128, 256], depth=2, epochs=16, batch_size=128, optimizer="muon", label_smoothing=0.1,
                  milestones=[], gamma=0.1, translate=0, pad_mode="reflect", flip=True, tta=1, crop_scale=0.25,
                  crop_fraction=0.5, momentum=0.9, nesterov=True, weight_decay=2e-6, schedule="linear",
                  lookahead=False),
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
# The most accurate CPU size and batch at a 15-minute budget (benchmarks/results/train_cifar10.md).
FAST_CPU = dict(widths=[32, 128, 256], depth=2, whitening="pairs", epochs=8, batch_size=256, optimizer="muon")
SHORT_BUDGET_S = 600  # seconds: CPU budgets below this take FAST_CPU_SHORT
# Short CPU budgets: faster steps of a narrower, linearly whitened net (benchmarks/results/train_cifar10.md).
FAST_CPU_SHORT = dict(widths=[32, 64, 128], whitening="linear")
# 0.085 / sqrt(epochs) passes through the best measured Muon angles (benchmarks/results/train_cifar10.md).
MUON_LR_ONE_EPOCH = 0.085
OPTIMIZERS = tuple(FAST_OPTIMIZERS)
GENERIC = dict(epochs=15, batch_size=128, optimizer="sgd", **PLAIN_SGD, label_smoothing=0.1, milestones=[],
               gamma=0.1, translate=4, pad_mode="reflect", flip=True, tta=1)
# Pretrained backbones (--pretrained --finetune): plain SGD on a head the linear probe has fitted already, the body
# ten times slower, its BatchNorm statistics kept; random-resized crops and flips; mirror TTA. The lr is small so
# that the first steps keep the fitted probe (benchmarks/results/training.notes.md).
PRETRAINED = dict(epochs=2, batch_size=64, optimizer="sgd", lr=0.001, momentum=0.9, nesterov=True, weight_decay=5e-5,
                  label_smoothing=0.1, schedule="cosine", milestones=[], gamma=0.1, lookahead=False, translate=0,
                  pad_mode="reflect", flip=True, tta=1, crop_scale=0.35, body_lr_scale=0.1)
# Settings that a recipe leaves to every model alike.
COMMON = dict(whiten_bias_fraction=0.0, bias_lr_scale=1.0, alternate_flip=False, crop_fraction=0.0, crop_scale=0.0,
              body_lr_scale=1.0)


def resolve(cfg: TrainConfig, device_type: str, input_size: int = 32, epochs: Optional[float] = None) -> RunConfig:
    """Every setting of a run: the caller's, else the model's recipe (the `fast` size depends on the device and
    the budget, its optimizer settings on the optimizer). Small crops default to 3/4 of `input_size`, the side
    of the training images. Muon's lr, unless given, follows the run's length: `epochs`, the planned length
    once a time budget has measured it, else the run's epochs. `cfg` is a validated request (`validate`)."""
    given = {k: v for k, v in cfg.to_dict().items() if v is not None}
    recipe = dict(COMMON, **(PRETRAINED if cfg.pretrained else RECIPES.get(cfg.model, GENERIC)))
    if cfg.model == "fast":
        recipe.update(FAST_GPU if device_type == "cuda" else FAST_CPU)
        if device_type != "cuda" and cfg.time_budget is not None and cfg.time_budget < SHORT_BUDGET_S:
            recipe.update(FAST_CPU_SHORT)
        optimizer = given.get("optimizer", recipe["optimizer"])  # the settings follow the optimizer actually used
        recipe.update(FAST_OPTIMIZERS.get(optimizer, {}), optimizer=optimizer)
    recipe["eval_batch_size"] = 1000 if device_type == "cuda" else 256  # 256 is cache-friendly on a CPU
    recipe["crop_size"] = max(8, round(0.75 * input_size))
    settings = {**recipe, **given}
    if "lr" not in given and settings["optimizer"] == "muon":  # another optimizer's lr means nothing to Muon
        settings["lr"] = muon_lr(settings["epochs"] if epochs is None else epochs)
    return RunConfig(**settings)


def with_planned_length(cfg: RunConfig, request: TrainConfig, epochs: float) -> RunConfig:
    """`cfg`, resolved from `request`, once the run's length is planned (`epochs`): Muon's lr, unless the request
    gives one, follows that length, as `resolve(request, ..., epochs=epochs)` would set it."""
    if request.lr is not None or cfg.optimizer != "muon":
        return cfg
    return replace(cfg, lr=muon_lr(epochs))


def muon_lr(epochs: float) -> float:
    """Muon's filter-step angle for a run of `epochs` (at least one): longer runs take smaller steps."""
    return MUON_LR_ONE_EPOCH / math.sqrt(max(1.0, epochs))


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
    "crop_scale": (False, 0, 1, True, True),
    "val_fraction": (False, 0, 0.9, True, True),
    "body_lr_scale": (False, 0, 10, True, True),
    "tta": (True, 0, 2, True, True),
    "time_budget": (False, 0, 366 * 86400, False, True),
    "image_size": (True, 8, 1024, True, True),
    "seed": (True, 0, MAX_SEED, True, True),
    "depth": (True, 1, 4, True, True),
    "eval_batch_size": (True, 1, 1_000_000, True, True),
}
_CHOICES = {"pad_mode": ("reflect", "constant"), "whitening": WHITENINGS, "optimizer": OPTIMIZERS}
_FLAGS = ("nesterov", "lookahead", "flip", "alternate_flip", "compile", "pretrained", "finetune")


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
    ranges. A `ConfigError` names the field."""
    from .schedules import SCHEDULES

    def bad(field: str, what: str, value: Any) -> None:
        raise ConfigError(field, f"must be {what}, got {value!r}")

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
    if cfg.milestones and cfg.schedule not in (None, "step"):
        raise ConfigError("milestones", f"only apply to the step schedule, not {cfg.schedule}")
    if cfg.finetune and not cfg.pretrained:
        raise ConfigError("finetune", "needs --pretrained (it fine-tunes a pretrained backbone)")
    if cfg.compile and cfg.device == "cpu":
        raise ConfigError("compile", "is for CUDA only (it gives no gain on a CPU)")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.I)


def parse_duration(text: str, field: str = "time_budget") -> float:
    """"5m" -> 300.0, "90s" -> 90.0, "1.5h", or a bare number of seconds."""
    m = _DURATION.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(field, f"{text!r} is not a duration like 5m, 90s or 1h")
    unit = (m.group(2) or "s").lower()
    return float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]


def parse_list(text: str, kind: type, field: str) -> list:
    """"5,10" -> [5.0, 10.0]; a clear error for anything else."""
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(field, f"{text!r} is not a comma-separated list of numbers") from None


def parse_option(text: str, parse: str, field: str) -> Any:
    """The value of a command-line option's text, by its field's `parse` ("ints", "floats", "duration")."""
    if parse == "duration":
        return parse_duration(text, field)
    return parse_list(text, int if parse == "ints" else float, field)
