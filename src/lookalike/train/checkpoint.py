"""Self-describing, atomically written checkpoints.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)`: no pickled code runs. Writes go to a temporary file in the same folder,
are fsynced and then renamed over the target, so a kill at any moment leaves the old or the new file, whole.
"""

from __future__ import annotations

import os
from typing import Any, Union

from ..atomic import atomic_write
from ..errors import LookalikeError
# Reading a checkpoint and building its net live in models/, where search finds them without importing train/.
from ..models.from_checkpoint import FORMAT, VERSION, load_checkpoint, model_from_checkpoint

__all__ = ["FORMAT", "VERSION", "load_checkpoint", "load_resume_state", "model_from_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    import torch

    with atomic_write(path) as fh:
        torch.save({"format": FORMAT, "version": VERSION, **state}, fh)


# What `fit` reads from a last.pt to continue a run, with the type each must have.
_RESUME_KEYS = {"config": dict, "scheduler": dict, "optimizer": dict, "history": list, "rng": dict,
                "best_test_acc": (int, float)}


def load_resume_state(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """A last.pt that a run can continue from: a checkpoint with its config, optimizer, schedule position, history
    and RNG state. Anything less is a one-line `LookalikeError`, never a KeyError."""
    import torch

    blob = load_checkpoint(path)

    def bad(what: str) -> LookalikeError:
        return LookalikeError(f"{path} cannot be resumed: {what} (not a last.pt written by `lookalike train`, "
                              "or damaged)")

    for key, kind in _RESUME_KEYS.items():
        if not isinstance(blob.get(key), kind) or isinstance(blob.get(key), bool):
            raise bad(f"no {key!r}" if key not in blob else f"its {key!r} is a {type(blob[key]).__name__}")
    sched, meta = blob["scheduler"], blob["meta"]
    for key in ("step", "total_steps"):
        if type(sched.get(key)) is not int or sched[key] < 0:
            raise bad(f"no step count {key!r} in its 'scheduler'")
    if not isinstance(meta, dict) or type(meta.get("epoch")) is not int or meta["epoch"] < 0:
        raise bad("no epoch in its 'meta'")
    if not isinstance(blob["rng"].get("torch"), torch.Tensor):
        raise bad("no random-number state")
    if not all(isinstance(row, dict) for row in blob["history"]):
        raise bad("its 'history' is not a list of epoch rows")
    return blob
