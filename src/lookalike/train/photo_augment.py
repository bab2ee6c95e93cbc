"""Batched augmentation for photos: random-resized crops and mirror flips of a whole batch in one `grid_sample`,
on whatever device holds the batch. Evaluation needs none of it: it sees the full cached view."""

from __future__ import annotations

import math

import torch

RATIO = (3 / 4, 4 / 3)  # aspect ratios of the crops, as torchvision's RandomResizedCrop


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, size: int, min_scale: float,
                        flip: bool = True) -> torch.Tensor:
    """Float N x 3 x size x size (pixel values as in `x`, uint8 or float): for each image a random crop covering
    `min_scale` to all of its area, at an aspect ratio in `RATIO`, resized bilinearly to `size`, mirrored for a
    random half of the batch. Every random number comes from `generator` (seeded per epoch by `Batches`), so a
    resumed run draws the same crops."""
    import torch.nn.functional as F

    n = x.shape[0]
    if n == 0:
        return x.float().new_empty((0, x.shape[1], size, size))
    area = torch.empty(n).uniform_(min_scale, 1.0, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop sides as shares of the image's sides
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)  # centres keep the crop inside the image
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
