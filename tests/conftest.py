"""Fixtures for every test: a hermetic cache folder, a umask, a small generated image-folder dataset.

tests/unit/ holds fast in-process tests of one part each; tests/e2e/ runs the CLI, servers, the browser,
training and indexing (its conftest.py adds the fixtures those share). Plain helper functions are in
tests/helpers/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.datasets import make_folder_dataset


@pytest.fixture
def isolated_home(tmp_path_factory, monkeypatch):
    """A fresh LOOKALIKE_HOME for the test, so caches never leak between tests or into the user's home."""
    home = tmp_path_factory.mktemp("lookalike_home")
    monkeypatch.setenv("LOOKALIKE_HOME", str(home))
    return home


@pytest.fixture
def tiny_folder_dataset(tmp_path) -> Path:
    """3 classes, 12 train + 4 test images each, 32x32, PNG and JPEG mixed."""
    return make_folder_dataset(tmp_path / "data")


@pytest.fixture
def umask():
    """Set the process umask for one test (call it with the mask); the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)
