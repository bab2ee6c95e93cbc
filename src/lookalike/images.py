"""Load one image safely (from a path or bytes) and list the image files under a folder.

Every failure becomes a `BadImageError` with a short reason, so that long runs can skip the file and name it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Iterator, Union

from .errors import BadImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# Refuse anything larger before decoding: a 20k x 20k PNG can be a few KB on disk and 1.6 GB in memory.
MAX_PIXELS = 120_000_000

ImageSource = Union[str, os.PathLike, bytes]


def is_image_path(path: Union[str, os.PathLike]) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(root: Union[str, os.PathLike], recursive: bool = True) -> Iterator[Path]:
    """Image files under `root` by extension, in sorted order; hidden files and folders are skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_path(name):
                yield folder / name
        if not recursive:
            break


def decoder_version() -> str:
    """What decides whether a file decodes: an index trusts its recorded failures only while this is unchanged."""
    import PIL

    from . import __version__

    return f"lookalike {__version__}, Pillow {PIL.__version__}"


def list_image_files(root: Union[str, os.PathLike], recursive: bool = True) -> list[Path]:
    return list(iter_image_files(root, recursive))


def load_image(source: ImageSource, min_size: int | None = None, max_pixels: int = MAX_PIXELS):
    """Decode `source` to an RGB `PIL.Image`, EXIF orientation applied.

    `min_size`: JPEGs are decoded in draft mode at the smallest DCT scale whose sides are both still
    >= `min_size` pixels, which is several times faster for large photos that will be shrunk anyway.
    Palette, CMYK, 16-bit, grayscale and transparent images are converted to RGB (transparency over white);
    animated images give their first frame.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise BadImageError(f"{name}: empty file")
            fp = io.BytesIO(source)
        else:
            if os.path.getsize(source) == 0:
                raise BadImageError(f"{name}: empty file")
            fp = open(source, "rb")
        with fp:
            with warnings.catch_warnings():
                # Pillow warns from 89 MP; the explicit `max_pixels` check below is the limit that applies.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
                width, height = img.size
                if width * height > max_pixels:
                    raise BadImageError(f"{name}: {width}x{height} pixels is over the {max_pixels:,} pixel limit")
                if getattr(img, "is_animated", False):
                    img.seek(0)
                if min_size and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise BadImageError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise BadImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"{name}: too many pixels (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise BadImageError(f"{name}: corrupt or truncated image ({exc})") from None


def to_rgb(img):
    """Convert any PIL mode to 8-bit RGB with the right tones (16-bit scaled, not clipped)."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.float32)
        peak = 65535.0 if mode != "I" or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 1.0
        arr = np.clip(arr / (top if top > 1.0 else 1.0) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
