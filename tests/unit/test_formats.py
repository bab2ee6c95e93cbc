"""Phone formats: HEIC (pi-heif) and AVIF (Pillow) are indexed, searched and thumbnailed like JPEG, with the same
decode bounds (pixel limit and budget, structural checks, the read-count stream)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import run_cli
from lookalike import images
from lookalike.errors import BadImageError
from lookalike.file_kinds import WalkReport, walk_images
from lookalike.image_checks import MAX_BMFF_BOXES, MAX_HEIF_ITEMS, CountedBytes, DecodeTooCostly, check_structure
from lookalike.search.sample_photos import load_photo

# chelsea (CC0) at 192 x 128, encoded by libheif with x265 (tests/data/chelsea.heic.txt).
HEIC = Path(__file__).resolve().parents[1] / "data" / "chelsea.heic"


def avif_bytes(name: str = "coffee", side: int = 160) -> bytes:
    buf = io.BytesIO()
    load_photo(name, side).save(buf, format="AVIF", quality=70)
    return buf.getvalue()


def close_to(img, name: str, side: int) -> float:
    """Mean absolute pixel difference from the sample photo at that size (lossy codecs: small, not zero)."""
    ref = np.asarray(load_photo(name, side), np.float32)
    return float(np.abs(np.asarray(img, np.float32) - ref).mean())


def test_heic_and_avif_are_image_files_and_decode_to_their_pixels():
    assert images.HAVE_HEIF
    for ext in (".heic", ".heif", ".hif", ".avif", ".webp", ".tif"):
        assert images.is_image_path("IMG_0001" + ext.upper()), ext
    img = images.load_image(HEIC)
    assert (img.mode, img.size) == ("RGB", (192, 128))
    assert close_to(img, "chelsea", 192) < 6
    img = images.load_image(avif_bytes())
    assert img.mode == "RGB" and close_to(img, "coffee", 160) < 6
    # A decode for a smaller size is reduced right after decoding, as PNG and WebP are.
    assert min(images.load_image(HEIC, min_size=32).size) < 128


def test_decoder_version_names_the_heif_and_avif_decoders():
    version = images.decoder_version()
    assert "pi-heif" in version and "libheif" in version and "libavif" in version


def test_the_walk_indexes_heic_and_avif_and_still_reports_what_it_cannot_decode(tmp_path):
    for name in ("a.heic", "b.avif", "c.HEIF", "d.jxl", "e.cr2", "f.mov"):
        (tmp_path / name).write_bytes(b"x")
    report = WalkReport()
    found = [p.name for p in walk_images(tmp_path, report)]
    assert found == ["a.heic", "b.avif", "c.HEIF"]
    assert [Path(u["path"]).name for u in report.unsupported] == ["d.jxl", "e.cr2"]
    assert dict(report.other) == {".mov": 1}


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_pixel_limit_and_budget_apply_before_decoding(fmt):
    data = HEIC.read_bytes() if fmt == "heic" else avif_bytes()
    with pytest.raises(BadImageError, match="pixel limit"):
        images.load_image(data, max_pixels=1000)
    budget = images.PixelBudget(1000)
    with pytest.raises(images.PixelBudgetExceeded):
        images.load_image(data, budget=budget)
    assert budget.left == 1000  # nothing charged for a refused decode


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_the_read_count_stream_covers_heif_and_avif_decoders(fmt):
    data = HEIC.read_bytes() if fmt == "heic" else avif_bytes()
    images._load_plugins()
    with pytest.raises(DecodeTooCostly):
        Image.open(CountedBytes(data, "x", max_reads=1), formats=images.IMAGE_FORMATS).load()
    Image.open(CountedBytes(data, "x", max_reads=4), formats=images.IMAGE_FORMATS).load()


def box(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def test_heif_box_floods_and_item_floods_are_refused_before_decoding():
    ftyp = box(b"ftyp", b"heic\x00\x00\x00\x00mif1heic")
    check_structure(HEIC.read_bytes(), "real.heic")  # a real photo passes
    flood = ftyp + box(b"meta", b"\x00" * 4 + box(b"free") * (MAX_BMFF_BOXES + 1))
    with pytest.raises(DecodeTooCostly, match="boxes"):
        images.load_image(flood)
    items = ftyp + box(b"meta", b"\x00" * 4 + box(b"iinf", b"\x00" * 4 + struct.pack(">H", MAX_HEIF_ITEMS + 1)))
    with pytest.raises(DecodeTooCostly, match="items"):
        images.load_image(items)
    # Broken or cut-short boxes are left to the decoder, which names them.
    with pytest.raises(BadImageError):
        images.load_image(ftyp + b"\x00\x00\x00\x04meta")


def test_heic_and_avif_are_indexed_searched_and_thumbnailed(tmp_path, monkeypatch, capsys):
    from lookalike.web.thumbnails import make_thumbnail

    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path / "home"))
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "chelsea.heic").write_bytes(HEIC.read_bytes())
    (lib / "coffee.avif").write_bytes(avif_bytes())
    load_photo("astronaut", 160).save(lib / "astronaut.jpg")
    load_photo("camera", 160).save(lib / "camera.png")
    code, out, err = run_cli(["index", lib, "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 4 and summary["skipped"] == [] and summary["unsupported"] == []
    for name, edit in (("chelsea", lambda im: im.rotate(5)), ("coffee", lambda im: im.crop((10, 10, 150, 100)))):
        query = tmp_path / f"{name}-query.jpg"
        edit(load_photo(name, 200)).save(query)
        code, out, err = run_cli(["search", query, "--index", lib, "--json", "--verify", "0", "-k", "2"],
                                 monkeypatch, capsys)
        assert code == 0, err
        assert Path(json.loads(out)[0]["results"][0]["path"]).stem == name
    for name in ("chelsea.heic", "coffee.avif"):
        thumb = Image.open(io.BytesIO(make_thumbnail(lib / name, 64)))
        assert thumb.format == "JPEG" and max(thumb.size) == 64


def test_training_lists_heic_and_avif_in_class_folders(tmp_path):
    from lookalike.datasets import _class_files

    for cls, name, data in (("cat", "a.heic", HEIC.read_bytes()), ("cup", "b.avif", avif_bytes())):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / name).write_bytes(data)
    files = _class_files(tmp_path)
    assert {c: [p.name for p in ps] for c, ps in files.items()} == {"cat": ["a.heic"], "cup": ["b.avif"]}
    assert images.load_image(files["cat"][0], min_size=32).mode == "RGB"
