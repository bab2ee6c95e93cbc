"""Load one image safely (from a path or bytes) and list the image files under a folder.

Every failure becomes a `BadImageError` with a short reason, so that long runs can skip the file and name it.
What one file can cost is bounded before it is decoded: only regular files are read (a FIFO, a device or a
link to one is refused without blocking), at most `MAX_FILE_BYTES` of them, and at most `MAX_PIXELS` pixels
are decoded; an optional `PixelBudget` bounds the pixels that several decodes (one web request) add up to.
What decoding costs beyond its pixels is bounded by `image_checks`, and only the formats of `IMAGE_FORMATS`
are decoded, first frame only. HEIC/HEIF photos decode through pi-heif (a decode-only libheif build) where it is
installed, AVIF through Pillow's own plug-in; both go through the same bounds.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .errors import BadImageError, TransientImageError
from .image_checks import CountedBytes, check_structure

# HEIC/HEIF need pi-heif (a dependency, but a build without it still runs); AVIF is in Pillow's wheels.
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
HAVE_HEIF = importlib.util.find_spec("pi_heif") is not None
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".ppm", ".pgm", ".pbm"}
) | (HEIF_EXTENSIONS if HAVE_HEIF else frozenset())
# Refuse anything larger before decoding: a 20k x 20k PNG can be a few KB on disk and 1.6 GB in memory.
MAX_PIXELS = 120_000_000
# Largest image file read: an uncompressed 8-bit RGB TIFF of 60 MP is 180 MB. A sparse or growing file
# cannot make a reader take more than this plus one byte.
MAX_FILE_BYTES = 200_000_000
# Images decoded with a `min_size` that Pillow cannot draft-decode (PNG, WebP, ...) are shrunk right after
# decoding by a whole factor that keeps both sides >= REDUCE_GAP * min_size: a box filter that costs
# little, frees the big image at once and leaves the final resize close to an exact one.
REDUCE_GAP = 2

# The Pillow formats decoded, whatever a file is named: the families of IMAGE_EXTENSIONS, whose costs
# `image_checks` bounds (JPEG includes its multi-picture kind, MPO; HEIF is pi-heif's plug-in). Other decoders
# (PSD layers, EPS through Ghostscript, JPEG 2000, ...) never run.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "HEIF", "PPM")

ImageSource = Union[str, os.PathLike, bytes]

# EXIF orientation -> the transpose that makes the image upright (as PIL.ImageOps.exif_transpose does).
_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                7: "TRANSVERSE", 8: "ROTATE_90"}


class UnrecognisedImage(BadImageError):
    """The bytes are in none of the formats decoded (`IMAGE_FORMATS`)."""


class PixelBudgetExceeded(BadImageError):
    """Decoding this image would pass the pixel budget shared by several decodes (one request)."""


class PixelBudget:
    """Pixels that a group of decodes may still decode in all; thread-safe."""

    def __init__(self, pixels: int) -> None:
        self.total = int(pixels)
        self.left = int(pixels)
        self._lock = threading.Lock()

    def take(self, pixels: int, name: str) -> None:
        """Count `pixels` against the budget, or raise `PixelBudgetExceeded` (counting nothing)."""
        with self._lock:
            if pixels > self.left:
                raise PixelBudgetExceeded(
                    f"{name}: decoding its {pixels:,} pixels would pass the {self.total:,}-pixel budget of this "
                    "request")
            self.left -= pixels


def is_image_path(path: Union[str, os.PathLike]) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(root: Union[str, os.PathLike], recursive: bool = True,
                     other: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Image files under `root` by extension, in sorted order; hidden files and folders are skipped. `other(path)`
    is told of every other (not hidden) file passed over (`file_kinds.walk_images` sorts them).

    Names only: what a name turns out to be (a FIFO, a link to a device) is refused when it is read, by
    `read_image_file`, so that a run can name it with its reason instead of hanging on it.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if is_image_path(name):
                yield folder / name
            elif other is not None:
                other(folder / name)
        if not recursive:
            break


def decoder_version() -> str:
    """What decides whether a file decodes: an index trusts its recorded failures only while this is unchanged."""
    import PIL
    from PIL import features

    from . import __version__

    text = f"lookalike {__version__}, Pillow {PIL.__version__}"
    avif = features.version("avif") if features.check("avif") else None
    text += f", libavif {avif}" if avif else ""
    heif = _heif_versions()
    return text + (f", {heif}" if heif else "")


def _heif_versions() -> str | None:
    """pi-heif's and libheif's versions, None where pi-heif is not installed."""
    if not HAVE_HEIF:
        return None
    import pi_heif

    return f"pi-heif {pi_heif.__version__}, libheif {pi_heif.libheif_version()}"


def list_image_files(root: Union[str, os.PathLike], recursive: bool = True) -> list[Path]:
    return list(iter_image_files(root, recursive))


def _not_regular(mode: int) -> str | None:
    """Why a file of this st_mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not an image"
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    return f"not a regular file ({kind})"


def read_image_file(path: Union[str, os.PathLike], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (a symlink to one is followed), at most `max_bytes` of them.

    Raises `BadImageError` for anything else: a folder, a FIFO, a device or a socket (checked before opening,
    and again on the open file in case it was swapped meanwhile; the open never blocks), a file whose size is
    over `max_bytes` (refused unread), or one that grows past it while read (at most `max_bytes + 1` bytes are).
    """
    name = str(path)
    try:
        st = os.stat(path)
        reason = _not_regular(st.st_mode)
        if reason:
            raise BadImageError(f"{name}: {reason}")
        if st.st_size > max_bytes:
            raise BadImageError(f"{name}: {st.st_size:,} bytes is over the {max_bytes:,}-byte file limit")
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb", buffering=0) as raw:
            st = os.fstat(fd)
            reason = _not_regular(st.st_mode)
            if reason:
                raise BadImageError(f"{name}: {reason}")
            parts: list[bytes] = []
            total, limit = 0, max_bytes + 1
            expected = min(st.st_size, max_bytes) + 1  # one read for a file that does not grow, then EOF
            while total < limit:
                chunk = raw.read(min(limit - total, max(expected - total, 1 << 20)))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise BadImageError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise BadImageError(f"{name}: cannot read (permission denied)") from None
    except OSError as exc:
        raise BadImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if total > max_bytes:
        raise BadImageError(f"{name}: grew past the {max_bytes:,}-byte file limit while being read")
    if total == 0:
        raise BadImageError(f"{name}: empty file")
    return parts[0] if len(parts) == 1 else b"".join(parts)


_PLUGINS_LOCK = threading.Lock()
_plugins_loaded = False


def _load_plugins() -> None:
    """Load Pillow's format plug-ins once, before threads race for them: Pillow loads them lazily on the
    first open, and two decoding threads doing that at once can find a half-filled registry (KeyError 'MPO')."""
    global _plugins_loaded
    if not _plugins_loaded:
        from PIL import Image

        with _PLUGINS_LOCK:
            Image.init()
            _register_heif()
            _plugins_loaded = True


def _register_heif() -> None:
    """pi-heif's HEIF opener, decoding the primary image alone: no thumbnails, depth or auxiliary images (each
    one more decode), one thread each (the decode pool already runs one per core), and libheif's own security
    limits on (its default)."""
    if not HAVE_HEIF:
        return
    import pi_heif

    pi_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)


def open_header(path: Union[str, os.PathLike], head_bytes: int = 1 << 20):
    """`PIL.Image.open` over the first `head_bytes` of a file: its size and format from the header, parsing
    bounded by `image_checks`' read count (a training set's size probe, which never decodes pixels)."""
    from PIL import Image

    with open(path, "rb") as fh:
        head = fh.read(head_bytes)
    _load_plugins()
    return Image.open(CountedBytes(head, str(path)), formats=IMAGE_FORMATS)


def open_image(data: bytes, name: str):
    """`PIL.Image.open` over `data` (the header read, nothing decoded yet) with the bounds of `image_checks`.

    Raises `UnrecognisedImage` for bytes in no format of `IMAGE_FORMATS`, `DecodeTooCostly` (a `BadImageError`)
    for a structure too costly to decode; Pillow's own errors for a broken header pass through."""
    from PIL import Image, UnidentifiedImageError

    check_structure(data, name)
    _load_plugins()
    try:
        return Image.open(CountedBytes(data, name), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise UnrecognisedImage(f"{name}: not an image (unrecognised format)") from None


def load_image(source: ImageSource, min_size: int | None = None, max_pixels: int = MAX_PIXELS,
               budget: PixelBudget | None = None, max_bytes: int = MAX_FILE_BYTES):
    """Decode `source` to an RGB `PIL.Image`, EXIF orientation applied.

    `min_size`: the image is only needed with both sides >= `min_size`. JPEGs are decoded in draft mode at the
    smallest DCT scale that allows it, which is several times faster for large photos; other formats are
    decoded whole and then shrunk by a whole factor that keeps both sides >= `REDUCE_GAP * min_size`, before
    any conversion, so a big canvas is never held twice or in RGB.
    `max_pixels` bounds one image (checked on its header); `budget`, when given, is charged with the pixels
    actually decoded (after draft) before decoding. Paths are read with `read_image_file(path, max_bytes)`.
    Palette, CMYK, 16-bit, grayscale and transparent images are converted to RGB (transparency over white);
    animated and multi-page images give their first frame. Raises `BadImageError` with the reason.
    """
    from PIL import Image

    if isinstance(source, (bytes, bytearray)):
        name = "<bytes>"
        data = bytes(source)
        if not data:
            raise BadImageError(f"{name}: empty file")
    else:
        name = str(source)
        data = read_image_file(source, max_bytes)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP; the explicit `max_pixels` check below is the limit that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = open_image(data, name)  # at the first frame; asking whether there are more costs a walk
            width, height = img.size
            if width * height > max_pixels:
                raise BadImageError(f"{name}: {width}x{height} pixels is over the {max_pixels:,} pixel limit")
            if min_size and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            if budget is not None:
                budget.take(img.size[0] * img.size[1], name)
            orientation = _orientation(img)
            img.load()
        del data
        if min_size:
            img = _reduce(img, min_size)
        if orientation in _ORIENTATION:
            img = img.transpose(getattr(Image.Transpose, _ORIENTATION[orientation]))
        return to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"{name}: too many pixels (decompression bomb guard)") from None
    except MemoryError:
        raise TransientImageError(f"{name}: not enough memory to decode it") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise BadImageError(f"{name}: corrupt or truncated image ({exc})") from None


def _orientation(img) -> int:
    try:
        return int(img.getexif().get(0x0112) or 1)
    except Exception:  # a damaged EXIF block only costs the orientation
        return 1


_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr"})


def _reduce(img, min_size: int):
    """`img` shrunk by the largest whole factor that keeps both sides >= REDUCE_GAP * `min_size`."""
    factor = min(img.size) // (REDUCE_GAP * int(min_size))
    if factor < 2:
        return img
    if img.mode not in _REDUCIBLE:  # palette indices and bit or 16-bit modes cannot be averaged as they are
        img = to_rgb(img)
    return img.reduce(factor)


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
