"""Is one image a copy of another (the same photo after edits), or another shot of the same scene?

Evidence for a pair, from the images themselves:
- SIFT matches (verify.py's features) that one similarity transform (rotation, uniform scale, shift) carries
  from A onto B, or onto B mirrored: a copy is the same pixels resized, cropped or turned, so a similarity fits
  it, while another shot's change of viewpoint fits no similarity tightly. SIFT is not mirror-invariant; the
  descriptors of the mirrored image are a fixed permutation of B's own (grid rows and orientation bins flip),
  so the mirrored match costs a second matching, not a second extraction.
- The inliers cover a good part of one of the two images (a crop is wholly inside its original).
- After warping A onto B with that transform, their grayscale thumbnails agree: normalised correlation over the
  overlap (indifferent to brightness, contrast and colour changes). Another shot of the same scene differs in
  parallax, light and moving things, and correlates much less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..describe.local_features import local_features, opencv
from .verify import RATIO, ratio_matches

LONG_SIDE = 512  # features of an image at most this long (never enlarged): the size of the stored renditions
KEYPOINTS = 1000  # the strongest SIFT keypoints kept per image
PHOTO_SIDE = 128  # grayscale thumbnail side for the photometric check
TOLERANCE = 0.015  # reprojection error allowed, as a share of B's longer side: a copy's pixels map exactly
MIN_INLIERS = 10  # agreeing matches a copy needs
MIN_COVERAGE = 0.1  # share of one image's area the inliers' convex hull must cover
MIN_CORRELATION = 0.5  # normalised correlation of the two aligned thumbnails
MAX_SCALE = 8.0  # a copy is at most this much smaller or larger

# Descriptor order of the mirrored image: SIFT's 4 x 4 grid rows reversed, orientation bin o -> -o (mod 8).
_GRID = np.arange(128).reshape(4, 4, 8)
MIRROR = np.ascontiguousarray(_GRID[::-1][:, :, (8 - np.arange(8)) % 8].reshape(-1))


@dataclass(frozen=True)
class CopyView:
    """What pair checks need of one image: SIFT keypoints (positions in a copy at most LONG_SIDE long) and
    RootSIFT descriptors, a grayscale thumbnail, and the size the image was decoded at."""

    points: np.ndarray
    descriptors: np.ndarray
    feature_size: tuple[int, int]  # (width, height) the points refer to
    thumb: np.ndarray  # uint8 grayscale, at most PHOTO_SIDE long
    pixels: int  # width x height as decoded


@dataclass(frozen=True)
class Evidence:
    """One pair's check: `is_copy`, and what decided it."""

    is_copy: bool
    inliers: int = 0
    mirrored: bool = False
    scale: float = 0.0  # B's size over A's
    angle: float = 0.0  # degrees A is turned by in B
    coverage: float = 0.0
    correlation: float = 0.0


def copy_view(image: Any) -> CopyView:
    """The CopyView of a PIL image."""
    from PIL import Image

    gray = image.convert("L")
    pixels = gray.size[0] * gray.size[1]
    if max(gray.size) > LONG_SIDE:
        gray = gray.copy()
        gray.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
    feats = local_features(gray, LONG_SIDE, KEYPOINTS)
    thumb = gray.copy()
    thumb.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BOX)
    # float16 halves what the view cache holds; the matcher widens a pair at a time
    return CopyView(feats.points, feats.descriptors.astype(np.float16), gray.size, np.asarray(thumb, np.uint8), pixels)


def _hull_share(points: np.ndarray, size: tuple[int, int]) -> float:
    cv2 = opencv()
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points.astype(np.float32)))) / float(size[0] * size[1])


def _correlation(a: CopyView, b_thumb: np.ndarray, m: np.ndarray, b: CopyView) -> float:
    """Normalised correlation of A's thumbnail warped by `m` (feature pixels A -> B) with B's, over the overlap."""
    cv2 = opencv()
    sa = a.thumb.shape[1] / a.feature_size[0]
    sb = b_thumb.shape[1] / b.feature_size[0]
    warp = m.astype(np.float64).copy()
    warp[:, :2] *= sb / sa
    warp[:, 2] *= sb
    h, w = b_thumb.shape
    src = cv2.GaussianBlur(a.thumb.astype(np.float32), (3, 3), 0)
    dst = cv2.GaussianBlur(b_thumb.astype(np.float32), (3, 3), 0)
    warped = cv2.warpAffine(src, warp, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones_like(src), warp, (w, h), flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8)) > 0
    if inside.sum() < 64:
        return 0.0
    x, y = warped[inside], dst[inside]
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def _fit(a: CopyView, b: CopyView, mirrored: bool) -> Evidence:
    cv2 = opencv()
    if len(a.descriptors) < MIN_INLIERS or len(b.descriptors) < MIN_INLIERS:
        return Evidence(False, mirrored=mirrored)
    desc_b = b.descriptors[:, MIRROR] if mirrored else b.descriptors
    points_b = b.points.copy()
    thumb_b = b.thumb
    if mirrored:
        points_b[:, 0] = b.feature_size[0] - 1 - points_b[:, 0]
        thumb_b = np.ascontiguousarray(thumb_b[:, ::-1])
    rows, cols, _ = ratio_matches(a.descriptors, desc_b, RATIO)
    if len(rows) < MIN_INLIERS:
        return Evidence(False, len(rows), mirrored)
    src = a.points[rows]
    dst = points_b[cols]
    m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, maxIters=2000, confidence=0.995,
                                          ransacReprojThreshold=max(1.5, TOLERANCE * max(b.feature_size)))
    if m is None or mask is None:
        return Evidence(False, 0, mirrored)
    keep = mask.ravel().astype(bool)
    inliers = int(keep.sum())
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    angle = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
    coverage = max(_hull_share(src[keep], a.feature_size), _hull_share(dst[keep], b.feature_size))
    if inliers < MIN_INLIERS or coverage < MIN_COVERAGE or not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        return Evidence(False, inliers, mirrored, scale, angle, coverage)
    corr = _correlation(a, thumb_b, m, b)
    return Evidence(corr >= MIN_CORRELATION, inliers, mirrored, scale, angle, coverage, corr)


def check_pair(a: CopyView, b: CopyView, mirrored_first: bool = False) -> Evidence:
    """Whether B is a copy of A, B as it is or mirrored (`mirrored_first`: try the mirrored match first, e.g.
    when the signatures say so). The accepted evidence, else the unmirrored attempt's."""
    first = _fit(a, b, mirrored_first)
    if first.is_copy:
        return first
    second = _fit(a, b, not mirrored_first)
    if second.is_copy:
        return second
    return second if mirrored_first else first


def view_or_none(path: Any, min_size: Optional[int] = LONG_SIDE // 2) -> Optional[CopyView]:
    """The CopyView of an image file, None when it cannot be read (it is then no copy of anything)."""
    from ...images import load_image

    try:
        return copy_view(load_image(path, min_size=min_size))
    except Exception:  # an unreadable or vanished file is left out of the groups; the pass goes on
        return None
