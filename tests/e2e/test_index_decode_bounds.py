"""`lookalike index` over a folder holding files whose structure would make decoding them take seconds each:
they are named as skipped with the reason, at once, and the run indexes the rest."""

from __future__ import annotations

import json
import time

from helpers.cli import run_cli
from helpers.image_bombs import chunky_png, repeated_scan_jpeg, stripy_tiff
from helpers.search import pattern_image


def test_index_names_costly_files_as_skipped_and_completes(backbone, home, tmp_path, monkeypatch, capsys):
    ckpt, _ = backbone
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"good{i}.png").write_bytes(pattern_image(i))
    (folder / "scans.jpg").write_bytes(repeated_scan_jpeg(2000, side=1024))  # seconds to decode, unguarded
    (folder / "chunks.png").write_bytes(chunky_png(100_000))
    (folder / "strips.tif").write_bytes(stripy_tiff(150_000))
    start = time.monotonic()
    code, out, err = run_cli(["index", folder, "--index", tmp_path / "ix", "--model", ckpt, "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert time.monotonic() - start < 60
    summary = json.loads(out)
    assert summary["indexed"] == 3
    reasons = {item["path"]: item["reason"] for item in summary["skipped"]}
    assert set(reasons) == {str(folder / n) for n in ("scans.jpg", "chunks.png", "strips.tif")}
    assert "more than 100 JPEG scans" in reasons[str(folder / "scans.jpg")]
    assert "more than 200,000 reads" in reasons[str(folder / "chunks.png")]
    assert "150,000 strips or tiles" in reasons[str(folder / "strips.tif")]
