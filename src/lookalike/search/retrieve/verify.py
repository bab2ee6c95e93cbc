"""Spatial verification: re-rank the first results of a search by how much of the query each one shows again,
in the same geometric arrangement.

A global descriptor ranks by overall look; two photos of the same scene also share many small patterns that map
onto each other through one change of viewpoint. For the query and each shortlisted result: SIFT keypoints with
RootSIFT descriptors (`describe/local_features.py`), Lowe's ratio test, then RANSAC fitting one affine
transform; its inliers count the matches that agree. A result with at least MIN_INLIERS gains up to 1 over its
cosine similarity (the full gain at FULL_INLIERS), so verified results move up in proportion to the evidence and
the rest keep their order. SIFT is rotation invariant, so a sideways copy of a scene verifies too.

A library image's local features are taken at index time and stored beside its rendition (`store/renditions.py`);
a search reads them while the file is unchanged. Otherwise (an index made before they were stored, an imported
row, a file changed since) they are taken from the stored rendition or, failing that, from the file itself.
Figures: benchmarks/results/eval_search.md (quality), benchmarks/results/search_speed.md (time).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ...device import free_cores
from ..vector_math import similarity_to_distance
from ..describe.local_features import (  # noqa: F401 (MAX_KEYPOINTS re-exported)
    LIBRARY_KEYPOINTS, LIBRARY_SIDE, MAX_KEYPOINTS, QUERY_KEYPOINTS, QUERY_SIDE, LocalFeatures, local_features,
    opencv, unpack)

LONG_SIDE = LIBRARY_SIDE  # library images' local features: stored at index time (`describe/local_features.py`)
FULL_SIDE = 512  # both sides of a "full" verification (`--quality high`), as the stored renditions are long


@dataclass(frozen=True)
class Detail:
    """How closely a verifier looks: the size and keypoints of library images' and queries' local features, and
    whether the features the index stored (taken at LIBRARY_SIDE) serve."""

    library_side: int
    library_keypoints: int
    query_side: int
    query_keypoints: int
    stored: bool


DETAILS = {
    # What `index` stores: SIFT on the query alone at search time.
    "fast": Detail(LIBRARY_SIDE, LIBRARY_KEYPOINTS, QUERY_SIDE, QUERY_KEYPOINTS, stored=True),
    # Every image at up to 512 px, from its rendition: several times the work of "fast" a search, for the
    # holidays-dev mAP `--quality high`'s ranking loses with "fast" (the default's does not; eval_search.md).
    "full": Detail(FULL_SIDE, MAX_KEYPOINTS, FULL_SIDE, MAX_KEYPOINTS, stored=False),
}

DRAFT_SIDE = 256  # a file is draft-decoded at the smallest JPEG scale keeping both sides >= this, then shrunk
RATIO = 0.8  # Lowe's ratio test: best match clearly closer than the second best
RANSAC_TOLERANCE = 0.025  # reprojection error allowed, as a share of the image's longer side
RANSAC_CONFIDENCE = 0.99
RANSAC_MAX_ITERATIONS = 1000
MIN_INLIERS = 8  # fewer agreeing matches than this is what unrelated photos reach by chance
FULL_INLIERS = 50  # inliers that earn the whole gain
DEFAULT_SHORTLIST = 20  # results a search verifies unless told otherwise
MAX_SHORTLIST = 200  # each verified result costs a decode and a match
CACHE_IMAGES = 512  # library images whose local features are kept between queries (at most 258 kB each)
MAX_THREADS = 4  # threads decoding and matching one query's shortlist


def ratio_matches(a: np.ndarray, b: np.ndarray, ratio: float = RATIO) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of a, rows of b, their similarities) of the nearest neighbours in b of a's unit-length descriptors
    that pass Lowe's ratio test. One matrix product gives every similarity (for unit vectors the squared
    distance is 2 - 2 x.y), where OpenCV's brute-force matcher costs several times as much a pair."""
    cv2 = opencv()
    if len(a) == 0 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    sims = cv2.gemm(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), 1.0, None, 0.0,
                    flags=cv2.GEMM_2_T)
    rows = np.arange(len(a))
    best = sims.argmax(axis=1)
    first = sims[rows, best].copy()
    sims[rows, best] = -np.inf
    second = sims.max(axis=1)
    keep = similarity_to_distance(first) < ratio * similarity_to_distance(second)
    return rows[keep], best[keep], first[keep]


def count_inliers(query: LocalFeatures, result: LocalFeatures) -> int:
    """Matches between two images that one affine transform (RANSAC) carries from the query onto the result."""
    cv2 = opencv()
    if len(query.descriptors) < 3 or len(result.descriptors) < 3:
        return 0
    rows, cols, sims = ratio_matches(query.descriptors, result.descriptors)
    # One match per keypoint of the result, its closest: on a nearly featureless image many query keypoints fall
    # on the same two or three points, which would count as many agreeing matches (and make RANSAC's draws
    # degenerate, tens of milliseconds a pair).
    order = np.argsort(-sims, kind="stable")
    _, first = np.unique(cols[order], return_index=True)
    rows, cols = rows[order[first]], cols[order[first]]
    if len(rows) < max(3, MIN_INLIERS):
        return 0
    src = query.points[rows]
    dst = result.points[cols]
    _, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                   ransacReprojThreshold=RANSAC_TOLERANCE * result.long_side,
                                   maxIters=ransac_iterations(len(rows)), confidence=RANSAC_CONFIDENCE)
    return 0 if mask is None else int(mask.sum())


def ransac_iterations(matches: int) -> int:
    """Enough RANSAC draws to find, with RANSAC_CONFIDENCE, a transform that MIN_INLIERS of `matches` agree on
    (three matches a draw); fewer inliers than that earn no gain, so more draws could change nothing. Among a
    few dozen matches this is tens of draws, not the RANSAC_MAX_ITERATIONS an unrelated pair used to cost."""
    share = min(1.0, MIN_INLIERS / max(matches, 1))
    if share >= 1.0:
        return 1
    need = math.log(1 - RANSAC_CONFIDENCE) / math.log(1 - share ** 3)
    return int(min(RANSAC_MAX_ITERATIONS, math.ceil(need)))


def verification_gain(inliers: int) -> float:
    """What a result's inliers add to its cosine similarity: 0 below MIN_INLIERS, then up to 1 at FULL_INLIERS."""
    return 0.0 if inliers < MIN_INLIERS else min(inliers, FULL_INLIERS) / FULL_INLIERS


Renditions = Callable[[list], dict]  # image ids -> {id: `renditions.Rendition`} (`renditions.read_renditions`)


def _fresh(rendition: Any, key: tuple) -> bool:
    """Whether a stored rendition (or None) was made from the file as `key` (`_stamp`) finds it now."""
    return rendition is not None and rendition.fresh(key[1], key[2])


def _stamp(path) -> Optional[tuple]:
    """(path, size, mtime_ns) of a file now: the cache's key, so a changed file is never answered from it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return str(path), st.st_size, st.st_mtime_ns


class Verifier:
    """Re-ranks the first `shortlist` results of a search (`rerank`). Local features of image files are taken on
    first use (from their stored renditions when the caller passes `renditions`, else from the files) and kept
    for the last `cache_images` files, keyed by path, size and mtime (results recur across queries); a file that
    cannot be read has none, and its result keeps its score. Safe to share between threads (the web service)."""

    def __init__(self, shortlist: int = DEFAULT_SHORTLIST, cache_images: int = CACHE_IMAGES,
                 detail: str = "fast") -> None:
        from ...errors import LookalikeError

        if not 0 < shortlist <= MAX_SHORTLIST:
            raise LookalikeError(f"--verify takes 0 (off) to {MAX_SHORTLIST} results, not {shortlist}")
        if detail not in DETAILS:
            raise LookalikeError(f"unknown verification detail {detail!r}: use {' or '.join(DETAILS)}")
        self.detail = DETAILS[detail]
        self._library = partial(local_features, long_side=self.detail.library_side,
                                keypoints=self.detail.library_keypoints)
        self._query = partial(local_features, long_side=self.detail.query_side, keypoints=self.detail.query_keypoints)
        opencv()  # a missing OpenCV fails here, before any search runs
        self.shortlist = int(shortlist)
        self._cache: OrderedDict[tuple, Optional[LocalFeatures]] = OrderedDict()
        self._size = max(1, int(cache_images))
        self._lock = threading.Lock()
        # Decodes at once across every search sharing this verifier (the web service's requests): bounds the
        # memory of images being decoded however many searches run.
        self._decodes = threading.BoundedSemaphore(max(1, min(free_cores(), MAX_THREADS)))

    def _cached(self, key: tuple) -> tuple[bool, Optional[LocalFeatures]]:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True, self._cache[key]
        return False, None

    def features_of(self, path, rendition: Any = None) -> Optional[LocalFeatures]:
        """Local features of the library file `path` (None when it cannot be read); `rendition`: its stored
        `renditions.Rendition`, whose stored features (where this verifier's detail uses them), else its JPEG,
        stand in for the file while the file's size and mtime are still its own."""
        key = _stamp(path)
        if key is None:
            return None
        known, feats = self._known(key, rendition)
        return feats if known else self._take(path, key, rendition)

    def _known(self, key: tuple, rendition: Any) -> tuple[bool, Optional[LocalFeatures]]:
        """(True, features) of the file stamped `key` when they need no decoding (in the cache, or stored and
        fresh: unpacked and kept), else (False, None)."""
        hit, feats = self._cached(key)
        if hit:
            return True, feats
        if self.detail.stored and _fresh(rendition, key) and rendition.keypoints is not None:
            feats = unpack(rendition.keypoints)
            if feats is not None:
                return True, self._keep(key, feats)
        return False, None

    def _take(self, path, key: tuple, rendition: Any) -> Optional[LocalFeatures]:
        """Library features of the file stamped `key`, taken from its fresh rendition or the file, and kept."""
        return self._keep(key, self._extract(path, rendition if _fresh(rendition, key) else None, self._library))

    def _keep(self, key: tuple, feats: Optional[LocalFeatures]) -> Optional[LocalFeatures]:
        with self._lock:
            self._cache[key] = feats
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return feats

    def query_features(self, path, rendition: Any = None) -> Optional[LocalFeatures]:
        """Local features of an indexed image searched for by itself, taken like those of any query photo: from
        its rendition while `rendition` is fresh, else from the file (None when it cannot be read)."""
        key = _stamp(path)
        if key is None:
            return None
        return self._extract(path, rendition if _fresh(rendition, key) else None, self._query)

    def query_image_features(self, image: Any) -> LocalFeatures:
        """Local features of a query photo already decoded (a PIL image)."""
        return self._query(image)

    def _extract(self, path, rendition: Any, take: Callable[[Any], LocalFeatures]) -> Optional[LocalFeatures]:
        """`take` (library or query features) of the fresh `rendition`'s JPEG when there is one that decodes,
        else of the file; None when neither can be read."""
        from ...images import load_image

        try:
            with self._decodes:
                image = None
                if rendition is not None:
                    try:
                        image = load_image(rendition.jpeg)
                    except Exception:  # a damaged rendition: the file itself is still there
                        image = None
                if image is None:
                    image = load_image(Path(path), min_size=DRAFT_SIDE)
                return take(image)
        except Exception:  # an unreadable or vanished file is not verified; the search itself goes on
            return None

    def _stored(self, ids: Sequence, keys: Sequence, renditions: Optional[Renditions]) -> dict:
        """{id: Rendition} of the files (stamped `keys`) not in the cache yet, in one read (none without
        `renditions`)."""
        if renditions is None:
            return {}
        missing = [int(i) for i, key in zip(ids, keys)
                   if i is not None and key is not None and not self._cached(key)[0]]
        try:
            return renditions(missing) if missing else {}
        except Exception:  # renditions only save time: without them the files are decoded
            return {}

    def inliers(self, query: LocalFeatures, paths: Sequence, ids: Optional[Sequence] = None,
                renditions: Optional[Renditions] = None) -> list[Optional[int]]:
        """Inliers of each file against the query (None: the file could not be read). `ids` (the index's ids of
        the files) and `renditions` let stored features and renditions stand in for the files. Files whose
        features must be taken now are decoded in threads, one per free core (Pillow's decoders and OpenCV
        release the GIL); the matching itself, a millisecond or two a pair, runs on the calling thread, where
        a pool would cost a server more in threads than it saves."""
        ids = list(ids) if ids is not None else [None] * len(paths)
        keys = [_stamp(p) for p in paths]  # each file's stat, once a search
        stored = self._stored(ids, keys, renditions)
        feats = [(True, None) if key is None else self._known(key, stored.get(i)) for key, i in zip(keys, ids)]
        missing = [n for n, (known, _) in enumerate(feats) if not known]

        def take(n: int) -> Optional[LocalFeatures]:
            return self._take(paths[n], keys[n], stored.get(ids[n]))

        workers = min(len(missing), free_cores(), MAX_THREADS)
        if workers <= 1:
            taken = [take(n) for n in missing]
        else:
            with ThreadPoolExecutor(workers) as pool:
                taken = list(pool.map(take, missing))
        for n, f in zip(missing, taken):
            feats[n] = (True, f)
        return [None if f is None else count_inliers(query, f) for _, f in feats]

    def gains(self, query: Optional[LocalFeatures], paths: Sequence) -> np.ndarray:
        """`verification_gain` of each file against the query (0 for an unreadable file, all 0 when the query's
        own features are None: its image could not be read)."""
        if query is None:
            return np.zeros(len(paths), np.float32)
        return np.asarray([verification_gain(n or 0) for n in self.inliers(query, paths)], np.float32)

    def rerank(self, hits: list[dict], query: Optional[LocalFeatures],
               renditions: Optional[Renditions] = None) -> list[dict]:
        """The first `shortlist` hits re-ordered by similarity + `verification_gain`, each given its "inliers"
        (None when its file could not be read); later hits follow unchanged; ranks renumbered from 1. A query
        without features (None: its image could not be read) leaves the hits as they are. `renditions`: the
        index's stored renditions of the hits' ids, read instead of the files where still fresh."""
        if query is None:
            return hits
        head, tail = hits[:self.shortlist], hits[self.shortlist:]
        counts = self.inliers(query, [h["path"] for h in head], [h.get("id") for h in head], renditions)
        scored = sorted(((h["similarity"] + verification_gain(n or 0), -pos, {**h, "inliers": n})
                         for pos, (h, n) in enumerate(zip(head, counts))), key=lambda t: t[:2], reverse=True)
        return [{**h, "rank": r + 1} for r, h in enumerate([t[2] for t in scored] + list(tail))]
