"""Only what comes from a file itself is remembered as a failure: memory and model errors are retried on the
next run, a model that fails on every image stops the run with one line, and no non-finite vector is stored."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFile

from helpers.search import pattern_image, tiny_checkpoint
from lookalike.errors import LookalikeError
from lookalike.search.describe.features import load_embedder
from lookalike.search.store.index import ImageIndex
from lookalike.search.indexing.sync import index_folder


@pytest.fixture
def tiny(tmp_path):
    return load_embedder(str(tiny_checkpoint(tmp_path / "ck" / "model.pt")))


def _photos(folder, n=5, side=48):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"p{i}.png").write_bytes(pattern_image(i, side=side))
    return folder


def test_out_of_memory_is_retried_next_run_not_remembered(tmp_path, tiny, monkeypatch):
    root = _photos(tmp_path / "photos")
    (root / "big.png").write_bytes(pattern_image(99, side=300))
    real_load = ImageFile.ImageFile.load

    def short_of_memory(self):  # what decoding a huge PNG under a memory limit raises
        if self.size == (300, 300):
            raise MemoryError
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", short_of_memory)
    first = index_folder(root, tmp_path / "ix", embedder=tiny)
    assert first["added"] == 5
    assert [s["reason"] for s in first["skipped"] if s["path"].endswith("big.png")] == [
        "not enough memory to decode it"]
    monkeypatch.setattr(ImageFile.ImageFile, "load", real_load)  # memory is back
    second = index_folder(root, tmp_path / "ix", embedder=tiny)
    assert second["added"] == 1 and not second["skipped"]


def test_a_model_error_on_some_images_is_retried(tmp_path, tiny, monkeypatch):
    root = _photos(tmp_path / "photos", n=6)
    real = tiny.embed_prepared
    calls = {"n": 0}

    def flaky(items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(items)

    monkeypatch.setattr(tiny, "embed_prepared", flaky)
    first = index_folder(root, tmp_path / "ix", embedder=tiny, batch_size=2)
    assert first["added"] == 4 and len(first["skipped"]) == 2
    assert all("the model failed on it (RuntimeError: device lost)" == s["reason"] for s in first["skipped"])
    monkeypatch.setattr(tiny, "embed_prepared", real)
    assert index_folder(root, tmp_path / "ix", embedder=tiny, batch_size=2)["added"] == 2


@pytest.mark.parametrize("broken", ["raises", "nan"])
def test_a_model_that_fails_on_every_image_stops_with_one_line(tmp_path, tiny, monkeypatch, broken):
    root = _photos(tmp_path / "photos", n=3)
    index_folder(root, tmp_path / "ix", embedder=tiny)
    for i in range(3, 8):
        (root / f"p{i}.png").write_bytes(pattern_image(i, side=48))

    def fails(items):
        if broken == "raises":
            raise RuntimeError("bad weights")
        return np.full((len(items), tiny.dim), np.nan, np.float32)

    monkeypatch.setattr(tiny, "embed_prepared", fails)
    with pytest.raises(LookalikeError, match="on every image it was given") as exc:
        index_folder(root, tmp_path / "ix", embedder=tiny, batch_size=2)
    assert "\n" not in str(exc.value)
    with ImageIndex.open(tmp_path / "ix") as snap:  # nothing from the broken model was stored
        assert len(snap) == 3 and np.isfinite(snap.vectors()).all()


def test_the_writer_never_stores_a_non_finite_vector(tmp_path):
    from helpers.vectors import BACKBONE, unit

    ix = ImageIndex.create(tmp_path / "ix", root=tmp_path, backbone=BACKBONE)
    bad = unit(2)
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="not finite"):
        ix.append_vectors(bad)
    assert len(ix) == 0
    assert not ix._vector_file().exists() or ix._vector_file().stat().st_size == 0
    ix.close()
