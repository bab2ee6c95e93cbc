"""Acting on duplicate groups: each action, its journal and its undo, on a small indexed library."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from helpers.cleanup import group, make_library, rows, tree
from lookalike.cleanup import Plan, apply_plan, plan_actions, undo
from lookalike.errors import LookalikeError

SAME = b"identical image bytes" * 10
FILES = {"a.jpg": SAME, "sub/b.jpg": SAME, "c.jpg": b"a near copy" * 5, "d.jpg": b"another photo" * 7}
SIZES = {"a.jpg": (40, 30)}  # the keeper by resolution


@pytest.fixture
def lib(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    root, ix = make_library(tmp_path, FILES)
    os.chmod(root / "sub/b.jpg", 0o640)
    os.utime(root / "sub/b.jpg", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    _reindex(root, ix)
    return root, ix


def _reindex(root: Path, ix: Path) -> None:
    from lookalike.search.store.index import ImageIndex

    with ImageIndex.open(ix, readonly=False) as w:
        ups = []
        for path, e in w.iter_entries():
            st = os.stat(root / path)
            ups.append((e.id, path, st.st_size, st.st_mtime_ns, e.digest, e.row))
        w.commit(updates=ups)


def _groups(root):
    return [group(root, "exact", "a.jpg", "sub/b.jpg", sizes=SIZES),
            group(root, "near", "d.jpg", "c.jpg", sizes={"d.jpg": (50, 50)})]


def test_move_keeps_layout_mode_mtime_and_undo_restores(lib, tmp_path):
    root, ix = lib
    before = tree(root)
    plan = plan_actions(_groups(root), "move", index_dir=ix, to=tmp_path / "dupes")
    assert plan.groups[0].keeper == str(root / "a.jpg") and "most pixels (40x30)" in plan.groups[0].why
    result = apply_plan(plan, ix)
    assert result.exit_code == 0 and len(result.of("done")) == 2
    moved = tmp_path / "dupes/sub/b.jpg"
    assert moved.read_bytes() == SAME and not (root / "sub/b.jpg").exists()
    assert stat.S_IMODE(moved.stat().st_mode) == 0o640 and moved.stat().st_mtime_ns == 1_500_000_000_000_000_000
    assert rows(ix) == {"a.jpg", "d.jpg"}
    journal = result.journal
    assert journal.parent == ix / "journals" and stat.S_IMODE(journal.stat().st_mode) == 0o666 & ~_umask()
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["header", "begin", "done", "begin", "done"]
    back = undo(journal.stem, ix)
    assert back.exit_code == 0 and len(back.of("done")) == 2 and tree(root) == before
    assert (root / "sub/b.jpg").stat().st_mtime_ns == 1_500_000_000_000_000_000
    again = undo(journal, ix)
    assert [o.reason for o in again.outcomes] == ["already undone"] * 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_trash_layout_and_undo(lib, tmp_path):
    root, ix = lib
    (root / "sub/b.jpg").rename(root / "sub/my b%.jpg")
    _fix_row(ix, "sub/b.jpg", "sub/my b%.jpg")
    g = group(root, "exact", "a.jpg", "sub/my b%.jpg", sizes=SIZES)
    result = apply_plan(plan_actions([g], "trash", index_dir=ix), ix)
    assert result.exit_code == 0, result.outcomes
    trash = tmp_path / "xdg/Trash"
    assert (trash / "files/my b%.jpg").read_bytes() == SAME
    info = (trash / "info/my b%.jpg.trashinfo").read_text().splitlines()
    assert info[0] == "[Trash Info]" and info[1] == f"Path={root}/sub/my%20b%25.jpg"
    assert info[2].startswith("DeletionDate=") and len(info[2]) == len("DeletionDate=2024-01-01T00:00:00")
    assert rows(ix) == {"a.jpg", "c.jpg", "d.jpg"}
    assert undo(result.journal, ix).exit_code == 0
    assert (root / "sub/my b%.jpg").read_bytes() == SAME
    assert not list((trash / "files").iterdir()) and not list((trash / "info").iterdir())


def _fix_row(ix, old: str, new: str) -> None:
    from lookalike.search.store.index import ImageIndex

    with ImageIndex.open(ix, readonly=False) as w:
        e = w.lookup_paths([old])[old]
        w.commit(updates=[(e.id, new, e.size, e.mtime_ns, e.digest, e.row)])


@pytest.mark.parametrize("kind", ["hardlink", "symlink"])
def test_links_for_exact_groups_only_and_undo(lib, kind):
    root, ix = lib
    plan = plan_actions(_groups(root), kind, index_dir=ix)
    near = plan.groups[1].others[0]
    assert not near.act and "not byte-identical" in near.reason
    result = apply_plan(plan, ix)
    assert result.exit_code == 0 and [o.status for o in result.outcomes] == ["done", "skipped"]
    b = root / "sub/b.jpg"
    if kind == "hardlink":
        assert os.path.samefile(b, root / "a.jpg") and not b.is_symlink()
    else:
        assert b.is_symlink() and os.readlink(b) == "../a.jpg"
    assert b.read_bytes() == SAME and (root / "c.jpg").exists()
    assert undo(result.journal, ix).exit_code == 0
    assert not b.is_symlink() and not os.path.samefile(b, root / "a.jpg") and b.read_bytes() == SAME
    assert stat.S_IMODE(b.stat().st_mode) == 0o640 and b.stat().st_mtime_ns == 1_500_000_000_000_000_000


def test_delete_needs_yes_and_cannot_be_undone(lib):
    root, ix = lib
    before = tree(root)
    plan = plan_actions(_groups(root), "delete", index_dir=ix)
    assert "cannot be undone" in plan.warnings[0]
    with pytest.raises(LookalikeError, match="needs --yes"):
        apply_plan(plan, ix)
    assert tree(root) == before and not (ix / "journals").exists()
    result = apply_plan(plan, ix, yes=True)
    assert result.exit_code == 0 and set(tree(root)) == {"a.jpg", "d.jpg"}
    back = undo(result.journal, ix)
    assert {o.reason for o in back.outcomes} == {"deleted files cannot be restored"}


def test_protect_and_changed_files_are_skipped(lib, tmp_path):
    root, ix = lib
    plan = plan_actions(_groups(root), "move", index_dir=ix, to=tmp_path / "out", protect=[root / "sub"])
    assert plan.groups[0].others[0].reason.startswith("protected")
    (root / "c.jpg").write_bytes(b"edited since")  # a member changed: only it is skipped
    result = apply_plan(plan, ix)
    reasons = {Path(o.path).name: (o.status, o.reason) for o in result.outcomes}
    assert reasons["b.jpg"][0] == "skipped" and reasons["c.jpg"] == ("skipped", "changed since it was indexed "
                                                                     "(size or modification time)")
    assert (root / "sub/b.jpg").exists() and (root / "c.jpg").exists() and not (tmp_path / "out").exists()


def test_changed_keeper_skips_its_group(lib, tmp_path):
    root, ix = lib
    plan = plan_actions(_groups(root), "move", index_dir=ix, to=tmp_path / "out")
    st = os.stat(root / "a.jpg")
    (root / "a.jpg").write_bytes(SAME[::-1])  # same size and mtime, other bytes: the digest tells
    os.utime(root / "a.jpg", ns=(st.st_atime_ns, st.st_mtime_ns))
    result = apply_plan(plan, ix)
    skipped = [o for o in result.outcomes if o.status == "skipped"]
    assert len(skipped) == 1 and "keeper" in skipped[0].reason and "content changed" in skipped[0].reason
    assert (root / "sub/b.jpg").exists() and (tmp_path / "out/c.jpg").exists()


def test_saved_plan_is_carried_out_exactly(lib, tmp_path):
    root, ix = lib
    text = plan_actions(_groups(root), "move", index_dir=ix, to=tmp_path / "out").to_json()
    (root / "e.jpg").write_bytes(SAME)  # a copy made after planning is not part of the plan
    plan = Plan.from_json(text)
    assert plan.to_json() == text
    assert apply_plan(plan, ix).exit_code == 0
    assert set(tree(tmp_path / "out")) == {"sub/b.jpg", "c.jpg"} and (root / "e.jpg").exists()
    for bad in ("{}", "[1]", text.replace('"move"', '"shred"'), "not json"):
        with pytest.raises(LookalikeError, match="not a Lookalike plan"):
            Plan.from_json(bad)


def test_bad_input_touches_nothing(lib, tmp_path):
    root, ix = lib
    before = tree(root)
    for kwargs, message in [({"to": root / "x"}, "inside the library"), ({"to": ix / "x"}, "inside the index"),
                            ({}, "needs --to"), ({"to": tmp_path / "o", "keep": "biggest"}, "unknown keep rule"),
                            ({"to": tmp_path / "o", "protect": [tmp_path]}, "protected")]:
        with pytest.raises(LookalikeError, match=message):
            plan_actions(_groups(root), "move", index_dir=ix, **kwargs)
    with pytest.raises(LookalikeError, match="unknown action"):
        plan_actions(_groups(root), "shred", index_dir=ix)
    assert tree(root) == before and not (ix / "journals").exists() and not (tmp_path / "o").exists()


def test_non_utf8_names_round_trip(tmp_path, monkeypatch):
    name = os.fsdecode(b"caf\xe9.jpg")
    root, ix = make_library(tmp_path, {"keep.jpg": SAME, name: SAME})
    g = group(root, "exact", "keep.jpg", name, sizes={"keep.jpg": (99, 99)})
    plan = Plan.from_json(plan_actions([g], "move", index_dir=ix, to=tmp_path / "out").to_json())
    assert plan.groups[0].others[0].path == str(root / name)
    result = apply_plan(plan, ix)
    assert result.exit_code == 0 and (tmp_path / "out" / name).read_bytes() == SAME
    assert undo(result.journal, ix).exit_code == 0 and (root / name).read_bytes() == SAME


def test_cross_device_move_and_undo(lib):
    root, ix = lib
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(root).st_dev or not os.access(shm, os.W_OK):
        pytest.skip("no second file system to move to")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as out:
        plan = plan_actions(_groups(root)[:1], "move", index_dir=ix, to=out)
        result = apply_plan(plan, ix)
        moved = Path(out) / "sub/b.jpg"
        assert result.exit_code == 0 and moved.read_bytes() == SAME and not (root / "sub/b.jpg").exists()
        assert moved.stat().st_mtime_ns == 1_500_000_000_000_000_000 and stat.S_IMODE(moved.stat().st_mode) == 0o640
        assert not [p for p in Path(out).rglob("*") if p.name.endswith(".lookalike-tmp")]
        assert undo(result.journal, ix).exit_code == 0 and (root / "sub/b.jpg").read_bytes() == SAME
        assert not moved.exists()


def test_undo_never_overwrites_an_occupied_path(lib, tmp_path):
    root, ix = lib
    result = apply_plan(plan_actions(_groups(root)[:1], "move", index_dir=ix, to=tmp_path / "out"), ix)
    (root / "sub/b.jpg").write_bytes(b"a new file in the old place")
    back = undo(result.journal, ix)
    assert back.exit_code == 0 and "occupied" in back.outcomes[0].reason
    assert (root / "sub/b.jpg").read_bytes() == b"a new file in the old place"
    assert (tmp_path / "out/sub/b.jpg").read_bytes() == SAME
