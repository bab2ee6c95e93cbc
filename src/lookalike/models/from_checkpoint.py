"""A net built from a checkpoint file that `lookalike train` wrote: what training writes and search reads.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)`: no pickled code runs. Its "meta" names the net to build and how images reach it;
every field and every weight is checked (`checkpoint_meta`) before the net is allocated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from ..errors import LookalikeError
from ..unpickle import load_error_reason, torch_load

FORMAT = "lookalike-checkpoint"
VERSION = 1


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint that `lookalike train` wrote (`train.checkpoint.save_checkpoint`); anything else is a
    `LookalikeError` with the reason."""
    path = Path(path)
    if path.is_dir():
        raise LookalikeError(f"{path} is a folder: give a checkpoint file such as {path / 'best.pt'}")
    if not path.exists():
        raise LookalikeError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise LookalikeError(f"checkpoint {path} is empty")
    try:
        blob = torch_load(path, map_location=map_location)
    except PermissionError:  # the file is fine; never call it damaged
        raise LookalikeError(f"cannot read checkpoint {path}: permission denied") from None
    except Exception as exc:  # a foreign or damaged file can fail in the unpickler in many ways
        raise LookalikeError(f"{path} is not a readable checkpoint (damaged, truncated or foreign file: "
                             f"{load_error_reason(exc)})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise LookalikeError(f"{path} is not a Lookalike checkpoint (no '{FORMAT}' marker)")
    if blob.get("version", 0) > VERSION:
        raise LookalikeError(f"{path} was written by a newer Lookalike (checkpoint version {blob['version']})")
    for key in ("meta", "model_state"):
        if key not in blob:
            raise LookalikeError(f"{path} is incomplete: no {key!r}")
    return blob


def build_model(meta: dict[str, Any]):
    from . import create_model

    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise LookalikeError("the checkpoint does not name its model")
    kwargs = dict(meta.get("model_kwargs") or {})
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    try:
        return create_model(meta["model"], **kwargs)
    except (TypeError, ValueError) as exc:  # settings no version of the model takes
        raise LookalikeError(f"the checkpoint's settings for model {meta['model']!r} do not build it "
                             f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None


def model_from_checkpoint(path: Union[str, os.PathLike], device: Any = "cpu"):
    """(model in eval mode with its weights, meta). `meta` holds model, model_kwargs, classes, mean, std,
    input_size, epoch and the run's config; all are checked (`checkpoint_meta`) before the model is allocated."""
    import torch

    from .checkpoint_meta import check_meta, check_weights

    blob = load_checkpoint(path)
    meta = blob["meta"]
    check_meta(meta, str(path))
    try:
        with torch.device("meta"):  # shapes only: the weights are checked against it before any allocation
            skeleton = build_model(meta)
        check_weights(blob["model_state"], skeleton, str(path))
        model = build_model(meta)
    except LookalikeError as exc:
        if str(exc).startswith(f"{path}:"):  # names the checkpoint already
            raise
        raise LookalikeError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(blob["model_state"])
    except (RuntimeError, KeyError) as exc:
        raise LookalikeError(f"{path}: weights do not fit model {meta['model']!r} "
                             f"({str(exc).splitlines()[0][:160]})") from None
    return model.to(device).eval(), meta
