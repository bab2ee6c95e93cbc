"""Small image files whose structure, not their pixels, would make decoding them slow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def progressive_jpeg(side: int = 256) -> bytes:
    """A real progressive JPEG from Pillow (libjpeg's default script: 10 scans)."""
    arr = np.full((side, side, 3), 128, np.uint8)
    arr[:, : side // 2, 0] = 90
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", progressive=True, quality=85)
    return buf.getvalue()


def jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan of a JPEG: its SOS segment and the entropy-coded data after it."""
    pos, scans = 2, []
    while pos < len(data) and data[pos + 1] != 0xD9:
        assert data[pos] == 0xFF, pos
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        if data[pos + 1] == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
            scans.append((pos, end))
        pos = end
    return scans


def repeated_scan_jpeg(copies: int, side: int = 256) -> bytes:
    """A progressive JPEG whose last (small, refinement) scan is repeated `copies` more times: every copy makes
    the decoder walk all blocks of the image again, so decode time grows with the file, not with its pixels."""
    data = progressive_jpeg(side)
    start, end = jpeg_scans(data)[-1]
    return data[:end] + data[start:end] * copies + data[end:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunky_png(chunks: int) -> bytes:
    """A small PNG with `chunks` empty ancillary chunks before its image data."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, "PNG")
    data = buf.getvalue()
    after_ihdr = 8 + 25
    return data[:after_ihdr] + png_chunk(b"zzZz", b"") * chunks + data[after_ihdr:]


def chatty_gif(sub_blocks: int) -> bytes:
    """A small GIF with a comment of `sub_blocks` one-byte sub-blocks before its image."""
    buf = io.BytesIO()
    Image.new("P", (16, 16)).save(buf, "GIF")
    data = buf.getvalue()
    image = data.index(b"\x2c", 13)  # the image descriptor, after the header and the palette
    return data[:image] + b"\x21\xfe" + b"\x01c" * sub_blocks + b"\x00" + data[image:]


def stripy_tiff(strips: int) -> bytes:
    """An uncompressed 1-pixel-wide TIFF written one row per strip: `strips` strips."""
    buf = io.BytesIO()
    Image.new("L", (1, strips), 7).save(buf, "TIFF", tiffinfo={278: 1})  # RowsPerStrip
    return buf.getvalue()
