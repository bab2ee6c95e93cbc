"""Trash and move from the page (`POST /api/actions`) and their undo (`POST /api/undo`), through the cleanup engine
that `lookalike dupes --action` and `lookalike undo` use: each file is checked against the index before it is
touched, each step is journalled in `INDEX/journals/`, and the journal's stem is what the page undoes by.

Requests name images by id, never by path; a move goes to the folder the server was started with
(`serve --move-to`). One action runs at a time; while another process (`lookalike index`) writes the index, an
action is refused at once with `ActionBusy` rather than waiting for its lock.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..errors import LookalikeError
from ..paths import printable

ACTIONS = ("trash", "move")
MAX_IDS = 100_000  # images one request may act on
RETRY_AFTER = 5  # seconds a refused action is told to wait
JOURNAL_STEM = re.compile(r"[0-9]{8}T[0-9]{6,12}Z-[0-9]{1,10}")


class ActionBusy(LookalikeError):
    """Another action, or another process's write to the index, is under way (409)."""


class ActionRefused(LookalikeError):
    """What this server was started without: `--move-to` for moves (422)."""


def journal_path(index_dir: Path, journal: str) -> Path:
    """The journal a page names by its stem; anything that is not a stem is refused (it never becomes a path)."""
    from ..cleanup.journal import FOLDER

    if not isinstance(journal, str) or not JOURNAL_STEM.fullmatch(journal):
        raise LookalikeError("not a journal name of this index")
    path = index_dir / FOLDER / f"{journal}.jsonl"
    if not path.is_file():
        raise LookalikeError(f"no journal {journal} in this index")
    return path


class Actions:
    """The actions of one server over one index folder."""

    def __init__(self, index_dir: Path, root: Path, move_to: Optional[Path] = None) -> None:
        self.index_dir, self.root = Path(index_dir), Path(root)
        self.move_to = None if move_to is None else Path(move_to)
        self._one = threading.Lock()

    def _probe_lock(self) -> None:
        """ActionBusy when another process holds the index's write lock now (no waiting for it)."""
        from ..locking import LockBusy, acquire
        from ..search.store.layout import LOCKFILE

        try:
            acquire(self.index_dir / LOCKFILE, wait_s=0).close()
        except LockBusy as busy:
            raise ActionBusy(f"another Lookalike process{busy.by()} is writing the index: try again when it "
                             "has finished") from None
        except OSError as exc:
            raise LookalikeError(f"the index folder cannot be written ({exc.strerror}): no action is possible") \
                from None

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One action or undo at a time, and none while another process writes the index."""
        if not self._one.acquire(blocking=False):
            raise ActionBusy("another action is under way: try again when it has finished")
        try:
            self._probe_lock()
            yield
        finally:
            self._one.release()

    def run(self, action: str, groups: Iterable[tuple[Optional[int], list[int]]], path_of) -> dict:
        """Carry out `action` on the images of `groups` ((keeper id or None, ids to act on)); `path_of(id)` gives
        an image's file (KeyError when unknown). A group's keeper is checked before its images are touched; an
        image on its own is its own check. Answers {"journal", "done", "skipped"}."""
        from ..cleanup import apply_plan
        from ..cleanup.plan import Plan, PlannedFile, PlannedGroup

        if action not in ACTIONS:
            raise LookalikeError(f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
        if action == "move" and self.move_to is None:
            raise ActionRefused("this server moves nothing: start it with `lookalike serve --move-to DIR`")
        skipped, by_path, planned = [], {}, []
        seen: set[int] = set()
        for keeper, ids in groups:
            keeper_path = None
            if keeper is not None:
                try:
                    keeper_path = str(path_of(keeper))
                except KeyError:
                    skipped += [{"id": i, "reason": f"its keeper {keeper} is not in the index"} for i in ids]
                    continue
            for image_id in ids:
                if image_id in seen or image_id == keeper:
                    continue
                seen.add(image_id)
                try:
                    path = str(path_of(image_id))
                except KeyError:
                    skipped.append({"id": image_id, "reason": "not in the index"})
                    continue
                by_path[path] = image_id
                planned.append(PlannedGroup("near", keeper_path or path, "kept on the page", None,
                                            [PlannedFile(path, True)]))
        if len(seen) > MAX_IDS:
            raise LookalikeError(f"one request acts on at most {MAX_IDS} images")
        if not planned:
            return {"journal": None, "done": [], "skipped": skipped}
        with self._exclusive():
            plan = Plan(action, str(self.index_dir), str(self.root), to=None if self.move_to is None else str(self.move_to.resolve()),
                        groups=planned)
            result = apply_plan(plan, self.index_dir)
        done = []
        for outcome in result.outcomes:
            image_id = by_path.get(outcome.path)
            if outcome.status == "done":
                done.append(image_id)
            else:
                skipped.append({"id": image_id, "reason": outcome.reason or outcome.status})
        return {"journal": None if result.journal is None else Path(result.journal).stem, "done": done,
                "skipped": skipped}

    def undo(self, journal: str) -> dict:
        """Undo the journal named by its stem: {"journal", "done": [paths put back], "skipped"}."""
        from ..cleanup import undo

        path = journal_path(self.index_dir, journal)
        with self._exclusive():
            result = undo(path, self.index_dir)
        return {"journal": journal, "done": [printable(o.path) for o in result.outcomes if o.status == "done"],
                "skipped": [{"path": printable(o.path), "reason": o.reason or o.status}
                            for o in result.outcomes if o.status != "done"]}
