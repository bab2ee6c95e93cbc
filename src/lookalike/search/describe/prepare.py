"""Photos into the backbone's input arrays: the centre crop, the whole photo at a size and scales, and the
trimming of uniform borders."""

from __future__ import annotations

import numpy as np

# Whole-photo inputs ("fit": "whole"): the shorter side is rounded to this multiple, so that photos of similar
# shape share a batch (an aspect change of at most a few per cent); the backbones' total stride is 32.
SHAPE_STEP = 32
MAX_LONG_SIDE = 1024  # bounds the pixels (and the time) any one photo can cost
# Uniform borders (`border_box`): a line is border when BORDER_SHARE of its pixels are within BORDER_TOLERANCE
# of white (every channel) or of black (JPEG ringing and scanner noise stay within it); trimming never keeps less
# than BORDER_KEEP of a side.
BORDER_TOLERANCE = 24
BORDER_SHARE = 0.98
BORDER_KEEP = 0.25


def _resample(name: str) -> int:
    from PIL import Image

    return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}.get(
        name, Image.BILINEAR)


def border_box(img) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of `img` without its uniform borders: edge rows and columns that are almost
    all white or all black (a portrait photo padded to a landscape frame, letterboxing, a scan's margin). The
    whole image when trimming would keep less than BORDER_KEEP of a side: a plain white or dark photo is not a
    border. A few whole-image array operations, no per-line loop."""
    a = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    h, w = a.shape[:2]
    r, g, b = a[..., 0], a[..., 1], a[..., 2]  # channel by channel: numpy reduces a last axis of 3 slowly
    white = np.minimum(np.minimum(r, g), b) >= 255 - BORDER_TOLERANCE
    black = np.maximum(np.maximum(r, g), b) <= BORDER_TOLERANCE

    def span(white_share: np.ndarray, black_share: np.ndarray) -> tuple[int, int]:
        border = (white_share >= BORDER_SHARE) | (black_share >= BORDER_SHARE)
        if border.all():
            return 0, 0
        return int(np.argmin(border)), len(border) - int(np.argmin(border[::-1]))

    top, bottom = span(white.mean(axis=1), black.mean(axis=1))
    if bottom - top < BORDER_KEEP * h:  # also a blank image, all border
        return 0, 0, w, h
    left, right = span(white[top:bottom].mean(axis=0), black[top:bottom].mean(axis=0))
    if right - left < BORDER_KEEP * w:
        return 0, 0, w, h
    return left, top, right, bottom


def trim_borders(img):
    """`img` without its uniform borders (`border_box`); the image itself when it has none."""
    box = border_box(img)
    return img if box == (0, 0, *img.size) else img.crop(box)


def prepare_image(img, preprocess: dict) -> np.ndarray:
    """Resize the shorter side to `resize_size` and centre-crop `input_size`, in one resampling pass.

    Returns an (S, S, 3) uint8 array; normalisation happens later on the whole batch.
    """
    size = int(preprocess["input_size"])
    resize = int(preprocess.get("resize_size") or size)
    w, h = img.size
    scale = resize / min(w, h)
    # The crop window, in source pixels, of the S x S centre of the resized image.
    side = size / scale
    left, top = (w - side) / 2.0, (h - side) / 2.0
    out = img.resize((size, size), _resample(preprocess.get("interpolation", "bilinear")),
                     box=(left, top, left + side, top + side))
    return np.asarray(out, dtype=np.uint8)


def whole_image_shape(w: int, h: int, long_side: int) -> tuple[int, int]:
    """(width, height) of a whole photo resized to `long_side` with its aspect kept (shorter side rounded to
    SHAPE_STEP, at least one step)."""
    scale = long_side / max(w, h)
    short = max(SHAPE_STEP, int(round(min(w, h) * scale / SHAPE_STEP)) * SHAPE_STEP)
    short = min(short, long_side)
    return (long_side, short) if w >= h else (short, long_side)


def prepare_whole(img, preprocess: dict) -> list[np.ndarray]:
    """The whole photo at each of `preprocess["scales"]` x `long_side` on its longer side, aspect kept:
    one (H, W, 3) uint8 array per scale."""
    base = int(preprocess["long_side"])
    out = []
    for factor in preprocess.get("scales") or [1.0]:
        size = whole_image_shape(*img.size, max(SHAPE_STEP, int(round(base * float(factor)))))
        out.append(np.asarray(img.resize(size, _resample(preprocess.get("interpolation", "bilinear"))),
                              dtype=np.uint8))
    return out
