"""What the web API does, apart from HTTP: search and compare over one read-only index.

The model loads once; the index's snapshot loads at start and again after `lookalike index` changes it (with
the new model when the index was rebuilt with another backbone).
Request handlers in worker threads share them. Search answers are `search.results.SearchResponse`, the CLI's
`--json` shape plus the ids, so the page can ask for thumbnails and search again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BadImageError, LookalikeError
from ..paths import printable
from ..images import PixelBudget, UnrecognisedImage, load_image, open_image
from .limits import DecodeSlots

if TYPE_CHECKING:
    from ..search.retrieve.results import SearchResponse

MAX_K = 100


class UnsupportedImage(Exception):
    """The upload is not an image at all (415), as opposed to a damaged one (422)."""


def display_name(filename: str | None) -> str:
    """The part of a client's file name that is safe to echo back: no folders, no control characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "upload"


def decode_upload(data: bytes, filename: str | None, min_size: int | None = None,
                  budget: PixelBudget | None = None, slots: DecodeSlots | None = None):
    """Decode uploaded bytes (never touching the filesystem) to an RGB image, reduced towards `min_size`.

    Raises `UnsupportedImage` when the bytes are in no format decoded, `BadImageError` when they are in one but
    cannot be decoded (truncated, corrupt, too many pixels, a structure too costly to decode: all refused
    before a decode slot is taken), `PixelBudgetExceeded` when decoding it would pass the request's `budget`,
    `ServerBusy` when no decode slot of `slots` comes free in time.
    """
    from PIL import Image

    name = display_name(filename)
    if not data:
        raise UnsupportedImage(f"{name}: empty upload, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # load_image below refuses those
            with open_image(data, name):  # reads the header only
                pass
    except UnrecognisedImage as exc:
        raise UnsupportedImage(str(exc)) from None
    except BadImageError:
        raise
    except Exception:  # a known format with a broken header: decoding below gives the reason
        pass
    try:
        with slots.hold() if slots is not None else nullcontext():
            return load_image(data, min_size=min_size, budget=budget)
    except BadImageError as exc:
        raise type(exc)(str(exc).replace("<bytes>", name, 1)) from None


class IndexView:
    """One read-only snapshot of the index and what derives from it. A request takes the current view once and
    uses it to the end, so a reload in between never mixes two states of the index."""

    def __init__(self, index: Any, stamp: tuple | None, embedder: Any) -> None:
        self.index = index
        self.stamp = stamp
        self.embedder = embedder  # the backbone of this snapshot's vectors
        self.min_size = _input_size(index.manifest, embedder)
        self.count = len(index)
        self.backend = index.backend()  # the ANN file (or exact) loaded now, not by the first request
        self._library: Any = None  # `library.Library`, opened by the first request that browses
        self._library_lock = threading.Lock()

    def library(self):
        """The collection's listing over this snapshot (`web.library.Library`)."""
        from ..search.store.database import _connect_reader
        from .library import Library

        with self._library_lock:
            if self._library is None:
                path = Path(self.index.path)
                self._library = Library(lambda: _connect_reader(path), int(getattr(self.index, "generation", 0)),
                                        Path(self.index.root))
            return self._library

    def close(self) -> None:
        with self._library_lock:
            if self._library is not None:
                self._library.close()
        self.index.close()

    def has_id(self, image_id: int) -> bool:
        return self.index.has_id(image_id)

    def path_of(self, image_id: int) -> Path:
        return Path(self.index.path_of(image_id))  # KeyError when unknown


class SearchService:
    """One index and its embedder. Thread-safe: snapshots of the index are read-only and the embedder
    serialises itself.

    `lookalike index` may update the index while a server runs: at most every `check_interval` seconds, a
    request looks at the index's change stamp (a stat and one small query) and, when it moved, reopens the
    snapshot; requests already running finish on the one they started with. An index rebuilt with another
    backbone brings that backbone in with its snapshot (`load_embedder(index)`, by default the index's own).
    """

    def __init__(self, index_path: str | os.PathLike, device: str = "cpu", embedder: Any = None,
                 check_interval: float = 1.0, load_embedder: Callable[[Any], Any] | None = None,
                 expansion: Any = None, verifier: Any = None) -> None:
        from ..search.store.index import ImageIndex, change_stamp, resolve_index_dir

        if load_embedder is None:
            from ..search.describe.features import embedder_for_index

            def load_embedder(index):
                return embedder_for_index(index, device=device)

        stamp = change_stamp(resolve_index_dir(index_path))  # before opening: a commit in between reloads again
        index = ImageIndex.open(index_path, readonly=True)
        try:
            embedder = embedder if embedder is not None else load_embedder(index)
            _check_dim(index, embedder)
            self._load_embedder = load_embedder
            self.expansion = expansion  # `query.Expansion` of every search (`serve --qe/--dba`), None: plain
            self.verifier = verifier  # `verify.Verifier` of every search (`serve --verify`), None: no re-ranking
            self.index_path = Path(index_path)
            self.check_interval = float(check_interval)
            self._view = IndexView(index, stamp, embedder)
            self._next_check = time.monotonic() + self.check_interval
            self._reload_lock = threading.Lock()
            self._embed_lock = threading.Lock()
        except BaseException:
            index.close()
            raise

    @property
    def index(self):
        """The current snapshot's index."""
        return self._view.index

    @property
    def embedder(self):
        """The current snapshot's embedder."""
        return self._view.embedder

    @property
    def min_size(self) -> int | None:
        """The current backbone's input side: JPEG uploads are draft-decoded no smaller."""
        return self._view.min_size

    def close(self) -> None:
        self._view.close()

    # -- following the index on disk -------------------------------------------------------------------
    def view(self) -> IndexView:
        """The current snapshot, reopened first when the index changed on disk (checked at most every
        `check_interval` seconds; while one thread reloads, the others go on with the current snapshot)."""
        if time.monotonic() >= self._next_check and self._reload_lock.acquire(blocking=False):
            try:
                if time.monotonic() >= self._next_check:  # not done by another thread meanwhile
                    self._reload_if_changed()
            finally:
                self._next_check = time.monotonic() + self.check_interval
                self._reload_lock.release()
        return self._view

    def refresh(self) -> bool:
        """Check for changes now, whatever the interval; True when a new snapshot was loaded."""
        with self._reload_lock:
            before = self._view
            self._reload_if_changed()
            self._next_check = time.monotonic() + self.check_interval
            return self._view is not before

    def _reload_if_changed(self) -> None:
        from ..search.store.index import ImageIndex, change_stamp, same_backbone

        current = self._view
        stamp = change_stamp(current.index.path)
        if stamp is None or stamp == current.stamp:
            return
        try:
            index = ImageIndex.open(current.index.path, readonly=True)
        except (LookalikeError, OSError, sqlite3.Error):
            # Caught mid-rebuild, or a compaction removed the vector file just read of: a failed reload must not
            # fail the request, so serve what we have and try again at the next check.
            return
        embedder = current.embedder
        if not same_backbone(index.manifest, current.index.manifest) or (
                getattr(index, "whitening", None) != getattr(current.index, "whitening", None)):
            # Rebuilt with another model: load it while the other requests go on with the old snapshot.
            try:
                embedder = self._load_embedder(index)
                _check_dim(index, embedder)
            except (LookalikeError, OSError, RuntimeError):
                # Its weights are missing or do not fit: serve the old snapshot, and look again when the
                # stamp moves.
                index.close()
                current.stamp = stamp
                return
        self._view = IndexView(index, stamp, embedder)  # one assignment: a request sees the old view or the new
        current.close()  # read-only: closes no file a running request still reads

    # -- facts -----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        from ..search.retrieve.query import dupe_threshold

        view = self.view()
        facts = dict(view.index.stats())
        facts["dupe_threshold"] = float(dupe_threshold(view.index.manifest))
        facts["ann"] = {**view.backend.params(), "requested": view.index.ann_requested}
        facts["notes"] = list(view.index.notes)
        return facts

    def has_id(self, image_id: int) -> bool:
        return self.view().has_id(image_id)

    def path_of(self, image_id: int) -> Path:
        """The file of an indexed image; KeyError if the id is unknown."""
        return self.view().path_of(image_id)

    # -- queries ---------------------------------------------------------------------------------------
    def embed(self, images: list, view: IndexView | None = None):
        """Vectors of PIL images by the backbone of `view` (default: the current snapshot)."""
        # The embedder is documented as thread-safe; the lock keeps two forward passes from fighting over the
        # same cores even if a future embedder is not.
        embedder = (view or self._view).embedder
        with self._embed_lock:
            return embedder.embed_images(images)

    def _embedder_of(self, view: IndexView) -> "_LockedEmbedder":
        return _LockedEmbedder(view.embedder, self._embed_lock, view.min_size)

    def search_image(self, image, name: str, k: int) -> "SearchResponse":
        from ..search.retrieve.query import Query, run_queries

        view = self.view()
        return run_queries(view.index, [Query(name=name, image=image)], _clamp_k(k, view.count),
                           embedder=lambda: self._embedder_of(view), expansion=self.expansion,
                           verifier=self.verifier)[0]

    def search_id(self, image_id: int, k: int, include_self: bool = False) -> "SearchResponse":
        """Search from an indexed image; KeyError if the id is unknown."""
        from ..search.retrieve.query import Query, run_queries

        view = self.view()
        name = printable(view.path_of(image_id))
        return run_queries(view.index, [Query(name=name, image_id=image_id)], _clamp_k(k, view.count),
                           embedder=lambda: self._embedder_of(view), include_self=include_self,
                           expansion=self.expansion, verifier=self.verifier)[0]

    def compare(self, items: list[tuple[str | None, int | None, Any]]) -> dict:
        """`items`: (name, id or None, PIL image or None); indexed ids reuse their stored vector and, when their
        name is None, are named by their path. KeyError (with the id) if an id is unknown."""
        import numpy as np

        from ..search.retrieve.query import compare

        view = self.view()
        names = [printable(view.path_of(image_id)) if name is None else name for name, image_id, _ in items]
        uploads = [img for _, image_id, img in items if image_id is None]
        fresh = iter(self.embed(uploads, view)) if uploads else iter(())
        rows = []
        for _, image_id, _img in items:
            if image_id is None:
                rows.append(next(fresh))
            else:
                rows.append(view.index.vector_of(image_id))
        distance, similarity = compare(np.stack(rows).astype(np.float32))
        return {
            "paths": names,
            "ids": [image_id for _, image_id, _ in items],
            "distance": _matrix(distance),
            "similarity": _matrix(similarity),
        }


class _LockedEmbedder:
    """An embedder whose forward passes take turns (what `run_queries` calls to embed an upload)."""

    def __init__(self, embedder: Any, lock: threading.Lock, min_size: int | None) -> None:
        self._embedder, self._lock, self.min_decode_size = embedder, lock, min_size

    def embed_images(self, images: list):
        with self._lock:
            return self._embedder.embed_images(images)


def _clamp_k(k: int, count: int) -> int:
    if k < 1:
        raise LookalikeError("k must be at least 1")
    return max(1, min(k, MAX_K, count)) if count else k


def _matrix(m) -> list[list[float]]:
    return [[round(float(x), 6) for x in row] for row in m]


def _check_dim(index: Any, embedder: Any) -> None:
    dim = int(index.manifest["dim"])
    if int(getattr(embedder, "dim", dim)) != dim:
        raise LookalikeError(f"the model gives {embedder.dim}-dimensional vectors, the index holds "
                             f"{dim}-dimensional ones: serve it with its own backbone")


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
