"""`lookalike.images`: every bad file is a BadImageError with a reason; every mode becomes correct 8-bit RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike.errors import BadImageError, LookalikeError
from lookalike.images import (IMAGE_EXTENSIONS, MAX_FILE_BYTES, MAX_PIXELS, PixelBudget, PixelBudgetExceeded,
                              is_image_path, list_image_files, load_image, read_image_file, to_rgb)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims huge dimensions (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1), "RGB")


# --- bad files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"hello, I am text", "not an image"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not an image"),
])
def test_bad_bytes_and_files(tmp_path, content, reason):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    for source in (path, content):
        with pytest.raises(BadImageError, match=reason):
            load_image(source)


def test_truncated_jpeg_and_png(tmp_path):
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
        data = _save(_gradient(200, 150), fmt)
        path = tmp_path / f"cut.{ext}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(BadImageError, match="corrupt or truncated") as info:
            load_image(path)
        assert str(path) in str(info.value)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20_000, 20_000))
    assert path.stat().st_size < 200
    with pytest.raises(BadImageError, match="pixel"):
        load_image(path)
    # Between Pillow's warning level (89 MP) and Lookalike's limit (120 MP): not refused for its size.
    big = tmp_path / "big.png"
    big.write_bytes(_png_header_only(10_000, 10_000))
    with pytest.raises(BadImageError) as info:
        load_image(big)
    assert "pixel" not in str(info.value)  # only the missing image data fails
    over = tmp_path / "over.png"
    over.write_bytes(_png_header_only(11_000, 11_000))
    with pytest.raises(BadImageError, match="pixel limit"):
        load_image(over)
    small = tmp_path / "small-limit.png"
    small.write_bytes(_save(_gradient(64, 48), "PNG"))
    with pytest.raises(BadImageError, match="pixel limit"):
        load_image(small, max_pixels=1000)
    assert MAX_PIXELS >= 50_000_000  # a 50-megapixel photo is still fine


def test_missing_folder_and_errors_are_lookalike_errors(tmp_path):
    with pytest.raises(BadImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(BadImageError, match="folder"):
        load_image(tmp_path)
    assert issubclass(BadImageError, LookalikeError)


def test_unreadable_file(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "locked.png"
    path.write_bytes(_save(_gradient(), "PNG"))
    path.chmod(0)
    with pytest.raises(BadImageError, match="permission denied"):
        load_image(path)


# --- modes -------------------------------------------------------------------------------------------------


def test_rgb_jpeg_and_draft_decoding():
    data = _save(_gradient(1600, 1200), "JPEG", quality=90)
    full = load_image(data)
    assert full.mode == "RGB" and full.size == (1600, 1200)
    draft = load_image(data, min_size=256)
    # Smallest DCT scale whose sides both stay >= 256: 1/4 gives 400 x 300.
    assert draft.size == (400, 300)
    assert min(load_image(data, min_size=301).size) >= 301
    png = _save(_gradient(1600, 1200), "PNG")
    # No draft for PNG: decoded whole, then reduced by a whole factor keeping both sides >= 2 x 256.
    assert load_image(png, min_size=256).size == (800, 600)
    assert load_image(png, min_size=301).size == (1600, 1200)  # 1200 // 602 = 1: kept whole
    assert load_image(png).size == (1600, 1200)


def test_cmyk_jpeg_becomes_rgb():
    red = Image.new("RGB", (32, 32), (220, 20, 20)).convert("CMYK")
    img = load_image(_save(red, "JPEG", quality=95))
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert img.mode == "RGB" and r > 150 and g < 80 and b < 80


def test_palette_with_transparency_goes_over_white():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))
    pal = rgba.convert("P")  # keeps a transparent index
    data = _save(pal, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    arr = np.asarray(load_image(data))
    assert arr.shape == (16, 16, 3)
    assert tuple(arr[4, 2]) == (255, 255, 255) and tuple(arr[4, 12]) == (0, 0, 255)


def test_palette_gif_and_animated_first_frame():
    frames = [Image.new("RGB", (20, 10), c).convert("P") for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = load_image(buf.getvalue())
    assert img.mode == "RGB" and img.size == (20, 10)
    assert tuple(np.asarray(img)[5, 5]) == (255, 0, 0)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    arr[0, 0] = 65535
    img16 = Image.fromarray(arr)
    assert img16.mode.startswith("I;16")
    out = np.asarray(load_image(_save(img16, "PNG")))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert 126 <= out[4, 4, 0] <= 129 and out[0, 0, 0] == 255


def test_32bit_int_and_float_tiff():
    values = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000
    values[7, 7] = 65535
    out = np.asarray(load_image(_save(Image.fromarray(values, "I"), "TIFF")))
    assert out.shape == (8, 8, 3) and out.max() == 255 and out.min() == 0
    assert (np.diff(out[..., 0].ravel().astype(int)) >= 0).all()  # tones kept in order
    floats = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F")
    out = np.asarray(load_image(_save(floats, "TIFF")))
    assert out.shape == (8, 8, 3) and out.max() == 255


def test_rgba_la_gray_and_bilevel():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert tuple(np.asarray(load_image(_save(rgba, "PNG")))[0, 0]) == (255, 255, 255)
    la = Image.new("LA", (8, 8), (10, 255))
    assert tuple(np.asarray(load_image(_save(la, "PNG")))[0, 0]) == (10, 10, 10)
    gray = Image.new("L", (8, 8), 77)
    assert tuple(np.asarray(load_image(_save(gray, "JPEG", quality=100)))[0, 0]) == pytest.approx((77, 77, 77), abs=2)
    bits = Image.new("1", (8, 8), 1)
    assert tuple(np.asarray(load_image(_save(bits, "PNG")))[0, 0]) == (255, 255, 255)


def test_webp_bmp_tiff_and_ppm():
    base = _gradient(32, 24)
    for fmt in ("WEBP", "BMP", "TIFF", "PPM"):
        img = load_image(_save(base, fmt))
        assert img.size == (32, 24) and img.mode == "RGB"


def test_exif_orientation_applied():
    img = _gradient(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_image(_save(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (40, 60)


def test_to_rgb_passthrough():
    img = _gradient()
    assert to_rgb(img) is img


# --- listing -----------------------------------------------------------------------------------------------


def test_listing_skips_hidden_and_non_images(tmp_path):
    for rel in ("b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "sub/c.webp", ".cache/d.jpg", "sub/deeper/e.tif"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert found == ["a.PNG", "b.jpg", "sub/c.webp", "sub/deeper/e.tif"]
    assert [p.name for p in list_image_files(tmp_path, recursive=False)] == ["a.PNG", "b.jpg"]
    assert is_image_path("x.JPEG") and not is_image_path("x.txt") and ".jpg" in IMAGE_EXTENSIONS


# --- what a file may cost before it is decoded ---------------------------------------------------------------


def _read_in_thread(path, **kw):
    """`read_image_file(path)` in a daemon thread: a FIFO that blocked would fail the test, not hang the suite."""
    import threading

    result: dict = {}

    def run():
        try:
            result["data"] = read_image_file(path, **kw)
        except BadImageError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"reading {path} blocked"
    return result


def test_only_regular_files_are_read(tmp_path):
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(tmp_path / "pipe.png")  # no writer: a plain open() would block forever
    (tmp_path / "folder.jpg").mkdir()
    good = tmp_path / "good.png"
    good.write_bytes(_save(_gradient(), "PNG"))
    (tmp_path / "link.png").symlink_to(good)  # a link to a regular file is followed
    cases = {"pipe.png": "not a regular file (a named pipe)", "folder.jpg": "is a folder, not an image"}
    if os.path.exists("/dev/zero"):
        (tmp_path / "zero.jpg").symlink_to("/dev/zero")  # would be read until memory runs out
        cases["zero.jpg"] = "not a regular file (a character device)"
    for name, reason in cases.items():
        got = _read_in_thread(tmp_path / name)
        assert got.get("error") == f"{tmp_path / name}: {reason}"
        with pytest.raises(BadImageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            load_image(tmp_path / name)
    assert _read_in_thread(tmp_path / "link.png")["data"] == good.read_bytes()
    assert load_image(tmp_path / "link.png").size == (64, 48)


def test_file_size_is_capped_before_and_while_reading(tmp_path):
    sparse = tmp_path / "sparse.png"
    with open(sparse, "wb") as fh:
        fh.truncate(3_000_000_000)  # 3 GB that take no disk: refused from its size, never read
    with pytest.raises(BadImageError, match=f"over the {MAX_FILE_BYTES:,}-byte file limit"):
        read_image_file(sparse)
    with pytest.raises(BadImageError, match="over the"):
        load_image(sparse)
    data = _save(_gradient(), "PNG")
    small = tmp_path / "small.png"
    small.write_bytes(data)
    assert read_image_file(small, max_bytes=len(data)) == data
    with pytest.raises(BadImageError, match=f"{len(data):,} bytes is over the {len(data) - 1:,}-byte file limit"):
        read_image_file(small, max_bytes=len(data) - 1)
    assert MAX_FILE_BYTES >= 100_000_000  # a big uncompressed TIFF still fits


def test_a_file_larger_than_its_size_says_is_cut_off():
    """A file that grows while read, or says it is empty and is not (Linux's /proc files report size 0):
    at most max_bytes + 1 bytes are read whatever stat said."""
    import os

    path = "/proc/self/status"
    if not os.path.isfile(path) or os.stat(path).st_size != 0:
        pytest.skip("needs Linux's /proc")
    with pytest.raises(BadImageError, match="grew past the 10-byte file limit"):
        read_image_file(path, max_bytes=10)


# --- what a decode may cost ------------------------------------------------------------------------------------


def test_a_pixel_budget_is_charged_with_the_pixels_actually_decoded():
    jpeg = _save(_gradient(1600, 1200), "JPEG", quality=90)
    budget = PixelBudget(2_000_000)
    load_image(jpeg, min_size=256, budget=budget)  # draft-decoded at 1/4: 400 x 300
    assert budget.left == 2_000_000 - 400 * 300
    png = _save(_gradient(1600, 1200), "PNG")
    with pytest.raises(PixelBudgetExceeded, match="1,920,000 pixels would pass the 2,000,000-pixel budget"):
        load_image(png, min_size=256, budget=budget)  # no draft for PNG: all of it would be decoded
    assert budget.left == 2_000_000 - 400 * 300  # a refused decode takes nothing
    assert issubclass(PixelBudgetExceeded, BadImageError)


def test_a_big_canvas_is_reduced_before_it_is_converted(tmp_path):
    """A 64 MP grayscale PNG of a few hundred KB: decoded in its own mode (1 byte a pixel) and reduced before
    the RGB conversion, so the peak is about the canvas itself, not the 3 bytes a pixel of its RGB copy.
    Measured as the peak resident memory of a fresh process."""
    import subprocess
    import sys

    side = 8000
    path = tmp_path / "canvas.png"
    Image.new("L", (side, side), 90).save(path, optimize=False)
    assert path.stat().st_size < 1_000_000
    tiny = tmp_path / "tiny.png"
    Image.new("L", (8, 8)).save(tiny)
    code = (
        "import resource, sys\n"
        "from lookalike.images import load_image, read_image_file\n"
        "load_image(read_image_file(sys.argv[2]))  # the decoder's imports and buffers, on a tiny image\n"
        "data = read_image_file(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "img = load_image(data, min_size=256)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(img.mode, img.size[0], img.size[1], (after - before) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tiny)], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    mode, width, height, grown = out[0], int(out[1]), int(out[2]), int(out[3])
    assert (mode, width, height) == ("RGB", 534, 534)  # reduced by 8000 // 512 = 15
    canvas = side * side  # bytes of the decoded L canvas
    assert grown < 1.5 * canvas  # converted whole first, it would be ~4 bytes a pixel
