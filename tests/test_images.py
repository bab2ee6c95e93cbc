"""`lookalike.images`: every bad file is a BadImageError with a reason; every mode becomes correct 8-bit RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike.errors import BadImageError, LookalikeError
from lookalike.images import IMAGE_EXTENSIONS, MAX_PIXELS, is_image_path, list_image_files, load_image, to_rgb


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
    assert load_image(png, min_size=256).size == (1600, 1200)  # draft only applies to JPEG


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
