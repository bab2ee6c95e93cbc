"""What a run of a plan (or of an undo) did: one outcome per file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class Outcome:
    """One file: `status` done, skipped (with the reason; nothing was changed) or failed (the reason)."""

    path: str
    action: str
    status: str
    reason: str = ""
    dst: str | None = None


@dataclass
class Result:
    outcomes: list[Outcome] = field(default_factory=list)
    journal: Path | None = None

    def add(self, path, action: str, status: str, reason: str = "", dst=None) -> Outcome:
        out = Outcome(str(path), action, status, reason, None if dst is None else str(dst))
        self.outcomes.append(out)
        return out

    def of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def exit_code(self) -> int:
        """0 when every action was done or skipped with a reason, 1 when any failed."""
        return 1 if self.of(FAILED) else 0

    def to_dict(self) -> dict:
        from ..paths import printable

        rows = [{**asdict(o), "path": printable(o.path), "dst": None if o.dst is None else printable(o.dst)}
                for o in self.outcomes]
        return {"journal": None if self.journal is None else printable(self.journal), "outcomes": rows,
                **{s: len(self.of(s)) for s in (DONE, SKIPPED, FAILED)}}
