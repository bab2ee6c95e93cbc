"""Training data: CIFAR-10 and `train/` + `test/` class folders.

Small images (<= 64 px a side) are decoded once into a uint8 tensor cache under `cache_dir("datasets")`, keyed
by the folder's file list, sizes and modification times, so later epochs and later runs never decode again.
Larger images stream: each batch is decoded (JPEG draft mode), resized and centre-cropped on demand.
Bad files are skipped and named in `Split.skipped`, never fatal.
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

SMALL_MAX_SIDE = 64  # images up to this side are cached as one uint8 tensor
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

    @property
    def skipped(self) -> list[str]:
        return self.train.skipped + self.test.skipped


def load_data(data: str, image_size: Optional[int] = None, progress: Optional[Callable[[str], None]] = None,
              need_train: bool = True) -> DataBundle:
    """`data`: "cifar10", a `cifar-10-batches-py` folder, or a folder with `train/` and `test/` class folders.

    `image_size`: side the images are resized to (default: the images' own size when small, else 128).
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
    return _folder_bundle(root, image_size, progress, need_train)


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


def _folder_bundle(root: Path, image_size: Optional[int], progress, need_train: bool) -> DataBundle:
    import torch

    needed = ("train", "test") if need_train else ("test",)
    for name in needed:
        if not (root / name).is_dir():
            raise LookalikeError(f"{root} has no {name}/ folder: --data needs DIR/train/<class>/ and DIR/test/<class>/")
    test_files = _class_files(root / "test")
    train_files = _class_files(root / "train") if need_train else {c: [] for c in test_files}
    classes = list(train_files)
    if set(classes) != set(test_files):
        only_train = sorted(set(classes) - set(test_files))
        only_test = sorted(set(test_files) - set(classes))
        raise LookalikeError(
            f"train/ and test/ hold different classes (only in train: {', '.join(only_train) or '-'}; "
            f"only in test: {', '.join(only_test) or '-'})"
        )
    splits = {}
    for name, per_class in (("train", train_files), ("test", test_files)):
        files = [f for c in classes for f in per_class[c]]
        labels = [i for i, c in enumerate(classes) for _ in per_class[c]]
        splits[name] = (files, labels)

    size, small = _probe_size(splits["train"][0] + splits["test"][0], image_size)
    result = {}
    for name, (files, labels) in splits.items():
        if small and files:
            result[name] = _cached_split(root / name, files, labels, size, progress)
        else:
            result[name] = Split(labels=torch.tensor(labels, dtype=torch.long), size=size, files=files,
                                 images=None if files else torch.empty(0, 3, size, size, dtype=torch.uint8))
    if need_train and len(result["train"]) == 0:
        raise LookalikeError(f"{root / 'train'} holds no readable images")
    if len(result["test"]) == 0:
        raise LookalikeError(f"{root / 'test'} holds no readable images")
    mean, std = _mean_std(result["train"] if len(result["train"]) else result["test"])
    return DataBundle(result["train"], result["test"], classes, mean, std, size, str(root))


def _probe_size(files: Sequence[Path], image_size: Optional[int]) -> tuple[int, bool]:
    """Pick the training side and whether to cache: read the headers of a spread-out sample of files."""
    from PIL import Image

    step = max(1, len(files) // 200)
    sizes = []
    for f in files[::step]:
        try:
            with Image.open(f) as im:
                sizes.append(im.size)
        except Exception:  # a bad file: the decode step names it
            continue
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
