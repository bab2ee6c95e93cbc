"""What the web API does, apart from HTTP: search, compare and duplicate groups over one read-only index.

The index, its vectors and the model load once; request handlers in worker threads share them. Results carry
the same fields as the CLI's `--json`, plus `id` so the page can ask for thumbnails and search again.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import BadImageError, LookalikeError
from ..images import load_image

MAX_K = 100


class UnsupportedImage(Exception):
    """The upload is not an image at all (415), as opposed to a damaged one (422)."""


def display_name(filename: str | None) -> str:
    """The part of a client's file name that is safe to echo back: no folders, no control characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "upload"


def decode_upload(data: bytes, filename: str | None, min_size: int | None = None):
    """Decode uploaded bytes (never touching the filesystem) to an RGB image.

    Raises `UnsupportedImage` when the bytes are no image format Pillow knows, `BadImageError` when they are
    one but cannot be decoded (truncated, corrupt, too many pixels).
    """
    from PIL import Image, UnidentifiedImageError

    name = display_name(filename)
    if not data:
        raise UnsupportedImage(f"{name}: empty upload, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # load_image below refuses those
            with Image.open(io.BytesIO(data)):  # reads the header only
                pass
    except UnidentifiedImageError:
        raise UnsupportedImage(f"{name}: not an image (unrecognised format)") from None
    except Exception:  # a known format with a broken header: decoding below gives the reason
        pass
    try:
        return load_image(data, min_size=min_size)
    except BadImageError as exc:
        raise BadImageError(str(exc).replace("<bytes>", name, 1)) from None


class SearchService:
    """One index and its embedder. Thread-safe: the index is read-only and the embedder serialises itself."""

    def __init__(self, index_path: str | os.PathLike, device: str = "cpu", embedder: Any = None) -> None:
        from ..search.index import ImageIndex

        self.index = ImageIndex.open(index_path, readonly=True)
        try:
            if embedder is None:
                from ..search.features import embedder_for_index

                embedder = embedder_for_index(self.index, device=device)
            if int(getattr(embedder, "dim", self.index.manifest["dim"])) != int(self.index.manifest["dim"]):
                raise LookalikeError(
                    f"the model gives {embedder.dim}-dimensional vectors, the index holds "
                    f"{self.index.manifest['dim']}-dimensional ones: serve it with its own backbone"
                )
            self.embedder = embedder
            self.index_path = Path(index_path)
            self._ids = self.index.ids()
            self._row = {int(i): n for n, i in enumerate(self._ids)}  # id -> row of vectors()
            self._embed_lock = threading.Lock()
            self._dupes: OrderedDict[tuple[float, int], list[list[int]]] = OrderedDict()
            self._dupes_lock = threading.Lock()
            self.min_size = _input_size(self.index.manifest, embedder)
        except BaseException:
            self.index.close()
            raise

    def close(self) -> None:
        self.index.close()

    # -- facts -----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        from ..search.query import DEFAULT_DUPE_THRESHOLD

        facts = dict(self.index.stats())
        facts["dupe_threshold"] = float(DEFAULT_DUPE_THRESHOLD)
        return facts

    def has_id(self, image_id: int) -> bool:
        return image_id in self._row

    def path_of(self, image_id: int) -> Path:
        if image_id not in self._row:
            raise KeyError(image_id)
        return Path(self.index.path_of(image_id))

    # -- queries ---------------------------------------------------------------------------------------
    def embed(self, images: list):
        # The embedder is documented as thread-safe; the lock keeps two forward passes from fighting over the
        # same cores even if a future embedder is not.
        with self._embed_lock:
            return self.embedder.embed_images(images)

    def search_image(self, image, name: str, k: int) -> dict:
        from ..search.query import search

        vector = self.embed([image])
        results = search(self.index, vector, k=_clamp_k(k, len(self._ids)))[0]
        return {"query": name, "query_id": None, "results": [_result(r) for r in results]}

    def search_id(self, image_id: int, k: int, include_self: bool = False) -> dict:
        from ..search.query import search

        row = self._row[image_id]  # KeyError if unknown
        vector = self.index.vectors()[row : row + 1]
        exclude = None if include_self else [image_id]
        results = search(self.index, vector, k=_clamp_k(k, len(self._ids)), exclude_ids=exclude)[0]
        return {
            "query": str(self.index.path_of(image_id)),
            "query_id": image_id,
            "results": [_result(r) for r in results],
        }

    def compare(self, items: list[tuple[str, int | None, Any]]) -> dict:
        """`items`: (name, id or None, PIL image or None); indexed ids reuse their stored vector."""
        import numpy as np

        from ..search.query import compare

        vectors = self.index.vectors()
        uploads = [img for _, image_id, img in items if image_id is None]
        fresh = iter(self.embed(uploads)) if uploads else iter(())
        rows = []
        for _, image_id, _img in items:
            if image_id is None:
                rows.append(next(fresh))
            else:
                rows.append(vectors[self._row[image_id]])
        distance, similarity = compare(np.stack(rows).astype(np.float32))
        return {
            "paths": [name for name, _, _ in items],
            "ids": [image_id for _, image_id, _ in items],
            "distance": _matrix(distance),
            "similarity": _matrix(similarity),
        }

    def dupes(self, threshold: float | None = None, k: int = 10) -> dict:
        from ..search.query import DEFAULT_DUPE_THRESHOLD, find_duplicates

        threshold = float(DEFAULT_DUPE_THRESHOLD if threshold is None else threshold)
        key = (round(threshold, 6), int(k))
        with self._dupes_lock:  # one computation per setting; the index never changes under a running server
            groups = self._dupes.get(key)
            if groups is None:
                groups = [sorted(int(i) for i in g) for g in find_duplicates(self.index, threshold=threshold, k=k)]
                self._dupes[key] = groups
                while len(self._dupes) > 16:
                    self._dupes.popitem(last=False)
            else:
                self._dupes.move_to_end(key)
        return {
            "threshold": threshold,
            "groups": [[str(self.index.path_of(i)) for i in g] for g in groups],
            "group_ids": groups,
        }


def _clamp_k(k: int, count: int) -> int:
    if k < 1:
        raise LookalikeError("k must be at least 1")
    return max(1, min(k, MAX_K, count)) if count else k


def _result(r: dict) -> dict:
    return {
        "rank": int(r["rank"]),
        "id": int(r["id"]),
        "path": str(r["path"]),
        "distance": float(r["distance"]),
        "similarity": float(r["similarity"]),
    }


def _matrix(m) -> list[list[float]]:
    return [[round(float(x), 6) for x in row] for row in m]


def _input_size(manifest: dict, embedder: Any) -> int | None:
    """The model's input side, so JPEG uploads can be draft-decoded no smaller than needed."""
    preprocess = manifest.get("preprocess") or {}
    for source in (
        getattr(embedder, "min_decode_size", None),
        getattr(embedder, "input_size", None),
        preprocess.get("resize_size"),
        preprocess.get("input_size"),
    ):
        if isinstance(source, int) and source > 0:
            return source
        if isinstance(source, (list, tuple)) and source:
            return int(max(source[-2:]))
    return 224
