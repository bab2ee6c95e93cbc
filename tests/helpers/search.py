"""Search-test data: real photos and edited copies written as files, a tiny backbone, distinct small images."""

from __future__ import annotations

import io
from pathlib import Path

from lookalike.search.sample_photos import jpeg_bytes, load_photo, write_copies as _write_copies

# A few of the library's sample photos (skimage.data, bundled: no download), small enough to index quickly.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry",
          "rocket")
SIDE = 256


def photo(name: str, side: int = SIDE):
    """A sample photo shrunk to fit `side`."""
    return load_photo(name, side)


def write_originals(folder: Path, names=PHOTOS) -> list[Path]:
    """Each photo as `folder/NAME.jpg`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(photo(name), 90))
        paths.append(path)
    return paths


def write_copies(folder: Path, names=PHOTOS) -> list[tuple[Path, str]]:
    """The library's edited copies of each photo as `folder/NAME-EDIT.jpg`; returns [(path, original name)]."""
    return [(c["path"], c["photo"]) for c in _write_copies(folder, names, side=SIDE)]


def tiny_checkpoint(path: Path) -> Path:
    """A checkpoint of the small CIFAR `fast` net (random weights, 32-px input) at `path`: a backbone that loads
    and embeds in a fraction of the default one's time, for tests that run `lookalike index` many times."""
    if not path.exists():
        import torch

        from lookalike.models import create_model
        from lookalike.train.checkpoint import save_checkpoint

        torch.manual_seed(0)
        model = create_model("fast", widths=(8, 16, 32))
        meta = {"model": "fast", "model_kwargs": {"widths": [8, 16, 32]}, "classes": [str(i) for i in range(10)],
                "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "input_size": 32, "epoch": 1}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint({"meta": meta, "model_state": model.state_dict()}, path)
    return path


def pattern_image(seed: int, side: int = 40) -> bytes:
    """A small PNG of smooth random colour blobs, distinct for every seed (bytes and features)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
