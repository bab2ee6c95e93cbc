"""`lookalike dupes` and `lookalike undo` end to end: groups with their keeper and why, every action, --protect,
a saved plan carried out later (a file changed in between), and bad input refused before anything is touched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.search import photo, write_originals

EARLIER = 1_500_000_000_000_000_000  # ns: the original is older than its byte-identical twin


@pytest.fixture
def lib(tmp_path, backbone, home, monkeypatch):
    """photos/: coffee.jpg, its byte-identical twin dup/coffee.jpg, a half-size copy, rocket.jpg with a hard
    link to it (one file, two paths) and camera.jpg; indexed with the tiny backbone."""
    from lookalike.search.indexing.sync import index_folder

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # the trash of this test, never the real one
    root = tmp_path / "photos"
    write_originals(root, ["coffee", "rocket", "camera"])
    (root / "dup").mkdir()
    shutil.copyfile(root / "coffee.jpg", root / "dup" / "coffee.jpg")
    os.utime(root / "coffee.jpg", ns=(EARLIER, EARLIER))
    img = photo("coffee")
    img.resize((img.width // 2, img.height // 2)).save(root / "coffee-small.jpg", quality=85)
    os.link(root / "rocket.jpg", root / "rocket-link.jpg")
    index_folder(root, tmp_path / "ix", embedder=backbone[1])
    return root, tmp_path / "ix"


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dupes(args: list, monkeypatch, capsys) -> tuple[int, dict, str]:
    code, out, err = run_cli(["dupes", *args, "--json"], monkeypatch, capsys)
    return code, (json.loads(out) if out.strip() else {}), err


def _names(group: dict, root: Path) -> list[str]:
    return sorted(Path(m["path"]).relative_to(root).as_posix() for m in group["members"])


def test_groups_name_their_keeper_and_why_and_links_are_one_file(lib, tmp_path, monkeypatch, capsys):
    root, ix = lib
    code, answer, err = _dupes(["--index", ix], monkeypatch, capsys)
    assert code == 0, err
    assert answer["schema"] == 1 and answer["journal"] is None
    [group] = answer["groups"]  # rocket.jpg and its hard link are one file, not duplicates
    assert group["keeper"] == str(root / "coffee.jpg") and group["kind"] == "copy"
    assert "most pixels" in group["why"] and "oldest" in group["why"]  # the twin ties on pixels and bytes
    assert _names(group, root) == ["coffee-small.jpg", "dup/coffee.jpg"]
    twin = next(m for m in group["members"] if m["path"].endswith("dup/coffee.jpg"))
    assert set(twin) == {"path", "distance", "inliers", "width", "height", "size", "date", "action"}
    assert twin["distance"] == 0.0 and twin["action"] is None and twin["size"] == (root / "coffee.jpg").stat().st_size
    small = next(m for m in group["members"] if m["path"].endswith("coffee-small.jpg"))
    assert small["width"] * 2 <= twin["width"] + 1 and small["inliers"] > 0

    report = tmp_path / "report.csv"
    code, out, err = run_cli(["dupes", "--index", ix, "--csv", report], monkeypatch, capsys)
    assert code == 0, err
    assert f"keeps {root / 'coffee.jpg'}" in " ".join(out.split()) and str(root / "coffee-small.jpg") in out
    lines = report.read_text().splitlines()
    assert lines[0].startswith("group,role,kind,path") and len(lines) == 4
    code, _, err = run_cli(["dupes", "--index", ix, "--csv", report], monkeypatch, capsys)
    assert_one_line_error(code, err, "--overwrite")


def test_move_then_undo_puts_every_file_back(lib, tmp_path, monkeypatch, capsys):
    root, ix = lib
    before = _tree(root)
    code, answer, err = _dupes(["--index", ix, "--action", "move", "--to", tmp_path / "out"], monkeypatch, capsys)
    assert code == 0, err
    assert sorted(_tree(tmp_path / "out")) == ["coffee-small.jpg", "dup/coffee.jpg"]  # layout kept
    assert not (root / "dup" / "coffee.jpg").exists() and (root / "coffee.jpg").exists()
    assert {m["action"] for m in answer["groups"][0]["members"]} == {"move"}
    journal = Path(answer["journal"])
    assert journal.parent == ix / "journals" and journal.suffix == ".jsonl"
    code, out, err = run_cli(["undo", journal.stem, "--index", ix, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["done"] == 2 and _tree(root) == before
    code, out, err = run_cli(["undo", journal], monkeypatch, capsys)  # by its path; a second undo does nothing
    assert code == 0 and "0 put back" in err, err


@pytest.mark.parametrize("action", ["trash", "hardlink", "symlink", "delete"])
def test_each_action(action, lib, tmp_path, monkeypatch, capsys):
    from lookalike.search.store.index import ImageIndex

    root, ix = lib
    extra = ["--yes"] if action == "delete" else []
    code, answer, err = _dupes(["--index", ix, "--action", action, *extra], monkeypatch, capsys)
    assert code == 0, err
    actions = {Path(m["path"]).name: m["action"] for m in answer["groups"][0]["members"]}
    twin, small = root / "dup" / "coffee.jpg", root / "coffee-small.jpg"
    if action in ("hardlink", "symlink"):
        assert actions["coffee.jpg"] == action
        assert actions["coffee-small.jpg"].startswith("skipped: not byte-identical")  # a link would lose it
        assert small.exists() and twin.read_bytes() == (root / "coffee.jpg").read_bytes()
        assert twin.is_symlink() == (action == "symlink")
        assert run_cli(["index", root, "--index", ix], monkeypatch, capsys)[0] == 0
        code, again, err = _dupes(["--index", ix], monkeypatch, capsys)
        assert code == 0 and "dup/coffee.jpg" not in json.dumps(again), again  # a link is not a duplicate
        return
    assert not twin.exists() and not small.exists() and set(actions.values()) == {action}
    with ImageIndex.open(ix) as index:
        assert index.id_of(twin) is None and index.id_of(root / "coffee.jpg") is not None
    trashed = sorted(p.name for p in (tmp_path / "xdg" / "Trash" / "files").glob("*")) \
        if action == "trash" else []
    assert trashed == (["coffee-small.jpg", "coffee.jpg"] if action == "trash" else [])
    assert ("cannot be undone" in err) == (action == "delete")


def test_protected_files_are_never_acted_on(lib, tmp_path, monkeypatch, capsys):
    root, ix = lib
    code, answer, err = _dupes(["--index", ix, "--action", "trash", "--protect", root / "dup"], monkeypatch, capsys)
    assert code == 0, err
    actions = {Path(m["path"]).name: m["action"] for m in answer["groups"][0]["members"]}
    assert actions["coffee.jpg"].startswith("skipped: protected") and (root / "dup" / "coffee.jpg").exists()
    assert actions["coffee-small.jpg"] == "trash" and not (root / "coffee-small.jpg").exists()


def test_a_saved_plan_is_carried_out_later_and_skips_a_changed_file(lib, tmp_path, monkeypatch, capsys):
    root, ix = lib
    before = _tree(root)
    args = ["--index", ix, "--action", "move", "--to", tmp_path / "out", "--dry-run"]
    code, planned, err = _dupes(args, monkeypatch, capsys)
    assert code == 0, err
    assert _tree(root) == before and not (tmp_path / "out").exists()  # a dry run touches nothing
    assert {m["action"] for m in planned["groups"][0]["members"]} == {"move (planned)"}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(planned))
    (root / "coffee-small.jpg").write_bytes(b"edited since" + before["coffee-small.jpg"])
    code, done, err = _dupes(["--apply", plan], monkeypatch, capsys)
    assert code == 0, err
    actions = {Path(m["path"]).name: m["action"] for m in done["groups"][0]["members"]}
    assert actions["coffee.jpg"] == "move" and (tmp_path / "out" / "dup" / "coffee.jpg").exists()
    assert actions["coffee-small.jpg"].startswith("skipped") and (root / "coffee-small.jpg").exists()


def test_bad_input_is_one_line_and_touches_nothing(lib, tmp_path, monkeypatch, capsys):
    root, ix = lib
    before = _tree(root)
    cases = [
        (["--keep", "biggest"], "unknown keep rule 'biggest'"),
        (["--action", "shred"], "unknown action 'shred'"),
        (["--action", "move", "--to", root / "elsewhere"], "inside the library"),
        (["--action", "move"], "needs --to"),
        (["--action", "delete"], "--yes"),
        (["--csv", ix / "report.csv"], "inside the index folder"),
    ]
    for args, fragment in cases:
        code, out, err = run_cli(["dupes", "--index", ix, *args], monkeypatch, capsys)
        assert_one_line_error(code, err, fragment)
        assert out == ""
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text('{"schema": 1}')
    code, _, err = run_cli(["dupes", "--apply", bad_plan], monkeypatch, capsys)
    assert_one_line_error(code, err, "not a Lookalike plan")
    assert _tree(root) == before and not (ix / "journals").exists() and not (tmp_path / "xdg").exists()
