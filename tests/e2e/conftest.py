"""Fixtures of the end-to-end tests: one cache folder and one default embedder for the whole session, the web
gallery and its index, a tiny checkpoint backbone. Session-scoped, so every module shares what is built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.search import tiny_checkpoint
from helpers.web import make_gallery


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory) -> Path:
    """One LOOKALIKE_HOME for the session: the default backbone's ONNX export is made once and kept there."""
    return tmp_path_factory.mktemp("lookalike-search-home")


@pytest.fixture
def home(shared_home, monkeypatch) -> Path:
    """LOOKALIKE_HOME (shared) and an empty TORCH_HOME for the test: nothing touches the user's caches."""
    monkeypatch.setenv("LOOKALIKE_HOME", str(shared_home))
    monkeypatch.setenv("TORCH_HOME", str(shared_home / "torch-empty"))
    return shared_home


@pytest.fixture(scope="session")
def embedder(shared_home):
    """The default embedder (EfficientNet-Lite0, avg pooling), as `lookalike index` picks it, built once."""
    from lookalike.search.describe.features import load_embedder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOKALIKE_HOME", str(shared_home))
        return load_embedder()


@pytest.fixture(scope="session")
def gallery(tmp_path_factory, embedder, shared_home) -> dict:
    """Sample photos and edited copies, indexed with the default embedder: {"folder", "index", "files",
    "summary", "embedder", "home"}."""
    from lookalike.search.indexing.sync import index_folder

    base = tmp_path_factory.mktemp("web_gallery")
    files = make_gallery(base / "photos")
    summary = index_folder(base / "photos", base / "index", embedder=embedder)
    return {"folder": base / "photos", "index": base / "index", "files": files, "summary": summary,
            "embedder": embedder, "home": shared_home}


@pytest.fixture(scope="session")
def backbone(tmp_path_factory):
    """A tiny random `fast` checkpoint and its embedder: (checkpoint path, embedder)."""
    from lookalike.search.describe.features import load_embedder

    path = tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt")
    return path, load_embedder(str(path))
