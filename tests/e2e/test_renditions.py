"""Small renditions and local features kept at index time: spatial verification reads the stored features (and a
query's own rendition) instead of the photo files while the files are unchanged, runs SIFT on the renditions of an
index made before features were stored, and falls back to the files for an old index, a changed file or a
rendition that is missing."""

from __future__ import annotations

import io
import json
import os
import sqlite3

import pytest
from PIL import Image

from helpers.search import photo, tiny_checkpoint
from lookalike.errors import LookalikeError
from lookalike.search.presets import preset
from lookalike.search.describe.features import load_embedder
from lookalike.search.indexing.sync import index_folder
from lookalike.search.retrieve import verify
from lookalike.search.retrieve.query import Query, run_queries
from lookalike.search.store.index import ImageIndex
from lookalike.search.store.renditions import LONG_SIDE, read_renditions


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        photo(name).convert("RGB").resize((900, 600)).save(root / f"{name}.jpg", quality=90)
    return root


@pytest.fixture
def tiny(tmp_path):
    return load_embedder(str(tiny_checkpoint(tmp_path / "ck" / "model.pt")))


class CountingVerifier(verify.Verifier):
    """A real verifier that records the images it ran SIFT on: from their files, or from stored renditions."""

    def __init__(self) -> None:
        super().__init__(shortlist=5)
        self.file_decodes: list[str] = []
        self.rendition_decodes: list[str] = []

    def _extract(self, path, rendition, take):
        (self.file_decodes if rendition is None else self.rendition_decodes).append(os.path.basename(str(path)))
        return super()._extract(path, rendition, take)


def _search(ix_path, query_path, embedder, verifier=None):
    verifier = verifier or CountingVerifier()
    with ImageIndex.open(ix_path) as ix:
        [response] = run_queries(ix, [Query("q", path=query_path)], 3, lambda: embedder, verifier=verifier)
    return response, verifier.file_decodes


def test_renditions_are_stored_and_used_by_verification(tmp_path, library, tiny):
    ix_path = tmp_path / "ix"
    index_folder(library, ix_path, embedder=tiny)
    with ImageIndex.open(ix_path) as ix:
        stored = read_renditions(ix_path, ix.ids())
        assert len(stored) == 3
        for r in stored.values():
            with Image.open(io.BytesIO(r.jpeg)) as im:
                assert max(im.size) <= LONG_SIDE and im.format == "JPEG"
        assert all(0 < verify.unpack(r.keypoints).long_side <= verify.LONG_SIDE for r in stored.values())
    verifier = CountingVerifier()
    response, decoded = _search(ix_path, library / "chelsea.jpg", tiny, verifier)
    assert decoded == []  # no photo file decoded
    # The query's own features came from its rendition (at QUERY_SIDE); the results' were read, not computed.
    assert verifier.rendition_decodes == ["chelsea.jpg"]
    assert len(response.results) == 2 and all(h.inliers is not None for h in response.results)  # verified
    assert max(h.inliers for h in response.results) < 50  # unrelated photos: the stored features do not match all


def test_an_index_made_before_stored_features_verifies_from_its_renditions(tmp_path, library, tiny):
    ix_path = tmp_path / "ix"
    index_folder(library, ix_path, embedder=tiny)
    with ImageIndex.open(ix_path) as ix:
        expected = [(h.path, h.inliers) for h in
                    run_queries(ix, [Query("q", path=library / "chelsea.jpg")], 3, lambda: tiny,
                                verifier=verify.Verifier(5))[0].results]
    conn = sqlite3.connect(ix_path / "index.db")  # as format 6 wrote it: renditions without features
    conn.execute("ALTER TABLE renditions DROP COLUMN keypoints")
    conn.commit()
    conn.close()
    manifest = ix_path / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 6}))
    verifier = CountingVerifier()
    response, decoded = _search(ix_path, library / "chelsea.jpg", tiny, verifier)
    assert decoded == [] and sorted(verifier.rendition_decodes) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    assert [(h.path, h.inliers) for h in response.results] == expected  # the same features, taken now
    # The next run adds the column and stores these images' features from their renditions, embedding none.
    summary = index_folder(library, ix_path, embedder=tiny)
    assert summary["keypoints_stored"] == 3 and summary["unchanged"] == 3 and summary["added"] == 0
    with ImageIndex.open(ix_path) as ix:
        assert all(verify.unpack(r.keypoints) is not None for r in read_renditions(ix_path, ix.ids()).values())
    verifier = CountingVerifier()
    response, decoded = _search(ix_path, library / "chelsea.jpg", tiny, verifier)
    assert decoded == [] and verifier.rendition_decodes == ["chelsea.jpg"]  # the query's own, nothing else
    assert [(h.path, h.inliers) for h in response.results] == expected
    assert index_folder(library, ix_path, embedder=tiny)["keypoints_stored"] == 0  # done once


def test_a_changed_file_is_not_served_its_stale_rendition(tmp_path, library, tiny):
    ix_path = tmp_path / "ix"
    index_folder(library, ix_path, embedder=tiny)
    changed = library / "coffee.jpg"
    photo("astronaut").convert("RGB").resize((900, 600)).save(changed, quality=80)
    os.utime(changed, ns=(1, 1))
    _, decoded = _search(ix_path, library / "chelsea.jpg", tiny)
    assert decoded == ["coffee.jpg"]  # its rendition no longer matches its size and mtime: read afresh
    index_folder(library, ix_path, embedder=tiny)  # indexed again: a new rendition, used from then on
    _, decoded = _search(ix_path, library / "chelsea.jpg", tiny)
    assert decoded == []


def test_an_index_without_renditions_falls_back_to_the_files(tmp_path, library, tiny):
    ix_path = tmp_path / "ix"
    index_folder(library, ix_path, embedder=tiny)
    conn = sqlite3.connect(ix_path / "index.db")  # as an index made before renditions (or a kill before them)
    conn.execute("DROP TABLE renditions")
    conn.commit()
    conn.close()
    response, decoded = _search(ix_path, library / "chelsea.jpg", tiny)
    assert sorted(decoded) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]  # the query's own file too
    assert all(h.inliers is not None for h in response.results)  # verified all the same, from the files
    index_folder(library, ix_path, embedder=tiny)  # the writer adds the table; unchanged files keep none
    assert read_renditions(ix_path, [1, 2, 3]) == {}


def test_removed_images_lose_their_renditions(tmp_path, library, tiny):
    ix_path = tmp_path / "ix"
    index_folder(library, ix_path, embedder=tiny)
    (library / "coffee.jpg").unlink()
    index_folder(library, ix_path, embedder=tiny)
    conn = sqlite3.connect(ix_path / "index.db")
    try:
        assert conn.execute("SELECT count(*) FROM renditions").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM renditions WHERE id NOT IN (SELECT id FROM images)"
                            ).fetchone()[0] == 0
    finally:
        conn.close()


def test_a_rendition_that_no_longer_decodes_gets_no_features_and_is_not_tried_again(tmp_path, library, tiny):
    ix_path = tmp_path / "ix"
    index_folder(library, ix_path, embedder=tiny)
    conn = sqlite3.connect(ix_path / "index.db")
    conn.execute("UPDATE renditions SET keypoints = NULL")
    conn.execute("UPDATE renditions SET jpeg = x'00112233' WHERE id = (SELECT id FROM images WHERE path = ?)",
                 ("coffee.jpg",))
    conn.commit()
    conn.close()
    assert index_folder(library, ix_path, embedder=tiny)["keypoints_stored"] == 3
    assert index_folder(library, ix_path, embedder=tiny)["keypoints_stored"] == 0
    verifier = CountingVerifier()
    response, decoded = _search(ix_path, library / "chelsea.jpg", tiny, verifier)
    # No stored features: its rendition is tried, fails to decode, and the file itself stands in.
    assert sorted(verifier.rendition_decodes) == ["chelsea.jpg", "coffee.jpg"]
    assert all(h.inliers is not None for h in response.results)


def test_a_full_verifier_takes_every_image_from_its_rendition_at_512_px(tmp_path, library, tiny):
    ix_path = tmp_path / "ix"
    index_folder(library, ix_path, embedder=tiny)

    class FullCounting(CountingVerifier):
        def __init__(self) -> None:
            verify.Verifier.__init__(self, shortlist=5, detail="full")
            self.file_decodes, self.rendition_decodes = [], []

    verifier = FullCounting()
    response, decoded = _search(ix_path, library / "chelsea.jpg", tiny, verifier)
    # The stored 256-px features are not what it asks for: every image's rendition is read instead.
    assert decoded == [] and sorted(verifier.rendition_decodes) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    assert verifier.detail.library_side == verifier.detail.query_side == 512
    assert all(h.inliers is not None for h in response.results)
    with pytest.raises(LookalikeError, match="verification detail"):
        verify.Verifier(5, detail="fastest")
    assert preset("high").verify_detail == "full" and preset("default").verify_detail == "fast"
