"""Learned PCA-whitening of descriptors (Jegou and Chum, ECCV 2012; the usual last step of SPoC, R-MAC, GeM).

Fitted on a set of L2-normalised vectors: centre them, rotate onto their principal axes, divide each axis by the
square root of its variance (plus a shrinkage term, so that the weakest axes of a small fitting set are not
blown up into noise), keep the first `dims` axes, and L2-normalise again. The same transform then applies to
the database and to every query.

Stored as `whitening.npz` beside the index (plain arrays, read with `allow_pickle=False`), with a manifest-style
description (what it was fitted on, on how many vectors, and the file's SHA-256) that `whitening_info` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import LookalikeError

WHITENING_FILE = "whitening.npz"
WHITENING_INFO = "whitening.json"
# Shrinkage: each eigenvalue gets this fraction of the mean eigenvalue added before the inverse square root.
DEFAULT_SHRINK = 1.0


class Whitening:
    """x -> normalise((x - mean) @ projection), with `projection` (D, d)."""

    def __init__(self, mean: np.ndarray, projection: np.ndarray) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.projection = np.asarray(projection, np.float32)

    @property
    def dims(self) -> int:
        return int(self.projection.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        y = (x - self.mean) @ self.projection
        norms = np.linalg.norm(y, axis=-1, keepdims=True)
        return (y / np.maximum(norms, 1e-12)).astype(np.float32)


def fit_whitening(vectors: np.ndarray, dims: int | None = None, shrink: float = DEFAULT_SHRINK) -> Whitening:
    """PCA-whitening fitted on `vectors` (N, D). `dims`: axes kept [default: all with non-zero variance]."""
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise LookalikeError("whitening needs at least two vectors to fit on")
    mean = x.mean(axis=0)
    xc = x - mean
    # The eigenvectors of the covariance from an SVD of the centred data: (N, D) with N often < D.
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    eig = s ** 2 / (len(x) - 1)
    rank = int(np.count_nonzero(eig > eig.max() * 1e-9))
    keep = rank if dims is None else max(1, min(int(dims), rank))
    scale = 1.0 / np.sqrt(eig[:keep] + shrink * eig[:rank].mean())
    return Whitening(mean, (vt[:keep].T * scale[None, :]))


def save_whitening(index_dir, whitening: Whitening, info: dict) -> dict:
    """Write `whitening.npz` and its description `whitening.json` (the description carries the npz's SHA-256,
    so a file changed or left from another index is refused)."""
    index_dir = Path(index_dir)
    with atomic_write(index_dir / WHITENING_FILE, "wb") as fh:
        np.savez(fh, mean=whitening.mean, projection=whitening.projection)
    digest = _sha256(index_dir / WHITENING_FILE)
    info = {**info, "file": WHITENING_FILE, "sha256": digest, "dims": whitening.dims}
    with atomic_write(index_dir / WHITENING_INFO, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
    return info


def whitening_info(index_dir) -> dict | None:
    """The description of the whitening stored with an index, or None when it has none."""
    path = Path(index_dir) / WHITENING_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def load_whitening(index_dir, expect: dict | None = None) -> Whitening:
    """Read the whitening stored with an index; LookalikeError when it is missing, damaged or does not match
    its description (or `expect`'s "fitted_on" and "backbone")."""
    index_dir = Path(index_dir)
    info = whitening_info(index_dir)
    path = index_dir / WHITENING_FILE
    if info is None or not path.is_file():
        raise LookalikeError(f"index {index_dir} holds no whitening")
    if _sha256(path) != info.get("sha256"):
        raise LookalikeError(f"{path} does not match {WHITENING_INFO}: fit it again")
    for key, value in (expect or {}).items():
        if info.get(key) != value:
            raise LookalikeError(f"the whitening stored in {index_dir} was fitted for another {key}")
    try:
        with np.load(path, allow_pickle=False) as z:
            mean, proj = z["mean"], z["projection"]
    except Exception as exc:  # zip or format errors: a damaged file
        raise LookalikeError(f"cannot read {path} ({exc.__class__.__name__})") from None
    if mean.ndim != 1 or proj.ndim != 2 or proj.shape[0] != mean.shape[0]:
        raise LookalikeError(f"{path} holds arrays of the wrong shape")
    return Whitening(mean, proj)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_key(folder) -> str:
    """What identifies a fitting folder in a whitening's description."""
    return os.path.abspath(Path(folder).expanduser())
