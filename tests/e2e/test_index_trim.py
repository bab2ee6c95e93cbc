"""Border trimming as a property of an index: on for new indexes of registered backbones, recorded in the
manifest, applied to queries; indexes made without it stay without it; `--no-trim` turns it off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.cli import run_cli
from helpers.search import PHOTOS, photo
from lookalike.search.sample_photos import jpeg_bytes


def _padded_pair(folder: Path) -> tuple[Path, Path]:
    """A portrait photo, and the same photo padded with white bars to a landscape frame."""
    folder.mkdir(parents=True, exist_ok=True)
    img = photo(PHOTOS[0]).crop((40, 0, 200, 240))  # 160 x 240 portrait
    frame = Image.new("RGB", (360, 240), "white")
    frame.paste(img, (100, 0))
    plain, padded = folder / "plain.jpg", folder / "padded.jpg"
    plain.write_bytes(jpeg_bytes(img, 95))
    padded.write_bytes(jpeg_bytes(frame, 95))
    return plain, padded


def _search(args, monkeypatch, capsys) -> list:
    code, out, err = run_cli(["search", *args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    return json.loads(out)


def test_trimmed_index_matches_a_padded_photo_to_its_original(tmp_path, home, monkeypatch, capsys):
    plain, padded = _padded_pair(tmp_path / "photos")
    distances = {}
    for flag in ("--trim", "--no-trim"):
        ix = tmp_path / f"ix{flag}"
        code, _, err = run_cli(["index", tmp_path / "photos", "--index", ix, flag], monkeypatch, capsys)
        assert code == 0, err
        pre = json.loads((ix / "manifest.json").read_text())["preprocess"]
        assert pre.get("trim", False) is (flag == "--trim")
        answer = _search([str(padded), "--index", ix, "-k", "2"], monkeypatch, capsys)[0]
        distances[flag] = {Path(r["path"]).name: r["distance"] for r in answer["results"]}["plain.jpg"]
    # trimmed, the padded copy is the photo again (JPEG re-encoding aside); untrimmed, the bars move it away
    assert distances["--trim"] < 0.3 < 0.5 < distances["--no-trim"]


def test_an_index_without_the_option_keeps_its_queries_untrimmed(tmp_path, home, monkeypatch, capsys):
    plain, padded = _padded_pair(tmp_path / "photos")
    ix = tmp_path / "ix"
    assert run_cli(["index", tmp_path / "photos", "--index", ix, "--no-trim"], monkeypatch, capsys)[0] == 0
    manifest = json.loads((ix / "manifest.json").read_text())
    assert "trim" not in manifest["preprocess"]  # as an index made before the option existed
    before = _search([str(padded), "--index", ix], monkeypatch, capsys)
    # a later run without options keeps the index's descriptor: nothing is re-embedded, queries are untrimmed
    code, out, err = run_cli(["index", tmp_path / "photos", "--index", ix, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["added"] == 0
    assert "trim" not in json.loads((ix / "manifest.json").read_text())["preprocess"]
    assert _search([str(padded), "--index", ix], monkeypatch, capsys) == before
    # asking for trimmed vectors on it is another descriptor: one line, data kept
    code, _, err = run_cli(["index", tmp_path / "photos", "--index", ix, "--trim"], monkeypatch, capsys)
    assert code != 0 and "borders trimmed" in err and "--rebuild" in err and len(err.strip().splitlines()) == 1
