"""Batched tensor augmentation and normalisation: no per-sample Python, runs wherever the batch lives.

Flip and translation are folded into one gather of source pixel indices (reflection or zero padding included), so
an augmented batch costs one indexing op on the uint8 images, before they are converted to float.
"""

from __future__ import annotations

import torch


def to_float(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float32. `mean`/`std` are 3-vectors for 0..1 pixel values."""
    x = x.float().div_(255).sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back inside [0, size) without repeating the edge (torch's 'reflect')."""
    idx = idx.abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def alternating_flips(indices: torch.Tensor, epoch: int, seed: int, n_total: int) -> torch.Tensor:
    """airbench's alternating flip: a fixed random half of the images is mirrored in even epochs and the other
    half in odd epochs, so every two epochs show each image both ways (less redundancy than coin flips)."""
    base = torch.rand(n_total, generator=torch.Generator().manual_seed(seed + 104729)) < 0.5
    return base[indices] ^ bool(epoch % 2)


def augment(x: torch.Tensor, generator: torch.Generator, translate: int = 0, flip: bool = True,
            pad_mode: str = "reflect", flips: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
    """Random horizontal flip of half the batch and a random shift of up to `translate` pixels both ways (a
    random crop of the padded image; `pad_mode` "reflect" as airbench, or "constant" zeros as torchvision's
    RandomCrop(padding=...)). `size` cuts a random size x size window instead (shifted up to `translate` beyond
    the edges), for training on smaller crops. `flips` replaces the coin flips with a given mask. Every random
    number comes from `generator` (seeded per epoch), which is what makes a resumed run repeat an uninterrupted
    one exactly. Works on uint8 or float batches."""
    n, c, h, w = x.shape
    oh, ow = (h, w) if size is None else (min(size, h), min(size, w))
    if n == 0 or (not flip and translate <= 0 and (oh, ow) == (h, w)):
        return x
    dev = x.device
    if flips is None:  # `flips`: a precomputed mirror mask (alternating flips), else coin flips
        flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    if (oh, ow) != (h, w):  # window corners: anywhere inside, or up to `translate` beyond the edges
        shifts = torch.stack([torch.randint(-translate, translate + h - oh + 1, (n,), generator=generator),
                              torch.randint(-translate, translate + w - ow + 1, (n,), generator=generator)])
    elif translate > 0:
        shifts = torch.randint(-translate, translate + 1, (2, n), generator=generator)
    else:
        shifts = torch.zeros(2, n, dtype=torch.long)
    flips, shifts = flips.to(dev), shifts.to(dev)
    rows = shifts[0].view(n, 1) + torch.arange(oh, device=dev)
    cols = shifts[1].view(n, 1) + torch.arange(ow, device=dev)
    cols = torch.where(flips.view(n, 1), (w - 1) - cols, cols)
    valid = None
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        valid = ((rows >= 0) & (rows < h)).view(n, 1, oh, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, ow)
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
            rows.view(n, 1, oh, 1), cols.view(n, 1, 1, ow)]
    if valid is not None:
        out = out * valid.to(out.dtype)
    return out
