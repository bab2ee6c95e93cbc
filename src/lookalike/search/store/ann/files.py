"""Reading a saved backend back: `load` it, `verify` a file without parsing its payload, or `read_params` of its
header. The file is derived state, never trusted over the vectors (see `fileformat`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..compact import Pca
from .base import BACKENDS, Backend
from .factory import make
from .fileformat import FILE_VERSION, AnnFileError, StaleAnnError, check_crc, read_header, read_sections


def verify(path) -> dict:
    """The header of a saved backend after checking it and its whole payload against their CRCs (without
    parsing the payload); AnnFileError when missing, truncated, damaged, or of the older format whose header
    had no checksum (a writer then rebuilds it)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            header = read_header(fh, path, BACKENDS)
            if header["version"] < FILE_VERSION:
                raise AnnFileError(f"ANN file {path} has the older format {header['version']}")
            check_crc(fh, header, path)
            return header
    except OSError as exc:
        raise AnnFileError(f"cannot read ANN file {path} ({exc.strerror or exc})") from None


def read_params(path) -> dict:
    """The header of a saved backend (kind, parameters, fingerprint) without loading it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return read_header(fh, path, BACKENDS)
    except OSError as exc:
        raise AnnFileError(f"cannot read ANN file {path} ({exc.strerror or exc})") from None


def load(path, fingerprint: str | None = None) -> Backend:
    """Load a backend saved by `Backend.save`. AnnFileError when the file is missing, truncated or damaged
    (checked by CRC before FAISS reads it); StaleAnnError when `fingerprint` is given and differs from the
    one it was saved with. Either way the caller rebuilds it from the vectors."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise AnnFileError(f"cannot read ANN file {path} ({exc.strerror or exc})") from None
    with fh:
        header = read_header(fh, path, BACKENDS)
        if fingerprint is not None and header.get("fingerprint") != fingerprint:
            raise StaleAnnError(f"ANN file {path} was built from other vectors than the index holds")
        check_crc(fh, header, path)
        sections = read_sections(fh, header, path)
    try:
        pca = Pca(sections["pca_mean"], sections["pca_components"]) if "pca_mean" in sections else None
        backend = make(header["kind"], int(header["dim"]), pca=pca, storage=header.get("storage", "float32"),
                       rerank=int(header.get("rerank", 1)), **header.get("params", {}))
        backend.labels = sections["labels"].astype(np.int64)
        backend.live = sections["live"].astype(bool)
        backend.keys = sections["keys"].astype(np.int64)
        n = len(backend.labels)
        if not n == len(backend.live) == len(backend.keys) == int(header["entries"]):
            raise AnnFileError(f"ANN file {path} is damaged (id map)")
        backend._restore(sections)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnFileError(f"ANN file {path} is damaged ({exc.__class__.__name__})") from None
    backend.fingerprint = header.get("fingerprint")
    return backend
