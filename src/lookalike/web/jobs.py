"""The duplicates scan as a background job (`POST /api/dupes/scan`, `GET /api/dupes`): a verified scan of a large
library takes minutes, so a request starts it and the page polls its state and progress. One scan at a time.

The groups come from one function, `find_groups` (the copies engine, `search.retrieve.copies.find_copies`), and
are answered in the duplicates answer model: each group's keeper and why, its kind (`exact`: byte-identical
files; `copy`), and per member the distance and verified matches to the keeper, resolution, size and date.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..errors import LookalikeError
from .library import iso_mtime, shown_path

SCHEMA = 1
MAX_VERIFY = 50


def find_groups(index: Any, verify: int, progress: Callable[[str, int, int], None], keep: Callable[[int], Any]):
    """Copy groups of a snapshot: [(keeper id, [(member id, distance, inliers or None)])]."""
    from ..search.retrieve.copies import find_copies

    groups = find_copies(index, verify=verify, progress=progress, keep=keep)
    return [(g.keeper, [(m.id, m.distance, m.inliers) for m in g.members]) for g in groups]


def _pixels(path) -> tuple[Optional[int], Optional[int]]:
    """(width, height) from the file's header, without decoding it; (None, None) when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except Exception:  # any unreadable file just shows no resolution
        return None, None


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
        try:
            groups = self._scan(view, verify)
            with self._lock:
                self._state.update(state="done", stage="done", groups=groups, finished=time.time())
        except Exception as exc:  # the page shows why; the server goes on
            with self._lock:
                self._state.update(state="failed", error=str(exc) or exc.__class__.__name__)

    def _scan(self, view: Any, verify: int) -> list[dict]:
        from ..cleanup import choose_keeper

        library = view.library()
        facts: dict[int, dict] = {}

        def fact(image_id: int) -> dict:
            if image_id not in facts:
                row = library.image(image_id) or {}
                path = view.path_of(image_id)
                if row.get("width") is None:
                    row["width"], row["height"] = _pixels(path)
                facts[image_id] = {**row, "abs": str(path)}
            return facts[image_id]

        def keep(image_id: int) -> tuple:
            f = fact(image_id)
            return (f.get("width") or 0) * (f.get("height") or 0), f.get("size") or 0, -image_id

        found = find_groups(view.index, verify, self._progress, keep)
        digests = library.digests([i for keeper, members in found for i in [keeper, *(m[0] for m in members)]])
        out = []
        for keeper, members in found:
            ids = [keeper] + [m[0] for m in members]
            rows = [fact(i) for i in ids]
            pos, why = choose_keeper([{"path": r["abs"], "width": r.get("width"), "height": r.get("height"),
                                       "size": r.get("size"), "date": r.get("date")} for r in rows])
            exact = bool(digests.get(keeper)) and all(digests.get(i) == digests.get(keeper) for i in ids)
            out.append({
                "keeper": rows[0]["path"], "keeper_id": keeper, "kind": "exact" if exact else "copy",
                "why": why if pos == 0 else "most pixels, then the largest file",
                "members": [self._member(i, fact(i), None, None) for i in [keeper]]
                + [self._member(i, fact(i), dist, inliers) for i, dist, inliers in members],
            })
        return out

    @staticmethod
    def _member(image_id: int, f: dict, distance, inliers) -> dict:
        return {"id": image_id, "path": f.get("path") or shown_path(f["abs"]), "distance": distance,
                "inliers": inliers, "width": f.get("width"), "height": f.get("height"), "size": f.get("size"),
                "date": f.get("date") or (iso_mtime(f["mtime_ns"]) if f.get("mtime_ns") else None),
                "action": None}

    def mark(self, ids: list[int], action: Optional[str], journal: Optional[str]) -> None:
        """Record on the groups what the page did to these images (None: put back by an undo)."""
        wanted = set(ids)
        with self._lock:
            for group in self._state.get("groups", []):
                for member in group["members"]:
                    if member["id"] in wanted:
                        member["action"] = action
            self._state["journal"] = journal
