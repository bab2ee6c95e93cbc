"""Paths stored in plans and journals: losslessly (a name that is not valid UTF-8 keeps its bytes) and
readably, and the one containment test every check uses."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from ..errors import LookalikeError
from ..paths import printable


def encode_path(path: str | os.PathLike) -> dict:
    """`{"path": printable text}`, plus `"b64"`: the file system's bytes, when the text alone would lose them."""
    text = os.fspath(path)
    out: dict[str, Any] = {"path": printable(text)}
    if out["path"] != text:
        out["b64"] = base64.b64encode(os.fsencode(text)).decode("ascii")
    return out


def decode_path(value: Any, what: str = "path") -> str:
    """The path `encode_path` stored (LookalikeError naming `what` when `value` is not one)."""
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        raise LookalikeError(f"{what} is not a stored path: {str(value)[:80]!r}")
    raw = value.get("b64")
    if raw is None:
        text = value["path"]
    else:
        try:
            text = os.fsdecode(base64.b64decode(raw, validate=True))
        except (ValueError, TypeError):
            raise LookalikeError(f"{what} holds bad base64 bytes: {str(raw)[:80]!r}") from None
    if "\0" in text or not os.path.isabs(text):
        raise LookalikeError(f"{what} is not an absolute path: {printable(text)[:80]!r}")
    return text


def absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute without following its last link (a link is acted on, never its target)."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    return Path(os.path.realpath(p.parent)) / p.name if p.name else p


def is_under(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it (links in the folders resolved)."""
    p, f = absolute(path), Path(os.path.realpath(absolute(folder)))
    try:
        Path(os.path.realpath(p)).relative_to(f)
        return True
    except ValueError:
        pass
    try:
        p.relative_to(f)
        return True
    except ValueError:
        return False
