"""Every model Lookalike knows: `create_model(name, **kw)`, `list_models()`.

The table below registers them by name; their code (and torch) is imported only when one is built.
"""

from .registry import DEFAULT_MODEL, count_parameters, create_model, get_model_entry, list_models, register_model

_CIFAR = "lookalike.models.cifar"
_PRETRAINED = "lookalike.models.pretrained"

register_model("fast", f"{_CIFAR}:fast", "cifar",
               "speed-run net (whitened 2x2 stem, 3 conv groups); widths/depth/whitening are options")
register_model("lab", f"{_CIFAR}:lab", "cifar",
               "ResNet-18 (CIFAR) with the lab's recipe: SGD 0.1, steps at 5 and 10, 15 epochs")
register_model("resnet18", f"{_CIFAR}:resnet18", "cifar", "ResNet-18 (CIFAR variant), one-cycle recipe")
register_model("photo", "lookalike.models.photo_net:photo", "cifar",
               "from-scratch net for photos of 96-160 px (strided stem, 3 conv groups); the default above 64 px")
register_model("efficientnet_lite0", f"{_PRETRAINED}:efficientnet_lite0", "pretrained",
               "EfficientNet-Lite0, ImageNet, weights ship with pip (default)")
register_model("efficientnet_lite2", f"{_PRETRAINED}:efficientnet_lite2", "pretrained",
               "EfficientNet-Lite2, ImageNet, weights ship with pip")
register_model("resnet50", f"{_PRETRAINED}:resnet50", "pretrained",
               "ResNet-50, torchvision ImageNet V2 weights (downloaded once)")
register_model("mobilenet_v3_large", f"{_PRETRAINED}:mobilenet_v3_large", "pretrained",
               "MobileNetV3-Large, torchvision ImageNet V2 weights (downloaded once)")

__all__ = ["DEFAULT_MODEL", "count_parameters", "create_model", "get_model_entry", "list_models", "register_model"]
