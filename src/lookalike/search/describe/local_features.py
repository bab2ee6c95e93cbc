"""Local features of an image: SIFT keypoints with RootSIFT descriptors (Arandjelovic & Zisserman 2012), what
spatial verification (`retrieve/verify.py`) and the copy check (`retrieve/copy_check.py`) match.

Library images' features are taken once, at index time, and stored packed (`pack` / `unpack`) beside their
renditions (`store/renditions.py`): a search then reads them instead of running SIFT on each shortlisted image.
A packed record holds the raw SIFT descriptors as bytes (OpenCV's are whole numbers 0-255), so unpacking gives
exactly what a fresh extraction would; RootSIFT is taken on unpacking.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

LIBRARY_SIDE = 256  # a library image's features are taken at most this long (never enlarged), at index time;
# SIFT doubles the image first, so twice this side would cost four times the work on every image indexed
QUERY_SIDE = 320  # a query photo's own features: with one side of a pair a little larger than the other,
# holidays-dev keeps its mAP, which both at LIBRARY_SIDE lose (benchmarks/results/search_speed.md)
LIBRARY_KEYPOINTS = 500  # the strongest keypoints kept of a library image (at LIBRARY_SIDE few have more;
# fewer lost holidays-dev mAP, search_speed.md)
QUERY_KEYPOINTS = 1000  # ... of a query photo (matching cost grows with the product of the two)
MAX_KEYPOINTS = max(LIBRARY_KEYPOINTS, QUERY_KEYPOINTS)  # what a stored record may hold
_MAGIC = b"LKP1"
_HEADER = struct.Struct("<4sHH")  # magic, keypoints, the long side the points refer to
_MAX_SIDE = 8192


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one image: positions (n, 2) in its decoded pixels, RootSIFT descriptors (n, 128) float32
    (what the matcher multiplies), and the decoded image's longer side (the RANSAC tolerance scales with it)."""

    points: np.ndarray
    descriptors: np.ndarray
    long_side: int


def opencv():
    """The cv2 module, set to one thread (callers spread images over one thread per core), or one clear line."""
    from ...errors import LookalikeError

    try:
        import cv2
    except ImportError as exc:  # a broken or missing wheel: say what to install, nothing else
        raise LookalikeError(f"spatial verification needs OpenCV ({exc}); pip install opencv-python-headless") from exc
    cv2.setNumThreads(1)  # inner threads would oversubscribe the cores the callers' threads already use
    return cv2


def _gray(image: Any, long_side: int):
    from PIL import Image

    gray = image.convert("L")
    if max(gray.size) > long_side:
        gray = gray.copy()
        gray.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    return gray


def _sift(image: Any, long_side: int, keypoints: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(points (n, 2) float32, raw SIFT descriptors (n, 128) uint8, long side) of the strongest `keypoints` of
    a PIL image shrunk to at most `long_side` pixels (never enlarged)."""
    cv2 = opencv()
    gray = _gray(image, long_side)
    # nfeatures keeps the strongest before any descriptor is computed: fewer keypoints, less work.
    keypoints, desc = cv2.SIFT_create(nfeatures=keypoints).detectAndCompute(np.asarray(gray), None)
    if desc is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), max(gray.size)
    points = np.asarray([k.pt for k in keypoints], np.float32)[:MAX_KEYPOINTS]
    return points, np.clip(np.rint(desc), 0, 255).astype(np.uint8)[:MAX_KEYPOINTS], max(gray.size)


def _features(points: np.ndarray, raw: np.ndarray, long_side: int) -> LocalFeatures:
    desc = raw.astype(np.float32)
    desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-7))  # RootSIFT: Hellinger kernel
    return LocalFeatures(points, desc, int(long_side))


def local_features(image: Any, long_side: int = LIBRARY_SIDE, keypoints: int = LIBRARY_KEYPOINTS) -> LocalFeatures:
    """SIFT keypoints (the strongest `keypoints`) and RootSIFT descriptors of a PIL image shrunk to at most
    `long_side` pixels first; by default, what is stored of a library image."""
    return _features(*_sift(image, long_side, min(keypoints, MAX_KEYPOINTS)))


def packed_features(image: Any) -> Optional[bytes]:
    """The library `local_features` of a PIL image as the bytes the index stores (`unpack`); None when SIFT fails
    on it (the image is indexed all the same, and verification takes its features from the rendition or file)."""
    try:
        points, raw, side = _sift(image, LIBRARY_SIDE, LIBRARY_KEYPOINTS)
    except Exception:  # an odd mode or an OpenCV error: no stored features
        return None
    return pack(points, raw, side)


def pack(points: np.ndarray, raw: np.ndarray, long_side: int) -> bytes:
    """Header, positions as float16 (a 16th of a pixel at these sizes), raw descriptors as bytes."""
    n = len(points)
    return (_HEADER.pack(_MAGIC, n, int(long_side)) + np.asarray(points, "<f2").tobytes()
            + np.ascontiguousarray(raw, np.uint8).tobytes())


def unpack(blob: Any) -> Optional[LocalFeatures]:
    """The LocalFeatures of a packed record, None for anything that is not one exactly (the database is not
    trusted blindly: a wrong length, count, side or a position off the image is refused, never half-read)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < _HEADER.size:
        return None
    magic, n, side = _HEADER.unpack_from(blob)
    if magic != _MAGIC or n > MAX_KEYPOINTS or not 0 < side <= _MAX_SIDE \
            or len(blob) != _HEADER.size + n * (4 + 128):
        return None
    points = np.frombuffer(blob, "<f2", 2 * n, _HEADER.size).reshape(n, 2).astype(np.float32)
    if not np.isfinite(points).all() or (points < -1).any() or (points > side + 1).any():
        return None
    raw = np.frombuffer(blob, np.uint8, 128 * n, _HEADER.size + 4 * n).reshape(n, 128)
    return _features(points, raw, side)
