"""A run of a plan killed mid-way (SIGKILL) leaves a journal that undo still reverses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cleanup import group, make_library, tree
from lookalike.cleanup import Plan, plan_actions, undo

SAME = b"the same bytes" * 20
# Runs a saved plan and kills itself with SIGKILL right after the Nth file has moved, before its journal
# entry is marked done: the worst moment for the journal.
CHILD = """
import os, signal, sys
from pathlib import Path
import lookalike.cleanup.apply as A
from lookalike.cleanup import Plan, apply_plan
stop, count = int(sys.argv[3]), [0]
real = A.move_file
def move_then_die(*args, **kwargs):
    real(*args, **kwargs)
    count[0] += 1
    if count[0] == stop:
        os.kill(os.getpid(), signal.SIGKILL)
A.move_file = move_then_die
apply_plan(Plan.from_json(Path(sys.argv[1]).read_text()), sys.argv[2])
"""


@pytest.mark.parametrize("action", ["move", "trash"])
def test_undo_after_a_kill(tmp_path, monkeypatch, action):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    files = {f"g{g}/{n}.jpg": SAME + bytes([g]) for g in range(3) for n in ("keep", "copy")}
    root, ix = make_library(tmp_path, files)
    before = tree(root)
    groups = [group(root, "exact", f"g{g}/keep.jpg", f"g{g}/copy.jpg", sizes={f"g{g}/keep.jpg": (50, 50)})
              for g in range(3)]
    plan = plan_actions(groups, action, index_dir=ix, to=tmp_path / "out" if action == "move" else None)
    saved = tmp_path / "plan.json"
    saved.write_text(plan.to_json())
    if action == "trash":  # trash moves through the same placing step: kill there
        child = CHILD.replace("A.move_file", "T._place").replace("import lookalike.cleanup.apply as A",
                                                                   "import lookalike.cleanup.trash as T")
    else:
        child = CHILD
    proc = subprocess.run([sys.executable, "-c", child, str(saved), str(ix), "2"], env={**os.environ},
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert sum(not (root / f"g{g}/copy.jpg").exists() for g in range(3)) == 2
    journal = next((ix / "journals").iterdir())
    kinds = [json.loads(x)["kind"] for x in journal.read_text().splitlines()]
    assert kinds[-1] == "begin" and kinds.count("done") == 1  # the second step began and was never marked done
    result = undo(journal.stem, ix)
    assert result.exit_code == 0 and len(result.of("done")) == 2, result.outcomes
    assert tree(root) == before
    leftovers = [p for p in (tmp_path / ("out" if action == "move" else "xdg/Trash")).rglob("*") if p.is_file()]
    assert leftovers == []


def test_plan_json_is_what_a_later_apply_reads(tmp_path):
    root, ix = make_library(tmp_path, {"a.jpg": SAME, "b.jpg": SAME})
    plan = plan_actions([group(root, "exact", "a.jpg", "b.jpg")], "symlink", index_dir=ix)
    data = json.loads(plan.to_json())
    assert data["action"] == "symlink" and data["groups"][0]["why"]  # each group says why its keeper stays
    assert Plan.from_json(json.dumps(data)).groups[0].others[0].path == str(Path(root) / "b.jpg")
