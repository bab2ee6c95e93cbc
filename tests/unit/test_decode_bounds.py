"""What decoding one image may cost beyond its pixels: files whose structure (thousands of JPEG scans, tiny PNG
chunks, GIF sub-blocks, TIFF strips) would make a decoder work for seconds are refused at once, by the loader
and by every path that decodes (thumbnails, verification); real files of every structure still decode."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from helpers.image_bombs import (chatty_gif, chunky_png, jpeg_scans, progressive_jpeg, repeated_scan_jpeg,
                                 stripy_tiff)
from lookalike import image_checks
from lookalike.errors import BadImageError
from lookalike.image_checks import DecodeTooCostly, check_structure
from lookalike.images import UnrecognisedImage, load_image, open_image

FAST = 1.0  # seconds: the structural checks take milliseconds; decoding the JPEG bomb takes seconds


def _refused(source, match: str, within: float = FAST) -> str:
    start = time.monotonic()
    with pytest.raises(DecodeTooCostly, match=match) as info:
        load_image(source, min_size=224)
    assert time.monotonic() - start < within
    return str(info.value)


def test_a_jpeg_repeating_one_scan_is_refused_before_decoding(tmp_path):
    # 31 KB that take a decoder about 3 s at the 224-pixel draft size: the time grows with the repeats.
    bomb = repeated_scan_jpeg(2000, side=1024)
    assert len(bomb) < 40_000
    assert _refused(bomb, "more than 100 JPEG scans").startswith("<bytes>: ")
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bomb)
    assert _refused(path, "JPEG scans").startswith(f"{path}: ")


def test_real_jpegs_of_every_kind_still_decode():
    real = progressive_jpeg(256)
    assert len(jpeg_scans(real)) == 10
    assert load_image(real).size == (256, 256)
    assert load_image(repeated_scan_jpeg(40, side=64)).size == (64, 64)  # 50 scans: odd, but cheap
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buf, "JPEG", exif=Image.Exif(), comment=b"\xff\xda" * 500)
    assert load_image(buf.getvalue()).size == (300, 200)  # SOS bytes inside a segment are no scans
    # What follows the end of the first image (an MPO frame, a video trailer) is never decoded, nor counted.
    assert load_image(real + b"\xff\xda\x00\x08" * 5000).size == (256, 256)


def test_scans_of_a_big_frame_are_bounded_by_their_total_work(monkeypatch):
    data = progressive_jpeg(256)  # 10 scans of 65,536 pixels
    monkeypatch.setattr(image_checks, "MAX_JPEG_SCAN_PIXELS", 9 * 256 * 256)
    with pytest.raises(DecodeTooCostly, match=r"10 JPEG scans of 65,536 pixels each pass the 589,824"):
        check_structure(data, "big.jpg")
    monkeypatch.setattr(image_checks, "MAX_JPEG_SCAN_PIXELS", 10 * 256 * 256)
    check_structure(data, "big.jpg")


def test_a_jpeg_of_thousands_of_segments_is_refused():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG")
    data = buf.getvalue()
    _refused(data[:2] + b"\xff\xfe\x00\x02" * 200_000 + data[2:], "more than 10,000 JPEG segments")
    _refused(data[:2] + b"\xff" * 1_000_000 + data[2:], "more than 200,000 reads")  # fill bytes, one by one
    start = time.monotonic()  # the walk itself stays linear in a run of fill bytes that leads to no marker
    check_structure(data[:2] + b"\xff" * 2_000_000 + b"\x00" + data[2:], "fill.jpg")
    assert time.monotonic() - start < FAST


@pytest.mark.parametrize("make, count", [(chunky_png, 100_000), (chatty_gif, 300_000)])
def test_headers_of_countless_tiny_parts_are_refused(make, count):
    small = make(100)
    assert load_image(small).size == (16, 16)
    # Pillow parses the parts up to the read limit: a fraction of a second, whatever the file's size.
    _refused(make(count), "more than 200,000 reads to decode", within=3 * FAST)


def test_a_tiff_cut_into_millions_of_strips_is_refused_unparsed():
    assert load_image(stripy_tiff(2000)).size == (1, 2000)
    _refused(stripy_tiff(150_000), "cut into 150,000 strips or tiles")
    # A directory claiming more entries than TIFF allows is refused before anything walks it.
    bigtiff = b"II+\x00\x08\x00\x00\x00" + (16).to_bytes(8, "little") + (1 << 40).to_bytes(8, "little")
    with pytest.raises(DecodeTooCostly, match="entries in its first TIFF directory"):
        check_structure(bigtiff, "x.tif")


@pytest.mark.parametrize("fmt, kw", [("GIF", {}), ("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_only_the_first_frame_of_a_long_animation_is_decoded(fmt, kw):
    frames = [Image.new("RGB", (24, 16), (i % 200, 50, 90)) for i in range(300)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **kw)
    img = load_image(buf.getvalue())
    assert img.size == (24, 16)
    assert abs(int(np.asarray(img)[0, 0, 0]) - 0) <= 2  # frame 0's colour, not a later frame's


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PCX", "SGI"])
def test_formats_outside_the_decoded_families_are_refused(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, fmt)
    with pytest.raises(UnrecognisedImage, match="not an image"):
        open_image(buf.getvalue(), "x")
    with pytest.raises(BadImageError, match="not an image"):
        load_image(buf.getvalue())


def test_thumbnails_and_verification_refuse_the_bomb_too(tmp_path):
    from lookalike.web.thumbnails import ThumbnailCache

    path = tmp_path / "bomb.jpg"
    path.write_bytes(repeated_scan_jpeg(2000, side=1024))
    thumbs = ThumbnailCache(tmp_path / "cache")
    start = time.monotonic()
    with pytest.raises(DecodeTooCostly, match="JPEG scans"):
        thumbs.get(path, 256)
    assert time.monotonic() - start < FAST
    pytest.importorskip("cv2")
    from lookalike.search.retrieve.verify import Verifier

    verifier = Verifier()
    start = time.monotonic()
    assert verifier.features_of(path) is None  # unreadable: its result keeps its place, unverified
    assert time.monotonic() - start < FAST


def test_training_size_probe_reads_headers_through_the_bounds(tmp_path):
    """The from-scratch model choice reads a sample of headers: a crafted file costs it a bounded parse."""
    from lookalike.datasets import _header_sizes

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30)).save(good)
    bomb = tmp_path / "bomb.gif"
    bomb.write_bytes(chatty_gif(400_000))
    assert _header_sizes([good, bomb]) == [(40, 30)]  # the bomb is left out; the decode step names it
