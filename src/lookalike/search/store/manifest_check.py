"""Checks of the backbone description a file brings to `lookalike import`: every field an index manifest takes
from it (its type and its allowed values), before any manifest is written. An index made from a description
that `search`, `serve` or `index` would later refuse holds the imported vectors and nothing can open it."""

from __future__ import annotations

import math
from typing import Any

MAX_DIM = 1 << 16  # widest vector an import accepts: every row of the vector file costs dim x 4 bytes
MAX_SIDE = 8192  # largest input_size / resize_size: a query's pixels grow with its square
INTERPOLATIONS = ("bicubic", "bilinear", "lanczos")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pooling_problem(pooling: str, preprocess: dict) -> str | None:
    from ...errors import LookalikeError
    from ..describe.features import parse_pooling

    try:
        kind, _ = parse_pooling(pooling)
    except LookalikeError:
        return f"pooling is {pooling!r}, not avg, gem, gem:P or rmac"
    if pooling != pooling.lower().strip():
        return f"pooling is {pooling!r}, not in lower case"
    if (kind == "rmac" or ":" in pooling) and preprocess.get("fit") != "whole":
        return f"pooling is {pooling!r}, which needs whole-photo inputs (preprocess.fit \"whole\")"
    return None


def _inputs_problem(pre: dict) -> str | None:
    """The keys of a descriptor's inputs (`features.input_options`): fit, long_side, scales, trim, layers."""
    from ...errors import LookalikeError
    from ..describe.features import input_options, parse_layers

    fit = pre.get("fit")
    if fit not in (None, "whole"):
        return f"preprocess.fit is {fit!r}, not \"whole\""
    if "trim" in pre and not isinstance(pre["trim"], bool):
        return f"preprocess.trim is {pre['trim']!r}, not true or false"
    layers = pre.get("layers")
    if layers is not None:
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            return f"preprocess.layers is {layers!r}, not a list of names"
        try:
            if parse_layers(layers) != layers:
                return f"preprocess.layers is {layers!r}, not in the order {', '.join(parse_layers(layers))}"
        except LookalikeError:
            return f"preprocess.layers is {layers!r}, not head, blocks or both"
    long_side, scales = pre.get("long_side"), pre.get("scales")
    if fit == "whole":
        if not isinstance(long_side, int) or isinstance(long_side, bool):
            return f"preprocess.long_side is {long_side!r}, not a whole number"
        if scales is not None and (not isinstance(scales, list) or not all(_number(f) for f in scales)):
            return f"preprocess.scales is {scales!r}, not a list of numbers"
    elif long_side is not None or scales is not None:
        return "preprocess has long_side or scales without fit \"whole\""
    try:
        input_options(long_side if fit == "whole" else None, scales, bool(pre.get("trim")), layers)
    except LookalikeError as exc:
        return f"preprocess: {exc}"
    return None


def _preprocess_problem(pre: dict) -> str | None:
    for key in ("input_size", "resize_size"):
        if key in pre and isinstance(pre[key], int) and pre[key] > MAX_SIDE:
            return f"preprocess.{key} is {pre[key]}, more than {MAX_SIDE}"
    for key in ("mean", "std"):
        values = pre.get(key)
        if values is not None and not all(_number(x) for x in values):
            return f"preprocess.{key} is {values!r}, not 3 finite numbers"
    if pre.get("std") is not None and any(x <= 0 for x in pre["std"]):
        return f"preprocess.std is {pre['std']!r}, not 3 positive numbers"
    interpolation = pre.get("interpolation")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        return f"preprocess.interpolation is {interpolation!r}, not {', '.join(INTERPOLATIONS)}"
    return _inputs_problem(pre)


def backbone_problem(meta: Any) -> str | None:
    """What makes a backbone description (a file's metadata: model, pooling, dim, preprocess, weights,
    whitening, and the optional root) unfit to become an index manifest, naming the field; None if nothing."""
    from .index import FORMAT_VERSION, _manifest_problem

    if not isinstance(meta, dict):
        return "not a JSON object"
    root = meta.get("root")
    if root is not None and (not isinstance(root, str) or "\0" in root):
        return f"root is {root!r}, not a folder name"
    whitening = meta.get("whitening")
    if whitening is not None and not isinstance(whitening, dict):
        return f"whitening is {type(whitening).__name__}, not an object"
    # The manifest that `ImageIndex.create` would write, through the check every reader applies to it.
    fields = ("model", "pooling", "dim", "preprocess", "weights", "model_digest")
    candidate = {**{k: meta[k] for k in fields if k in meta}, "root": "/", "format_version": FORMAT_VERSION}
    problem = _manifest_problem(candidate)
    if problem:
        return problem
    if not meta["model"].strip() or "\0" in meta["model"]:
        return f"model is {meta['model']!r}, not a backbone name"
    if meta["dim"] > MAX_DIM:
        return f"dim is {meta['dim']}, more than {MAX_DIM}"
    weights = meta.get("weights")
    if weights is not None and (not weights.strip() or "\0" in weights):
        return f"weights is {weights!r}, not a file name"
    return _pooling_problem(meta["pooling"], meta["preprocess"]) or _preprocess_problem(meta["preprocess"])
