"""Shared set-up for the search tests: real photos from `skimage.data`, edited copies, one cached embedder.

Import the fixtures into a test module (`from search_fixtures import home, ...`). Heavy objects are cached at
module level so that every module shares them: one LOOKALIKE_HOME per session holds the ONNX export, so the
default backbone is exported once.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

# Bundled with scikit-image's wheel (CC0 / public domain): no download.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry",
          "rocket")
SIDE = 256

_SHARED: dict = {}
_LOCK = threading.Lock()


def shared_home() -> Path:
    """One LOOKALIKE_HOME for the whole session (keeps the ONNX export); removed at exit."""
    with _LOCK:
        return _shared_home_unlocked()


def _shared_home_unlocked() -> Path:
    if "home" not in _SHARED:
        path = Path(tempfile.mkdtemp(prefix="lookalike-search-home-"))
        atexit.register(shutil.rmtree, path, True)
        _SHARED["home"] = path
    return _SHARED["home"]


@pytest.fixture
def home(monkeypatch) -> Path:
    """LOOKALIKE_HOME (shared) and an empty TORCH_HOME for the test: nothing touches the user's caches."""
    path = shared_home()
    monkeypatch.setenv("LOOKALIKE_HOME", str(path))
    torch_home = path / "torch-empty"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return path


def photo(name: str, side: int = SIDE) -> Image.Image:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((int(w * 0.12), int(h * 0.08), int(w * 0.9), int(h * 0.92)))


def rotate(img: Image.Image) -> Image.Image:
    return img.rotate(10, resample=Image.Resampling.BICUBIC)


def shrink(img: Image.Image) -> Image.Image:
    return img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR)


def tint(img: Image.Image) -> Image.Image:
    return ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.15)).enhance(0.6)


EDITS = {"crop": crop, "rotate": rotate, "shrink": shrink, "tint": tint}


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_originals(folder: Path, names=PHOTOS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(photo(name), 90))
        paths.append(path)
    return paths


def write_copies(folder: Path, names=PHOTOS, edits=EDITS) -> list[tuple[Path, str]]:
    """Edited copies as `NAME--EDIT.jpg`; returns [(path, original name)]."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        img = photo(name)
        for edit, fn in edits.items():
            path = folder / f"{name}--{edit}.jpg"
            path.write_bytes(jpeg_bytes(fn(img), 80))
            out.append((path, name))
    return out


def embedder():
    """The default embedder (EfficientNet-Lite0, avg pooling), built once per session."""
    with _LOCK:
        if "embedder" not in _SHARED:
            from lookalike.search.features import load_embedder

            old = os.environ.get("LOOKALIKE_HOME")
            os.environ["LOOKALIKE_HOME"] = str(_shared_home_unlocked())
            try:
                _SHARED["embedder"] = load_embedder()
            finally:
                if old is None:
                    os.environ.pop("LOOKALIKE_HOME", None)
                else:
                    os.environ["LOOKALIKE_HOME"] = old
        return _SHARED["embedder"]


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `lookalike ARGS` in this process (the real entry point, error mapping included)."""
    from lookalike.cli import main

    monkeypatch.setattr(sys, "argv", ["lookalike", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_subprocess(args: list[str], env_home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `lookalike` command in a fresh process."""
    env = {**os.environ, "LOOKALIKE_HOME": str(env_home), "TORCH_HOME": str(env_home / "torch-empty")}
    exe = Path(sys.executable).with_name("lookalike")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from lookalike.cli import main; main()"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


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
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


__all__ = ["pattern_image", "tiny_checkpoint", "EDITS", "PHOTOS", "embedder", "home", "jpeg_bytes", "photo", "run_cli", "run_cli_subprocess",
           "shared_home", "write_copies", "write_originals"]
