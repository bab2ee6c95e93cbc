"""Training data: CIFAR-10 and class folders.

Class folders come as `train/` with `val/` or `test/` beside it, or as one folder of classes (or a lone `train/`)
split by `val_fraction`: stratified, the same split on every machine and run. Small images (<= 64 px a side) are
decoded once into a uint8 tensor cache under `cache_dir("datasets")`; larger photos are decoded once into a
memory-mapped cache at the training side (`photo_cache`) when they fit the memory budget, and stream beyond it:
each batch is decoded (JPEG draft mode) in worker threads, resized and centre-cropped on demand. Caches are keyed
by the files' paths, sizes and modification times. Bad files are skipped and named in `Split.skipped`, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import BadImageError, LookalikeError
from .images import list_image_files, load_image
from .paths import cache_dir
from .unpickle import load_cifar_pickle, torch_load

SMALL_MAX_SIDE = 64  # images up to this side are cached as one uint8 tensor and train the `fast` net
CACHE_VERSION = 1
CIFAR10_URL = os.environ.get("LOOKALIKE_CIFAR10_URL", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Split:
    """One split. In-memory: `images` is a uint8 tensor N x 3 x H x W. Streaming: `files` are decoded per batch."""

    labels: "torch.Tensor"  # int64, N
    size: int  # images are size x size
    images: Optional["torch.Tensor"] = None
    files: Optional[list[Path]] = None
    skipped: list[str] = field(default_factory=list)  # "path: reason" for every file that could not be read

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def batch(self, indices: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """uint8 images and labels at `indices`; a streamed file that fails to decode is dropped and named."""
        import torch

        if self.images is not None:
            return self.images[indices], self.labels[indices]
        idx = indices.tolist()
        pics = _decode_many([self.files[i] for i in idx], self.size, self.skipped)
        keep = [k for k, p in enumerate(pics) if p is not None]
        if not keep:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        stacked = torch.from_numpy(np.stack([pics[k] for k in keep])).permute(0, 3, 1, 2).contiguous()
        return stacked, self.labels[indices[keep]]


@dataclass
class DataBundle:
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, float, float]  # of 0..1 pixel values, from the training images
    std: tuple[float, float, float]
    input_size: int
    source: str
    layout: dict = field(default_factory=dict)  # how the folder was read: which folders, or the split made

    @property
    def skipped(self) -> list[str]:
        return self.train.skipped + self.test.skipped


def load_data(data: str, image_size: Optional[int] = None, progress: Optional[Callable[[str], None]] = None,
              need_train: bool = True, val_fraction: Optional[float] = None,
              cache_bytes: Optional[int] = None) -> DataBundle:
    """`data`: "cifar10", a `cifar-10-batches-py` folder, or a folder of class folders (see the module doc).

    `image_size`: side the images are resized to (default: the images' own size when small, else 128).
    `val_fraction`: share of each class held out when the folder has no `val/` or `test/`. `cache_bytes`: memory
    budget of the photo caches (default `photo_cache.default_budget_bytes()`); 0 streams every photo.
    `need_train=False` (evaluating a checkpoint) reads the held-out images only, `test/` before `val/`.
    """
    if data.lower() == "cifar10":
        return _cifar10_bundle(_cifar10_batches_dir(progress), image_size)
    root = Path(data).expanduser()
    if not root.exists():
        raise LookalikeError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise LookalikeError(f"--data {root} is not a folder")
    if (root / "data_batch_1").exists() or (root / "cifar-10-batches-py").is_dir():
        return _cifar10_bundle(root if (root / "data_batch_1").exists() else root / "cifar-10-batches-py", image_size)
    return _folder_bundle(root, image_size, progress, need_train, val_fraction, cache_bytes)


def typical_side(data: str) -> Optional[int]:
    """The shorter side of the most common image size of a folder data set (a sample of headers), None for
    CIFAR-10 or when nothing can be read."""
    sizes = _header_sizes(_sample_files(data))
    return min(Counter(sizes).most_common(1)[0][0]) if sizes else None


def _sample_files(data: str) -> list[Path]:
    """Up to 20 files of each class folder of a folder data set (of train/ when there is one); [] for CIFAR-10
    or anything unreadable (`load_data` reports it)."""
    root = Path(data).expanduser()
    if data.lower() == "cifar10" or not root.is_dir() or (root / "data_batch_1").exists() \
            or (root / "cifar-10-batches-py").is_dir():
        return []
    folder = root / "train" if (root / "train").is_dir() else root
    try:
        return [f for d in sorted(folder.iterdir()) if d.is_dir() for f in list_image_files(d)[:20]]
    except OSError:
        return []


def model_for_side(side: int) -> str:
    """The from-scratch model `--model auto` takes for images of `side` px: "fast" up to SMALL_MAX_SIDE (CIFAR-like
    images), "photo" above."""
    return "fast" if side <= SMALL_MAX_SIDE else "photo"


def auto_model(data: str, image_size: Optional[int] = None) -> str:
    """`model_for_side` of `data` before it loads (the training side decides when given). Reads a sample of image
    headers; anything unreadable answers "fast" and leaves the error to `load_data`."""
    if image_size is not None:
        return model_for_side(image_size)
    files = _sample_files(data)
    size, _ = _probe_size(files, None) if files else (32, True)
    return model_for_side(size)


# ---------------------------------------------------------------- class folders


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise LookalikeError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<image>)")
    out = {}
    for c in classes:
        files = list_image_files(split_dir / c)
        if not files:
            raise LookalikeError(f"class folder {split_dir / c} holds no images")
        out[c] = files
    return out


DEFAULT_VAL_FRACTION = 0.2  # of a single folder of classes, when no --val-fraction is given


def _layout(root: Path, need_train: bool, val_fraction: Optional[float]) -> tuple[Optional[Path], Optional[Path], Optional[float]]:
    """(train folder, held-out folder or None, fraction to split off the train folder or None).

    Training evaluates on `val/` when there is one, else `test/`; evaluating a checkpoint prefers `test/`."""
    held = [root / n for n in (("val", "test") if need_train else ("test", "val")) if (root / n).is_dir()]
    train = root / "train" if (root / "train").is_dir() else None
    if held:
        if val_fraction is not None and need_train:
            raise LookalikeError(f"--val-fraction splits a folder without val/ or test/, but {root} has "
                                 f"{held[0].name}/: drop --val-fraction, or train on a folder without it")
        if need_train and train is None:
            raise LookalikeError(f"{root} has no train/ folder: --data needs DIR/train/<class>/ beside "
                                 f"DIR/{held[0].name}/<class>/, or one folder of class folders")
        return train, held[0], None
    if train is not None:
        if val_fraction is None:
            raise LookalikeError(f"{root} has no test/ folder (nor val/): add DIR/val/<class>/ or DIR/test/<class>/, "
                                 "or pass --val-fraction 0.2 to hold out a fifth of train/")
        return train, None, val_fraction
    # One folder of classes: every sub-folder is a class, split per class.
    return root, None, DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction


def split_per_class(per_class: dict[str, list[Path]], fraction: float) -> tuple[dict, dict]:
    """(train, held out): `fraction` of each class's files, at least one when it has two or more, held out. The
    choice depends only on the class name and its sorted file names, so every machine and run makes the same."""
    train, held = {}, {}
    for name, files in per_class.items():
        files = sorted(files, key=lambda p: p.name)
        seed = int.from_bytes(hashlib.sha256(f"lookalike-split|{name}".encode("utf-8", "surrogateescape")).digest()[:8],
                              "little")
        order = np.random.default_rng(seed).permutation(len(files))
        n_held = 0 if len(files) < 2 else min(len(files) - 1, max(1, round(fraction * len(files))))
        chosen = set(order[:n_held].tolist())
        held[name] = [f for i, f in enumerate(files) if i in chosen]
        train[name] = [f for i, f in enumerate(files) if i not in chosen]
    return train, held


def _folder_bundle(root: Path, image_size: Optional[int], progress, need_train: bool,
                   val_fraction: Optional[float] = None, cache_bytes: Optional[int] = None) -> DataBundle:
    import torch

    from . import photo_cache

    train_dir, held_dir, fraction = _layout(root, need_train, val_fraction)
    layout: dict = {"train": str(train_dir) if need_train else None}
    if fraction is None:
        test_files = _class_files(held_dir)
        train_files = _class_files(train_dir) if need_train else {c: [] for c in test_files}
        layout["test"] = str(held_dir)
    else:
        train_files, test_files = split_per_class(_class_files(train_dir), fraction)
        listing = hashlib.sha256("\n".join(str(f) for c in sorted(test_files) for f in test_files[c])
                                 .encode("utf-8", "surrogateescape")).hexdigest()[:16]
        layout.update(train=str(train_dir), test=None, val_fraction=fraction, split="per class, by file name",
                      held_out=sum(map(len, test_files.values())), held_out_sha256=listing)
        if need_train and not any(test_files.values()):
            raise LookalikeError(f"--val-fraction {fraction} holds out no image of {train_dir}: each class needs "
                                 "two images or more")
        if not need_train:
            train_files = {c: [] for c in test_files}
    classes = list(train_files)
    if set(classes) != set(test_files):
        only_train = sorted(set(classes) - set(test_files))
        only_test = sorted(set(test_files) - set(classes))
        raise LookalikeError(
            f"train/ and {held_dir.name if held_dir else 'test'}/ hold different classes (only in train: "
            f"{', '.join(only_train) or '-'}; only in {held_dir.name if held_dir else 'test'}: "
            f"{', '.join(only_test) or '-'})"
        )
    splits = {}
    for name, per_class in (("train", train_files), ("test", test_files)):
        files = [f for c in classes for f in per_class[c]]
        labels = [i for i, c in enumerate(classes) for _ in per_class[c]]
        splits[name] = (files, labels)

    size, small = _probe_size(splits["train"][0] + splits["test"][0], image_size)
    budget = photo_cache.default_budget_bytes() if cache_bytes is None else max(0, int(cache_bytes))
    result = {}
    for name, (files, labels) in splits.items():
        folder = (train_dir if name == "train" else held_dir) or train_dir
        role = name if fraction is None else f"{name}-split-{fraction}"
        if small and files:
            result[name] = _cached_split(folder, files, labels, size, progress)
        elif files and photo_cache.cache_bytes(len(files), size) <= budget:
            from .device import free_cores

            images, labels_t, skipped = photo_cache.load_or_build(folder, role, files, labels, size, _decode_one,
                                                                  free_cores(), progress)
            budget -= photo_cache.cache_bytes(len(images), size)
            result[name] = Split(labels=labels_t, size=size, images=images, skipped=skipped)
        else:
            if files and progress:
                progress(f"{len(files)} {name} photos at {size} px exceed the cache's memory budget "
                         f"({budget >> 20} MiB left): decoding them at every step")
            result[name] = Split(labels=torch.tensor(labels, dtype=torch.long), size=size, files=files,
                                 images=None if files else torch.empty(0, 3, size, size, dtype=torch.uint8))
    if need_train and len(result["train"]) == 0:
        raise LookalikeError(f"{train_dir} holds no readable images")
    if len(result["test"]) == 0:
        raise LookalikeError(f"{held_dir or train_dir} holds no readable images to evaluate on")
    mean, std = _mean_std(result["train"] if len(result["train"]) else result["test"])
    return DataBundle(result["train"], result["test"], classes, mean, std, size, str(root), layout)


def _header_sizes(files: Sequence[Path], sample: int = 200) -> list[tuple[int, int]]:
    """(width, height) from the headers of up to `sample` files spread over `files`; unreadable ones are left
    out (the decode step names them)."""
    from .images import open_header

    sizes = []
    for f in files[::max(1, len(files) // sample)]:
        try:
            with open_header(f) as im:
                sizes.append(im.size)
        except Exception:
            continue
    return sizes


def _probe_size(files: Sequence[Path], image_size: Optional[int]) -> tuple[int, bool]:
    """Pick the training side and whether to cache: read the headers of a spread-out sample of files."""
    sizes = _header_sizes(files)
    if not sizes:
        sizes = [(32, 32)]
    largest = max(max(s) for s in sizes)
    common = Counter(sizes).most_common(1)[0][0]
    if image_size is not None:
        return image_size, image_size <= SMALL_MAX_SIDE and largest <= 4 * SMALL_MAX_SIDE
    if largest <= SMALL_MAX_SIDE:
        return max(8, min(common)), True
    return 128, False


def _fit(img, size: int):
    """Resize the shorter side to `size` and centre-crop a square (no-op when already size x size)."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC if scale > 1 else Image.BILINEAR, reducing_gap=None if scale > 1 else 2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _decode_one(path: Path, size: int):
    return np.asarray(_fit(load_image(path, min_size=size), size), dtype=np.uint8)


def _decode_many(files: Sequence[Path], size: int, skipped: list[str]) -> list:
    # Threads help for big photos (PIL releases the GIL while decoding); tiny images decode faster serially.
    from .device import free_cores

    def one(p):
        try:
            return _decode_one(p, size)
        except BadImageError as exc:
            return exc

    if size > SMALL_MAX_SIDE and len(files) > 1:
        with ThreadPoolExecutor(free_cores()) as pool:
            results = list(pool.map(one, files))
    else:
        results = [one(p) for p in files]
    out = []
    for r in results:
        if isinstance(r, BadImageError):
            if str(r) not in skipped:
                skipped.append(str(r))
            out.append(None)
        else:
            out.append(r)
    return out


def _cache_key(root: Path, files: Sequence[Path], size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{root.resolve()}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _cached_split(root: Path, files: list[Path], labels: list[int], size: int, progress) -> Split:
    import torch

    path = cache_dir("datasets") / f"{_cache_key(root, files, size)}.pt"
    if path.exists():
        try:
            blob = torch_load(path)
            return Split(labels=blob["labels"], size=size, images=blob["images"], skipped=list(blob["skipped"]))
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    if progress:
        progress(f"decoding {len(files)} images from {root} (once; cached for later runs)")
    skipped: list[str] = []
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    keep = np.zeros(len(files), dtype=bool)
    for i, f in enumerate(files):
        try:
            images[i] = _decode_one(f, size)
            keep[i] = True
        except BadImageError as exc:
            skipped.append(str(exc))
    images_t = torch.from_numpy(images[keep]).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.tensor(labels, dtype=torch.long)[torch.from_numpy(keep)]
    _atomic_save({"images": images_t, "labels": labels_t, "skipped": skipped}, path)
    return Split(labels=labels_t, size=size, images=images_t, skipped=skipped)


def _atomic_save(obj, path: Path) -> None:
    import torch

    with atomic_write(path) as fh:
        torch.save(obj, fh)


def _mean_std(split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import torch

    if split.in_memory:
        sample = split.images[:: max(1, len(split) // 10000)]
    else:
        idx = torch.arange(0, len(split), max(1, len(split) // 256))
        sample, _ = split.batch(idx)
    x = sample.float().div_(255).permute(1, 0, 2, 3).reshape(3, -1)
    mean = x.mean(1)
    std = x.std(1).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# ---------------------------------------------------------------- CIFAR-10


def _cifar10_batches_dir(progress) -> Path:
    """The cached `cifar-10-batches-py`, downloaded (torchvision's archive, md5-checked) when missing."""
    root = cache_dir("datasets", "cifar10")
    batches = root / "cifar-10-batches-py"
    if (batches / "data_batch_1").exists():
        return batches
    archive = root / "cifar-10-python.tar.gz"
    try:
        from torchvision.datasets.utils import download_url

        if progress:
            progress(f"downloading CIFAR-10 to {root}")
        download_url(CIFAR10_URL, str(root), filename=archive.name, md5=CIFAR10_MD5)
        with tarfile.open(archive) as tar:
            try:
                # The "data" filter's safety, with modes left to the umask rather than copied from the archive.
                tar.extractall(root, filter=lambda m, dest: tarfile.data_filter(m, dest).replace(mode=None, deep=False))
            except (TypeError, AttributeError):  # no extraction filters (Python < 3.10.12): the archive is md5-checked
                tar.extractall(root)
    except Exception as exc:  # offline, proxy, truncated archive: all the same to the user
        raise LookalikeError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({type(exc).__name__}); "
            "offline, pass --data DIR with DIR/train/<class>/ and DIR/test/<class>/ image folders"
        ) from None
    if not (batches / "data_batch_1").exists():
        raise LookalikeError(f"the CIFAR-10 archive in {root} did not hold cifar-10-batches-py")
    return batches


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """Images (N x 3 x 32 x 32 uint8) and labels of one batch, read without running code from the file."""
    d = load_cifar_pickle(path)

    def bad(why: str) -> LookalikeError:
        return LookalikeError(f"{path} is not a CIFAR-10 batch file ({why})")

    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise bad("no data and labels")
    data, labels = d[b"data"], d[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise bad("data is not rows of 3072 bytes")
    if (not isinstance(labels, list) or len(labels) != data.shape[0]
            or not all(type(y) is int and 0 <= y < len(CIFAR10_CLASSES) for y in labels)):
        raise bad(f"labels are not {data.shape[0]} class numbers from 0 to {len(CIFAR10_CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_classes(path: Path) -> list[str]:
    """Class names from `batches.meta`, or the standard ten when it is missing or odd."""
    if not path.exists():
        return CIFAR10_CLASSES
    try:
        names = load_cifar_pickle(path)[b"label_names"]
        classes = [c.decode() for c in names]
    except LookalikeError:
        raise  # a crafted file is named, never skipped silently
    except Exception:  # noqa: BLE001 - a meta file without usable names: the standard names are right
        return CIFAR10_CLASSES
    return classes if len(classes) == len(CIFAR10_CLASSES) else CIFAR10_CLASSES


def _cifar10_bundle(batches: Path, image_size: Optional[int]) -> DataBundle:
    import torch
    import torch.nn.functional as F

    from .photo_cache import default_budget_bytes

    size = image_size or 32
    # Resized in memory as float32 (4 bytes a value) for all 60,000 images: refuse what would not fit.
    if size != 32 and 60_000 * 3 * size * size * 4 > default_budget_bytes():
        raise LookalikeError(f"CIFAR-10 resized to {size} px needs {60_000 * 3 * size * size * 4 / 2**30:.1f} GiB "
                             "of memory, over this machine's budget: give a smaller --image-size, or the images "
                             "as class folders (decoded into a cache on disk)")
    train = [_read_cifar_batch(batches / f"data_batch_{i}") for i in range(1, 6)]
    test = _read_cifar_batch(batches / "test_batch")
    classes = _read_cifar_classes(batches / "batches.meta")

    def split(parts) -> Split:
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.tensor([y for p in parts for y in p[1]], dtype=torch.long)
        size = image_size or 32
        if size != 32:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
            images = images.round().clamp(0, 255).to(torch.uint8)
        return Split(labels=labels, size=size, images=images.contiguous())

    tr, te = split(train), split([test])
    mean, std = _mean_std(tr)
    return DataBundle(tr, te, classes, mean, std, tr.size, str(batches))
