"""Acting on groups of duplicate images: choose a keeper in each group, plan what happens to the other copies,
carry the plan out with a journal, and undo it from that journal.

The pieces, in the order a caller uses them:

- `plan_actions(groups, action, index_dir=..., to=None, protect=(), keep="resolution", prefer=())` -> `Plan`:
  nothing is touched; `Plan.to_json()` / `Plan.from_json(text)` save a plan and read it back.
- `apply_plan(plan, index_dir, yes=False, progress=None)` -> `Result`: carries out exactly that plan, each action
  journalled (`INDEX/journals/<utc>-<pid>.jsonl`) before it is taken, the index updated as it goes.
- `undo(journal, index_dir)` -> `Result`: reverses the moves, trashes and links of a journal (a path, or its
  file's stem), a run killed mid-way included.
- `choose_keeper(members, rule, prefer)` -> (keeper's position, why): the keep rules on their own.

Every user error is a `LookalikeError` (one line); the library never prints.
"""

from __future__ import annotations

from .apply import apply_plan
from .keep import KEEP_RULES, ImageFacts, choose_keeper
from .plan import ACTIONS, Plan, plan_actions
from .result import Outcome, Result
from .undo import find_journal, undo

__all__ = ["ACTIONS", "KEEP_RULES", "ImageFacts", "Outcome", "Plan", "Result", "apply_plan", "choose_keeper",
           "find_journal", "plan_actions", "undo"]
