"""Shared fixtures: a hermetic cache folder, and small generated image-folder datasets."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest


@pytest.fixture
def isolated_home(tmp_path_factory, monkeypatch):
    """A fresh LOOKALIKE_HOME for the test, so caches never leak between tests or into the user's home."""
    home = tmp_path_factory.mktemp("lookalike_home")
    monkeypatch.setenv("LOOKALIKE_HOME", str(home))
    return home


def make_class_image(label: int, size: int, rng: random.Random):
    """A small RGB image whose class is learnable: a class-specific colour and stripe direction, plus noise."""
    from PIL import Image, ImageDraw

    palette = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (220, 200, 40), (160, 40, 200), (40, 200, 200)]
    base = palette[label % len(palette)]
    jitter = [max(0, min(255, c + rng.randint(-40, 40))) for c in base]
    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 60) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    step = max(2, size // 6)
    for k in range(0, size, step):
        if label % 2 == 0:
            draw.line([(k, 0), (k, size)], fill=tuple(jitter), width=max(1, step // 2))
        else:
            draw.line([(0, k), (size, k)], fill=tuple(jitter), width=max(1, step // 2))
    for _ in range(size):
        img.putpixel((rng.randrange(size), rng.randrange(size)), tuple(rng.randint(0, 255) for _ in range(3)))
    return img


def make_folder_dataset(root: Path, classes=("circle", "square", "triangle"), n_train: int = 12, n_test: int = 4,
                        size: int = 32, seed: int = 0) -> Path:
    """root/train/<class>/*.png|jpg and root/test/<class>/*; PNG and JPEG alternate."""
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = make_class_image(label, size, rng)
                if i % 2:
                    img.save(folder / f"{i:04d}.jpg", quality=90)
                else:
                    img.save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def tiny_folder_dataset(tmp_path) -> Path:
    """3 classes, 12 train + 4 test images each, 32x32, PNG and JPEG mixed."""
    return make_folder_dataset(tmp_path / "data")


def run_main(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """Run `lookalike ARGS` through the real entry point in this process: (exit code, stdout, stderr)."""
    import sys

    from lookalike.cli import main

    monkeypatch.setattr(sys, "argv", ["lookalike", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


@pytest.fixture
def umask():
    """Set the process umask for one test (call it with the mask); the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def file_mode(path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(os.stat(path).st_mode)
