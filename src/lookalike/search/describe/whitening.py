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

from ...atomic import atomic_write
from ...errors import LookalikeError
from .model_digest import file_sha256

WHITENING_FILE = "whitening.npz"
WHITENING_INFO = "whitening.json"
# Shrinkage: each eigenvalue gets this fraction of the mean eigenvalue added before the inverse square root.
DEFAULT_SHRINK = 1.0
# Signed power normalisation before the whitening (1: none); `power_for` picks it by pooling.
DEFAULT_POWER = 1.0
# Sums of ReLU features (average pooling, and R-MAC's sum of regions) are bursty: a few strong activations
# dominate, and a signed square root before the whitening evens them out. Max-like poolings (GeM, MAC) already
# compress them and lose with it (benchmarks/results/eval_search.md).
SUM_POOLING_POWER = 0.5
SUM_POOLINGS = ("avg", "rmac")


class Whitening:
    """x -> normalise((power(x) - mean) @ projection), with `projection` (D, d) and power(x) the signed power
    `sign(x) |x|^power`, L2-normalised (power 1: x itself)."""

    def __init__(self, mean: np.ndarray, projection: np.ndarray, power: float = 1.0) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.projection = np.asarray(projection, np.float32)
        self.power = float(power)

    @property
    def dims(self) -> int:
        return int(self.projection.shape[1])

    def padded(self, dim: int) -> "Whitening":
        """The same transform with zero columns up to `dim` outputs: an index stores vectors of its backbone's
        width whatever the number of axes kept (dot products are unchanged)."""
        if self.dims >= dim:
            return self
        proj = np.zeros((self.projection.shape[0], dim), np.float32)
        proj[:, :self.dims] = self.projection
        return Whitening(self.mean, proj, self.power)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = power_normalise(np.asarray(x, np.float32), self.power)
        y = (x - self.mean) @ self.projection
        norms = np.linalg.norm(y, axis=-1, keepdims=True)
        return (y / np.maximum(norms, 1e-12)).astype(np.float32)


def power_normalise(x: np.ndarray, power: float) -> np.ndarray:
    """Signed power normalisation `sign(x) |x|^power` of each row, L2-normalised again (power 1: unchanged)."""
    if power == 1.0:
        return x
    y = np.sign(x) * np.abs(x) ** power
    return (y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def power_for(pooling: str | None) -> float:
    """The signed power applied before a whitening of descriptors made with `pooling`."""
    return SUM_POOLING_POWER if (pooling or "avg").lower() in SUM_POOLINGS else DEFAULT_POWER


def fit_whitening(vectors: np.ndarray, dims: int | None = None, shrink: float = DEFAULT_SHRINK,
                  power: float = DEFAULT_POWER) -> Whitening:
    """PCA-whitening fitted on `vectors` (N, D). `dims`: axes kept [default: all with non-zero variance];
    `power`: signed power normalisation applied before (and stored with) the whitening."""
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise LookalikeError("whitening needs at least two vectors to fit on")
    if not np.isfinite(shrink) or shrink < 0:
        raise LookalikeError("the whitening's shrinkage must be a number >= 0")
    if not 0.0 < power <= 1.0:
        raise LookalikeError("the power normalisation's exponent must be in (0, 1]")
    x = power_normalise(x, power).astype(np.float64)
    mean = x.mean(axis=0)
    if len(x) <= x.shape[1]:
        # The eigenvectors of the covariance from an SVD of the centred data: (N, D) with N <= D.
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        eig, axes = s ** 2 / (len(x) - 1), vt
    else:
        # Many vectors: the D x D covariance, accumulated in blocks (memory O(D^2), not O(N D) in float64).
        cov = np.zeros((x.shape[1], x.shape[1]))
        for start in range(0, len(x), 65536):
            block = x[start:start + 65536] - mean
            cov += block.T @ block
        eig, vecs = np.linalg.eigh(cov / (len(x) - 1))
        eig, axes = eig[::-1].clip(0.0, None), vecs[:, ::-1].T
    rank = int(np.count_nonzero(eig > eig.max() * 1e-9))
    keep = rank if dims is None else max(1, min(int(dims), rank))
    scale = 1.0 / np.sqrt(eig[:keep] + shrink * eig[:rank].mean())
    return Whitening(mean, (axes[:keep].T * scale[None, :]), power)


def save_whitening(index_dir, whitening: Whitening, info: dict) -> dict:
    """Write `whitening.npz` and its description `whitening.json` (the description carries the npz's SHA-256,
    so a file changed or left from another index is refused)."""
    index_dir = Path(index_dir)
    with atomic_write(index_dir / WHITENING_FILE, "wb") as fh:
        _write_arrays(fh, whitening)
    digest = file_sha256(index_dir / WHITENING_FILE)
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
    if file_sha256(path) != info.get("sha256"):
        raise LookalikeError(f"{path} does not match {WHITENING_INFO}: fit it again")
    for key, value in (expect or {}).items():
        if info.get(key) != value:
            raise LookalikeError(f"the whitening stored in {index_dir} was fitted for another {key}")
    return _read_arrays(path)


def _write_arrays(fh, whitening: Whitening) -> None:
    np.savez(fh, mean=whitening.mean, projection=whitening.projection,
             power=np.asarray([whitening.power], np.float32))


def _read_arrays(path: Path) -> Whitening:
    try:
        with np.load(path, allow_pickle=False) as z:
            mean, proj = z["mean"], z["projection"]
            power = float(z["power"][0]) if "power" in z.files else 1.0
    except Exception as exc:  # zip or format errors: a damaged file
        raise LookalikeError(f"cannot read {path} ({exc.__class__.__name__})") from None
    if mean.ndim != 1 or proj.ndim != 2 or proj.shape[0] != mean.shape[0] or not 0.0 < power <= 1.0:
        raise LookalikeError(f"{path} holds arrays of the wrong shape")
    return Whitening(mean, proj, power)


# --- the whitening an index owns ---------------------------------------------------------------------------
# The index's vectors are stored whitened once its whitening is applied: the record of the whitening (this
# dict, kept in the index database with the vectors it applies to, and in the manifest) names a file
# `whitening-<sha>.npz` by its content, so a file is never rewritten in place while a reader may load it.

INDEX_FILE_PATTERN = r"whitening-[0-9a-f]{16}\.npz"


def store_for_index(index_dir, whitening: Whitening, info: dict) -> dict:
    """Write `whitening` into the index folder (atomically, under a name taken from its content) and return its
    record: `info` plus "file", "sha256", "dims" and "power"."""
    import io

    index_dir = Path(index_dir)
    buf = io.BytesIO()
    _write_arrays(buf, whitening)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    name = f"whitening-{digest[:16]}.npz"
    with atomic_write(index_dir / name, "wb") as fh:
        fh.write(data)
    return {**info, "file": name, "sha256": digest, "dims": whitening.dims, "power": whitening.power}


def load_for_index(index_dir, record: dict) -> Whitening:
    """The whitening an index's record names; LookalikeError when its file is missing, changed or damaged."""
    import re

    name = record.get("file") if isinstance(record, dict) else None
    if not isinstance(name, str) or not re.fullmatch(INDEX_FILE_PATTERN, name):
        raise LookalikeError(f"index {index_dir} records a whitening without a valid file name")
    path = Path(index_dir) / name
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise LookalikeError(f"cannot read the index's whitening {path} ({exc.strerror or exc}): its vectors are "
                             "whitened, so queries cannot be made comparable without it") from None
    if digest != record.get("sha256"):
        raise LookalikeError(f"{path} does not match the whitening the index records (changed or damaged)")
    return _read_arrays(path)


def folder_key(folder) -> str:
    """What identifies a fitting folder in a whitening's description."""
    return os.path.abspath(Path(folder).expanduser())
