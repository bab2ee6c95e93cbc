"""Real photos, and edited copies of them whose original is known: the gallery `lookalike demo` searches, and
the images the tests and benchmarks are made of.

The photos ship with this package (`photos/`, copies of scikit-image's sample data; each one's source and
licence, public domain, CC0 or BSD-3-Clause, are in `photos/LICENSES.md`), so nothing is downloaded. The
edits are what a search for the same photo should see through: a crop, a rotation, a rescale, heavy JPEG
re-compression, a colour shift. Copies are named `NAME-EDIT.jpg`, so `photo_of` finds a copy's original.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

# The photos shipped in `photos/` (named as scikit-image's `skimage.data` functions that give the same pixels).
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text")


PHOTO_DIR = Path(__file__).resolve().parent / "photos"


def photo_path(name: str) -> Path:
    """The shipped file of photo `name` (one of PHOTOS)."""
    for ext in (".png", ".jpg"):
        path = PHOTO_DIR / f"{name}{ext}"
        if path.is_file():
            return path
    raise KeyError(f"no sample photo named {name!r}")


def load_photo(name: str, side: Optional[int] = None) -> Any:
    """Photo `name` as an RGB PIL image (grayscale and RGBA converted), shrunk to fit `side` x `side` when `side`
    is given."""
    from PIL import Image

    from ..images import to_rgb

    with Image.open(photo_path(name)) as src:
        img = to_rgb(src)
        img.load()
    if side is not None:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def centre_crop(img: Any, keep: float) -> Any:
    """The centred part of `img` that keeps `keep` of each side."""
    w, h = img.size
    dw, dh = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return img.crop((dw, dh, w - dw, h - dh))


def crop(img: Any) -> Any:
    """Keep 70 % of each side, off centre."""
    w, h = img.size
    return img.crop((int(w * 0.2), int(h * 0.1), int(w * 0.9), int(h * 0.8)))


def rotate(img: Any) -> Any:
    from PIL import Image

    return img.rotate(12, resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def rescale(img: Any) -> Any:
    from PIL import Image

    w, h = img.size
    return img.resize((max(32, w // 3), max(32, h // 3)), Image.BILINEAR)


def jpeg(img: Any) -> Any:
    """The pixels unchanged: the edit is the re-compression (`write_copies`'s `jpeg_quality`)."""
    return img


def colour(img: Any) -> Any:
    from PIL import Image, ImageEnhance

    img = ImageEnhance.Color(img).enhance(0.5)
    img = ImageEnhance.Brightness(img).enhance(1.2)
    r, g, b = img.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, v + 20)), g, b.point(lambda v: max(0, v - 20))))


EDITS: dict[str, Callable[[Any], Any]] = {"crop": crop, "rotate": rotate, "rescale": rescale, "jpeg": jpeg,
                                          "colour": colour}


def jpeg_bytes(img: Any, quality: int = 85) -> bytes:
    """`img` encoded as a JPEG file."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_copies(folder: Path, photos: Iterable[str] = PHOTOS, edits: Iterable[str] = tuple(EDITS),
                 side: Optional[int] = None, jpeg_quality: int = 15) -> list[dict]:
    """Each photo's edited copies as `folder/NAME-EDIT.jpg`, the `jpeg` one saved at `jpeg_quality` and the
    others at 90; returns them as [{"path", "photo", "edit"}]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    edits = tuple(edits)
    copies = []
    for name in photos:
        img = load_photo(name, side)
        for edit in edits:
            path = folder / f"{name}-{edit}.jpg"
            EDITS[edit](img).save(path, quality=jpeg_quality if edit == "jpeg" else 90)
            copies.append({"path": path, "photo": name, "edit": edit})
    return copies


def build_gallery(folder: Path, photos: Iterable[str] = PHOTOS, edits: Iterable[str] = tuple(EDITS),
                  side: Optional[int] = None, jpeg_quality: int = 15) -> list[dict]:
    """Write originals (`NAME.png`) and edited copies (`edited/NAME-EDIT.jpg`, as `write_copies`); returns the
    copies as [{"path", "photo", "edit"}]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = tuple(photos)
    for name in photos:
        load_photo(name, side).save(folder / f"{name}.png")
    return write_copies(folder / "edited", photos, edits, side, jpeg_quality)


def photo_of(path: Path) -> str:
    """The photo a gallery file comes from (`coffee.png`, `edited/coffee-crop.jpg` -> `coffee`)."""
    stem = Path(path).stem
    name, _, edit = stem.rpartition("-")
    return name if name and edit in EDITS else stem
