"""Copies against look-alikes: the orientation-invariant signature, the pair check (turned, mirrored, cropped
copies accepted; different photos refused), exact duplicates by digest, and keeper groups that do not chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lookalike.search.describe import signature as sig
from lookalike.search.retrieve import copies, copy_check
from lookalike.search.sample_photos import colour, crop, load_photo

SIDE = 192


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: load_photo(n, SIDE) for n in ("astronaut", "coffee", "chelsea", "rocket")}


def _turns(img: Image.Image) -> dict[str, Image.Image]:
    return {"turn90": img.transpose(Image.Transpose.ROTATE_90), "turn180": img.transpose(Image.Transpose.ROTATE_180),
            "turn270": img.transpose(Image.Transpose.ROTATE_270), "mirror": ImageOps.mirror(img),
            "grayscale": img.convert("L").convert("RGB"), "half": img.resize((img.width // 2, img.height // 2))}


def test_signature_sees_through_turns_mirrors_and_grayscale(photos):
    a = sig.signature(photos["astronaut"])
    for name, edited in _turns(photos["astronaut"]).items():
        bits, view = sig.view_distance(sig.signature(edited), a)
        assert bits <= 4, name
        assert (view in sig.MIRRORED_VIEWS) == (name == "mirror"), name
    for other in ("coffee", "chelsea", "rocket"):
        assert sig.view_distance(sig.signature(photos[other]), a)[0] > sig.DEFAULT_MAX_BITS


def test_close_pairs_finds_a_turned_copy_and_skips_unreadable_rows(photos):
    rows = [photos["astronaut"], photos["coffee"], photos["astronaut"].transpose(Image.Transpose.ROTATE_90),
            photos["chelsea"]]
    sigs = sig.signatures(rows)
    i, j, bits = sig.close_pairs(sigs)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 2)] and bits[0] <= 4
    i, _, _ = sig.close_pairs(sigs, valid=np.array([True, True, False, True]))
    assert len(i) == 0


def test_pair_check_accepts_copies_and_refuses_other_photos(photos):
    a = copy_check.copy_view(photos["astronaut"])
    for name, edited in {**_turns(photos["astronaut"]), "crop": crop(photos["astronaut"]),
                         "colour": colour(photos["astronaut"])}.items():
        ev = copy_check.check_pair(a, copy_check.copy_view(edited))
        assert ev.is_copy and ev.inliers >= copy_check.MIN_INLIERS, (name, ev)
        assert ev.mirrored == (name == "mirror"), name
    turned = copy_check.check_pair(a, copy_check.copy_view(_turns(photos["astronaut"])["turn90"]))
    assert abs(abs(turned.angle) - 90) < 3
    for other in ("coffee", "chelsea", "rocket"):
        assert not copy_check.check_pair(a, copy_check.copy_view(photos[other])).is_copy


def test_exact_groups_by_digest():
    digests = {1: "aa", 2: "aa", 3: "bb", 4: "", 5: None, 6: "", 7: "aa", 8: "bb", 9: "cc"}
    assert copies.exact_groups(digests) == [[1, 2, 7], [3, 8]]
    # 2 and 7 are one file (a hard link): it counts once; 3 and 8 are one file, so no group at all.
    same = {2: ("dev", 10), 7: ("dev", 10), 3: ("dev", 11), 8: ("dev", 11)}
    assert copies.exact_groups(digests, same_file=same) == [[1, 2]]


def test_groups_do_not_chain():
    # A chain 1-2-3-4 (each 0.4 apart, threshold 0.5) that connected components would merge into one group,
    # and a separate pair 5-6.
    pos = {1: 0.0, 2: 0.4, 3: 0.8, 4: 1.2, 5: 5.0, 6: 5.3}
    judge = copies.PairJudge(0, 0.5, lambda a, b: abs(pos[a] - pos[b]), lambda a, b: None, lambda i: None)
    ids = np.array(sorted(pos))
    edges = [(1, 2), (2, 3), (3, 4), (5, 6)]
    groups = copies.keeper_groups(ids, edges, judge, keep=lambda i: -i)
    assert [(g.keeper, sorted(g.ids)) for g in groups] == [(2, [1, 2, 3]), (5, [5, 6])]  # 4: no copy of 2
    assert all(judge.distance(g.keeper, m.id) <= 0.5 for g in groups for m in g.members)
    groups = copies.keeper_groups(ids, edges, judge, keep=lambda i: i == 3)  # the keep rule breaks the tie
    assert (groups[0].keeper, sorted(groups[0].ids)) == (3, [2, 3, 4])


class _Library:
    """An index's read side over image files, with a crude global descriptor (a grayscale 8 x 8 thumbnail):
    enough for the kNN graph to find crops and recolourings, and none of the turned copies."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        rows = [np.asarray(Image.open(f).convert("L").resize((8, 8)), np.float32).ravel() for f in files]
        v = np.stack([r - r.mean() for r in rows])
        self._v = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.manifest: dict = {}

    def ids(self) -> np.ndarray:
        return np.arange(1, len(self.files) + 1, dtype=np.int64)

    def vectors(self) -> np.ndarray:
        return self._v

    def path_of(self, image_id: int) -> Path:
        return self.files[int(image_id) - 1]


def test_find_copies_groups_turned_and_mirrored_copies_with_their_original(tmp_path, photos):
    files = []
    for name, img in photos.items():
        img.save(tmp_path / f"{name}.jpg", quality=92)
        files.append(tmp_path / f"{name}.jpg")
    edits = _turns(photos["astronaut"])
    for edit in ("turn90", "mirror", "grayscale"):
        edits[edit].save(tmp_path / f"astronaut-{edit}.jpg", quality=80)
        files.append(tmp_path / f"astronaut-{edit}.jpg")
    crop(photos["coffee"]).save(tmp_path / "coffee-crop.jpg", quality=80)
    files.append(tmp_path / "coffee-crop.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    files.append(tmp_path / "broken.jpg")
    lib = _Library(files[:-1])
    lib.files = files  # the broken file has the last vector's twin: it must simply be left out
    lib._v = np.vstack([lib._v, lib._v[-1:]])
    seen = []
    groups = copies.find_copies(lib, verify=4, threshold=0.5, progress=lambda *a: seen.append(a[0]))
    named = sorted(sorted(files[i - 1].name for i in g.ids) for g in groups)
    assert named == [["astronaut-grayscale.jpg", "astronaut-mirror.jpg", "astronaut-turn90.jpg", "astronaut.jpg"],
                     ["coffee-crop.jpg", "coffee.jpg"]]
    astronaut = next(g for g in groups if len(g.members) == 3)
    assert files[astronaut.keeper - 1].name == "astronaut.jpg"  # most pixels keeps (all the same size: file size)
    assert {m.mirrored for m in astronaut.members} == {True, False}
    assert "signatures" in seen and "verify" in seen


def test_copies_read_stored_renditions_while_the_files_are_unchanged(tmp_path):
    """Signatures and verification views decode the index's small renditions, not the photo files, until a
    file changes (then the file itself)."""
    import os
    from pathlib import Path

    from helpers.search import tiny_checkpoint, write_originals
    from lookalike.search.describe.features import load_embedder
    from lookalike.search.indexing.sync import index_folder
    from lookalike.search.retrieve.copies import image_sources
    from lookalike.search.store.index import ImageIndex

    root = tmp_path / "photos"
    write_originals(root, names=("astronaut", "coffee", "rocket"))
    index_folder(root, tmp_path / "ix", embedder=load_embedder(str(tiny_checkpoint(tmp_path / "ck.pt"))))
    os.utime(root / "coffee.jpg", ns=(1, 1))  # changed since: its rendition no longer applies
    with ImageIndex.open(tmp_path / "ix") as snap:
        sources = dict(zip((snap.path_of(i).name for i in snap.ids()), image_sources(snap, snap.ids())))
    assert isinstance(sources["astronaut.jpg"], bytes) and sources["astronaut.jpg"][:2] == b"\xff\xd8"
    assert isinstance(sources["rocket.jpg"], bytes)
    assert isinstance(sources["coffee.jpg"], Path) and sources["coffee.jpg"].name == "coffee.jpg"
