"""`photo`: a from-scratch classifier for photos of 96-160 px, in the spirit of `fast` (airbench's conv groups).

A strided convolution stem (4x4 patches, stride 4 by default, BatchNorm, GELU) brings the photo down to CIFAR-like
feature maps, then three conv groups as in `fast` (conv, max-pool, BatchNorm, GELU, more convs with identity-
initialised filters), a global max pool and a scaled linear head. The stem replaces `fast`'s full-resolution
whitening layer, whose cost grows with the square of the photo's side.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .cifar import GhostlessBatchNorm, GroupsNet

PHOTO_WIDTHS = (64, 128, 256)


class PhotoNet(GroupsNet):
    def __init__(self, num_classes: int = 10, widths: Sequence[int] = PHOTO_WIDTHS, depth: int = 2,
                 stem_width: int = 48, stem_stride: int = 4, logit_scale: float = 1 / 9, bn_momentum: float = 0.4):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1 or stem_width < 1:
            raise ValueError(f"widths must be three positive numbers, got {widths!r}")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride!r}")
        if depth < 1:
            raise ValueError("depth must be >= 1")
        # 4x4 kernels: stride 2 overlaps neighbouring patches (padding 1), stride 4 tiles the photo with them.
        kernel, padding = {1: (3, 1), 2: (4, 1), 4: (4, 0)}[stem_stride]
        self.stem = nn.Conv2d(3, stem_width, kernel_size=kernel, stride=stem_stride, padding=padding, bias=False)
        self.stem_norm = GhostlessBatchNorm(stem_width, bn_momentum)
        self.act = nn.GELU()
        self._build_groups(stem_width, widths, depth, bn_momentum, num_classes, logit_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem_norm(self.stem(x)))
        return self.group3(self.group2(self.group1(x)))


def photo(num_classes: int = 10, widths: Sequence[int] = PHOTO_WIDTHS, depth: int = 2, stem_width: int = 48,
          stem_stride: int = 4) -> PhotoNet:
    return PhotoNet(num_classes=num_classes, widths=tuple(widths), depth=depth, stem_width=stem_width,
                    stem_stride=stem_stride)
