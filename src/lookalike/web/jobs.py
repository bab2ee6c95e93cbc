"""The duplicates scan as a background job: a verified scan of a large library takes minutes, so
`POST /api/dupes/scan` starts it and the page polls `GET /api/dupes` for its state, progress and, once done, its
groups. One scan at a time; a GET never starts or computes anything.

The groups are the duplicates answer model (`search.retrieve.dupes_answer.scan`, the one `lookalike dupes
--json` prints): each group's keeper and why, its kind (`exact`: byte-identical files; `copy`), and per member
the distance and verified matches to the keeper, resolution, size, date and action. The page names images by
id, so the web answer adds `keeper_id`, the keeper's own facts (`keeper_image`) and each member's `id`; paths
are shown relative to the indexed root, as the listing shows them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import LookalikeError
from .library import shown_path

SCHEMA = 1
MAX_VERIFY = 50


def _relative(path: str, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return shown_path(Path(path).relative_to(root).as_posix())
        except ValueError:
            pass
    return shown_path(path)


def group_json(group: Any, root: Optional[Path]) -> dict:
    """One `dupes_answer.DupeGroup` as the web answers it: the answer model plus ids."""
    def image(m: Any) -> dict:
        return {**m.to_json(), "id": m.id, "path": _relative(m.path, root)}

    answer = group.to_json()
    answer.update(keeper=_relative(group.keeper.path, root), keeper_id=group.keeper.id,
                  keeper_image=image(group.keeper), members=[image(m) for m in group.members])
    return answer


class DupesJob:
    """The one duplicates scan of a server: its state, progress and, once done, its groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict = {"state": "idle", "schema": SCHEMA, "groups": [], "journal": None}
        self._thread: Optional[threading.Thread] = None

    def state(self) -> dict:
        with self._lock:
            return dict(self._state)

    def start(self, view: Any, verify: int) -> bool:
        """Start a scan of the snapshot `view` (a `service.IndexView`); False when one is running."""
        if not 0 <= verify <= MAX_VERIFY:
            raise LookalikeError(f"verify takes 0 to {MAX_VERIFY} neighbours per image")
        with self._lock:
            if self._state["state"] == "running":
                return False
            self._state = {"state": "running", "schema": SCHEMA, "stage": "starting", "done": 0, "total": 0,
                           "started": time.time(), "verify": verify, "groups": [], "journal": None}
            self._thread = threading.Thread(target=self._run, args=(view, verify), daemon=True,
                                            name="lookalike-dupes-scan")
            self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _progress(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._state.update(stage=stage, done=int(done), total=int(total))

    def _run(self, view: Any, verify: int) -> None:
        from ..search.retrieve.dupes_answer import scan

        try:
            root = getattr(view.index, "root", None)
            answer = scan(view.index, verify=verify, progress=self._progress)
            groups = [group_json(g, None if root is None else Path(root)) for g in answer.groups]
            with self._lock:
                self._state.update(state="done", stage="done", groups=groups, finished=time.time())
        except Exception as exc:  # the page shows why; the server goes on
            with self._lock:
                self._state.update(state="failed", error=str(exc) or exc.__class__.__name__)

    def mark(self, ids: list[int], action: Optional[str], journal: Optional[str]) -> None:
        """Record on the groups what the page did to these images (None: put back by an undo)."""
        wanted = set(ids)
        with self._lock:
            for group in self._state.get("groups", []):
                for member in [group["keeper_image"], *group["members"]]:
                    if member["id"] in wanted:
                        member["action"] = action
            self._state["journal"] = journal
