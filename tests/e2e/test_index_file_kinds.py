"""Files a walk passes over are accounted for: photos in formats this install cannot decode (camera RAW) are
skipped with a reason, one line per extension in the table and each file in --json; other files are counted."""

from __future__ import annotations

import json

from helpers.cli import cli_runner
from helpers.search import pattern_image, tiny_checkpoint


def test_raw_photos_are_named_other_files_counted(tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck" / "model.pt")
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    for name in ("a.png", "trip/b.png"):
        (root / name).write_bytes(pattern_image(len(name)))
    for name in ("IMG_1.CR2", "trip/IMG_2.cr2", "trip/DSC_3.nef"):
        (root / name).write_bytes(b"II*\0 raw sensor data")
    for name in ("clip.mov", "trip/IMG_1.xmp", "notes.json"):
        (root / name).write_bytes(b"not a photo")
    cli = cli_runner(monkeypatch, capsys, tmp_path / "home")

    table = cli(["index", root, "--model", ck])
    assert table.returncode == 0, table.stderr
    lines = table.stderr.strip().splitlines()
    assert [line for line in lines if ".cr2" in line] == [
        "warning: skipped 2 .cr2 files: a camera RAW photo, which this install cannot decode (index a JPEG export "
        "of it); --json lists them"]
    assert sum("skipped 1 .nef file:" in line for line in lines) == 1
    assert not any(word in table.stderr for word in (".mov", ".xmp", ".json"))  # counted in --json only
    assert "2 images indexed" in table.stdout and "3 skipped" in table.stdout

    summary = json.loads(cli(["index", root, "--json"]).stdout)
    assert sorted(p["path"].split("/photos/")[1] for p in summary["unsupported"]) == [
        "IMG_1.CR2", "trip/DSC_3.nef", "trip/IMG_2.cr2"]
    assert all("RAW" in p["reason"] for p in summary["unsupported"])
    assert summary["other_files"] == {".json": 1, ".mov": 1, ".xmp": 1}
    assert summary["unchanged"] == 2
