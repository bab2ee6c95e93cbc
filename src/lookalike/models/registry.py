"""One registry and one factory for every model, trained here or pretrained elsewhere.

Every registered model is an `nn.Module` split as timm splits its models: `forward_features(x)` returns the
last feature map (B, C, H, W) before pooling, `forward_head(feats, pre_logits=False)` pools and classifies, and
`num_features` is C. Search pools the map itself, so any of them can serve as a search backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LookalikeError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    kind: str  # "cifar": trained by `lookalike train`; "pretrained": an ImageNet backbone for search
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, kind: str, description: str, **defaults: Any) -> Callable:
    """Decorator: `@register_model("fast", "cifar", "speed-tuned net")` on a builder function."""

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, kind, description, dict(defaults))
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register_model decorators.
    from . import cifar, pretrained  # noqa: F401


def list_models(kind: str | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get_model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookalikeError(f"unknown model {name!r}: choose from {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any):
    """Build a registered model; keyword arguments override the entry's defaults."""
    entry = get_model_entry(name)
    return entry.builder(**{**entry.defaults, **kwargs})


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
