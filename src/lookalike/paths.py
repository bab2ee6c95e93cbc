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
