"""Batched tensor augmentation and normalisation: no per-sample Python, runs wherever the batch lives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float32. `mean`/`std` are 3-vectors for 0..1 pixel values."""
    x = x.float().div_(255).sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    mask = mask.to(x.device)
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def random_translate(x: torch.Tensor, pad: int, generator: torch.Generator, mode: str = "reflect") -> torch.Tensor:
    """Shift each image by up to `pad` pixels both ways (a random crop of the padded image).

    Samples sharing a shift are cut in one slice, so the cost is (2*pad+1)^2 tensor ops per batch, not one per image.
    `mode`: "reflect" (airbench) or "constant" (zero padding, torchvision's RandomCrop(padding=pad)).
    """
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    out = torch.empty_like(x)
    code = (shifts[0] * (2 * pad + 1) + shifts[1]).to(x.device)
    for c in torch.unique(code).tolist():
        dy, dx = divmod(int(c), 2 * pad + 1)
        sel = (code == c).nonzero().squeeze(1)
        out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    return out


def augment(x: torch.Tensor, generator: torch.Generator, translate: int, flip: bool, pad_mode: str) -> torch.Tensor:
    """Augment a normalised float batch. Every random number comes from `generator` (seeded per epoch), which
    is what makes a resumed run repeat an uninterrupted one exactly."""
    if flip:
        x = random_flip(x, generator)
    if translate:
        x = random_translate(x, translate, generator, pad_mode)
    return x
