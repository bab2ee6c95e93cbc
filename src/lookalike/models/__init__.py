"""Model registry: `create_model(name, **kw)`, `list_models()`."""

from .registry import count_parameters, create_model, get_model_entry, list_models, register_model

__all__ = ["count_parameters", "create_model", "get_model_entry", "list_models", "register_model"]
