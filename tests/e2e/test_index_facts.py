"""The index keeps what each image's header says (resolution as shown, date taken, camera): read for new and
changed images, and for every image of an index made before facts existed, without embedding anything again."""

from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

from helpers.cli import cli_runner
from helpers.search import pattern_image, tiny_checkpoint
from lookalike.search.describe.features import load_embedder
from lookalike.search.indexing.facts import camera_from_exif, taken_from_exif
from lookalike.search.indexing.sync import index_folder
from lookalike.search.store.index import FORMAT_VERSION, ImageIndex


def _camera_jpeg(path, size=(64, 48), orientation=6):
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS 80D"
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 18:30:05"
    Image.new("RGB", size, (200, 120, 40)).save(path, "JPEG", exif=exif.tobytes())


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    _camera_jpeg(root / "turned.jpg")
    (root / "plain.png").write_bytes(pattern_image(3, side=40))
    return root


@pytest.fixture
def tiny(tmp_path):
    return load_embedder(str(tiny_checkpoint(tmp_path / "ck" / "model.pt")))


def _facts_by_name(index_dir):
    with ImageIndex.open(index_dir) as snap:
        facts = snap.facts(snap.ids())
        return {snap.path_of(i).name: facts.get(int(i)) for i in snap.ids()}


def test_facts_of_new_images(library, tmp_path, tiny):
    summary = index_folder(library, tmp_path / "ix", embedder=tiny)
    assert summary["added"] == 2 and summary["facts_read"] == 2
    facts = _facts_by_name(tmp_path / "ix")
    assert facts["turned.jpg"] == (48, 64, "2021-07-04T18:30:05", "Canon EOS 80D")  # orientation 6: sides swap
    assert facts["plain.png"] == (40, 40, None, None)
    assert index_folder(library, tmp_path / "ix", embedder=tiny)["facts_read"] == 0  # read once


def test_a_changed_image_has_its_facts_read_again(library, tmp_path, tiny):
    index_folder(library, tmp_path / "ix", embedder=tiny)
    _camera_jpeg(library / "turned.jpg", size=(80, 30), orientation=1)
    summary = index_folder(library, tmp_path / "ix", embedder=tiny)
    assert summary["updated"] == 1 and summary["facts_read"] == 1
    assert _facts_by_name(tmp_path / "ix")["turned.jpg"][:2] == (80, 30)


def test_an_index_made_before_facts_is_upgraded_without_embedding_again(library, tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck" / "model.pt")
    cli = cli_runner(monkeypatch, capsys, tmp_path / "home")
    ix = tmp_path / "ix"
    assert cli(["index", library, "--index", ix, "--model", ck]).returncode == 0
    # What an index of format 3 looks like: no facts table, the manifest says 3.
    conn = sqlite3.connect(ix / "index.db")
    conn.execute("DROP TABLE facts")
    conn.commit()
    conn.close()
    manifest = json.loads((ix / "manifest.json").read_text())
    (ix / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    assert _facts_by_name(ix) == {"plain.png": None, "turned.jpg": None}  # readers cope with the older format

    res = cli(["index", library, "--index", ix, "--json"])
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["added"] == 0 and summary["unchanged"] == 2 and summary["facts_read"] == 2
    assert json.loads((ix / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
    assert _facts_by_name(ix)["turned.jpg"].camera == "Canon EOS 80D"


@pytest.mark.parametrize("text, iso", [
    ("2021:07:04 18:30:05", "2021-07-04T18:30:05"), ("2021:07:04 18:30:05\x00", "2021-07-04T18:30:05"),
    ("0000:00:00 00:00:00", None), ("    :  :     :  :  ", None), (None, None), (b"2021", None),
    ("2021:13:01 00:00:00", None),
])
def test_exif_dates(text, iso):
    assert taken_from_exif(text) == iso


def test_camera_names():
    assert camera_from_exif("Canon", "Canon EOS 80D") == "Canon EOS 80D"
    assert camera_from_exif("NIKON CORPORATION", "NIKON D750") == "NIKON CORPORATION NIKON D750"
    assert camera_from_exif(b"Apple\x00", "iPhone 12") == "Apple iPhone 12"
    assert camera_from_exif(None, None) is None
