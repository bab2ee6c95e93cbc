"""A plan: for each group of copies, the keeper (and why) and what happens to each other copy. Planning
touches nothing; `apply_plan` carries out exactly a plan, now or later from its JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import LookalikeError
from ..paths import printable
from . import trash
from .guard import check_target
from .keep import DEFAULT_KEEP, ImageFacts, check_rule, choose_keeper
from .pathcodec import absolute, decode_path, encode_path, is_under

ACTIONS = ("move", "trash", "hardlink", "symlink", "delete")
LINKS = ("hardlink", "symlink")
FORMAT = "lookalike-cleanup-plan"
VERSION = 1
MAX_PLAN_BYTES = 512 << 20  # a plan larger than any real library's is refused before it is parsed


@dataclass
class PlannedFile:
    """A copy that is not kept: `act` when the action applies to it, else `reason` says why it is left alone.
    `stamp`: (size, mtime_ns) the index recorded when planning, None when the index does not hold it."""

    path: str
    act: bool
    reason: str = ""
    stamp: tuple[int, int] | None = None


@dataclass
class PlannedGroup:
    kind: str  # "exact" (byte-identical copies) or "near"
    keeper: str
    why: str
    keeper_stamp: tuple[int, int] | None
    others: list[PlannedFile] = field(default_factory=list)


@dataclass
class Plan:
    action: str
    index: str  # the index folder
    root: str  # the library root it indexes
    keep: str = DEFAULT_KEEP
    to: str | None = None
    prefer: list[str] = field(default_factory=list)
    protect: list[str] = field(default_factory=list)
    groups: list[PlannedGroup] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What to say before carrying the plan out."""
        return ["--action delete cannot be undone: deleted files do not go to the trash"] \
            if self.action == "delete" else []

    def actions(self) -> int:
        return sum(f.act for g in self.groups for f in g.others)

    def to_json(self) -> str:
        groups = [{"kind": g.kind, "keeper": encode_path(g.keeper), "why": g.why, "keeper_stamp": g.keeper_stamp,
                   "others": [{"file": encode_path(f.path), "act": f.act, "reason": f.reason, "stamp": f.stamp}
                              for f in g.others]} for g in self.groups]
        return json.dumps({"format": FORMAT, "version": VERSION, "action": self.action, "keep": self.keep,
                           "index": encode_path(self.index), "root": encode_path(self.root),
                           "to": None if self.to is None else encode_path(self.to),
                           "prefer": [encode_path(p) for p in self.prefer],
                           "protect": [encode_path(p) for p in self.protect], "groups": groups}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        """A plan saved by `to_json`; LookalikeError (one line) for anything else."""
        if len(text) > MAX_PLAN_BYTES:
            raise LookalikeError("the plan is larger than any plan Lookalike writes")
        try:
            data = json.loads(text)
            return _plan_from(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LookalikeError(f"not a Lookalike plan ({exc.__class__.__name__}: {str(exc)[:80]})") from None


def _stamp(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    size, mtime = value
    if type(size) is not int or type(mtime) is not int:
        raise ValueError("a stamp is not two integers")
    return size, mtime


def _plan_from(data: dict) -> Plan:
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError("unknown format or version")
    if data["action"] not in ACTIONS:
        raise ValueError(f"unknown action {data['action']!r}")
    groups = []
    for g in data["groups"]:
        if g["kind"] not in ("exact", "near") or not isinstance(g["why"], str):
            raise ValueError("bad group")
        others = [PlannedFile(decode_path(f["file"]), bool(f["act"]), str(f["reason"]), _stamp(f["stamp"]))
                  for f in g["others"]]
        groups.append(PlannedGroup(g["kind"], decode_path(g["keeper"]), g["why"], _stamp(g["keeper_stamp"]),
                                   others))
    plan = Plan(data["action"], decode_path(data["index"]), decode_path(data["root"]), check_rule(data["keep"]),
                None if data["to"] is None else decode_path(data["to"]),
                [decode_path(p) for p in data["prefer"]], [decode_path(p) for p in data["protect"]], groups)
    _check_unique(plan.groups)
    return plan


def _check_unique(groups: Sequence[PlannedGroup]) -> None:
    """A file in two groups could be the keeper of one and acted on in the other: refused."""
    seen: set[str] = set()
    for g in groups:
        for path in (g.keeper, *(f.path for f in g.others)):
            if path in seen:
                raise LookalikeError(f"{printable(path)} is in two groups of the plan")
            seen.add(path)


def _members_of(group: Any) -> tuple[str, list[ImageFacts], set[str]]:
    """The group's kind, members and the paths among them byte-identical to one another (`identical`: in a
    group of near copies, an exact copy may still be linked)."""
    def get(key: str) -> Any:
        return group.get(key) if isinstance(group, Mapping) else getattr(group, key, None)

    kind, members = get("kind"), get("members")
    if kind not in ("exact", "near") or not members:
        raise LookalikeError("a group needs a kind (exact or near) and members")
    facts = [ImageFacts.of(m) for m in members]
    identical = {str(absolute(p)) for p in (get("identical") or ())}
    return kind, [ImageFacts(str(absolute(f.path)), f.width, f.height, f.size, f.date, f.mtime)
                  for f in facts], identical


def _why_not(action: str, kind: str, path: str, root: Path, protect: Sequence[str], identical: bool = False) -> str:
    """Why the action leaves this copy alone ('' when it applies)."""
    for folder in protect:
        if is_under(path, folder):
            return f"protected ({printable(folder)})"
    if action in LINKS and kind != "exact" and not identical:
        return "not byte-identical to the keeper: a link would lose this copy's content"
    if not is_under(path, root):
        return "outside the library root"
    return ""


def plan_actions(groups: Iterable[Any], action: str, *, index_dir: str | os.PathLike,
                 to: str | os.PathLike | None = None, protect: Sequence[str | os.PathLike] = (),
                 keep: str = DEFAULT_KEEP, prefer: Sequence[str | os.PathLike] = ()) -> Plan:
    """Plan `action` (one of ACTIONS) on the copies of each group, touching nothing.

    `groups`: mappings or objects with `kind` ("exact" for byte-identical copies, else "near") and `members`
    (`ImageFacts` or mappings with path, width, height, size, date, mtime), and optionally `identical` (the
    paths of a near group that are byte-identical to each other: links may replace those). `keep` and `prefer` choose each
    group's keeper (`choose_keeper`); files under a `protect` folder are never acted on; `to` is the folder
    `move` sends copies to (their layout under the index root kept), never inside the root, the index folder
    or a protected folder. LookalikeError for bad input."""
    from ..search.store.index import ImageIndex

    if action not in ACTIONS:
        raise LookalikeError(f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
    check_rule(keep)
    if action == "trash" and not trash.supported():
        raise LookalikeError("--action trash is supported on Linux and BSD only here: use --action move --to DIR")
    protect_s = [str(absolute(p)) for p in protect]
    with ImageIndex.open(index_dir) as index:
        root, index_path = index.root, index.path
        target = check_target(to, root, index_path, protect_s) if action == "move" else None
        plan = Plan(action, str(index_path), str(root), keep, None if target is None else str(target),
                    [str(absolute(p)) for p in prefer], protect_s)
        for group in groups:
            kind, facts, identical = _members_of(group)
            pos, why = choose_keeper(facts, keep, plan.prefer)
            others = []
            for i, f in enumerate(facts):
                if i != pos:
                    same = facts[pos].path in identical and f.path in identical
                    reason = _why_not(action, kind, f.path, root, protect_s, same)
                    others.append(PlannedFile(f.path, not reason, reason, _indexed(index, f.path)))
            keeper = facts[pos].path
            plan.groups.append(PlannedGroup(kind, keeper, why, _indexed(index, keeper), others))
    _check_unique(plan.groups)
    return plan


def _indexed(index, path: str) -> tuple[int, int] | None:
    image_id = index.id_of(path)
    return None if image_id is None else tuple(int(x) for x in index.stamp_of(image_id))
