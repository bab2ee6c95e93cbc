"""Keep rules: which copy of a group stays, and a sentence saying why."""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import LookalikeError
from ..paths import printable
from .pathcodec import is_under

DEFAULT_KEEP = "resolution"


@dataclass(frozen=True)
class ImageFacts:
    """What the keep rules know of one image. `date`: when it was taken (EXIF DateTimeOriginal, as ISO text,
    EXIF text "YYYY:MM:DD hh:mm:ss" or epoch seconds), None when unknown; `mtime`: epoch seconds of the file."""

    path: str
    width: int | None = None
    height: int | None = None
    size: int | None = None
    date: str | float | None = None
    mtime: float | None = None

    @classmethod
    def of(cls, value: "ImageFacts | Mapping[str, Any]") -> "ImageFacts":
        """Facts from a mapping with those keys (unknown keys ignored), or the facts themselves."""
        if isinstance(value, ImageFacts):
            return value
        if not isinstance(value, Mapping) or not value.get("path"):
            raise LookalikeError(f"a group member has no path: {str(value)[:80]!r}")
        return cls(**{k: value.get(k) for k in ("path", "width", "height", "size", "date", "mtime")})

    @property
    def pixels(self) -> int:
        return int(self.width or 0) * int(self.height or 0)

    @property
    def when(self) -> float | None:
        """The date as epoch seconds: `date` when it parses, else `mtime`."""
        return parse_date(self.date) if parse_date(self.date) is not None else _finite(self.mtime)


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_date(value: Any) -> float | None:
    """Epoch seconds of an ISO or EXIF date text or of a number; None when it is none of those. A date without
    a zone is read as UTC: only its order among one group's copies matters."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().rstrip("\0")
    if len(text) >= 10 and text[4] == ":" and text[7] == ":":  # EXIF: "2021:06:01 12:00:00"
        text = text[:4] + "-" + text[5:7] + "-" + text[8:]
    try:
        stamp = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _finite(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.timezone.utc)
    return stamp.timestamp()


def _day(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


# A criterion: (score, higher first?, how the winner is described). Unknown values always rank last.
Criterion = tuple[Callable[[ImageFacts], Any], bool, Callable[[ImageFacts], str]]
_PIXELS: Criterion = (lambda f: f.pixels or None, True, lambda f: f"most pixels ({f.width}x{f.height})")
_SIZE: Criterion = (lambda f: f.size, True, lambda f: f"largest file ({f.size} bytes)")
_OLDEST: Criterion = (lambda f: f.when, False, lambda f: f"oldest ({_day(f.when)})")
_NEWEST: Criterion = (lambda f: f.when, True, lambda f: f"newest ({_day(f.when)})")
_SHORTEST: Criterion = (lambda f: len(f.path), False, lambda f: "shortest path")

KEEP_RULES: dict[str, tuple[Criterion, ...]] = {
    "resolution": (_PIXELS, _SIZE, _OLDEST),
    "size": (_SIZE, _PIXELS, _OLDEST),
    "newest": (_NEWEST, _PIXELS, _SIZE),
    "oldest": (_OLDEST, _PIXELS, _SIZE),
    "shortest-path": (_SHORTEST, _PIXELS, _OLDEST),
}


def check_rule(rule: str) -> str:
    if rule not in KEEP_RULES:
        raise LookalikeError(f"unknown keep rule {rule!r}: choose one of {', '.join(KEEP_RULES)}")
    return rule


def _best(candidates: list[int], facts: Sequence[ImageFacts], crit: Criterion) -> list[int]:
    score, high, _ = crit
    known = [(score(facts[i]), i) for i in candidates if score(facts[i]) is not None]
    if not known:
        return candidates
    top = (max if high else min)(v for v, _ in known)
    return [i for v, i in known if v == top]


def choose_keeper(members: Iterable["ImageFacts | Mapping[str, Any]"], rule: str = DEFAULT_KEEP,
                  prefer: Sequence[str | os.PathLike] = ()) -> tuple[int, str]:
    """The position of the copy to keep among `members` and why. Files under a `prefer` folder come first (an
    earlier folder before a later one); among those, the rule's criteria decide in turn (`KEEP_RULES`), and the
    path in sort order settles a full tie so that the same group always keeps the same file."""
    facts = [ImageFacts.of(m) for m in members]
    check_rule(rule)
    if not facts:
        raise LookalikeError("a group has no members")
    candidates = list(range(len(facts)))
    reasons = []
    for folder in prefer:
        under = [i for i in candidates if is_under(facts[i].path, folder)]
        if under:
            if len(under) < len(candidates):
                reasons.append(f"under preferred folder {printable(folder)}")
            candidates = under
            break
    for crit in KEEP_RULES[rule]:
        if len(candidates) == 1:
            break
        best = _best(candidates, facts, crit)
        if len(best) < len(candidates):
            reasons.append(crit[2](facts[best[0]]))
        candidates = best
    keeper = min(candidates, key=lambda i: os.fsencode(facts[i].path))
    if len(candidates) > 1:
        reasons.append("copies tie on every rule: first path in sort order")
    return keeper, "; ".join(reasons) or "only copy"
