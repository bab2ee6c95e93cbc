"""Read what an image's header says (resolution as shown, date taken, camera) for the images of an index that
lack it: new images after each run, and every image of an index made before facts existed, without embedding any
of them again. Keep rules for duplicates and the web page's library view use these facts.

Only the header is read (the first MiB of the file, through the same bounded parser as every decode), so this
costs a fraction of a millisecond an image against tens for a decode.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from ..store.base import ImageFacts

# EXIF tags: the Exif sub-IFD, DateTimeOriginal in it; Make, Model and Orientation in the first IFD.
_EXIF_IFD, _DATE_TAKEN, _MAKE, _MODEL, _ORIENTATION = 0x8769, 0x9003, 0x010F, 0x0110, 0x0112
_EXIF_DATE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
BATCH = 500  # images whose facts are committed together


def taken_from_exif(text: Any) -> str | None:
    """`2021:07:04 18:30:05` -> `2021-07-04T18:30:05`; None for a missing, blank or impossible date."""
    if not isinstance(text, str):
        return None
    m = _EXIF_DATE.match(text.strip())
    if not m or m.group(1) == "0000" or not ("01" <= m.group(2) <= "12") or not ("01" <= m.group(3) <= "31"):
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ").strip() if value is not None else ""


def camera_from_exif(make: Any, model: Any) -> str | None:
    """`Canon` + `Canon EOS 80D` -> `Canon EOS 80D` (the make said once); None when neither is there."""
    make, model = _text(make), _text(model)
    if model and make and model.lower().startswith(make.lower()):
        return model[:200]
    return " ".join(x for x in (make, model) if x)[:200] or None


def header_facts(path: Path) -> ImageFacts:
    """The facts in the header of the image file `path`; every field None when the header cannot be read (the
    image was decoded once, so this is a file changed or made unreadable since: the next run catches up)."""
    from ...errors import BadImageError
    from ...images import open_header

    try:
        with open_header(path) as im:
            width, height = im.size
            exif = im.getexif()
            orientation = exif.get(_ORIENTATION)
            if orientation in (5, 6, 7, 8):  # turned a quarter: shown with the sides swapped
                width, height = height, width
            taken = taken_from_exif(exif.get_ifd(_EXIF_IFD).get(_DATE_TAKEN))
            return ImageFacts(int(width), int(height), taken, camera_from_exif(exif.get(_MAKE), exif.get(_MODEL)))
    except (OSError, ValueError, SyntaxError, EOFError, BadImageError, KeyError, TypeError):
        return ImageFacts(None, None, None, None)


def fill_facts(index, progress: Callable[[int, int], None] | None = None) -> int:
    """Read and store the facts of every image of the writer `index` that lacks them; returns how many.
    `progress(done, total)` after each committed batch. Imported rows whose file is not under the root are
    stored with empty facts, so they are not looked for again. Then the library's sort indexes are made sure of."""
    done = _read_missing(index, progress)
    index.ensure_listing_indexes()
    return done


def _read_missing(index, progress: Callable[[int, int], None] | None) -> int:
    def store(batch: list) -> None:
        index.store_facts([(image_id, *header_facts(index.root / stored)) for image_id, stored, _imported in batch])

    return in_batches(index.count_facts_missing(), lambda last: index.facts_missing(last, BATCH), store, progress)


def in_batches(total: int, fetch: Callable[[int], list], store: Callable[[list], None],
               progress: Callable[[int, int], None] | None = None) -> int:
    """What `index` fills in for rows that lack it (facts, stored local features), a batch at a time in id order:
    `fetch(after_id)` gives the next batch (each item's first field its id; empty at the end), `store(batch)`
    does the work and commits it, `progress(done, total)` follows. Returns how many were done; each batch is
    committed on its own, so an interrupted run keeps what it stored."""
    if not total:
        return 0
    done, last = 0, 0
    if progress:
        progress(0, total)
    while True:
        batch = fetch(last)
        if not batch:
            return done
        store(batch)
        done += len(batch)
        last = batch[-1][0]
        if progress:
            progress(done, total)
