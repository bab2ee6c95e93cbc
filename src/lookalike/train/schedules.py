"""Learning-rate schedules as pure functions of the step: nothing to save but the step counter."""

from __future__ import annotations

import bisect
from typing import Sequence

SCHEDULES = ("step", "onecycle", "linear", "cosine", "constant")


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, kind: str,
              milestones: Sequence[float] = (), gamma: float = 0.1,
              start: float = 0.2, peak: float = 0.23, end: float = 0.07, warmup: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    step:     x gamma at each milestone (in epochs, as the lab's "lr 0.01 from epoch 5" counts them).
    onecycle: linear from `start` up to 1 at fraction `peak` of the run, then linear down to `end` (airbench's
              triangle).
    linear:   linear from 1 to 0 after a linear warm-up over fraction `warmup`.
    cosine:   cosine from 1 to 0 after the same warm-up.
    """
    import math

    total = max(1, total_steps)
    t = min(step, total) / total
    if kind == "constant":
        return 1.0
    if kind == "step":
        epoch = step / max(1, steps_per_epoch)
        return gamma ** bisect.bisect_right(sorted(milestones), epoch + 1e-9)
    if kind == "onecycle":
        if t < peak:
            return start + (1 - start) * t / peak
        return 1 + (end - 1) * (t - peak) / max(1e-9, 1 - peak)
    if warmup > 0 and t < warmup:
        return t / warmup
    u = (t - warmup) / max(1e-9, 1 - warmup)
    if kind == "linear":
        return max(0.0, 1 - u)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * u))
    raise ValueError(f"unknown schedule {kind!r}: choose from {', '.join(SCHEDULES)}")
