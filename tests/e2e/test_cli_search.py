"""`lookalike index / search / compare / dupes / demo` driven end to end on generated folders of real photos."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from helpers.cli import run_cli, run_cli_subprocess
from helpers.search import PHOTOS, photo, write_copies, write_originals
from lookalike.search.sample_photos import jpeg_bytes


@pytest.fixture
def gallery(home, tmp_path):
    originals = write_originals(tmp_path / "photos")
    copies = write_copies(tmp_path / "queries")  # outside the indexed folder
    return tmp_path / "photos", originals, copies


def test_index_then_every_copy_finds_its_original(gallery, home, monkeypatch, capsys):
    folder, originals, copies = gallery
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    # The real command in a fresh process: start-up, progress bar, JSON summary.
    proc = run_cli_subprocess(["index", folder, "--json"], home)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary) >= {"indexed", "added", "updated", "removed", "unchanged", "skipped"}
    assert summary["indexed"] == summary["added"] == len(PHOTOS)
    assert summary["skipped"] == [{"path": str(folder / "broken.jpg"),
                                   "reason": summary["skipped"][0]["reason"]}]

    code, out, err = run_cli(["search", *[c for c, _ in copies], "--index", folder, "-k", "3", "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == len(copies)
    for entry, (path, name) in zip(results, copies):
        assert entry["query"] == str(path)
        top = entry["results"][0]
        assert Path(top["path"]).name == f"{name}.jpg", f"{path.name} -> {top['path']}"
        # Spatial verification is on by default: every hit of the shortlist carries its inliers.
        assert set(top) == {"rank", "path", "distance", "similarity", "inliers"} and top["rank"] == 1
        assert all(isinstance(r["inliers"], int) for r in entry["results"])
        assert abs(top["distance"] - (2 - 2 * top["similarity"]) ** 0.5) < 1e-4
        assert [r["rank"] for r in entry["results"]] == [1, 2, 3]
    code, out, err = run_cli(["search", copies[0][0], "--index", folder, "-k", "3", "--json", "--verify", "0"],
                             monkeypatch, capsys)
    plain = json.loads(out)[0]["results"]
    assert code == 0 and set(plain[0]) == {"rank", "path", "distance", "similarity"}
    assert [r["similarity"] for r in plain] == sorted((r["similarity"] for r in plain), reverse=True)


def test_search_with_an_indexed_query_and_table(gallery, monkeypatch, capsys):
    folder, originals, _ = gallery
    assert run_cli(["index", folder], monkeypatch, capsys)[0] == 0
    code, out, err = run_cli(["search", originals[0], "--index", folder, "--json", "-k", "2"], monkeypatch, capsys)
    assert code == 0, err
    hits = json.loads(out)[0]["results"]
    assert str(originals[0].resolve()) not in [h["path"] for h in hits]  # itself left out
    code, out, _ = run_cli(["search", originals[0], "--index", folder, "--json", "--include-self"], monkeypatch, capsys)
    first = json.loads(out)[0]["results"][0]
    assert first["path"] == str(originals[0].resolve()) and first["distance"] < 1e-3
    code, out, _ = run_cli(["search", originals[1], "--index", folder], monkeypatch, capsys)
    assert code == 0 and "rank" in out and "distance" in out and "similarity" in out
    code, out, _ = run_cli(["index", folder], monkeypatch, capsys)
    assert code == 0 and f"{len(PHOTOS)} unchanged" in out


def test_user_errors_exit_2_with_one_line(gallery, monkeypatch, capsys, tmp_path):
    folder, originals, _ = gallery
    bad_query = tmp_path / "notes.jpg"
    bad_query.write_text("not an image")
    cases = [
        (["search", originals[0], "--index", tmp_path / "nowhere"], "no index"),
        (["dupes", "--index", tmp_path / "nowhere"], "no index"),
        (["index", folder, "--model", "no_such_net"], "unknown model"),
        (["index", tmp_path / "missing-folder"], "not a folder"),
        (["compare", originals[0], bad_query], "fewer than two"),
        (["compare", originals[0], originals[1], "--model", "nope"], "unknown model"),
        (["search", originals[0], "--index", folder, "--verify", "-1"], "--verify"),
        (["serve", "--index", folder, "--verify", "201"], "--verify"),
        (["demo", "--out", tmp_path / "demo", "--verify", "-3"], "--verify"),
    ]
    for args, words in cases:
        code, out, err = run_cli(args, monkeypatch, capsys)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not (tmp_path / "demo").exists()  # a bad --verify fails before the demo writes its gallery
    assert run_cli(["index", folder], monkeypatch, capsys)[0] == 0
    code, _, err = run_cli(["search", bad_query, "--index", folder], monkeypatch, capsys)
    assert code == 2 and "not an image" in err and err.count("\n") == 1
    code, _, err = run_cli(["search", tmp_path / "gone.jpg", "--index", folder], monkeypatch, capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run_cli(["index", folder, "--pooling", "gem"], monkeypatch, capsys)
    assert code == 2 and "--rebuild" in err and err.count("\n") == 1


def test_compare_table_and_json(gallery, monkeypatch, capsys):
    folder, originals, copies = gallery
    chosen = [originals[0], copies[0][0], originals[3]]
    code, out, err = run_cli(["compare", *chosen, "--json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["paths"] == [str(p) for p in chosen]
    d, s = data["distance"], data["similarity"]
    assert len(d) == 3 and all(len(r) == 3 for r in d) and d[0][0] == 0 and d[0][1] == d[1][0]
    assert d[0][1] < d[0][2]  # a photo is closer to its edited copy than to another photo
    assert abs(d[0][2] - (2 - 2 * s[0][2]) ** 0.5) < 1e-4
    code, out, _ = run_cli(["compare", *chosen], monkeypatch, capsys)
    lines = out.strip().splitlines()
    assert lines[0] == f"[1] {chosen[0]}" and len(lines) == 3 + 1 + 3
    assert re.search(r"\[2\]\s+\d\.\d{4}\s+0\.0000", lines[5])


def test_dupes(home, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "d"
    write_originals(folder, ["coffee", "rocket", "camera", "astronaut"])
    img = photo("coffee")
    (folder / "coffee-again.jpg").write_bytes(jpeg_bytes(img, 60))
    (folder / "coffee-small.png").parent.mkdir(exist_ok=True)
    img.resize((img.width // 2, img.height // 2)).save(folder / "coffee-small.png")
    assert run_cli(["index", folder], monkeypatch, capsys)[0] == 0
    code, out, err = run_cli(["dupes", "--index", folder, "--json"], monkeypatch, capsys)
    assert code == 0, err
    groups = json.loads(out)["groups"]
    named = [sorted(Path(p).name for p in [g["keeper"], *(m["path"] for m in g["members"])]) for g in groups]
    assert named == [["coffee-again.jpg", "coffee-small.png", "coffee.jpg"]]
    code, out, _ = run_cli(["dupes", "--index", folder, "--verify", "0", "--threshold", "0.0001"], monkeypatch, capsys)
    assert code == 0 and "no near-duplicates" in out


def test_demo_builds_gallery_scores_and_report(home, tmp_path, monkeypatch, capsys):
    from lookalike.search import demo

    monkeypatch.setattr(demo, "PHOTOS", ("astronaut", "coffee", "rocket", "chelsea", "camera", "coins"))
    code, out, err = run_cli(["demo", "--out", tmp_path / "demo", "--json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["originals"] == 6 and result["queries"] == 30 and result["indexed"] == 36
    assert result["precision_at_1"] >= 0.9 and 0 < result["precision_at_5"] <= 1
    assert result["same_photo_distance_median"] < result["different_photo_distance_median"]
    html = Path(result["report"]).read_text()
    thumbs = re.findall(r"src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(thumbs) >= 36 and base64.b64decode(thumbs[0])[:2] == b"\xff\xd8"
    assert re.search(r"data:image/png;base64,iVBORw0KGgo", html)  # the heat map, inline
    assert "http://" not in html and "https://" not in html  # self-contained
    code, out, _ = run_cli(["demo", "--out", tmp_path / "demo"], monkeypatch, capsys)
    assert code == 0 and "precision@1" in out and "report.html" in out


def test_index_names_new_failures_and_sums_up_known_ones(home, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mixed"
    write_originals(folder, ["coffee", "camera"])
    for i in range(5):
        (folder / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken %d" % i)
    code, out, err = run_cli(["index", folder], monkeypatch, capsys)
    assert code == 0, err
    assert sum("skipped " in line and "bad" in line for line in err.splitlines()) == 5  # one line each, new
    assert "2 images indexed" in out and "5 skipped" in out

    (folder / "bad0.jpg").write_bytes(b"\xff\xd8\xff\xe0 still broken, but changed")
    code, out, err = run_cli(["index", folder], monkeypatch, capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]  # the finished progress bar leaves a blank line
    assert lines[0].startswith(f"warning: skipped {folder / 'bad0.jpg'}: "), err  # changed: decoded, named
    known = [line for line in lines if "unchanged since" in line]
    assert known == ["warning: skipped 4 files unchanged since they failed to decode (bad1.jpg, bad2.jpg, "
                     "bad3.jpg and 1 more); --json lists the reasons"]
    assert len(lines) == 2 and "5 skipped" in out and "2 unchanged" in out

    code, out, _ = run_cli(["index", folder, "--json"], monkeypatch, capsys)
    summary = json.loads(out)
    assert summary["skipped_known"] == 5 and len(summary["skipped"]) == 5
    assert all(s["reason"].endswith("(unchanged since it failed)") for s in summary["skipped"])
