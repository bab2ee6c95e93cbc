"""Undo from a journal: moves and trashes are moved back, links become files of their own again, newest step
first. A step is judged by what is on disk, so a run killed mid-way (a step begun, never marked done) is undone
as far as it went. Nothing is overwritten: a path that is occupied again is skipped with the reason.

Rows: the rows of files put back are not re-inserted; the next `lookalike index` run finds the restored files
and embeds them again. Rows of links undone get the restored file's stamp."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LookalikeError
from ..paths import printable
from .fileops import file_digest, is_our_link, move_file, unlink_as_copy, with_suppressed_unlink
from .journal import FOLDER, Journal, read_journal, step_path
from .pathcodec import decode_path
from .result import DONE, FAILED, SKIPPED, Result
from .trash import TrashSlot, release


def find_journal(ref: str | os.PathLike, index_dir: str | os.PathLike) -> Path:
    """The journal `ref` names: a path to one, or its file's stem (`20240101T120000000000Z-123`) in the index's
    `journals/` folder."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path.resolve()
    name = Path(ref).name
    candidate = Path(index_dir) / FOLDER / (name if name.endswith(".jsonl") else f"{name}.jsonl")
    if os.sep not in str(ref) and candidate.is_file():
        return candidate
    raise LookalikeError(f"no journal {printable(ref)}: give its path or its name in {printable(candidate.parent)}")


def undo(journal: str | os.PathLike, index_dir: str | os.PathLike) -> Result:
    """Reverse the steps of `journal` (see `find_journal`) on the index at `index_dir` (its write lock held).
    Each step undone is marked in the journal, so a second undo leaves it alone."""
    from ..search.store.index import ImageIndex

    with ImageIndex.open(index_dir, readonly=False) as index:
        path = find_journal(journal, index.path)
        header, steps = read_journal(path)
        if decode_path(header.get("index"), "the journal's index") != str(index.path):
            raise LookalikeError(f"journal {printable(path)} belongs to another index than {printable(index.path)}")
        result = Result(journal=path)
        writer = Journal.reopen(path)
        try:
            updates = []
            for step in reversed(steps):
                outcome = _undo_step(step, result)
                if outcome is not None:
                    writer.write({"kind": "undone", "seq": step["seq"]})
                    if outcome and step["op"] in ("hardlink", "symlink"):
                        updates.append(_relinked_row(index, step))
            updates = [u for u in updates if u is not None]
            if updates:
                index.commit(updates=updates)
        finally:
            writer.close()
    return result


def _relinked_row(index, step: dict):
    src = step_path(step, "src")
    entry = index.lookup_paths([index.stored_path(src)]).get(index.stored_path(src))
    if entry is None:
        return None
    st = os.stat(src)
    return entry.id, index.stored_path(src), st.st_size, st.st_mtime_ns, entry.digest, entry.row


def _undo_step(step: dict, result: Result) -> bool | None:
    """Undo one step: True when something was put back, False when there was nothing to put back (the step was
    never carried out), None when it was skipped or failed (and stays to be undone)."""
    op, state = step.get("op"), step.get("state")
    src = step_path(step, "src")
    if state == "undone":
        result.add(src, op, SKIPPED, "already undone")
        return None
    if state in ("skipped",):
        return False
    if op == "delete":
        if state != "begun" or not os.path.lexists(src):
            result.add(src, op, SKIPPED, "deleted files cannot be restored")
            return None
        return False
    try:
        if op in ("hardlink", "symlink"):
            return _undo_link(step, src, result)
        if op in ("move", "trash"):
            return _undo_move(step, src, result)
    except OSError as exc:
        result.add(src, op, FAILED, exc.strerror or str(exc))
        return None
    result.add(src, str(op), SKIPPED, "unknown step in the journal")
    return None


def _undo_link(step: dict, src: Path, result: Result) -> bool | None:
    keeper = step_path(step, "keeper")
    op = step["op"]
    target = step.get("target")
    if target is None and op == "symlink":  # killed before `done`: the link's text is the one it would have
        target = os.path.relpath(keeper, src.parent)
    if is_our_link(keeper, src, op, target or ""):
        if file_digest(keeper) != step.get("digest"):
            result.add(src, op, SKIPPED, f"its keeper {printable(keeper)} changed: the copy's bytes are gone")
            return None
        unlink_as_copy(keeper, src, int(step["mode"]), int(step["mtime_ns"]))
        result.add(src, op, DONE, dst=src)
        return True
    if _intact(src, step):
        return False  # never linked
    result.add(src, op, SKIPPED, "no longer the link this run made")
    return None


def _intact(path: Path, step: dict) -> bool:
    """Whether `path` is still the file the step recorded (size and mtime)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (step.get("size"), step.get("mtime_ns"))


def _undo_move(step: dict, src: Path, result: Result) -> bool | None:
    op = step["op"]
    dst = step_path(step, "dst")
    temp = step_path(step, "temp")
    if _intact(src, step):  # never moved, or killed before the original was removed: drop what this run made
        if temp is not None:
            with_suppressed_unlink(temp)
        if dst is not None and os.path.lexists(dst) and _same_copy(src, dst, step):
            with_suppressed_unlink(dst)
        if op == "trash" and not os.path.lexists(dst):
            release(_slot(step))
        return False
    if os.path.lexists(src):
        result.add(src, op, SKIPPED, "its original path is occupied again: left where it is, at " + printable(dst))
        return None
    if not _intact(dst, step):
        result.add(src, op, SKIPPED, f"{printable(dst)} is gone or changed since it was moved there")
        return None
    move_file(dst, src, step.get("digest"))
    if op == "trash":
        release(_slot(step))
    result.add(src, op, DONE, dst=src)
    return True


def _same_copy(src: Path, dst: Path, step: dict) -> bool:
    """Whether `dst` is this run's copy of `src`: the same file (a link step), or the same bytes and stamp."""
    a, b = os.lstat(src), os.lstat(dst)
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    return _intact(dst, step) and file_digest(dst) == step.get("digest")


def _slot(step: dict) -> TrashSlot:
    info = step_path(step, "info")
    return TrashSlot(info.parent.parent, info.name[: -len(".trashinfo")])
