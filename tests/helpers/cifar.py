"""CIFAR-10 python batches as the real files are written, for tests that cannot download them.

The real `cifar-10-batches-py` files were pickled by Python 2 (protocol 2) with numpy 1.x: every string is a
Python 2 byte string (SHORT_BINSTRING / BINSTRING opcodes, read back as `bytes` keys), the pixels are one uint8
ndarray rebuilt through `numpy.core.multiarray._reconstruct`, `numpy.ndarray` and `numpy.dtype`, and the labels are
a plain list of ints. Python 3's own protocol 2 writes byte strings through `_codecs.encode` and numpy 2 names
`numpy._core`, so this writer emits the Python 2 opcodes itself.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its opcode writers can be replaced
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, fh):
        super().__init__(fh, protocol=2)

    def save_py2_string(self, obj) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string

    def save_global(self, obj, name=None) -> None:
        if obj is np.ndarray or obj is np.dtype:
            module, name = "numpy", obj.__name__
        elif getattr(obj, "__name__", "") == "_reconstruct":
            module, name = "numpy.core.multiarray", "_reconstruct"
        else:
            module, name = obj.__module__, obj.__qualname__
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):  # numpy 1.x: dtype('u1', 0, 1) with ints, not booleans
            _, args, state = obj.__reduce__()
            return np.dtype, (args[0], 0, 1), state
        return NotImplemented


def dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as fh:
        Py2Pickler(fh).dump(obj)


def write_cifar_batches(folder: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """data_batch_1..5, test_batch and batches.meta with random pixels, in the real files' layout."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        blob = {"batch_label": f"training batch {b + 1} of 5" if b < 5 else "testing batch 1 of 1",
                "labels": labels,
                "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                "filenames": [f"img_{b}_{i}.png" for i in range(n_per_batch)]}
        dump_py2(blob, folder / name)
    dump_py2({"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072},
             folder / "batches.meta")
    return folder
