"""A small signature of an image's content that survives the edits a copy goes through and sees through turns
and mirroring: a DCT perceptual hash of each of the image's 8 dihedral views (4 turns x mirrored or not).

The image is shrunk to SIDE x SIDE grayscale (so colour, size and JPEG artefacts barely count), its 2-D DCT taken,
and the lowest 8 x 8 frequencies (the constant term left out) each give one bit: above their median or not. A
turned or mirrored image has the same coefficients up to a transpose and signs, so the 8 views' hashes come from
one DCT. Two images whose views differ in few bits are copies in all likelihood; the global descriptor, which
sees no turned copy, finds the crops and slight rotations that a hash of the whole frame misses.

Signatures are (n, 8) uint64: column v is view v's hash, view 0 the image as decoded.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import numpy as np

SIDE = 32  # thumbnail side the DCT is taken over
BITS = 64  # hash bits per view (8 x 8 low frequencies)
VIEWS = 8  # identity, 3 turns, and the 4 mirrored
MIRRORED_VIEWS = (4, 5, 6, 7)
# Most bits two copies' closest views may differ by. Recompression, resizing, grayscale and a recolour change a
# few bits; unrelated photos differ by about half of them.
DEFAULT_MAX_BITS = 12


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(SIDE)
# (-1)^u on the frequency u: a flipped axis changes the sign of every odd frequency along it.
_SIGN = (-1.0) ** np.arange(8)


def _views(low: np.ndarray) -> list[np.ndarray]:
    """The 8 x 8 low frequencies of each dihedral view, from those of the image (rows: vertical frequency)."""
    flip_v = _SIGN[:, None] * low  # upside down
    flip_h = low * _SIGN[None, :]  # mirrored left-right
    both = flip_v * _SIGN[None, :]  # turned 180 degrees
    # A quarter turn is a transpose plus one flip; the transposed views are the mirrors of the turned ones.
    return [low, flip_h.T, both, flip_v.T, flip_h, both.T, flip_v, low.T]


def _bits(coeffs: np.ndarray) -> np.uint64:
    flat = coeffs.reshape(-1).copy()
    flat[0] = np.median(flat[1:])  # the constant term (overall brightness) carries no content: fixed at the median
    bits = (flat > np.median(flat)).astype(np.uint8)
    return np.packbits(bits).view(">u8")[0].astype(np.uint64)


def signature(image: Any) -> np.ndarray:
    """The 8 view hashes of a PIL image, (8,) uint64."""
    from PIL import Image

    gray = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX if min(image.size) >= SIDE
                                     else Image.Resampling.BILINEAR)
    pixels = np.asarray(gray, np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:8, :8]
    return np.asarray([_bits(v) for v in _views(low)], np.uint64)


def signatures(images: Iterable[Any]) -> np.ndarray:
    """Signatures of several PIL images, (n, 8) uint64 (None for an image that is missing: all-zero row is not
    used; see `signatures_of_files`)."""
    rows = [signature(im) for im in images]
    return np.asarray(rows, np.uint64).reshape(-1, VIEWS)


# Bits set in each byte value: popcount by table lookup where numpy has no bitwise_count (before 2.0).
_POP8 = np.asarray([bin(i).count("1") for i in range(256)], np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 in `x`."""
    x = np.ascontiguousarray(x, np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2: one instruction per word
        return np.bitwise_count(x).astype(np.int32, copy=False)
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.int32)


def view_distance(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(bits, view): the fewest bits in which a view of `a` differs from `b` as decoded, and that view."""
    d = popcount(np.asarray(a, np.uint64) ^ np.uint64(b[0]))
    v = int(np.argmin(d))
    return int(d[v]), v


def close_pairs(sigs: np.ndarray, valid: Optional[np.ndarray] = None, max_bits: int = DEFAULT_MAX_BITS,
                per_image: int = 5, block: int = 512,
                progress: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows (i < j) whose closest views differ in at most `max_bits` bits, at most `per_image` per row
    i (the closest), as (i, j, bits) arrays. Every view of each block of rows against view 0 of all rows: time
    O(n^2 x 8) popcounts, memory O(block x n). `valid` (bool per row) leaves rows without a signature out."""
    sigs = np.ascontiguousarray(sigs, np.uint64)
    n = len(sigs)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    base = sigs[:, 0]
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        views = sigs[start:stop]  # (b, 8)
        best = np.full((stop - start, n), BITS + 1, np.int32)
        for v in range(VIEWS):
            np.minimum(best, popcount(views[:, v, None] ^ base[None, :]), out=best)
        rows = np.arange(start, stop)
        best[rows - start, rows] = BITS + 1  # an image is no copy of itself
        best[:, ~valid] = BITS + 1
        best[~valid[start:stop]] = BITS + 1
        take = min(per_image, n - 1)
        if take <= 0:
            break
        nearest = np.argpartition(best, take - 1, axis=1)[:, :take] if take < n else np.tile(np.arange(n), (len(rows), 1))
        d = np.take_along_axis(best, nearest, axis=1)
        r, c = np.nonzero(d <= max_bits)
        out_i.append(rows[r])
        out_j.append(nearest[r, c])
        out_d.append(d[r, c])
        if progress:
            progress(stop, n)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    i, j, d = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = np.unique(np.stack([lo, hi, d], axis=1), axis=0)
    return key[:, 0].astype(np.int64), key[:, 1].astype(np.int64), key[:, 2].astype(np.int32)
