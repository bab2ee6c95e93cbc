"""Cheap checks on the bytes of one image that bound what decoding it can cost, before any decoder sees them.

Pixels alone do not bound decode time. A progressive JPEG can repeat one small scan thousands of times, and the
decoder then walks every block of the image once per scan; a TIFF can cut its first image into millions of
one-row strips; any format can split its header into millions of tiny chunks, segments or blocks, each costing
a round of Pillow's Python parsing. So, before decoding:

- a JPEG's markers are walked up to the end of its first image (the entropy-coded data is skipped by a regular
  expression, never byte by byte): at most `MAX_JPEG_SCANS` scans, at most `MAX_JPEG_SCAN_PIXELS` scans x frame
  pixels, at most `MAX_JPEG_MARKERS` markers;
- a TIFF's first directory may hold at most `MAX_TIFF_STRIPS` strip or tile offsets (only the first image of a
  multi-page file is ever decoded, so the others are not looked at);
- a HEIC/HEIF or AVIF file (ISO base media boxes) may hold at most `MAX_BMFF_BOXES` boxes and declare at most
  `MAX_HEIF_ITEMS` items (a photo cut into a grid of tiny tiles has one item per tile); libheif and libavif also
  apply their own limits while decoding;
- and `CountedBytes`, the stream every decode reads through, refuses more than `MAX_READS` reads: each round of
  Pillow's parsing (a PNG chunk, a GIF sub-block, a JPEG segment, a TIFF strip) reads at least once, while a
  whole image of any legitimate structure is read in large blocks.

Every refusal is a `DecodeTooCostly` (a `BadImageError`) that names what was over which limit.
"""

from __future__ import annotations

import io
import re
import struct

from .errors import BadImageError

# A real progressive JPEG has about ten scans (libjpeg's default script), a baseline one to four.
MAX_JPEG_SCANS = 100
# Each scan walks every block of the frame: scans x pixels bounds the entropy decoding's work.
MAX_JPEG_SCAN_PIXELS = 30 * 120_000_000
MAX_JPEG_MARKERS = 10_000  # segments of a real JPEG: a few dozen
# A TIFF written one row per strip has as many strips as rows; tiles of 256 x 256 cover 120 MP in 2,000.
MAX_TIFF_STRIPS = 100_000
# A phone's HEIC has a few dozen boxes, and one item per 512 x 512 grid tile (48 for 12 MP, about 460 for 120 MP)
# plus a few for EXIF and thumbnails.
MAX_BMFF_BOXES = 10_000
MAX_HEIF_ITEMS = 2_000
# Pillow reads a large image in 64 KB blocks, and each PNG chunk in three reads: a 200 MB PNG in libpng's
# 8 KB chunks takes about 75,000.
MAX_READS = 200_000

# The next marker after `pos`: 0xFF then a byte that is neither fill (0xFF), a stuffed zero nor a restart
# marker (both belong to entropy-coded data). A decoder skips any other bytes before a marker too. One 0xFF,
# not a run of them: a run would make the search quadratic in a long run of fill bytes.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_JPEG_STANDALONE = frozenset({0x01, 0xD8})  # TEM and SOI carry no length
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame; C4, C8, CC are tables
_TIFF_OFFSETS = (273, 324)  # StripOffsets, TileOffsets
# Boxes whose body is more boxes (`meta` after its 4-byte version and flags).
_BMFF_CONTAINERS = frozenset({b"meta", b"iprp", b"ipco", b"dinf", b"moov", b"trak", b"mdia", b"minf", b"stbl"})


class DecodeTooCostly(BadImageError):
    """The image's structure would make decoding it take far longer than its size warrants."""


def check_structure(data: bytes, name: str) -> None:
    """Raise `DecodeTooCostly` when `data` is a JPEG or TIFF whose structure would make decoding it too costly.

    Bytes of other formats, or too broken to walk, pass: the decoder gives the reason for those."""
    if data[:3] == b"\xff\xd8\xff":
        _check_jpeg(data, name)
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        _check_tiff(data, name)
    elif data[4:8] == b"ftyp":
        _check_bmff(data, name)


def _check_jpeg(data: bytes, name: str) -> None:
    pos, markers, scans, pixels = 2, 0, 0, 0
    while True:
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            return
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise DecodeTooCostly(f"{name}: more than {MAX_JPEG_MARKERS:,} JPEG segments (a real photo has a few "
                                  "dozen)")
        marker, body = data[found.end() - 1], found.end()
        if marker == 0xD9:  # end of image: what follows (another MPO frame, a trailer) is never decoded
            return
        if marker in _JPEG_STANDALONE:
            pos = body
            continue
        if body + 2 > len(data):
            return
        length = int.from_bytes(data[body:body + 2], "big")
        if marker in _JPEG_SOF and body + 7 <= len(data):
            height, width = struct.unpack_from(">HH", data, body + 3)
            pixels = height * width
        elif marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise DecodeTooCostly(f"{name}: more than {MAX_JPEG_SCANS} JPEG scans (a real progressive JPEG "
                                      "has about 10)")
            if scans * pixels > MAX_JPEG_SCAN_PIXELS:
                raise DecodeTooCostly(f"{name}: {scans} JPEG scans of {pixels:,} pixels each pass the "
                                      f"{MAX_JPEG_SCAN_PIXELS:,} scan-pixel limit on decoding work")
        pos = body + max(length, 2)


def _check_tiff(data: bytes, name: str) -> None:
    order = "<" if data[:2] == b"II" else ">"
    try:
        big = struct.unpack_from(order + "H", data, 2)[0] == 43
        if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
            offset = struct.unpack_from(order + "Q", data, 8)[0]
            entries, head, step, entry = struct.unpack_from(order + "Q", data, offset)[0], 8, 20, order + "HHQ"
        else:
            offset = struct.unpack_from(order + "I", data, 4)[0]
            entries, head, step, entry = struct.unpack_from(order + "H", data, offset)[0], 2, 12, order + "HHI"
    except struct.error:  # cut short: the decoder says so
        return
    if entries > 0xFFFF:
        raise DecodeTooCostly(f"{name}: {entries:,} entries in its first TIFF directory (at most 65,535)")
    start = offset + head
    entries = min(entries, (len(data) - start) // step)
    for i in range(entries):
        tag, _kind, count = struct.unpack_from(entry, data, start + i * step)
        if tag in _TIFF_OFFSETS and count > MAX_TIFF_STRIPS:
            raise DecodeTooCostly(f"{name}: its first TIFF image is cut into {count:,} strips or tiles (at most "
                                  f"{MAX_TIFF_STRIPS:,})")


def _check_bmff(data: bytes, name: str) -> None:
    """Walk the boxes of an ISO base media file (HEIC, HEIF, AVIF) without reading their payloads."""
    boxes, spans = 0, [(0, len(data))]
    while spans:
        pos, end = spans.pop()
        while pos + 8 <= end:
            size, kind = struct.unpack_from(">I4s", data, pos)
            head = 8
            if size == 1 and pos + 16 <= end:  # a 64-bit size follows the type
                size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
            elif size == 0:  # the box runs to the end of its parent
                size = end - pos
            if size < head:  # broken: the decoder says so
                return
            boxes += 1
            if boxes > MAX_BMFF_BOXES:
                raise DecodeTooCostly(f"{name}: more than {MAX_BMFF_BOXES:,} HEIF/AVIF boxes (a real photo has a "
                                      "few dozen)")
            body, stop = pos + head, min(end, pos + size)
            if kind in _BMFF_CONTAINERS:
                spans.append((body + (4 if kind == b"meta" else 0), stop))
            elif kind == b"iinf" and body + 6 <= stop:
                version = data[body]
                items = (struct.unpack_from(">H", data, body + 4)[0] if version == 0
                         else struct.unpack_from(">I", data, body + 4)[0] if body + 8 <= stop else 0)
                if items > MAX_HEIF_ITEMS:
                    raise DecodeTooCostly(f"{name}: {items:,} items in its HEIF/AVIF file (at most "
                                          f"{MAX_HEIF_ITEMS:,}; a photo's grid of tiles has a few hundred)")
            pos += size


class CountedBytes(io.BytesIO):
    """The bytes of one image as a stream that refuses more than `max_reads` reads with `DecodeTooCostly`."""

    def __init__(self, data: bytes, name: str, max_reads: int = MAX_READS) -> None:
        super().__init__(data)
        self.name_shown = name
        self.reads_left = int(max_reads)
        self.max_reads = int(max_reads)

    def _count(self) -> None:
        self.reads_left -= 1
        if self.reads_left < 0:
            raise DecodeTooCostly(f"{self.name_shown}: its structure takes more than {self.max_reads:,} reads to "
                                  "decode (thousands of tiny chunks, segments or strips)")

    def read(self, size: int | None = -1) -> bytes:
        self._count()
        return super().read(size)

    def read1(self, size: int | None = -1) -> bytes:
        self._count()
        return super().read1(size)

    def readinto(self, buffer) -> int:
        self._count()
        return super().readinto(buffer)

    def readline(self, size: int | None = -1) -> bytes:
        self._count()
        return super().readline(size)
