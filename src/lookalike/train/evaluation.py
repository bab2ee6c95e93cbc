"""Evaluate a checkpoint on a test set: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Union

from ..errors import LookalikeError


def evaluate_checkpoint(checkpoint: Union[str, os.PathLike], data: str, tta: Optional[int] = None,
                        batch_size: int = 500, device: str = "auto",
                        on_info: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    import torch

    from ..datasets import load_data
    from ..device import resolve_device
    from .checkpoint import model_from_checkpoint
    from .engine import evaluate

    dev = resolve_device(device)
    model, meta = model_from_checkpoint(checkpoint, device=dev)
    model = model.to(memory_format=torch.channels_last)
    bundle = load_data(data, image_size=int(meta["input_size"]), progress=on_info, need_train=False)
    classes = list(meta["classes"])
    if set(bundle.classes) != set(classes):
        raise LookalikeError(
            f"the test set's classes ({', '.join(bundle.classes[:6])}...) are not the {len(classes)} classes "
            f"the checkpoint was trained on ({', '.join(classes[:6])}...)"
        )
    test = bundle.test
    if bundle.classes != classes:  # same names, another order: relabel to the checkpoint's order
        remap = torch.tensor([classes.index(c) for c in bundle.classes])
        test.labels = remap[test.labels]
    level = tta if tta is not None else int((meta.get("config") or {}).get("tta") or 0)
    mean = torch.tensor(meta["mean"], device=dev)
    std = torch.tensor(meta["std"], device=dev)
    t = time.perf_counter()
    ev = evaluate(model, test, mean, std, dev, tta=level, batch_size=batch_size, num_classes=len(classes))
    return {
        "checkpoint": str(checkpoint), "model": meta["model"], "epoch": meta.get("epoch"),
        "test_acc": ev["acc"], "test_loss": ev["loss"], "n": ev["n"], "tta": level,
        "per_class": dict(zip(classes, [round(a, 4) for a in ev["per_class"]])),
        "confusion": ev["confusion"], "classes": classes, "seconds": round(time.perf_counter() - t, 2),
        "skipped": list(bundle.skipped),
    }
