"""The duplicates answer: one model for `lookalike dupes` and the web API.

`scan(index, ...)` finds the groups: byte-identical files first, by digest (`copies.exact_groups`: groups of any
size; rows that are one file, by inode or real path, are one file), then copies (`copies.find_copies`), each
group with its keeper chosen by a keep rule (`cleanup.choose_keeper`) and every member a copy of the keeper
itself. A set of byte-identical files that are also copies of other images joins their group, so no file is in
two groups.

`DupesAnswer.to_json()` is `{"schema": 1, "groups": [{"keeper", "kind", "why", "members": [{"path", "distance",
"inliers", "width", "height", "size", "date", "action"}]}], "journal"}`; `members` are the images other than
the keeper, `kind` is `exact` (every member byte-identical to the keeper) or `copy`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .copies import DEFAULT_VERIFY, exact_groups, find_copies

SCHEMA = 1


@dataclass
class DupeImage:
    """One image of a group; `distance` and `inliers` compare it with the keeper (None for the keeper itself, or
    unmeasured); `action`: what was done or planned for it (None when no action was asked)."""

    path: str
    id: Optional[int] = None
    distance: Optional[float] = None
    inliers: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    size: Optional[int] = None
    date: Optional[str] = None
    action: Optional[str] = None
    mtime: Optional[float] = None  # epoch seconds of the file, for the keep rules
    taken: Optional[str] = None

    def to_json(self) -> dict:
        return {"path": self.path, "distance": self.distance, "inliers": self.inliers, "width": self.width,
                "height": self.height, "size": self.size, "date": self.date, "action": self.action}

    def keep_facts(self) -> dict:
        """What `cleanup.choose_keeper` weighs."""
        return {"path": self.path, "width": self.width, "height": self.height, "size": self.size,
                "date": self.taken, "mtime": self.mtime}


@dataclass
class DupeGroup:
    keeper: DupeImage
    kind: str  # "exact" or "copy"
    why: str
    members: list[DupeImage] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)  # paths byte-identical to the keeper, keeper included

    def to_json(self) -> dict:
        return {"keeper": self.keeper.path, "kind": self.kind, "why": self.why,
                "members": [m.to_json() for m in self.members]}

    def images(self) -> list[DupeImage]:
        return [self.keeper, *self.members]


@dataclass
class DupesAnswer:
    groups: list[DupeGroup] = field(default_factory=list)
    journal: Optional[str] = None

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "groups": [g.to_json() for g in self.groups], "journal": self.journal}

    def plan_groups(self) -> list[dict]:
        """The groups as `cleanup.plan_actions` takes them (keeper first)."""
        return [{"kind": "exact" if g.kind == "exact" else "near", "identical": g.identical,
                 "members": [m.keep_facts() for m in g.images()]} for g in self.groups]

    def mark(self, plan: Any, result: Any = None) -> None:
        """Each member's `action` from a `cleanup.Plan` (planned) and, once carried out, its `cleanup.Result`."""
        planned = {f.path: (f.act, f.reason) for g in plan.groups for f in g.others}
        outcomes = {} if result is None else {o.path: o for o in result.outcomes}
        for group in self.groups:
            for image in group.images():
                image.action = _action_text(plan.action, planned.get(image.path), outcomes.get(image.path),
                                            result is not None)
        if result is not None and result.journal is not None:
            self.journal = str(result.journal)

    @classmethod
    def from_plan(cls, plan: Any) -> "DupesAnswer":
        """The groups of a saved plan (facts not measured again: distances and sizes are left out)."""
        groups = []
        for g in plan.groups:
            groups.append(DupeGroup(DupeImage(g.keeper), "exact" if g.kind == "exact" else "copy", g.why,
                                    [DupeImage(f.path) for f in g.others]))
        return cls(groups)


def _action_text(action: str, planned: Optional[tuple], outcome: Any, carried_out: bool) -> Optional[str]:
    """`trash (planned)`, `trash`, `skipped: REASON`, `failed: REASON`; `keep` for a keeper."""
    if planned is None:
        return "keep"
    if outcome is not None:
        if outcome.status == "done":
            return action
        return f"{outcome.status}: {outcome.reason}"
    act, reason = planned
    if not act:
        return f"skipped: {reason}"
    return "not reached" if carried_out else f"{action} (planned)"


def _iso(seconds: Optional[float]) -> Optional[str]:
    if seconds is None:
        return None
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="seconds")


class _Facts:
    """What the index holds of each image (path, stamp, header facts), read once per id."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self._cache: dict[int, DupeImage] = {}

    def __call__(self, image_id: int) -> DupeImage:
        return self.many([image_id])[0]

    def many(self, ids: Sequence[int]) -> list[DupeImage]:
        missing = [int(i) for i in ids if int(i) not in self._cache]
        if missing:
            table = self.index.facts(missing) if hasattr(self.index, "facts") else {}
            for i in missing:
                size, mtime_ns = self.index.stamp_of(i) if hasattr(self.index, "stamp_of") else (None, None)
                f = table.get(i)
                mtime = None if mtime_ns is None or mtime_ns < 0 else mtime_ns / 1e9
                taken = f.taken if f is not None else None
                self._cache[i] = DupeImage(str(self.index.path_of(i)), i, width=f.width if f else None,
                                           height=f.height if f else None, size=size if size and size >= 0 else None,
                                           date=taken or _iso(mtime), mtime=mtime, taken=taken)
        return [self._cache[int(i)] for i in ids]


def shared_digests(index: Any) -> dict[int, str]:
    """{id: digest} of the live rows whose digest another row shares (an empty digest never matches)."""
    from ..store.database import _connect_reader

    if not hasattr(index, "manifest") or not hasattr(index, "path"):
        return {}
    conn = getattr(index, "_conn", None) or _connect_reader(index.path, index.manifest.get("root"))
    try:
        rows = conn.execute("SELECT id, digest FROM images WHERE digest IN (SELECT digest FROM images "
                            "WHERE digest IS NOT NULL AND digest != '' GROUP BY digest HAVING count(*) > 1)")
        found = {int(i): str(d) for i, d in rows}
    finally:
        if conn is not getattr(index, "_conn", None):
            conn.close()
    live = set(int(i) for i in index.ids())
    return {i: d for i, d in found.items() if i in live}


def _same_file(paths: dict[int, str]) -> dict[int, tuple]:
    """id -> (device, inode) of its file, links followed: rows that are one file share it."""
    out: dict[int, tuple] = {}
    for i, path in paths.items():
        try:
            st = os.stat(path)
            out[i] = ("inode", st.st_dev, st.st_ino)
        except OSError:
            out[i] = ("id", i)  # a vanished file is nobody's twin; acting on it is refused later
    return out


class _Exact:
    """The byte-identical sets of an index: `sets[id]` the set (one id per file) an id belongs to, `alias[id]`
    the id that stands for a file indexed under several paths (a link)."""

    def __init__(self, index: Any) -> None:
        digests = shared_digests(index)
        same = _same_file({i: str(index.path_of(i)) for i in digests})
        self.digests = digests
        self.groups = exact_groups(digests, same)
        self.sets = {i: g for g in self.groups for i in g}
        first: dict[tuple, int] = {}
        self.alias: dict[int, int] = {}
        for i in sorted(digests):
            rep = first.setdefault((digests[i], same[i]), i)
            if rep != i:
                self.alias[i] = rep

    def rep(self, image_id: int) -> int:
        return self.alias.get(image_id, image_id)

    def siblings(self, image_id: int) -> list[int]:
        rep = self.rep(image_id)
        return self.sets.get(rep, [rep])


def scan(index: Any, *, verify: int = DEFAULT_VERIFY, threshold: Optional[float] = None,
         neighbours: Optional[int] = None, keep: str = "resolution", prefer: Sequence[str | os.PathLike] = (),
         progress: Optional[Callable[[str, int, int], None]] = None) -> DupesAnswer:
    """The duplicate groups of `index` (an opened index, or the path of one, opened read-only). `verify`,
    `threshold`, `neighbours` and `progress(stage, done, total)` as in `copies.find_copies`; `keep` (a rule of
    `cleanup.KEEP_RULES`) and `prefer` (folders whose files are kept first) choose each group's keeper.
    LookalikeError for an unknown rule or an index that cannot be read."""
    from ...cleanup.keep import check_rule

    check_rule(keep)
    if isinstance(index, (str, os.PathLike)):
        from ..store.index import ImageIndex

        with ImageIndex.open(Path(index), readonly=True) as opened:
            return scan(opened, verify=verify, threshold=threshold, neighbours=neighbours, keep=keep,
                        prefer=prefer, progress=progress)
    from ...cleanup.pathcodec import absolute

    prefer = [str(absolute(p)) for p in prefer]  # as `cleanup.plan_actions` takes them: the same keepers
    facts, exact = _Facts(index), _Exact(index)

    def best(ids: list[int]) -> tuple[int, str]:
        """The keeper among `ids` (their byte-identical twins weighed too) and why."""
        from ...cleanup import choose_keeper

        pool = list(dict.fromkeys(j for i in ids for j in exact.siblings(i)))
        pos, why = choose_keeper([f.keep_facts() for f in facts.many(pool)], keep, prefer)
        return pool[pos], why

    def choose(ids: list[int]) -> int:
        winner = best(ids)[0]
        return next((i for i in ids if winner in exact.siblings(i)), ids[0])

    def key(image_id: int) -> tuple:
        f = facts(image_id)
        return (f.width or 0) * (f.height or 0), f.size or 0

    found = find_copies(index, verify=verify, threshold=threshold, neighbours=neighbours, progress=progress,
                        keep=key, choose=choose)
    return DupesAnswer(_assemble(found, exact, facts, best))


def _assemble(found: list, exact: _Exact, facts: _Facts, best: Callable) -> list[DupeGroup]:
    """Copy groups with their byte-identical twins joined in, then the byte-identical sets left over."""
    groups: list[DupeGroup] = []
    used: set[int] = set()
    for g in found:
        measured: dict[int, tuple] = {exact.rep(g.keeper): (0.0, None)}
        for m in g.members:
            measured.setdefault(exact.rep(m.id), (m.distance, m.inliers))
        ids = list(dict.fromkeys(j for i in measured for j in exact.siblings(i)))
        if any(i in used for i in exact.siblings(g.keeper)):
            continue  # its keeper's bytes already lead or sit in another group: left alone
        ids = [i for i in ids if i not in used]
        if len(ids) < 2:
            continue
        used.update(ids)
        values = {j: v for i, v in measured.items() for j in exact.siblings(i)}
        groups.append(_group(ids, values, exact, facts, best))
    for s in exact.groups:
        if not any(i in used for i in s):
            used.update(s)
            groups.append(_group(list(s), {i: (0.0, None) for i in s}, exact, facts, best))
    return groups


def _group(ids: list[int], values: dict[int, tuple], exact: _Exact, facts: _Facts, best: Callable) -> DupeGroup:
    keeper, why = best(ids)
    keeper_digest = exact.digests.get(keeper)
    identical = [i for i in ids if keeper_digest and exact.digests.get(i) == keeper_digest]
    members = []
    for i in ids:
        if i == keeper:
            continue
        image = DupeImage(**{**facts(i).__dict__})
        image.distance, image.inliers = (0.0, None) if i in identical else values.get(i, (None, None))
        members.append(image)
    kind = "exact" if len(identical) == len(ids) else "copy"
    return DupeGroup(facts(keeper), kind, why, members, [facts(i).path for i in identical])
