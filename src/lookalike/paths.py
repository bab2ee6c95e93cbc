"""Where Lookalike keeps its caches. `LOOKALIKE_HOME` moves all of them, which keeps tests hermetic."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of every cache: `$LOOKALIKE_HOME`, else `$XDG_CACHE_HOME/lookalike`, else `~/.cache/lookalike`."""
    env = os.environ.get("LOOKALIKE_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lookalike"


def cache_dir(*parts: str) -> Path:
    """A sub-folder of `home()`, created on demand."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def printable(text: str | os.PathLike) -> str:
    """`text` (a path, or a message naming one) fit to print or send as JSON: a file name that is not valid UTF-8
    arrives from the file system with surrogate escapes, which no UTF-8 output can encode; its undecodable
    bytes are shown escaped instead, e.g. `z\\xe9t\\xe9.jpg`. Valid text is returned unchanged."""
    text = os.fspath(text)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name gave: escape it as it is
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
