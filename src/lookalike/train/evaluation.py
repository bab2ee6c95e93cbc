"""Evaluation: test-time augmentation, the test-set sweep that `fit` runs after every epoch, and the evaluation of
a saved checkpoint (`lookalike evaluate`)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Union

from ..errors import LookalikeError

TTA_PASSES = {0: 1, 1: 2, 2: 6}  # forward passes per image at each test-time augmentation level


def tta_logits(model, x, level: int):
    """(plain logits, test-time-augmented logits). 0: plain; 1: mean with the mirror image; 2: also with 1-pixel
    shifts (reflect-padded), as airbench. The plain pass is the first of the augmented ones, so one sweep gives
    both."""
    import torch
    import torch.nn.functional as F

    plain = model(x)
    if level == 0:
        return plain, plain
    logits = 0.5 * plain + 0.5 * model(x.flip(-1))
    if level >= 2:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[..., 0:h, 0:w].contiguous(memory_format=torch.channels_last),
                   padded[..., 2 : h + 2, 2 : w + 2].contiguous(memory_format=torch.channels_last)]
        views = [0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted]
        logits = 0.5 * logits + 0.5 * torch.stack(views).mean(0)
    return plain, logits


def evaluate(model, split, mean, std, device, tta: int = 0, batch_size: int = 1000,
             num_classes: Optional[int] = None, images_on_device=None,
             reduce: Optional[Callable[[list], None]] = None) -> dict[str, Any]:
    """Loss (per sample, plain cross-entropy), accuracy and confusion matrix of `model` on `split` at TTA level
    `tta`; with TTA, also the plain loss and accuracy (`plain_loss`, `plain_acc`) from the same sweep.
    `reduce` sums the sweep's tensors over the processes of a group, in place, when each evaluated a share."""
    import torch
    import torch.nn.functional as F

    from .augment import to_float

    was_training = model.training
    model.eval()
    k = num_classes or int(split.labels.max()) + 1
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    plain_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    plain_correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    amp = device.type == "cuda"
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(split)))
            if images_on_device is not None:
                xb, yb = images_on_device[idx.to(device)], split.labels[idx]
            else:
                xb, yb = split.batch(idx)
            if xb.shape[0] == 0:
                continue
            x = to_float(xb.to(device, non_blocking=True), mean, std)
            y = yb.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                plain, logits = (t.float() for t in tta_logits(model, x, tta))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k)
            plain_loss_sum += F.cross_entropy(plain, y, reduction="sum").double()
            plain_correct += (plain.argmax(1) == y).sum()
            n += y.shape[0]
    model.train(was_training)
    if reduce is not None:
        count = torch.tensor(n, dtype=torch.long, device=device)
        reduce([confusion, loss_sum, plain_loss_sum, plain_correct, count])
        n = int(count)
    cm = confusion.view(k, k).cpu()
    correct = int(cm.diag().sum())
    per_class = (cm.diag().double() / cm.sum(1).clamp_min(1)).tolist()
    return {"loss": float(loss_sum) / max(1, n), "acc": correct / max(1, n), "n": n,
            "plain_loss": float(plain_loss_sum) / max(1, n), "plain_acc": int(plain_correct) / max(1, n),
            "confusion": cm.tolist(), "per_class": per_class}


def evaluate_checkpoint(checkpoint: Union[str, os.PathLike], data: str, tta: Optional[int] = None,
                        batch_size: int = 500, device: str = "auto",
                        on_info: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    import torch

    from ..datasets import load_data
    from ..device import resolve_device
    from .checkpoint import model_from_checkpoint

    dev = resolve_device(device)
    model, meta = model_from_checkpoint(checkpoint, device=dev)
    model = model.to(memory_format=torch.channels_last)
    bundle = load_data(data, image_size=int(meta["input_size"]), progress=on_info, need_train=False,
                       val_fraction=(meta.get("config") or {}).get("val_fraction") or None)
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
