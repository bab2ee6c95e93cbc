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

from ...errors import BadImageError, LookalikeError, TransientImageError
from ...images import load_image, read_image_file
from ...models.registry import DEFAULT_MODEL  # noqa: F401 (re-exported: the default backbone's one name)
from .model_digest import is_checkpoint_ref  # noqa: F401 (re-exported: callers import it from here)
from .pooling import (  # noqa: F401 (re-exported: callers import them from here)
    POOLINGS, GEM_P, LAYERS, HEAD_ONLY, DEFAULT_CROP_LAYERS, BLOCKS_CHANNELS, parse_pooling, parse_layers,
    layer_parts, rmac_regions, pool_maps, _l2, _layer_maps, _features_module, _pool_module)
from .prepare import (  # noqa: F401 (re-exported: callers import them from here)
    SHAPE_STEP, MAX_LONG_SIDE, BORDER_TOLERANCE, BORDER_SHARE, BORDER_KEEP, _resample, border_box, trim_borders,
    prepare_image, whole_image_shape, prepare_whole)
from .file_results import Decoded, DecodeResult, Embedded, Reused, StreamResult, Undecodable, Unread
from ..store.renditions import Stored, make_rendition
from .local_features import packed_features

if TYPE_CHECKING:
    from ..store.index import ImageIndex

# New descriptors of registered backbones trim borders (benchmarks/results/eval_search.md); indexes made without
# it keep their vectors comparable (the manifest's preprocess has no "trim" key, so queries are not trimmed).
DEFAULT_TRIM = True
DEFAULT_BATCH = 32  # images per pipeline batch (and per index commit)
# Images per forward pass: ONNX Runtime's activation memory grows with it faster than its throughput, and 16
# keeps `compare` of 2,000 images under 1 GB (benchmarks/results/index_speed.notes.md).
FORWARD_BATCH = 16


def file_digest(data: bytes) -> str:
    """Content hash that recognises renamed files (SHA-256, hardware-accelerated on most CPUs; 128 bits kept)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _stored(image: Any) -> Stored | None:
    """The rendition and packed local features of a decoded image (None without a rendition: then neither)."""
    jpeg = make_rendition(image)
    return None if jpeg is None else Stored(jpeg, packed_features(image))


class Embedder:
    """A backbone with its preprocessing and pooling; call it with PIL images or file paths."""

    model_digest: str | None = None  # sha256 of the checkpoint or weights file, set by `load_embedder`
    # Whether `decode_file` also makes the small JPEG and the local features that verification and the duplicate
    # check read (`store/renditions.py`): set while indexing, where the decoded image is at hand anyway.
    keep_renditions: bool = False

    def __init__(self, net, *, model: str, pooling: str, preprocess: dict, dim: int, device: str = "cpu",
                 weights: str | None = None, runner: Callable[[np.ndarray], np.ndarray] | None = None,
                 runtime: str = "torch", batch_size: int = DEFAULT_BATCH,
                 forward_batch: int = FORWARD_BATCH, parts: tuple[int, ...] | None = None) -> None:
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
        self.parts = parts  # channel counts of a two-layer descriptor's parts (None: one layer)
        self._runner = runner
        self.whitening = None  # a `whitening.Whitening` applied to every vector (an index's, once applied)
        self.whitening_record: dict | None = None
        self._lock = threading.Lock()  # one forward pass at a time: the thread pools are already busy
        self._mean = np.asarray(self.preprocess["mean"], dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (np.asarray(self.preprocess["std"], dtype=np.float32).reshape(1, 3, 1, 1) * 255.0)

    @property
    def whole(self) -> bool:
        """Whole photos at `long_side` (aspect kept) rather than a centre crop."""
        return self.preprocess.get("fit") == "whole"

    @property
    def min_decode_size(self) -> int:
        if self.whole:
            return int(round(int(self.preprocess["long_side"]) * max(self.preprocess.get("scales") or [1.0])))
        return int(self.preprocess.get("resize_size") or self.preprocess["input_size"])

    def prepare(self, img):
        """A decoded photo -> what `embed_prepared` takes (one array, or one per scale for whole photos)."""
        if self.preprocess.get("trim"):
            img = trim_borders(img)
        return prepare_whole(img, self.preprocess) if self.whole else prepare_image(img, self.preprocess)

    def with_whitening(self, whitening, record: dict) -> "Embedder":
        """Apply `whitening` (padded to this backbone's width) to every vector from now on; `record` (what the
        index stores, `whitening.store_for_index`) joins `describe()`."""
        self.whitening = whitening.padded(self.dim)
        self.whitening_record = dict(record)
        return self

    def embed_prepared(self, items: list) -> np.ndarray:
        """`prepare` outputs -> (n, D) float32 unit vectors (whitened when the embedder has a whitening)."""
        raw = self._embed_raw(items)
        return self.whitening(raw) if self.whitening is not None and len(raw) else raw

    def _embed_raw(self, items: list) -> np.ndarray:
        if not self.whole:
            return self.embed_arrays(np.stack(items)) if items else np.zeros((0, self.dim), np.float32)
        total = np.zeros((len(items), self.dim), np.float32)
        for s in range(len(items[0]) if items else 0):
            # Multi-scale: the sum of each scale's unit descriptor. Photos of one shape go through together.
            by_shape: dict[tuple, list[int]] = {}
            for i, views in enumerate(items):
                by_shape.setdefault(views[s].shape, []).append(i)
            for rows in by_shape.values():
                maps = self.embed_arrays(np.stack([items[i][s] for i in rows]))
                total[rows] += pool_maps(maps, self.pooling, self.parts)
        return _l2(total)

    def describe(self) -> dict:
        """What an index records to refuse vectors from another backbone."""
        out = {"model": self.model, "pooling": self.pooling, "dim": self.dim,
               "preprocess": dict(self.preprocess), "weights": self.weights}
        if self.model_digest is not None:
            out["model_digest"] = self.model_digest
        if self.whitening_record is not None:
            out["whitening"] = dict(self.whitening_record)
        return out

    # --- inference -------------------------------------------------------------------------------------
    def _normalise(self, batch: np.ndarray) -> np.ndarray:
        x = batch.transpose(0, 3, 1, 2).astype(np.float32)
        return (x - self._mean) * self._inv_std

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 arrays from `prepare_image` -> (n, D) float32 unit vectors (whole-photo
        embedders: (n, H, W, 3) arrays of one shape -> (n, D, h, w) feature maps, pooled by `embed_prepared`)."""
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
        return self.embed_prepared([self.prepare(im) for im in images])

    def embed_paths(self, paths: list) -> tuple[np.ndarray, list[dict]]:
        """Vectors of the readable files (in order), and `[{"path", "reason"}]` for the others."""
        vectors, skipped = [], []
        for results in self.stream(paths):
            for item, res in results:
                if isinstance(res, Embedded):
                    vectors.append(res.vector)
                else:  # no `reuse` given, so Unread or Undecodable
                    skipped.append({"path": str(item), "reason": res.reason})
        if not vectors:
            return np.zeros((0, self.dim), np.float32), skipped
        return np.stack(vectors).astype(np.float32), skipped

    # --- the overlapped pipeline -----------------------------------------------------------------------
    def decode_file(self, path, reuse: Callable[[str], Any] | None = None) -> DecodeResult:
        """Read, hash and decode one file: `Decoded`, or `Reused` when `reuse(digest)` finds something for it,
        `Unread` (missing, unreadable, not a regular file, over the file size limit) or `Undecodable` (read
        but not decodable); see `file_results`."""
        try:
            # Regular files only, at most MAX_FILE_BYTES: a FIFO, a device or a sparse giant is named, not read.
            # No digest with these reasons, so the index tries the file again next time (a stat, no read).
            data = read_image_file(path)
        except BadImageError as exc:
            message = str(exc)
            prefix = f"{path}: "  # the path may hold ": " itself
            return Unread(message[len(prefix):] if message.startswith(prefix) else message)
        digest = file_digest(data)
        if reuse is not None:
            found = reuse(digest)
            if found is not None:
                return Reused(digest, found)
        try:
            img = load_image(data, min_size=self.min_decode_size)
            return Decoded(digest, self.prepare(img), _stored(img) if self.keep_renditions else None)
        except TransientImageError as exc:  # not the file's fault: tried again next run
            return Unread(str(exc).split(": ", 1)[-1])
        except BadImageError as exc:
            return Undecodable(digest, str(exc).split(": ", 1)[-1])
        except MemoryError:
            return Unread("not enough memory to prepare it")
        except Exception as exc:  # a decoder bug on one odd file must not stop a long run
            return Undecodable(digest, f"cannot decode ({exc.__class__.__name__}: {exc})")

    def stream(self, items: Iterable, batch_size: int | None = None, workers: int | None = None,
               reuse: Callable[[str], Any] | None = None,
               path_of: Callable[[Any], Any] | None = None) -> Iterator[list[tuple[Any, StreamResult]]]:
        """Yield, batch by batch, `[(item, result)]` in input order (`path_of(item)` is the file, default item).

        Each result is `decode_file`'s, with a `Decoded` image turned `Embedded`. Decoding of the next
        images runs in worker threads while the current batch goes through the network.
        """
        from ...device import free_cores

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

        watch = ModelWatch()
        try:
            fill()
            while pending:
                batch: list[tuple[Any, DecodeResult]] = []
                while pending and len(batch) < batch_size:
                    item, fut = pending.popleft()
                    batch.append((item, fut.result()))
                    fill()
                embedded = self._embed_decoded(batch, watch)
                batch.clear()  # the decoded pixels go now, not while the caller works on this batch
                yield embedded
            watch.check(finished=True)
        finally:
            # Ctrl-C or an early stop: drop the queued decodes instead of finishing them.
            pool.shutdown(wait=True, cancel_futures=True)

    def _embed_decoded(self, batch: list[tuple[Any, DecodeResult]],
                       watch: "ModelWatch | None" = None) -> list[tuple[Any, StreamResult]]:
        """One forward pass for the batch's `Decoded` images; every other result passes through. A forward pass
        that fails, or a vector that is not finite, leaves those images `Unread` (tried again next run, never
        stored); `watch` stops the run when the model fails on every image."""
        arrays = [res.array for _, res in batch if isinstance(res, Decoded)]
        if not arrays:
            return list(batch)
        try:
            vectors = self.embed_prepared(arrays)
            finite = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)
            why = "the model gave no usable vector for it (not finite)"
        except Exception as exc:  # the model's or its runtime's, whatever their class: the run goes on
            vectors, finite = None, np.zeros(len(arrays), bool)
            why = f"the model failed on it ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        if watch is not None:
            watch.saw(int(finite.sum()), len(arrays) - int(finite.sum()), why)
        out, n = [], 0
        for item, res in batch:
            if isinstance(res, Decoded):
                out.append((item, Embedded(res.digest, vectors[n], res.rendition) if finite[n] else Unread(why)))
                n += 1
            else:
                out.append((item, res))
        return out


class ModelWatch:
    """Counts the images a model embedded and those it failed on during one run: a model that fails on every
    image (weights that give NaN, a runtime error on any input) stops the run with one line instead of skipping
    a whole library one file at a time."""

    FAILURES_BEFORE_STOP = 64  # images failed with none embedded: the model, not the files

    def __init__(self) -> None:
        self.ok = self.failed = 0
        self.reason = ""

    def saw(self, ok: int, failed: int, reason: str) -> None:
        self.ok += ok
        self.failed += failed
        if failed:
            self.reason = reason
        self.check()

    def check(self, finished: bool = False) -> None:
        if self.ok == 0 and self.failed and (finished or self.failed >= self.FAILURES_BEFORE_STOP):
            raise LookalikeError(f"{self.reason.replace(' on it', '').replace(' for it', '')} on every image it was "
                                 f"given ({self.failed}): nothing was stored from it; check the --model")


# --- construction ----------------------------------------------------------------------------------------


# Every key `input_options` may write into a descriptor's preprocess: what a change of inputs replaces.
INPUT_KEYS = ("fit", "long_side", "scales", "trim", "layers")


def input_options(long_side: int | None = None, scales=None, trim: bool = False, layers=None) -> dict:
    """The preprocessing keys of a descriptor's input, checked: the whole photo at `long_side` pixels on its
    longer side, aspect kept, at each factor of `scales` (none of these keys for the backbone's own centre crop,
    `long_side` None or 0), `"trim": True` when uniform borders come off first (`trim_borders`; the key is
    absent otherwise, as in indexes made before it existed), and `"layers"` when the descriptor pools other
    feature maps than the head's (`parse_layers`; absent for the head alone). The layers live with the input keys
    because every check and record of a descriptor's inputs must cover them too."""
    names = parse_layers(layers)
    trimmed = {"trim": True} if trim else {}
    if names != HEAD_ONLY:
        trimmed["layers"] = names
    if not long_side:
        if scales and list(scales) != [1.0]:
            raise LookalikeError("multi-scale descriptors need a whole-photo size (--size)")
        return trimmed
    long_side = int(long_side)
    factors = [float(f) for f in (scales or [1.0])]
    if not factors or any(not 0.25 <= f <= 4.0 for f in factors):
        raise LookalikeError("scales must be factors from 0.25 to 4")
    if not SHAPE_STEP <= long_side or long_side * max(factors) > MAX_LONG_SIDE:
        raise LookalikeError(f"the whole-photo size times its largest scale must be from {SHAPE_STEP} to "
                             f"{MAX_LONG_SIDE} pixels")
    return {"fit": "whole", "long_side": long_side, "scales": factors, **trimmed}


def inputs_of(preprocess: dict | None) -> dict:
    """The `load_embedder(inputs=...)` that gives vectors made with `preprocess` (an index manifest's)."""
    pre = preprocess or {}
    whole = {"long_side": pre["long_side"], "scales": pre.get("scales")} if pre.get("fit") == "whole" else {}
    return {**whole, "trim": bool(pre.get("trim")), "layers": list(pre.get("layers") or HEAD_ONLY)}


def _graph_name(whole: bool, pooling: str, layers: list[str]) -> str:
    """What the exported graph computes, part of its cache file's name: the feature map(s) of whole photos, or
    the pooled vector of the centre crop."""
    name = "features" if whole else pooling
    return name if layers == HEAD_ONLY else f"{name}-{'+'.join(layers)}"


def load_embedder(model: str = DEFAULT_MODEL, device: str = "cpu", pooling: str = "avg", weights=None,
                  runtime: str = "auto", inputs: dict | None = None) -> Embedder:
    """Build the embedder for a registered backbone name or a `lookalike train` checkpoint path (see
    `_build_embedder`); it describes the content digest of a checkpoint or weights file (`model_digest.py`)."""
    from .model_digest import digest_of

    digest = digest_of(model, weights)
    emb = _build_embedder(model, device, pooling, weights, runtime, inputs)
    emb.model_digest = digest
    return emb


def _build_embedder(model: str = DEFAULT_MODEL, device: str = "cpu", pooling: str = "avg", weights=None,
                    runtime: str = "auto", inputs: dict | None = None) -> Embedder:
    """Build the embedder for a registered backbone name or a `lookalike train` checkpoint path.

    `runtime`: "torch", "onnx", or "auto" (ONNX Runtime on CPU for registered backbones when installed).
    `inputs`: `input_options(...)` keys: whole photos at a chosen size (and scales) instead of the centre crop,
    then the pooling (avg, gem, gem:P, rmac) runs on the feature map outside the network; `trim` (default: on for
    registered backbones, off for checkpoints, which were trained on untrimmed images) takes uniform borders off;
    `layers` (`parse_layers`; default: DEFAULT_CROP_LAYERS for the centre crop of a backbone in BLOCKS_CHANNELS,
    the head otherwise) picks the feature maps pooled.
    """
    pooling = (pooling or "avg").lower()
    kind, _ = parse_pooling(pooling)
    inputs = dict(inputs or {})
    if kind == "rmac" or ":" in pooling:
        if not inputs.get("long_side"):
            raise LookalikeError(f"pooling {pooling} needs whole-photo inputs (--size)")
    checkpoint = is_checkpoint_ref(model)
    if inputs.get("layers") is None:
        offered = not checkpoint and model in BLOCKS_CHANNELS and not inputs.get("long_side")
        layers = list(DEFAULT_CROP_LAYERS if offered else HEAD_ONLY)
    else:
        layers = parse_layers(inputs["layers"])
    if layers != HEAD_ONLY and (checkpoint or model not in BLOCKS_CHANNELS):
        raise LookalikeError(f"--layers {','.join(layers)} needs one of {', '.join(BLOCKS_CHANNELS)}, not {model}")
    inputs = input_options(inputs.get("long_side"), inputs.get("scales"),
                           bool(inputs.get("trim", DEFAULT_TRIM and not checkpoint)), layers)
    whole = inputs.get("fit") == "whole"
    if runtime not in ("auto", "torch", "onnx"):
        raise LookalikeError(f"unknown runtime {runtime!r}: use auto, torch or onnx")
    weights = str(Path(weights).expanduser().resolve()) if weights else None

    if not checkpoint and device == "cpu" and runtime != "torch":
        cached = _cached_onnx_embedder(model, pooling, weights, inputs, whole, layers)
        if cached is not None:
            return cached

    from ...device import resolve_device

    dev = resolve_device(device)
    backbone, preprocess, model_id = _backbone(model, checkpoint, weights)

    import torch

    dim = sum(BLOCKS_CHANNELS[model] if name == "blocks" else int(getattr(backbone, "num_features"))
              for name in layers)
    parts = layer_parts(model, layers, dim)
    net = (_features_module(backbone, layers) if whole else _pool_module(backbone, pooling, layers, parts)).to(dev)
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    runner, used = None, "torch"
    if dev.type == "cpu" and (runtime == "onnx" or (runtime == "auto" and not checkpoint)):
        from ...onnx_runtime import onnx_runner

        runner = onnx_runner(net, model=model_id, pooling=_graph_name(whole, pooling, layers), weights=weights,
                             preprocess=preprocess, spatial_dynamic=whole)
        if runner is None and runtime == "onnx":
            raise LookalikeError("--runtime onnx needs onnxruntime and onnx: pip install onnxruntime onnx")
        used = "onnx" if runner is not None else "torch"
    return Embedder(net, model=model_id, pooling=pooling, preprocess={**preprocess, **inputs}, dim=dim,
                    device=str(dev), weights=weights, runner=runner, runtime=used, parts=parts)


def _cached_onnx_embedder(model: str, pooling: str, weights: str | None, inputs: dict, whole: bool,
                          layers: list[str]) -> Embedder | None:
    """The embedder over a cached ONNX export of a registered backbone, or None when there is none: a fast
    start, needing neither torch nor timm, which take seconds to import."""
    from ...models.pretrained import PREPROCESS
    from ... import onnx_runtime

    if model not in PREPROCESS or not onnx_runtime.available():
        return None
    path = onnx_runtime.onnx_path(model, _graph_name(whole, pooling, layers), weights, PREPROCESS[model])
    if not path.is_file():
        return None
    try:
        run = onnx_runtime.open_session(path)
    except Exception:  # a damaged cache file: export again (a shipped graph stays)
        if not onnx_runtime.is_packaged(path):
            path.unlink(missing_ok=True)
        return None
    return Embedder(None, model=model, pooling=pooling, preprocess={**PREPROCESS[model], **inputs}, dim=run.dim,
                    device="cpu", weights=weights, runner=run, runtime="onnx",
                    parts=layer_parts(model, layers, run.dim))


def _backbone(model: str, checkpoint: bool, weights: str | None) -> tuple[Any, dict, str]:
    """(backbone net on the CPU, its preprocessing, the model id a descriptor records) of a registered
    pretrained backbone or a `lookalike train` checkpoint."""
    from ...models import create_model, get_model_entry

    if checkpoint:
        from ...models.from_checkpoint import model_from_checkpoint

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
    return backbone, preprocess, model_id


def embedder_for_index(index: "ImageIndex", device: str = "cpu", runtime: str = "auto") -> Embedder:
    """The embedder that produced `index`'s vectors: same backbone, weights, preprocessing and pooling, and the
    index's whitening when its vectors are whitened (the record committed with them, `index.whitening`)."""
    m = index.manifest
    emb = load_embedder(m["model"], device=device, pooling=m.get("pooling", "avg"), weights=m.get("weights"),
                        runtime=runtime, inputs=inputs_of(m.get("preprocess")))
    if emb.dim != int(m["dim"]):
        raise LookalikeError(f"index {index.path} holds {m['dim']}-d vectors but {m['model']} gives {emb.dim}-d: "
                             "rebuild it with --rebuild")
    from .model_digest import check_unchanged

    check_unchanged(m, emb.model_digest, index.path, rebuild_hint=f"queries would be embedded by other weights; "
                    f"run `lookalike index {m.get('root', 'FOLDER')} --rebuild` to index with the new ones")
    record = getattr(index, "whitening", None)
    if record is not None:
        from .whitening import load_for_index

        emb.with_whitening(load_for_index(index.path, record), record)
    return emb
