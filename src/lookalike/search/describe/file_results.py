"""What reading one file for the index came to: one type per outcome of `Embedder.decode_file` and
`Embedder.stream`, so callers match on the type rather than on which keys a dict holds.

`digest` is the file's content hash (`features.file_digest`) wherever the bytes were read. An `Unread` file has
none: its reason (missing, unreadable, not a regular file, over the size limit, out of memory, a model error) may
pass, so the index tries it again next run, while an `Undecodable` one (the file itself) is remembered until it
changes.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import numpy as np


class Unread(NamedTuple):
    """Not embedded for a reason that may pass, so the index tries it again next run: missing, unreadable, not a
    regular file, over the file size limit; or read, but out of memory, or the model failed on it."""

    reason: str

    @property
    def digest(self) -> None:
        return None


class Undecodable(NamedTuple):
    """Read, but not an image the decoder can turn into pixels."""

    digest: str
    reason: str


class Reused(NamedTuple):
    """Read and hashed; the caller's `reuse(digest)` found something for it (`found`), so it was not decoded."""

    digest: str
    found: Any


class Decoded(NamedTuple):
    """Decoded and prepared for the network (`Embedder.prepare`'s output), not embedded yet."""

    digest: str
    array: Any
    rendition: Any = None  # `renditions.Stored`: what verification reads later, when the embedder makes it


class Embedded(NamedTuple):
    """Decoded and embedded: `vector` is its (D,) float32 unit descriptor."""

    digest: str
    vector: np.ndarray
    rendition: Any = None


Skipped = (Unread, Undecodable)  # for isinstance: the file gave no vector, and `reason` says why
DecodeResult = Union[Unread, Undecodable, Reused, Decoded]
StreamResult = Union[Unread, Undecodable, Reused, Embedded]
