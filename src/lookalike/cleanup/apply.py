"""Carrying out a plan: every file checked against the index first, every step journalled before it is taken,
the index updated group by group (rows of moved, trashed and deleted files removed; links get their new
stamp)."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Callable

from ..errors import LookalikeError
from ..paths import printable
from . import trash
from .fileops import link_in_place, move_file
from .guard import check_target
from .journal import Journal
from .pathcodec import encode_path
from .plan import LINKS, Plan, PlannedGroup
from .result import DONE, FAILED, SKIPPED, Result
from .verify import check_file


def apply_plan(plan: Plan, index_dir: str | os.PathLike, *, yes: bool = False,
               progress: Callable[[int, int], None] | None = None) -> Result:
    """Carry out exactly `plan` on the index at `index_dir` (whose write lock is held meanwhile). A file that
    changed or vanished since it was indexed or planned is skipped and named; when the keeper did, its whole
    group is. `delete` needs `yes`. `progress(done, total)` after each file. The result's `exit_code` is 1 when
    an action failed, else 0; LookalikeError for a plan that does not fit this index."""
    from ..search.store.index import ImageIndex

    if plan.action == "delete" and not yes:
        raise LookalikeError("--action delete cannot be undone and needs --yes (trash and move can be undone)")
    with ImageIndex.open(index_dir, readonly=False) as index:
        if str(index.path) != plan.index or str(index.root) != plan.root:
            raise LookalikeError(f"the plan was made for the index {printable(plan.index)} of "
                                 f"{printable(plan.root)}, not {printable(index.path)}")
        if plan.action == "move":
            check_target(plan.to, index.root, index.path, plan.protect)
        if plan.action == "trash" and not trash.supported():
            raise LookalikeError("--action trash is supported on Linux and BSD only here: use --action move")
        journal = Journal.create(index.path, {"action": plan.action, "index": encode_path(index.path),
                                              "root": encode_path(index.root),
                                              "started": _dt.datetime.now(_dt.timezone.utc).isoformat()})
        result = Result(journal=journal.path)
        run = _Run(plan, index, journal, result, progress)
        try:
            for group in plan.groups:
                run.group(group)
        finally:
            journal.close()
    return result


class _Run:
    def __init__(self, plan: Plan, index, journal: Journal, result: Result, progress) -> None:
        self.plan, self.index, self.journal, self.result = plan, index, journal, result
        self.progress = progress
        self.total, self.count, self.seq = plan.actions(), 0, 0

    def _tick(self) -> None:
        self.count += 1
        if self.progress is not None:
            self.progress(self.count, self.total)

    def _entry(self, path: str):
        return self.index.lookup_paths([self.index.stored_path(path)]).get(self.index.stored_path(path))

    def group(self, group: PlannedGroup) -> None:
        action, result = self.plan.action, self.result
        acting = [f for f in group.others if f.act]
        for f in group.others:
            if not f.act:
                result.add(f.path, action, SKIPPED, f.reason)
        if not acting:
            return
        problem, keeper_digest = check_file(Path(group.keeper), self._entry(group.keeper), group.keeper_stamp)
        if problem:
            for f in acting:
                result.add(f.path, action, SKIPPED, f"its group's keeper {printable(group.keeper)} {problem}")
                self._tick()
            return
        updates, deletes = [], []
        for f in acting:
            entry = self._entry(f.path)
            problem, digest = check_file(Path(f.path), entry, f.stamp)
            if not problem and action in LINKS and digest != keeper_digest:
                problem = "not byte-identical to the keeper"
            if problem:
                result.add(f.path, action, SKIPPED, problem)
            elif self._act(group, Path(f.path), entry, digest):
                if action in LINKS:
                    st = os.stat(f.path)
                    updates.append((entry.id, self.index.stored_path(f.path), st.st_size, st.st_mtime_ns,
                                    entry.digest, entry.row))
                else:
                    deletes.append(entry.id)
            self._tick()
        if updates or deletes:
            self.index.commit(updates=updates, deletes=deletes)

    def _act(self, group: PlannedGroup, path: Path, entry, digest: str) -> bool:
        """Carry out the action on one checked file, journalled: True when it was done."""
        action = self.plan.action
        self.seq += 1
        seq = self.seq
        st = os.lstat(path)
        step = {"kind": "begin", "seq": seq, "op": action, "src": encode_path(path), "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "mode": st.st_mode, "digest": digest, "id": entry.id}
        try:
            if action == "trash":
                return self._trash(step, path)
            if action in LINKS:
                if action == "hardlink" and os.lstat(group.keeper).st_dev != st.st_dev:
                    self.result.add(path, action, SKIPPED, "on another device than its keeper: no hard link")
                    return False
                step["keeper"] = encode_path(group.keeper)
                self.journal.write(step)
                target = link_in_place(Path(group.keeper), path, action)
                self.journal.write({"kind": "done", "seq": seq, "target": target})
                self.result.add(path, action, DONE, dst=group.keeper)
                return True
            dst = None
            if action == "move":
                dst = Path(self.plan.to) / os.path.relpath(path, self.plan.root)
                step["dst"] = encode_path(dst)
            self.journal.write(step)
            if action == "move":
                move_file(path, dst, digest, on_temp=lambda tmp: self.journal.write(
                    {"kind": "temp", "seq": seq, "path": encode_path(tmp)}))
            else:
                os.unlink(path)
            self.journal.write({"kind": "done", "seq": seq})
            self.result.add(path, action, DONE, dst=dst)
            return True
        except OSError as exc:
            self.journal.write({"kind": "failed", "seq": seq, "reason": exc.strerror or str(exc)})
            self.result.add(path, action, FAILED, exc.strerror or str(exc))
            return False

    def _trash(self, step: dict, path: Path) -> bool:
        try:
            slot = trash.reserve(path)
        except OSError as exc:
            self.result.add(path, "trash", SKIPPED, f"could not be trashed ({exc.strerror or exc}); left in place")
            return False
        step.update(dst=encode_path(slot.file), info=encode_path(slot.info))
        self.journal.write(step)
        try:
            trash.put(path, slot)
        except OSError as exc:
            trash.release(slot)
            self.journal.write({"kind": "skipped", "seq": step["seq"]})
            self.result.add(path, "trash", SKIPPED, f"could not be trashed ({exc.strerror or exc}); left in place")
            return False
        self.journal.write({"kind": "done", "seq": step["seq"]})
        self.result.add(path, "trash", DONE, dst=slot.file)
        return True
