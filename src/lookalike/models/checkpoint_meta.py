"""Checks of a checkpoint's metadata and weights before a net is built from them.

A checkpoint names the net to build (model, model_kwargs) and how images reach it (mean, std, input_size). Each
value is checked for its type, range and finiteness, and the weights for their shapes (against a skeleton of the
net built on the "meta" device, which allocates nothing) and finiteness, so a damaged or crafted file is one
clear error naming the field instead of a huge allocation, a traceback or a model that outputs NaN.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..errors import LookalikeError

CHANNELS = 3  # every model takes RGB
MAX_CLASSES = 100_000
MAX_WIDTH = 8192  # as `lookalike train --widths` allows
SIDES = (8, 1024)  # as `lookalike train --image-size` allows
STD_RANGE = (1e-4, 1e3)  # normalisation of pixels in [0, 1] (or [0, 255]); outside it features overflow
MEAN_LIMIT = 1e3


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The settings a checkpoint may pass to its model's builder: what `lookalike train` writes. Anything else (a
# `weights` file to read, `pretrained=True` to download) is refused.
_KWARGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": (_whole(1, MAX_CLASSES), f"a whole number from 1 to {MAX_CLASSES}"),
    "widths": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_whole(1, MAX_WIDTH)(w) for w in v),
               f"three whole numbers from 1 to {MAX_WIDTH}"),
    "depth": (_whole(1, 4), "a whole number from 1 to 4"),
    "whitening": (lambda v: v in ("pairs", "linear"), "pairs or linear"),
    "stem_width": (_whole(1, MAX_WIDTH), f"a whole number from 1 to {MAX_WIDTH}"),
    "stem_stride": (lambda v: type(v) is int and v in (1, 2, 4), "1, 2 or 4"),
    "width": (_whole(1, MAX_WIDTH), f"a whole number from 1 to {MAX_WIDTH}"),
    "pretrained": (lambda v: v is False, "False (a checkpoint carries its own weights)"),
}


def check_meta(meta: Any, where: str) -> None:
    """Refuse `meta` (a checkpoint's "meta") unless every field that builds or feeds the model is sane. `where`
    names the checkpoint in the error."""
    def bad(field: str, what: str, value: Any) -> LookalikeError:
        return LookalikeError(f"{where}: its {field} must be {what}, got {_show(value)} (damaged or not written by "
                              "`lookalike train`)")

    if not isinstance(meta, dict):
        raise LookalikeError(f"{where}: its 'meta' is a {type(meta).__name__}, not a dict (damaged or not written "
                             "by `lookalike train`)")
    from . import list_models

    if meta.get("model") not in list_models():
        raise bad("model", f"one of {', '.join(list_models())}", meta.get("model"))
    kwargs = meta.get("model_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise bad("model_kwargs", "a dict", kwargs)
    for key, value in kwargs.items():
        if key not in _KWARGS:
            raise bad("model_kwargs", f"settings among {', '.join(_KWARGS)}", key)
        test, what = _KWARGS[key]
        if not test(value):
            raise bad(f"model_kwargs {key}", what, value)
    classes = meta.get("classes")
    if (not isinstance(classes, (list, tuple)) or not 1 <= len(classes) <= MAX_CLASSES
            or not all(isinstance(c, str) for c in classes)):
        raise bad("classes", f"a list of 1 to {MAX_CLASSES} names", classes)
    if "num_classes" in kwargs and kwargs["num_classes"] != len(classes):
        raise bad("model_kwargs num_classes", f"its number of classes ({len(classes)})", kwargs["num_classes"])
    for field, (low, high) in (("mean", (-MEAN_LIMIT, MEAN_LIMIT)), ("std", STD_RANGE)):
        values = meta.get(field)
        if (not isinstance(values, (list, tuple)) or len(values) != CHANNELS
                or not all(_number(v) and low <= v <= high for v in values)):
            raise bad(field, f"{CHANNELS} finite numbers from {low:g} to {high:g}", values)
    if not _whole(*SIDES)(meta.get("input_size")):
        raise bad("input_size", f"a whole number of pixels from {SIDES[0]} to {SIDES[1]}", meta.get("input_size"))
    if meta.get("epoch") is not None and not _whole(0, 10**9)(meta["epoch"]):
        raise bad("epoch", "a whole number >= 0", meta["epoch"])
    config = meta.get("config")
    if config is not None and not isinstance(config, dict):
        raise bad("config", "a dict", config)
    config = config or {}
    if config.get("tta") is not None and not _whole(0, 2)(config["tta"]):
        raise bad("config tta", "0, 1 or 2", config["tta"])
    if config.get("val_fraction") is not None and not (_number(config["val_fraction"])
                                                       and 0 <= config["val_fraction"] <= 0.9):
        raise bad("config val_fraction", "a number from 0 to 0.9", config["val_fraction"])


def check_weights(state: Any, skeleton: Any, where: str) -> None:
    """Refuse weights that do not fit `skeleton` (the model built on the "meta" device: shapes only) or hold a
    non-finite number, before the real model is allocated."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise LookalikeError(f"{where}: its 'model_state' is not a dict of named tensors (damaged or not written "
                             "by `lookalike train`)")
    expected = skeleton.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        name, what = (missing[0], "is missing") if missing else (extra[0], "is not part of the model")
        raise LookalikeError(f"{where}: weights do not fit its model (tensor {name} {what})")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise LookalikeError(f"{where}: weights do not fit its model (tensor {key} has shape "
                                 f"{tuple(tensor.shape)}, the model needs {tuple(expected[key].shape)})")
        if tensor.is_floating_point() or tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                raise LookalikeError(f"{where}: tensor {key} of its weights holds NaN or infinite values")
            if key.endswith("running_var") and bool((tensor < 0).any()):
                raise LookalikeError(f"{where}: tensor {key} of its weights holds negative variances")
