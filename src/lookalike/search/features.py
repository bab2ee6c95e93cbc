"""Turn images into L2-normalised float32 feature vectors with a backbone (pretrained or a trained checkpoint).

The pipeline that makes indexing fast on a CPU:
- JPEG draft decoding at the smallest DCT scale still >= the backbone's resize size (`load_image(min_size=...)`);
- resize and centre crop in one PIL call (`resize(box=...)`), so only the kept pixels are resampled;
- decoding in a thread pool (PIL releases the GIL) overlapped with batched inference in the calling thread;
- inference under `torch.inference_mode()` in channels_last, or through ONNX Runtime when it is installed and
  faster (see `benchmarks/index_speed.py`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import BadImageError, LookalikeError
from ..images import load_image, read_image_file

if TYPE_CHECKING:
    from .index import ImageIndex

POOLINGS = ("avg", "gem")
GEM_P = 3.0  # the usual GeM exponent for retrieval (Radenovic et al.)
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_BATCH = 32  # images per pipeline batch (and per index commit)
# Images per forward pass. ONNX Runtime's activation memory grows with it (peak RSS measured with
# EfficientNet-Lite0: 8 -> 0.33 GB, 16 -> 0.55 GB, 32 -> 0.99 GB) while throughput gains ~15 % from 16 to 32;
# 16 keeps `compare` of 2,000 images under 1 GB.
FORWARD_BATCH = 16


def is_checkpoint_ref(model: str) -> bool:
    """A `--model` value naming a file (a `lookalike train` checkpoint) rather than a registered backbone."""
    return model.endswith((".pt", ".pth", ".ckpt")) or os.sep in model or Path(model).is_file()


def file_digest(data: bytes) -> str:
    """Content hash that recognises renamed files (SHA-256, hardware-accelerated on most CPUs; 128 bits kept)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _resample(name: str) -> int:
    from PIL import Image

    return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}.get(
        name, Image.BILINEAR)


def prepare_image(img, preprocess: dict) -> np.ndarray:
    """Resize the shorter side to `resize_size` and centre-crop `input_size`, in one resampling pass.

    Returns an (S, S, 3) uint8 array; normalisation happens later on the whole batch.
    """
    size = int(preprocess["input_size"])
    resize = int(preprocess.get("resize_size") or size)
    w, h = img.size
    scale = resize / min(w, h)
    # The crop window, in source pixels, of the S x S centre of the resized image.
    side = size / scale
    left, top = (w - side) / 2.0, (h - side) / 2.0
    out = img.resize((size, size), _resample(preprocess.get("interpolation", "bilinear")),
                     box=(left, top, left + side, top + side))
    return np.asarray(out, dtype=np.uint8)


def _pool_module(backbone, pooling: str):
    import torch
    from torch import nn

    class EmbedNet(nn.Module):
        """Backbone feature map -> global pooling (avg or GeM) -> L2 normalisation."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.backbone.forward_features(x)
            if pooling == "gem":
                f = f.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
            else:
                f = f.mean(dim=(2, 3))
            return torch.nn.functional.normalize(f, dim=1)

    return EmbedNet().eval()


class Embedder:
    """A backbone with its preprocessing and pooling; call it with PIL images or file paths."""

    def __init__(self, net, *, model: str, pooling: str, preprocess: dict, dim: int, device: str = "cpu",
                 weights: str | None = None, runner: Callable[[np.ndarray], np.ndarray] | None = None,
                 runtime: str = "torch", batch_size: int = DEFAULT_BATCH,
                 forward_batch: int = FORWARD_BATCH) -> None:
        self.net = net
        self.model = model
        self.pooling = pooling
        self.preprocess = dict(preprocess)
        self.dim = int(dim)
        self.device = device
        self.weights = weights
        self.runtime = runtime
        self.batch_size = batch_size
        self.forward_batch = forward_batch
        self._runner = runner
        self._lock = threading.Lock()  # one forward pass at a time: the thread pools are already busy
        self._mean = np.asarray(self.preprocess["mean"], dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (np.asarray(self.preprocess["std"], dtype=np.float32).reshape(1, 3, 1, 1) * 255.0)

    @property
    def min_decode_size(self) -> int:
        return int(self.preprocess.get("resize_size") or self.preprocess["input_size"])

    def describe(self) -> dict:
        """What an index records to refuse vectors from another backbone."""
        return {"model": self.model, "pooling": self.pooling, "dim": self.dim,
                "preprocess": dict(self.preprocess), "weights": self.weights}

    # --- inference -------------------------------------------------------------------------------------
    def _normalise(self, batch: np.ndarray) -> np.ndarray:
        x = batch.transpose(0, 3, 1, 2).astype(np.float32)
        return (x - self._mean) * self._inv_std

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 arrays from `prepare_image` -> (n, D) float32 unit vectors."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        outs = []
        with self._lock:
            for start in range(0, len(batch), self.forward_batch):
                x = np.ascontiguousarray(self._normalise(batch[start:start + self.forward_batch]))
                outs.append(self._runner(x) if self._runner else self._torch_forward(x))
        return np.concatenate(outs).astype(np.float32, copy=False)

    def _torch_forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
            return self.net(t).float().cpu().numpy()

    def embed_images(self, images: list) -> np.ndarray:
        """PIL RGB images -> (n, D) float32 L2-normalised vectors. Safe to call from several threads."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_arrays(np.stack([prepare_image(im, self.preprocess) for im in images]))

    def embed_paths(self, paths: list) -> tuple[np.ndarray, list[dict]]:
        """Vectors of the readable files (in order), and `[{"path", "reason"}]` for the others."""
        vectors, skipped = [], []
        for results in self.stream(paths):
            for item, res in results:
                if "vector" in res:
                    vectors.append(res["vector"])
                else:
                    skipped.append({"path": str(item), "reason": res["reason"]})
        if not vectors:
            return np.zeros((0, self.dim), np.float32), skipped
        return np.stack(vectors).astype(np.float32), skipped

    # --- the overlapped pipeline -----------------------------------------------------------------------
    def decode_file(self, path, reuse: Callable[[str], Any] | None = None) -> dict:
        """Read, hash and decode one file. Returns {"digest", "array"} or {"digest", "reuse"} or {"reason"}
        (not read: missing, unreadable, not a regular file, over the file size limit) or {"digest", "reason"}
        (read but not decodable)."""
        try:
            # Regular files only, at most MAX_FILE_BYTES: a FIFO, a device or a sparse giant is named, not read.
            # No digest with these reasons, so the index tries the file again next time (a stat, no read).
            data = read_image_file(path)
        except BadImageError as exc:
            message = str(exc)
            prefix = f"{path}: "  # the path may hold ": " itself
            return {"reason": message[len(prefix):] if message.startswith(prefix) else message}
        digest = file_digest(data)
        if reuse is not None:
            found = reuse(digest)
            if found is not None:
                return {"digest": digest, "reuse": found}
        try:
            img = load_image(data, min_size=self.min_decode_size)
            return {"digest": digest, "array": prepare_image(img, self.preprocess)}
        except BadImageError as exc:
            return {"digest": digest, "reason": str(exc).split(": ", 1)[-1]}
        except Exception as exc:  # a decoder bug on one odd file must not stop a long run
            return {"digest": digest, "reason": f"cannot decode ({exc.__class__.__name__}: {exc})"}

    def stream(self, items: Iterable, batch_size: int | None = None, workers: int | None = None,
               reuse: Callable[[str], Any] | None = None,
               path_of: Callable[[Any], Any] | None = None) -> Iterator[list[tuple[Any, dict]]]:
        """Yield, batch by batch, `[(item, result)]` in input order (`path_of(item)` is the file, default item).

        Each result is `decode_file`'s dict, with "vector" added for decoded images. Decoding of the next
        images runs in worker threads while the current batch goes through the network.
        """
        from ..device import free_cores

        batch_size = batch_size or self.batch_size
        workers = workers or max(2, free_cores())
        items = iter(items)
        ahead = batch_size * 2  # decoded images waiting: bounds memory to a few batches
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-decode")
        pending: deque = deque()

        def fill() -> None:
            while len(pending) < ahead:
                try:
                    item = next(items)
                except StopIteration:
                    return
                pending.append((item, pool.submit(self.decode_file, path_of(item) if path_of else item, reuse)))

        try:
            fill()
            while pending:
                batch = []
                while pending and len(batch) < batch_size:
                    item, fut = pending.popleft()
                    batch.append((item, fut.result()))
                    fill()
                arrays = [res["array"] for _, res in batch if "array" in res]
                if arrays:
                    vectors = self.embed_arrays(np.stack(arrays))
                    j = 0
                    for _, res in batch:
                        if "array" in res:
                            res["vector"] = vectors[j]
                            del res["array"]
                            j += 1
                yield batch
        finally:
            # Ctrl-C or an early stop: drop the queued decodes instead of finishing them.
            pool.shutdown(wait=True, cancel_futures=True)


# --- construction ----------------------------------------------------------------------------------------


def load_embedder(model: str = DEFAULT_MODEL, device: str = "cpu", pooling: str = "avg", weights=None,
                  runtime: str = "auto") -> Embedder:
    """Build the embedder for a registered backbone name or a `lookalike train` checkpoint path.

    `runtime`: "torch", "onnx", or "auto" (ONNX Runtime on CPU for registered backbones when installed).
    """
    pooling = (pooling or "avg").lower()
    if pooling not in POOLINGS:
        raise LookalikeError(f"unknown pooling {pooling!r}: use avg or gem")
    if runtime not in ("auto", "torch", "onnx"):
        raise LookalikeError(f"unknown runtime {runtime!r}: use auto, torch or onnx")
    weights = str(Path(weights).expanduser().resolve()) if weights else None
    checkpoint = is_checkpoint_ref(model)

    if not checkpoint and device == "cpu" and runtime != "torch":
        # Fast start: a cached ONNX export needs neither torch nor timm, which take seconds to import.
        from ..models.pretrained import PREPROCESS
        from . import onnx_runtime

        if model in PREPROCESS and onnx_runtime.available():
            path = onnx_runtime.onnx_path(model, pooling, weights, PREPROCESS[model])
            if path.is_file():
                try:
                    run = onnx_runtime.open_session(path)
                except Exception:  # a damaged cache file: export again below
                    path.unlink(missing_ok=True)
                else:
                    return Embedder(None, model=model, pooling=pooling, preprocess=PREPROCESS[model],
                                    dim=run.dim, device="cpu", weights=weights, runner=run, runtime="onnx")

    from ..device import resolve_device
    from ..models import create_model, get_model_entry

    dev = resolve_device(device)
    if checkpoint:
        from ..train.checkpoint import model_from_checkpoint

        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise LookalikeError(f"checkpoint {model} not found")
        backbone, meta = model_from_checkpoint(path, device="cpu")
        size = int(meta["input_size"])
        preprocess = {"mean": [float(v) for v in meta["mean"]], "std": [float(v) for v in meta["std"]],
                      "input_size": size, "resize_size": size, "interpolation": "bilinear"}
        model_id = str(path)
    else:
        entry = get_model_entry(model)
        if entry.kind != "pretrained":
            raise LookalikeError(
                f"model {model!r} is a CIFAR net to train: pass its checkpoint file from `lookalike train` instead")
        backbone = create_model(model, pretrained=True, weights=weights)
        preprocess = dict(backbone.preprocess)
        model_id = model

    import torch

    net = _pool_module(backbone, pooling).to(dev)
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    dim = int(getattr(backbone, "num_features"))
    runner, used = None, "torch"
    if dev.type == "cpu" and (runtime == "onnx" or (runtime == "auto" and not checkpoint)):
        from .onnx_runtime import onnx_runner

        runner = onnx_runner(net, model=model_id, pooling=pooling, weights=weights, preprocess=preprocess)
        if runner is None and runtime == "onnx":
            raise LookalikeError("--runtime onnx needs onnxruntime and onnx: pip install onnxruntime onnx")
        used = "onnx" if runner is not None else "torch"
    return Embedder(net, model=model_id, pooling=pooling, preprocess=preprocess, dim=dim, device=str(dev),
                    weights=weights, runner=runner, runtime=used)


def embedder_for_index(index: "ImageIndex", device: str = "cpu", runtime: str = "auto") -> Embedder:
    """The embedder that produced `index`'s vectors: same backbone, weights, preprocessing and pooling."""
    m = index.manifest
    emb = load_embedder(m["model"], device=device, pooling=m.get("pooling", "avg"), weights=m.get("weights"),
                        runtime=runtime)
    if emb.dim != int(m["dim"]):
        raise LookalikeError(f"index {index.path} holds {m['dim']}-d vectors but {m['model']} gives {emb.dim}-d: "
                             "rebuild it with --rebuild")
    return emb
