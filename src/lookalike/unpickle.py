"""Reading pickle-based files without running code from them.

A pickle can name any importable function and call it while it loads, so no file is ever read with plain
`pickle.load`. CIFAR-10's python batches are pickles: they go through `load_cifar_pickle`, an unpickler that
admits only what the real files reference (dicts, strings, lists of ints and numpy's reconstruction of uint8
arrays). Checkpoints and weights go through `torch_load`, PyTorch's weights-only unpickler.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Union

from .errors import LookalikeError

# A CIFAR-10 batch is 31 MB (10,000 images of 3,072 bytes); the cap bounds the memory one crafted file can take.
MAX_CIFAR_PICKLE_BYTES = 64 * 1024 * 1024


class _NdarrayMarker:
    """Stands for `numpy.ndarray` inside the pickle: only `_reconstruct` may use it, nothing can call it."""


def _reconstruct(subtype, shape, typecode):
    """numpy's `_reconstruct`, for the empty plain ndarray that the pickle's BUILD then fills."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct as real
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as real

    if subtype is not _NdarrayMarker or tuple(shape) != (0,):
        raise pickle.UnpicklingError("an array that is not a plain numpy ndarray")
    return real(np.ndarray, (0,), typecode)


def _dtype(spec, align=False, copy=True):
    import numpy as np

    if spec not in ("u1", b"u1"):
        shown = spec.decode("latin1") if isinstance(spec, bytes) else spec
        raise pickle.UnpicklingError(f"an array of type {shown!r}, where CIFAR-10 holds only uint8 pixels")
    return np.dtype("u1", bool(align), True)  # a copy: BUILD sets its state, never on numpy's shared uint8


# Globals that CIFAR-10's batches reference (written by Python 2 with numpy 1.x; numpy 2 moved `core` to `_core`).
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR-10 batch never holds") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent reference, which a CIFAR-10 batch never holds")


def load_cifar_pickle(path: Union[str, os.PathLike]) -> Any:
    """The object in a CIFAR-10 python batch file (byte-string keys, as Python 2 wrote them), read without running
    code: anything but dicts, lists, strings, numbers and uint8 arrays is refused with a `LookalikeError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CIFAR_PICKLE_BYTES:
            raise LookalikeError(f"{path} is not a CIFAR-10 batch file ({size} bytes; a batch is about 31 MB)")
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, encoding="bytes").load()
    except LookalikeError:
        raise
    except FileNotFoundError:
        raise LookalikeError(f"{path} is missing: not a complete cifar-10-batches-py folder") from None
    except OSError as exc:
        raise LookalikeError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged or crafted pickle fails in many ways; none is trusted
        raise LookalikeError(f"{path} is not a CIFAR-10 batch file: {_first_line(exc)}; it was not loaded") from None


# PyTorch's weights-only errors open with advice to load the file with `weights_only=False`, which would run any
# code the file holds. Users see the reason alone.
_TORCH_ADVICE = re.compile(
    r"weights only load failed|weights_only|re-running `torch\.load`|arbitrary code|trusted source|"
    r"please file an issue|check the documentation|pytorch\.org|^\s*$", re.I)
_UNSUPPORTED_GLOBAL = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", re.I)


def load_error_reason(exc: BaseException) -> str:
    """A short reason for a failed `torch.load`, without PyTorch's advice to turn its safety off."""
    text = str(exc)
    m = _UNSUPPORTED_GLOBAL.search(text)
    if m:
        return f"it references {m.group(1)}, which Lookalike never loads"
    for line in text.splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not _TORCH_ADVICE.search(line):
            return line[:160]
    return type(exc).__name__


def torch_load(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Any:
    """`torch.load` with the weights-only unpickler (tensors, numbers, strings and containers only). Errors are
    raised as they come (callers word them); use `load_error_reason` for the message."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd pickle protocols in foreign files warn before they fail
        return torch.load(path, map_location=map_location, weights_only=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
