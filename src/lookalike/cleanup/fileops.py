"""File operations that never overwrite: a move that keeps mode and mtime (copy, fsync, digest check, unlink
across file systems), a file replaced in place by a link to its identical keeper, and the copy that undoes it."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path

from ..atomic import fsync_dir

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """The index's content hash of a file (`features.file_digest`), read in chunks so memory stays bounded."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:32]


def temp_name(near: Path) -> Path:
    """A fresh hidden name beside `near`, for a file that becomes `near` by one rename."""
    return near.parent / f".{near.name}.{secrets.token_hex(6)}.lookalike-tmp"


def _place(src: Path, dst: Path) -> None:
    """Give `src` the name `dst` without replacing anything there: a hard link (refused by the kernel when
    `dst` exists) then the old name's removal, or a checked rename where links are not supported."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "the destination exists", str(dst)) from None
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "the destination exists", str(dst)) from None
        os.rename(src, dst)
    else:
        os.unlink(src)
    fsync_dir(dst.parent)
    fsync_dir(src.parent)


def same_device(a: Path, b_folder: Path) -> bool:
    return os.lstat(a).st_dev == os.stat(b_folder).st_dev


def move_file(src: Path, dst: Path, digest: str | None = None, *, on_temp=None) -> None:
    """Move `src` to `dst` (a free path; its folder is made, honouring the umask). Across file systems: copy with
    mode and mtime to a temporary name (`on_temp(path)` is told it first, so a journal can name it), fsync,
    compare its digest with `digest` (the source's), then name it `dst` and remove `src`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "the destination exists", str(dst))
    if same_device(src, dst.parent):
        _place(src, dst)
        return
    tmp = temp_name(dst)
    if on_temp is not None:
        on_temp(tmp)
    try:
        shutil.copy2(src, tmp, follow_symlinks=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if file_digest(tmp) != (digest or file_digest(src)):
            raise OSError(errno.EIO, "the copy does not read back as the original", str(dst))
        _place(tmp, dst)
    except BaseException:
        with_suppressed_unlink(tmp)
        raise
    os.unlink(src)
    fsync_dir(src.parent)


def with_suppressed_unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def link_in_place(keeper: Path, member: Path, kind: str) -> str:
    """Replace `member` (identical to `keeper`) by a hard or symbolic link to `keeper`, in one rename, so a kill
    leaves either the file or the link. Returns the symbolic link's text ('' for a hard link)."""
    tmp = temp_name(member)
    target = ""
    if kind == "hardlink":
        os.link(keeper, tmp)
    else:
        target = os.path.relpath(keeper, member.parent)
        os.symlink(target, tmp)
    try:
        os.replace(tmp, member)
    except BaseException:
        with_suppressed_unlink(tmp)
        raise
    fsync_dir(member.parent)
    return target


def is_our_link(keeper: Path, member: Path, kind: str, target: str) -> bool:
    """Whether `member` is still the link `link_in_place` made to `keeper`."""
    try:
        st = os.lstat(member)
        if kind == "symlink":
            return stat.S_ISLNK(st.st_mode) and os.readlink(member) == target
        kst = os.lstat(keeper)
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (kst.st_dev, kst.st_ino)
    except OSError:
        return False


def unlink_as_copy(keeper: Path, member: Path, mode: int, mtime_ns: int) -> None:
    """Turn the link at `member` back into a file of its own: a copy of `keeper` with the member's old mode and
    mtime, put in place by one rename."""
    tmp = temp_name(member)
    try:
        shutil.copyfile(keeper, tmp)
        os.chmod(tmp, stat.S_IMODE(mode))
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, member)
    except BaseException:
        with_suppressed_unlink(tmp)
        raise
    fsync_dir(member.parent)
