"""Copy groups: which images are the same photo after edits, told apart from other shots of the same scene.

- Exact duplicates (`exact_groups`): byte-identical files by digest, no size limit; rows that are one file (one
  inode or real path) are not duplicates of each other, and an empty digest (imported rows) matches nothing.
- Candidates (`candidate_pairs`): the descriptor's kNN graph at a loose distance (finds crops, slight rotations,
  recolourings), plus images whose orientation-invariant signatures (describe/signature.py) are close: the global
  descriptor sees no turned copy, the signature sees turned, mirrored, grayscale and recompressed ones.
- Evidence (`copy_check.check_pair`): a similarity transform that SIFT matches agree on (mirrored too), covering
  a good part of an image, after which the two images correlate photometrically. With `verify=0` the decision
  is the descriptor distance alone (`threshold`), or signatures that nearly coincide: for imported vectors whose
  files are elsewhere, and for the fastest pass.
- Groups do not chain (`keeper_groups`): each group has a keeper, and every member is a copy of the keeper itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Optional

import numpy as np

from ...device import free_cores
from ..describe import signature as sig
from ..vector_math import distance_to_similarity, similarity_to_distance
from . import copy_check
from .dupes_graph import components, knn_edges

DEFAULT_VERIFY = 5  # neighbours verified per image
LOOSE_DISTANCE = 1.0  # descriptor distance within which a neighbour is a candidate (a half-size copy: ~0.8)
SAME_BITS = 4  # signature bits within which, unverified, two images count as copies
VIEW_CACHE = 1024  # images whose CopyView is kept at once (~300 kB each)
MAX_THREADS = 4
CHOOSE_ROUNDS = 8  # a keep rule's choice regroups at most this often (each round's keeper beats the last)


@dataclass(frozen=True)
class CopyMember:
    """A copy of its group's keeper: descriptor distance to it, and the verification's inliers (None: not
    verified) and whether it is mirrored."""

    id: int
    distance: float
    inliers: Optional[int] = None
    mirrored: bool = False


@dataclass(frozen=True)
class CopyGroup:
    keeper: int
    members: tuple[CopyMember, ...] = field(default_factory=tuple)

    @property
    def ids(self) -> list[int]:
        return [self.keeper] + [m.id for m in self.members]


def exact_groups(digests: Mapping[int, Optional[str]], same_file: Optional[Mapping[int, Hashable]] = None
                 ) -> list[list[int]]:
    """Groups (sorted ids, largest first) of ids whose files have one digest. Empty or None digests match
    nothing. `same_file` (id -> e.g. (device, inode) or real path): ids that are one file count once (the
    smallest id stands for it)."""
    by_digest: dict[str, dict[Hashable, int]] = {}
    for image_id in sorted(digests):
        digest = digests[image_id]
        if not digest:
            continue
        who = same_file.get(image_id, ("id", image_id)) if same_file is not None else ("id", image_id)
        by_digest.setdefault(digest, {}).setdefault(who, int(image_id))
    groups = [sorted(files.values()) for files in by_digest.values() if len(files) > 1]
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups


def compute_signatures(paths: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(signatures (n, 8) uint64, readable (n,) bool) of images (file paths, or encoded bytes such as a stored
    rendition); an unreadable one gets no signature."""
    from ...images import load_image

    rows, ok = [], []
    for path in paths:
        try:
            rows.append(sig.signature(load_image(path, min_size=sig.SIDE)))
            ok.append(True)
        except Exception:  # an unreadable file (or an imported row's absent one) just has no signature
            rows.append(np.zeros(sig.VIEWS, np.uint64))
            ok.append(False)
    return np.asarray(rows, np.uint64).reshape(-1, sig.VIEWS), np.asarray(ok, bool)


def image_sources(index: Any, ids: Iterable[int], chunk: int = 500) -> Iterable[Any]:
    """What to decode for each id, in order: the small rendition the index keeps of it (JPEG bytes) while the
    file still has the size and mtime it was made from, else the file's path. A 12 MP photo then costs a
    512-px decode instead of a draft decode of the file; old indexes and imported rows read their files."""
    import os

    from ..store.renditions import read_renditions

    ids = [int(i) for i in ids]
    for s in range(0, len(ids), chunk):
        part = ids[s:s + chunk]
        stored = read_renditions(index.path, part, keypoints=False) if hasattr(index, "path") else {}
        for image_id in part:
            path = index.path_of(image_id)
            rendition = stored.get(image_id)
            if rendition is not None:
                try:
                    st = os.stat(path)
                    if rendition.fresh(st.st_size, st.st_mtime_ns):
                        yield rendition.jpeg
                        continue
                except OSError:
                    pass
            yield path


def candidate_pairs(ids: np.ndarray, vectors: Any, backend: Any, lookup: Any, sigs: Optional[np.ndarray],
                    valid: Optional[np.ndarray], neighbours: int, max_distance: float,
                    max_bits: int = sig.DEFAULT_MAX_BITS) -> dict[tuple[int, int], dict]:
    """{(a, b) ids, a < b: {"bits", "view"} where signatures found it} from the kNN graph within
    `max_distance` (`neighbours` per image) and close signatures (as many per image)."""
    out: dict[tuple[int, int], dict] = {}
    if len(ids) < 2:
        return out
    a, b = knn_edges(backend, ids, vectors, neighbours, distance_to_similarity(float(max_distance)), lookup=lookup)
    for x, y in zip(a.tolist(), b.tolist()):
        out.setdefault((min(x, y), max(x, y)), {})
    if sigs is not None:
        i, j, bits = sig.close_pairs(sigs, valid, max_bits, per_image=neighbours)
        for p, q, d in zip(i.tolist(), j.tolist(), bits.tolist()):
            x, y = int(ids[p]), int(ids[q])
            _, view = sig.view_distance(sigs[p], sigs[q])
            out.setdefault((min(x, y), max(x, y)), {}).update(bits=int(d), view=view)
    return out


class _Views:
    """CopyViews of image ids, decoded on first use, the last VIEW_CACHE kept (thread-safe)."""

    def __init__(self, path_of: Callable[[int], Any], size: int = VIEW_CACHE) -> None:
        self._path_of, self._size = path_of, size
        self._cache: OrderedDict[int, Optional[copy_check.CopyView]] = OrderedDict()
        self._lock = threading.Lock()
        self.pixels: dict[int, int] = {}

    def get(self, image_id: int) -> Optional[copy_check.CopyView]:
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
        try:
            view = copy_check.view_or_none(self._path_of(image_id))
        except KeyError:
            view = None
        with self._lock:
            self._cache[image_id] = view
            if view is not None:
                self.pixels[image_id] = view.pixels
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return view


class PairJudge:
    """Decides and remembers whether two ids are copies: verified from the files (verify > 0), else by
    descriptor distance or nearly equal signatures."""

    def __init__(self, verify: int, threshold: float, distance: Callable[[int, int], float],
                 signature_bits: Callable[[int, int], Optional[tuple[int, int]]],
                 path_of: Callable[[int], Any]) -> None:
        self.verify, self.threshold = verify, threshold
        self.distance, self.signature_bits = distance, signature_bits
        self.views = _Views(path_of)
        self.known: dict[tuple[int, int], Optional[copy_check.Evidence]] = {}

    def judge(self, a: int, b: int) -> Optional[copy_check.Evidence]:
        """The accepted evidence that a and b are copies (unverified: Evidence(True)), None if they are not."""
        key = (min(a, b), max(a, b))
        if key in self.known:
            return self.known[key]
        if self.verify <= 0:
            near = self.signature_bits(a, b)
            ok = self.distance(a, b) <= self.threshold or (near is not None and near[0] <= SAME_BITS)
            result = copy_check.Evidence(True) if ok else None
        else:
            va, vb = self.views.get(key[0]), self.views.get(key[1])
            result = None
            if va is not None and vb is not None:
                near = self.signature_bits(*key)
                ev = copy_check.check_pair(va, vb, mirrored_first=near is not None and near[1] in sig.MIRRORED_VIEWS)
                result = ev if ev.is_copy else None
        self.known[key] = result
        return result

    def judge_all(self, pairs: list[tuple[int, int]], progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Judge many pairs, on one thread per free core (OpenCV and decoding release the GIL)."""
        pairs = sorted(pairs)
        workers = max(1, min(free_cores(), MAX_THREADS)) if self.verify > 0 else 1
        step = max(1, len(pairs) // 100)
        with ThreadPoolExecutor(workers) as pool:
            for done, _ in enumerate(pool.map(lambda p: self.judge(*p), pairs), 1):
                if progress and (done % step == 0 or done == len(pairs)):
                    progress(done, len(pairs))


def _copies_of(keeper: int, others: list[int], judge: PairJudge) -> tuple[list[CopyMember], list[int]]:
    """(the copies of `keeper` among `others`, the rest), judging pairs not judged yet."""
    members, left = [], []
    for other in others:
        ev = judge.judge(keeper, other)
        if ev is None:
            left.append(other)
        else:
            members.append(CopyMember(other, round(judge.distance(keeper, other), 4),
                                      ev.inliers if judge.verify > 0 else None, ev.mirrored))
    return members, left


def keeper_groups(ids: np.ndarray, edges: Iterable[tuple[int, int]], judge: PairJudge,
                  keep: Callable[[int], Any], choose: Optional[Callable[[list[int]], int]] = None
                  ) -> list[CopyGroup]:
    """Groups in which every member is a copy of the keeper itself. Within each connected component of the
    accepted `edges`, the best remaining image by `keep` (largest key) becomes a keeper and takes every remaining
    image the judge accepts against it (pairs not yet judged are judged now); repeat with what is left. The
    leader is the image with the most accepted edges, ties broken by `keep` (largest key), then smallest id.
    `choose(ids)` (the leader first), when given, names the group's keeper among the leader and its copies (a
    keep rule); when it names another, the group is formed again around it, so every member is still a copy
    of the keeper itself."""
    edges = list(edges)
    if not edges:
        return []
    a = np.asarray([e[0] for e in edges], np.int64)
    b = np.asarray([e[1] for e in edges], np.int64)
    groups: list[CopyGroup] = []
    degree: dict[int, int] = {}
    for x, y in edges:
        degree[x] = degree.get(x, 0) + 1
        degree[y] = degree.get(y, 0) + 1
    for component in components(ids, a, b):
        # The image most others are copies of leads (an original, not a look-alike shot that passed for a copy
        # of it alone), then the keep rule.
        remaining = sorted(component, key=lambda i: (degree.get(i, 0), keep(i), -i), reverse=True)
        while len(remaining) > 1:
            keeper = remaining[0]
            members, left = _copies_of(keeper, remaining[1:], judge)
            for _ in range(CHOOSE_ROUNDS if choose is not None else 0):
                chosen = choose([keeper] + [m.id for m in members]) if members else keeper
                if chosen == keeper:
                    break
                # A copy of the keeper, so the keeper is one of its copies in turn: the group only grows better.
                keeper = chosen
                members, left = _copies_of(keeper, [i for i in remaining if i != keeper], judge)
            if members:
                groups.append(CopyGroup(keeper, tuple(members)))
            remaining = left
    groups.sort(key=lambda g: (-len(g.members), g.keeper))
    return groups


def _signature_lookup(ids: np.ndarray, sigs: Optional[np.ndarray], valid: Optional[np.ndarray]
                      ) -> Callable[[int, int], Optional[tuple[int, int]]]:
    if sigs is None:
        return lambda a, b: None
    position = {int(i): n for n, i in enumerate(ids.tolist())}

    def bits(a: int, b: int) -> Optional[tuple[int, int]]:
        pa, pb = position.get(a), position.get(b)
        if pa is None or pb is None or (valid is not None and not (valid[pa] and valid[pb])):
            return None
        return sig.view_distance(sigs[pa], sigs[pb])

    return bits


def find_copies(index: Any, *, verify: int = DEFAULT_VERIFY, threshold: Optional[float] = None,
                neighbours: Optional[int] = None, signatures: Optional[np.ndarray] = None,
                progress: Optional[Callable[[str, int, int], None]] = None,
                keep: Optional[Callable[[int], Any]] = None,
                choose: Optional[Callable[[list[int]], int]] = None) -> list[CopyGroup]:
    """Copy groups of an opened index (an IndexSnapshot: `ids()`, `row_vectors()`/`vectors()`, `lookup`,
    `backend()`, `path_of`). `verify`: candidates verified per image from the files (0: the descriptor-only
    decision at `threshold`, None meaning the descriptor's default). `neighbours`: kNN neighbours per image
    (default: `verify`, or 10 unverified). `signatures`: (n, 8) uint64 in `ids()` order, if stored; otherwise
    computed from the files when verifying, left out when not (imported rows' files may be elsewhere).
    `progress(stage, done, total)`; `keep(id)`: the keeper is the member with the largest key (default: most
    pixels, then the larger file, then the smaller id); `choose(ids)`: a keep rule naming each group's keeper
    among its candidates (see `keeper_groups`)."""
    from .dupes_graph import dupe_threshold

    if verify < 0:
        raise ValueError("verify takes 0 (off) or more neighbours per image")
    ids = np.asarray(index.ids(), np.int64)
    if len(ids) < 2:
        return []
    vectors = index.row_vectors() if hasattr(index, "row_vectors") else index.vectors()
    threshold = dupe_threshold(index.manifest) if threshold is None else float(threshold)
    k = int(neighbours or (verify if verify > 0 else 10))
    valid = None
    if signatures is None and verify > 0:
        signatures, valid = compute_signatures(image_sources(index, ids))
        if progress:
            progress("signatures", len(ids), len(ids))
    lookup = getattr(index, "lookup", None)
    backend = index.backend() if hasattr(index, "backend") else None
    if backend is None:
        from ..store import ann

        backend, lookup = ann.build("exact", ids, np.asarray(vectors, np.float32)), None
    loose = LOOSE_DISTANCE if verify > 0 else threshold
    pairs = candidate_pairs(ids, vectors, backend, lookup, signatures, valid, k, loose)

    def distance(a: int, b: int) -> float:
        va, vb = index.lookup([a, b]) if lookup is not None else (vectors[np.searchsorted(ids, a)],
                                                                   vectors[np.searchsorted(ids, b)])
        return float(similarity_to_distance(float(np.dot(va, vb))))

    judge = PairJudge(verify, threshold, distance, _signature_lookup(ids, signatures, valid),
                      lambda image_id: next(iter(image_sources(index, [image_id]))))
    judge.judge_all(list(pairs), None if progress is None else lambda d, t: progress("verify", d, t))
    accepted = [p for p, ev in judge.known.items() if ev is not None]
    if keep is None:
        # Pixels from the headers the index read (a rendition's own pixels say nothing of the original's).
        facts = index.facts([int(i) for i in ids]) if hasattr(index, "facts") else {}

        def keep(i: int) -> tuple:
            size = index.stamp_of(i)[0] if hasattr(index, "stamp_of") else 0
            known = facts.get(i)
            pixels = known.width * known.height if known is not None and known.width and known.height else \
                judge.views.pixels.get(i, 0)
            return pixels, size
    return keeper_groups(ids, accepted, judge, keep, choose)
