"""One registry and one factory for every model, trained here or pretrained elsewhere.

A leaf module: it imports no model code. Each entry names its builder as "module:function", imported on the
first `create_model`, so listing the models (or `lookalike --help`) never imports torch. The entries themselves
are registered in `lookalike.models` (its `__init__`).

Every registered model is an `nn.Module` split as timm splits its models: `forward_features(x)` returns the
last feature map (B, C, H, W) before pooling, `forward_head(feats, pre_logits=False)` pools and classifies, and
`num_features` is C. Search pools the map itself, so any of them can serve as a search backbone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LookalikeError

KINDS = ("cifar", "pretrained")  # "cifar": trained by `lookalike train`; "pretrained": an ImageNet backbone
# The default search backbone, and the backbone `lookalike train --pretrained` takes when none is named.
DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: str  # "package.module:function", imported when the model is first built
    kind: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def build_function(self) -> Callable[..., Any]:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: str, kind: str, description: str, **defaults: Any) -> None:
    """Add a model: `builder` is "package.module:function", called with the entry's `defaults` and the caller's
    keyword arguments."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    if kind not in KINDS:
        raise ValueError(f"model {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    _REGISTRY[name] = ModelEntry(name, builder, kind, description, dict(defaults))


def list_models(kind: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookalikeError(f"unknown model {name!r}: choose from {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any):
    """Build a registered model; keyword arguments override the entry's defaults."""
    entry = get_model_entry(name)
    return entry.build_function()(**{**entry.defaults, **kwargs})


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
