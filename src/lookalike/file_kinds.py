"""What a walk of a photo folder finds besides the images it indexes: photos in formats this install cannot
decode (camera RAW files, HEIC/HEIF where pi-heif is not installed, JPEG XL), reported as skipped with a reason so that a user
never wonders where half a library went, and other files (videos, sidecars), only counted."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Union

from .images import HEIF_EXTENSIONS, iter_image_files

# Camera RAW formats: decoding them needs a RAW developer (libraw), which Lookalike does not ship.
RAW_EXTENSIONS = frozenset({
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2", ".raf", ".pef",
    ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".rwl", ".iiq", ".mos", ".raw",
})
# Other photo formats that phones and cameras write, not decoded here (HEIC/HEIF are, with pi-heif installed;
# `images.IMAGE_EXTENSIONS` lists what is).
OTHER_PHOTO_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".jxl", ".jp2", ".psd"})


def photo_reason(ext: str) -> str | None:
    """Why a photo with this (lower-case) extension is not indexed, or None when it is not a photo format."""
    if ext in RAW_EXTENSIONS:
        return "a camera RAW photo, which this install cannot decode (index a JPEG export of it)"
    if ext in HEIF_EXTENSIONS:
        return f"a {ext[1:].upper()} photo, which this install has no decoder for (pip install pi-heif)"
    if ext in OTHER_PHOTO_EXTENSIONS:
        return f"a {ext[1:].upper()} photo, which this install has no decoder for"
    return None


class WalkReport:
    """What `walk_images` passed over: `unsupported` [{"path", "reason"}] photos it cannot decode, and
    `other` {extension: count} of the remaining files."""

    def __init__(self) -> None:
        self.unsupported: list[dict] = []
        self.other: Counter = Counter()

    def note(self, path: Path) -> None:
        """Sort one file that is not an image this install indexes."""
        ext = os.path.splitext(path.name)[1].lower()
        reason = photo_reason(ext)
        if reason is not None:
            self.unsupported.append({"path": str(path), "reason": reason})
        else:
            self.other[ext or "(none)"] += 1


def walk_images(root: Union[str, os.PathLike], report: WalkReport, recursive: bool = True) -> Iterator[Path]:
    """The image files under `root` in sorted order (`images.iter_image_files`), noting in `report` every other
    file it passes."""
    return iter_image_files(root, recursive, other=report.note)
