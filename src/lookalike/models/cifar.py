"""CIFAR-sized classifiers trained by `lookalike train`.

`fast`: a speed-run net after airbench (Keller Jordan) and hlb-CIFAR10: a frozen 2x2 patch-whitening
convolution, then three conv groups (conv, max-pool, BatchNorm, GELU, conv, BatchNorm, GELU), a global max
pool and a scaled linear head. Widths, depth and the whitening layout are options so that one design fits a
2-core CPU and a GPU.

`lab` / `resnet18`: the CIFAR variant of ResNet-18 (3x3 stem, no stem pooling), as in the usual course
templates. `lab` carries the lab's recipe (see `lookalike.train.config`), `resnet18` a modern one.

Every model follows the timm split: `forward_features` -> (B, C, H, W), `forward_head(x, pre_logits)`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Widths of the three conv groups of `fast` when none are given: the CPU recipe's (lookalike.train.config).
FAST_WIDTHS_CPU = (32, 128, 256)
# Whitening layouts. "pairs" (airbench): each whitened channel and its negative, a learnable bias and a GELU, so
# 24 channels at full resolution. "linear": the 12 whitened channels as they are, no bias, no activation, so the
# whitening and the first conv compose into one 4x4 conv of the pixels: faster CPU steps, a little less learnt per
# epoch (benchmarks/results/fast_step.md).
WHITENINGS = ("pairs", "linear")


class GhostlessBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a frozen unit scale and a learned shift (airbench): fewer parameters to tune, the
    following layer absorbs the scale. `momentum` is PyTorch's (weight of the new batch statistics)."""

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 'same' convolution initialised partly as identity, so the deep stack starts close to a shallow one."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[: min(w.size(0), w.size(1))])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int = 2, bn_momentum: float = 0.4):
        super().__init__()
        self.conv1 = DiracConv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = GhostlessBatchNorm(cout, bn_momentum)
        self.extra = nn.ModuleList()
        for _ in range(depth - 1):
            self.extra.append(nn.ModuleDict({"conv": DiracConv(cout, cout), "norm": GhostlessBatchNorm(cout, bn_momentum)}))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_conv1(self.conv1(x))

    def after_conv1(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling before the norm: the norm and activation run on a quarter of the pixels.
        x = self.act(self.norm1(self.pool(x)))
        for layer in self.extra:
            x = self.act(layer["norm"](layer["conv"](x)))
        return x


class GroupsNet(nn.Module):
    """Three ConvGroups, global max pooling and a scaled linear head: the body and head FastNet and PhotoNet
    share; each subclass builds its stem and defines `forward_features`."""

    def _build_groups(self, cin: int, widths: Sequence[int], depth: int, bn_momentum: float, num_classes: int,
                      logit_scale: float) -> None:
        w1, w2, w3 = (int(w) for w in widths)
        self.group1 = ConvGroup(cin, w1, depth, bn_momentum)
        self.group2 = ConvGroup(w1, w2, depth, bn_momentum)
        self.group3 = ConvGroup(w2, w3, depth, bn_momentum)
        self.num_features = w3
        self.num_classes = num_classes
        self.fc = nn.Linear(w3, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.amax(x, dim=(2, 3))
        return x if pre_logits else self.fc(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FastNet(GroupsNet):
    """airbench-style net. `widths`: channels of the three groups; `depth`: convs per group (2 or 3);
    `whitening`: "pairs" or "linear" (see WHITENINGS). The default stays "pairs", the layout of every checkpoint
    written before "linear" existed."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = FAST_WIDTHS_CPU, depth: int = 2,
                 whiten_kernel: int = 2, bn_momentum: float = 0.4, logit_scale: float = 1 / 9,
                 whitening: str = "pairs"):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive numbers, got {widths!r}")
        if depth < 1:
            raise ValueError("depth must be >= 1")
        if whitening not in WHITENINGS:
            raise ValueError(f"whitening must be one of {WHITENINGS}, got {whitening!r}")
        self.widths = tuple(int(w) for w in widths)
        self.whitening = whitening
        pairs = whitening == "pairs"
        whiten_width = (2 if pairs else 1) * 3 * whiten_kernel**2
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=whiten_kernel, padding=0, bias=pairs)
        self.whiten.weight.requires_grad_(False)  # set from the data's patch covariance, then frozen
        self.act = nn.GELU() if pairs else nn.Identity()
        self._build_groups(whiten_width, self.widths, depth, bn_momentum, num_classes, logit_scale)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first layer to whiten 2x2 patches of `images` (normalised float, B x 3 x H x W):
        eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue), in +/- pairs for "pairs" (the GELU
        after them keeps both signs)."""
        k = self.whiten.kernel_size[0]
        x = images.float()
        c = x.shape[1]
        patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        cov = (patches.T @ patches).double() / patches.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        scaled = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(-1, c, k, k)
        weight = torch.cat([scaled, -scaled]) if self.whitening == "pairs" else scaled
        self.whiten.weight.copy_(weight.to(self.whiten.weight))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.whitening == "pairs":
            x = self.group1(self.act(self.whiten(x)))
        else:
            # Two linear convs in a row are one: the 2x2 whitening under the first 3x3 conv is a 4x4 conv of the
            # pixels: 48 multiply-adds per output value, against the 3x3 conv's 12 x 9 = 108 plus the whitening.
            # The 3x3 weights stay the parameter (Muon steps them as in the pairs stem); only the image border
            # differs, padded before whitening, not after.
            stem = F.conv_transpose2d(self.group1.conv1.weight, self.whiten.weight)
            x = self.group1.after_conv1(F.conv2d(x, stem, padding=1))
        return self.group3(self.group2(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem at full resolution, four stages, global average pool."""

    def __init__(self, num_classes: int = 10, blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.num_features = cin
        self.num_classes = num_classes
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def fast(num_classes: int = 10, widths: Sequence[int] = FAST_WIDTHS_CPU, depth: int = 2, whitening: str = "pairs",
         **kw) -> FastNet:
    return FastNet(num_classes=num_classes, widths=widths, depth=depth, whitening=whitening, **kw)


def lab(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(num_classes=num_classes)


def resnet18(num_classes: int = 10, width: int = 64) -> CifarResNet:
    return CifarResNet(num_classes=num_classes, width=width)
