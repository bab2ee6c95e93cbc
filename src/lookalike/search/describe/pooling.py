"""Global descriptors from feature maps: the poolings (average, GeM, R-MAC), the feature maps a descriptor
pools (`head`, `blocks`), and the torch modules that pool inside an exported graph."""

from __future__ import annotations

import numpy as np

from ...errors import LookalikeError

POOLINGS = ("avg", "gem", "rmac")
GEM_P = 3.0  # the usual GeM exponent for retrieval (Radenovic et al.)
# Feature maps a descriptor can pool: `head`, the backbone's last map (after the 1x1 head convolution that
# widens it for the ImageNet classifier), and `blocks`, the last block's output just before it. The two-layer
# descriptor pools each, L2-normalises each and joins them: the narrower pre-head map is less tied to the
# ImageNet classes (benchmarks/results/eval_search.md).
LAYERS = ("head", "blocks")
HEAD_ONLY = ["head"]  # what a descriptor without a "layers" key pools (indexes made before the option)
# New centre-crop descriptors of the backbones that offer both pool both: more mAP at the same cost, demo
# precision unchanged. Whole-photo R-MAC loses with the blocks' map, so whole photos keep the head alone.
DEFAULT_CROP_LAYERS = ["head", "blocks"]
# Channels of the `blocks` map of the backbones that offer it (timm's EfficientNet layout).
BLOCKS_CHANNELS = {"efficientnet_lite0": 320, "efficientnet_lite2": 352}


def parse_pooling(pooling: str) -> tuple[str, float]:
    """`avg`, `gem` (p = 3), `gem:P` (e.g. `gem:2`) or `rmac` -> (kind, p); LookalikeError otherwise."""
    text = (pooling or "avg").lower().strip()
    kind, _, p = text.partition(":")
    if kind not in POOLINGS or (p and kind != "gem"):
        raise LookalikeError(f"unknown pooling {pooling!r}: use avg, gem, gem:P (e.g. gem:2) or rmac")
    if not p:
        return kind, GEM_P
    try:
        value = float(p)
    except ValueError:
        value = float("nan")
    if not 1.0 <= value <= 16.0:
        raise LookalikeError(f"GeM exponent in {pooling!r} must be a number from 1 to 16")
    return kind, value


def parse_layers(layers) -> list[str]:
    """`head`, `blocks` or `head,blocks` (text or a sequence; None: the head alone) -> the list of feature maps
    a descriptor pools, in LAYERS order; LookalikeError otherwise."""
    if layers is None:
        return list(HEAD_ONLY)
    names = [x.strip().lower() for x in (layers.split(",") if isinstance(layers, str) else layers)]
    if not names or any(n not in LAYERS for n in names) or len(set(names)) != len(names):
        raise LookalikeError(f"unknown --layers {layers!r}: use head, blocks or head,blocks")
    return [n for n in LAYERS if n in names]


def layer_parts(model: str, layers: list[str], dim: int) -> tuple[int, ...] | None:
    """Channel counts of the parts of a two-layer descriptor of `dim` channels (None for one layer)."""
    if len(layers) < 2:
        return None
    blocks = BLOCKS_CHANNELS[model]
    return (dim - blocks, blocks)


def rmac_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """R-MAC's regions on an h x w map (Tolias, Sicre and Jegou, ICLR 2016): the whole map, then at each level l
    squares of side 2 min(h, w) / (l + 1) laid out with about 40 % overlap. (top, left, bottom, right) boxes."""
    short, long_ = min(h, w), max(h, w)
    regions = [(0, 0, h, w)]
    # Extra squares along the longer side, chosen so that neighbours overlap by close to 40 %.
    steps = np.arange(2, 8)
    extra = int(np.argmin(np.abs((short ** 2 - short * (long_ - short) / (steps - 1)) / short ** 2 - 0.4))) + 1 \
        if long_ > short else 0
    for level in range(1, levels + 1):
        side = int(2 * short / (level + 1))
        if side < 1:
            continue
        n_h = level + (extra if h > w else 0)
        n_w = level + (extra if w > h else 0)
        tops = np.linspace(0, h - side, n_h).round().astype(int) if n_h > 1 else [0 if h == side else (h - side) // 2]
        lefts = np.linspace(0, w - side, n_w).round().astype(int) if n_w > 1 else [0 if w == side else (w - side) // 2]
        regions += [(int(t), int(l), int(t) + side, int(l) + side) for t in tops for l in lefts]
    return regions


def pool_maps(maps: np.ndarray, pooling: str, parts: tuple[int, ...] | None = None) -> np.ndarray:
    """(n, C, h, w) feature maps -> (n, C) L2-normalised descriptors by `pooling` (see `parse_pooling`).
    `parts`: channel counts of maps joined along C (a two-layer descriptor), each normalised on its own first."""
    if parts:
        return _l2(np.concatenate([pool_maps(part, pooling) for part in
                                   np.split(maps, np.cumsum(parts)[:-1], axis=1)], axis=1))
    kind, p = parse_pooling(pooling)
    x = np.asarray(maps, np.float32)
    if kind == "avg":
        v = x.mean(axis=(2, 3))
    elif kind == "gem":
        v = np.power(np.power(np.clip(x, 1e-6, None), p).mean(axis=(2, 3)), 1.0 / p)
    else:  # R-MAC: the sum of the L2-normalised max-pooled regions
        v = np.zeros(x.shape[:2], np.float32)
        for top, left, bottom, right in rmac_regions(x.shape[2], x.shape[3]):
            v += _l2(x[:, :, top:bottom, left:right].max(axis=(2, 3)))
    return _l2(v)


def _l2(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _layer_maps(backbone, x, layers: list[str]):
    """The feature maps named by `layers`, joined along the channels (`head` first)."""
    import torch

    if layers == HEAD_ONLY:
        return backbone.forward_features(x)
    # timm's EfficientNet.forward_features, stopped after the blocks to keep their output as well.
    pre = backbone.blocks(backbone.bn1(backbone.conv_stem(x)))
    if layers == ["blocks"]:
        return pre
    return torch.cat([backbone.bn2(backbone.conv_head(pre)), pre], dim=1)


def _features_module(backbone, layers: list[str]):
    from torch import nn

    class FeatureNet(nn.Module):
        """Backbone feature map(s) only: whole-photo inputs vary in size and are pooled outside the graph."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return _layer_maps(self.backbone, x, layers)

    return FeatureNet().eval()


def _pool_module(backbone, pooling: str, layers: list[str], parts: tuple[int, ...] | None):
    import torch
    from torch import nn

    class EmbedNet(nn.Module):
        """Backbone feature map(s) -> global pooling (avg or GeM) -> L2 normalisation (of each layer's part,
        then of the whole)."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = _layer_maps(self.backbone, x, layers)
            if pooling == "gem":
                f = f.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
            else:
                f = f.mean(dim=(2, 3))
            if parts:
                f = torch.cat([torch.nn.functional.normalize(p, dim=1) for p in torch.split(f, list(parts), 1)], 1)
            return torch.nn.functional.normalize(f, dim=1)

    return EmbedNet().eval()
