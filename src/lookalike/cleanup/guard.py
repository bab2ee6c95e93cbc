"""Checks of the paths a user gives: where moved files go, and where a plan or report is written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import LookalikeError
from ..paths import printable
from .pathcodec import absolute, is_under


def check_target(to: str | os.PathLike | None, root: Path, index_dir: Path,
                 protect: Iterable[str | os.PathLike] = ()) -> Path:
    """The folder `move --to` names, made absolute: never inside the library root, the index folder or a
    protected folder, and not an existing file."""
    if to is None or str(to) == "":
        raise LookalikeError("--action move needs --to DIR: the folder the copies are moved to")
    target = absolute(to)
    if is_under(target, root):
        raise LookalikeError(f"--to {printable(target)} is inside the library {printable(root)}: choose a folder "
                             "outside it")
    check_output_path(target, index_dir, protect, "--to")
    if target.exists() and not target.is_dir():
        raise LookalikeError(f"--to {printable(target)} is a file, not a folder")
    return target


def check_output_path(path: str | os.PathLike, index_dir: Path, protect: Iterable[str | os.PathLike] = (),
                      what: str = "the output") -> Path:
    """`path` (a plan, a CSV report, `--to`) made absolute, refused inside the index folder or a protected one."""
    target = absolute(path)
    if is_under(target, index_dir):
        raise LookalikeError(f"{what} {printable(target)} is inside the index folder {printable(index_dir)}: "
                             "choose a path outside it")
    for folder in protect:
        if is_under(target, folder):
            raise LookalikeError(f"{what} {printable(target)} is inside the protected folder {printable(folder)}")
    return target
