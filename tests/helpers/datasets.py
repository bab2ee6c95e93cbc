"""Small generated image-folder datasets with learnable classes."""

from __future__ import annotations

import random
import shutil
from pathlib import Path


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


def broken_folder_dataset(tmp_path: Path, fault: str) -> Path:
    """A small class-folder dataset with one fault: "missing" (no folder at all), "no_train" or "no_test" (that
    split is missing), "empty_class" (a class folder without images in both splits), "mismatch" (the splits name
    different classes), "no_classes" (train/ holds no class folder). Any other `fault`: a sound dataset."""
    root = make_folder_dataset(tmp_path / "d", n_train=2, n_test=1)
    if fault == "missing":
        return tmp_path / "nowhere"
    if fault in ("no_train", "no_test"):
        shutil.rmtree(root / fault.removeprefix("no_"))
    elif fault == "empty_class":
        for split in ("train", "test"):
            (root / split / "empty").mkdir()
    elif fault == "mismatch":
        (root / "test" / "square").rename(root / "test" / "rhombus")
    elif fault == "no_classes":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
    return root
