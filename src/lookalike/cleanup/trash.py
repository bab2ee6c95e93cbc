"""The freedesktop.org Trash (Linux and the BSDs): `files/NAME` holds the file, `info/NAME.trashinfo` its
original path (percent-encoded) and deletion date. A file goes to the home trash (`$XDG_DATA_HOME/Trash`) when
it lies on the same device, else to its volume's `$topdir/.Trash/$UID` (when that exists, is sticky and not a
link) or `$topdir/.Trash-$UID`. A file is renamed into the trash, never copied: where that cannot be done it is
left in place with the reason, and never deleted instead.

Other systems (macOS, Windows) keep their trash in ways this module does not write: there, trashing is refused
and `move --to` is the action that undo can reverse."""

from __future__ import annotations

import datetime as _dt
import errno
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..atomic import fsync_dir
from .fileops import _place


def supported() -> bool:
    return sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd", "dragonfly"))


class TrashError(OSError):
    """The file could not be trashed (it stays where it is)."""


@dataclass(frozen=True)
class TrashSlot:
    """A reserved place in a trash: the info file already written, the file's new name still free."""

    trash_dir: Path
    name: str

    @property
    def file(self) -> Path:
        return self.trash_dir / "files" / self.name

    @property
    def info(self) -> Path:
        return self.trash_dir / "info" / f"{self.name}.trashinfo"


def home_trash() -> Path:
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data) if data and os.path.isabs(data) else Path.home() / ".local" / "share") / "Trash"


def _mount_point(path: Path) -> Path:
    """The top folder of the file system that holds `path`."""
    dev = os.lstat(path).st_dev
    cur = path.parent
    while cur != cur.parent and os.stat(cur.parent).st_dev == dev:
        cur = cur.parent
    return cur


def trash_dir_for(path: Path) -> tuple[Path, Path | None]:
    """(the trash folder for `path`, the top folder its info paths are relative to, None for absolute ones)."""
    home = home_trash()
    dev = os.lstat(path).st_dev
    home_dev = _existing_dev(home)
    if home_dev == dev:
        return home, None
    top = _mount_point(path)
    shared = top / ".Trash"
    try:
        st = os.lstat(shared)
        if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
            return shared / str(os.getuid()), top
    except OSError:
        pass
    return top / f".Trash-{os.getuid()}", top


def _existing_dev(path: Path) -> int:
    """The device of `path`, or of its nearest existing parent."""
    for cur in (path, *path.parents):
        try:
            return os.stat(cur).st_dev
        except OSError:
            continue
    return -1


def _ensure(trash: Path) -> None:
    trash.parent.mkdir(parents=True, exist_ok=True)
    trash.mkdir(mode=0o700, exist_ok=True)  # a trash is its owner's alone (the specification's mode)
    for sub in ("files", "info"):
        folder = trash / sub
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise TrashError(errno.EPERM, "the trash folder is not this user's own", str(folder))


def reserve(path: Path) -> TrashSlot:
    """Write the info file for `path` under a fresh name (created exclusively, so two runs never share one)."""
    if not supported():
        raise TrashError(errno.ENOTSUP, "this system's trash is not supported (use move --to)", str(path))
    trash, top = trash_dir_for(path)
    _ensure(trash)
    original = os.fsencode(path if top is None else os.path.relpath(path, top))
    when = _dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    body = f"[Trash Info]\nPath={quote(original, safe='/')}\nDeletionDate={when}\n".encode("ascii")
    stem, dot, ext = path.name.rpartition(".")
    for n in range(1, 10000):
        name = path.name if n == 1 else (f"{stem}.{n}.{ext}" if dot and stem else f"{path.name}.{n}")
        slot = TrashSlot(trash, name)
        if os.path.lexists(slot.file):
            continue
        try:
            fd = os.open(slot.info, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(slot.info.parent)
        return slot
    raise TrashError(errno.EEXIST, "no free name in the trash", str(path))


def put(path: Path, slot: TrashSlot) -> None:
    """Rename `path` into its reserved slot (a file on another device than the trash is left in place)."""
    if os.lstat(path).st_dev != os.stat(slot.file.parent).st_dev:
        raise TrashError(errno.EXDEV, "the trash is on another device", str(path))
    _place(path, slot.file)


def release(slot: TrashSlot) -> None:
    """Remove the info file of a slot whose file is not (or no longer) in the trash."""
    try:
        os.unlink(slot.info)
    except FileNotFoundError:
        pass
    fsync_dir(slot.info.parent)
