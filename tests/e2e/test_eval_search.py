"""`lookalike eval-search` end to end on small generated benchmarks of real photos, and its pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.search import PHOTOS, write_copies, write_originals

from lookalike.search.evaluation.metrics import holidays_ap


@pytest.fixture
def bench(tmp_path) -> Path:
    """Originals and edited copies in one folder; each copy queries for its original and the other copies."""
    root = tmp_path / "bench"
    originals = write_originals(root / "images")
    copies = write_copies(root / "images", names=PHOTOS[:4])
    queries = []
    for path, name in copies:
        same = [f"images/{p.name}" for p, n in copies if n == name and p != path]
        queries.append({"query": f"images/{path.name}", "positives": [f"images/{name}.jpg"] + same[:1],
                        "junk": same[1:]})
    queries.append({"query": f"images/{originals[-1].name}", "positives": [], "junk": []})  # no positives
    database = sorted(f"images/{p.name}" for p in (root / "images").iterdir())
    (root / "groundtruth.json").write_text(json.dumps({"queries": queries, "database": database}))
    return root


def _ranked_ap(vectors: dict, query: dict) -> float:
    """The reference: Holidays' AP from a plain sort of the database, junk and the query left out."""
    q = vectors[query["query"]]
    others = [p for p in vectors if p != query["query"] and p not in query["junk"]]
    order = sorted(others, key=lambda p: -float(vectors[p] @ q))
    ranks = [r for r, p in enumerate(order) if p in query["positives"]]
    return holidays_ap(ranks, len(query["positives"]))


def test_groundtruth_benchmark_end_to_end(bench, home, monkeypatch, capsys, tmp_path):
    report = tmp_path / "worst.html"
    code, out, err = run_cli(["eval-search", bench, "--json", "--report", report, "--worst", "3", "--verify", "0"],
                             monkeypatch, capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["descriptor"]["verify"] == 0
    assert {"mAP", "P@1", "P@5", "queries", "recall@10"} <= set(doc)
    gt = json.loads((bench / "groundtruth.json").read_text())
    assert doc["queries"] == len(gt["queries"]) - 1 and doc["queries_without_positives"] == 1
    assert doc["P@1"] == 1.0  # every edited copy finds a photo of its own
    # The index is the evaluation's own, never inside the benchmark folder.
    assert not (bench / ".lookalike").exists() and Path(doc["index_path"]).is_relative_to(home)

    from lookalike.search.store.index import ImageIndex

    with ImageIndex.open(doc["index_path"]) as ix:
        vectors = {f"images/{Path(ix.path_of(int(i))).name}": v for i, v in zip(ix.ids(), ix.vectors())}
    expected = np.mean([_ranked_ap(vectors, q) for q in gt["queries"] if q["positives"]])
    assert doc["mAP"] == pytest.approx(expected, abs=1e-6)
    page = report.read_text()
    assert page.count("class='query'") == 3 and "Lookalike retrieval evaluation" in page

    # A second run reuses the index (nothing indexed again) and prints one summary line; by default it re-ranks
    # the first 20 results by spatial verification.
    code, out, err = run_cli(["eval-search", bench], monkeypatch, capsys)
    assert code == 0 and out.startswith("mAP ") and "P@1 1.0000" in out, err
    code, out, err = run_cli(["eval-search", bench, "--json"], monkeypatch, capsys)
    verified = json.loads(out)
    from lookalike.search.retrieve.verify import DEFAULT_SHORTLIST

    assert verified["descriptor"]["verify"] == DEFAULT_SHORTLIST == 20  # the preset's literal follows verify.py
    assert verified["P@1"] == 1.0 and verified["mAP"] >= doc["mAP"] - 0.05

    # A report replaces only a page of its own kind, never another HTML file.
    code, out, err = run_cli(["eval-search", bench, "--report", report], monkeypatch, capsys)
    assert code == 0, err
    site = tmp_path / "index.html"
    site.write_text("<html>my page</html>")
    code, out, err = run_cli(["eval-search", bench, "--report", site], monkeypatch, capsys)
    assert code == 2 and "not a Lookalike report" in err and err.count("\n") == 1, err
    assert site.read_text() == "<html>my page</html>"


def test_class_folders_every_image_queries_the_others(tmp_path, home, monkeypatch, capsys):
    root = tmp_path / "classes"
    for name in PHOTOS[:3]:  # one class per photo: the original and its edited copies
        write_originals(root / name, names=(name,))
        write_copies(root / name, names=(name,))
    code, out, err = run_cli(["eval-search", root, "--json"], monkeypatch, capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["kind"] == "classes" and doc["queries"] == len(list(root.rglob("*.jpg")))
    assert {"mAP@R", "R-precision", "P@1", "P@10", "mAP", "P@5"} <= set(doc)
    assert doc["P@1"] == 1.0 and 0.5 < doc["mAP@R"] <= 1.0
    assert doc["descriptor"]["verify"] == 0  # no geometry links the images of a class: the default skips it
    code, out, err = run_cli(["eval-search", root, "--verify", "5"], monkeypatch, capsys)
    assert code == 2 and "groundtruth.json" in err and err.count("\n") == 1, err


def test_whole_photo_descriptor_with_whitening_qe_and_dba(bench, home, monkeypatch, capsys):
    code, out, err = run_cli(["eval-search", bench, "--size", "160", "--scales", "1,1.25", "--pooling", "rmac",
                              "--whiten", "--qe", "1", "--dba", "1", "--json"], monkeypatch, capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["descriptor"]["preprocess"]["long_side"] == 160 and doc["descriptor"]["pooling"] == "rmac"
    assert doc["P@1"] >= 0.75

    from lookalike.search.store.index import ImageIndex
    from lookalike.search.describe.whitening import load_whitening, whitening_info

    index_dir = Path(doc["index_path"])
    info = whitening_info(index_dir)
    assert info["fitted_on"] == "index" and info["vectors"] == doc["indexed"]
    whitening = load_whitening(index_dir)
    with ImageIndex.open(index_dir) as ix:
        white = whitening(ix.vectors())
    assert np.allclose(np.linalg.norm(white, axis=1), 1.0, atol=1e-5)
    # A changed whitening file is refused, never used.
    (index_dir / "whitening.npz").write_bytes(b"not the fitted file")
    from lookalike.errors import LookalikeError

    with pytest.raises(LookalikeError, match="does not match"):
        load_whitening(index_dir)


def test_whitening_round_trip_applies_the_same_transform(tmp_path):
    from lookalike.search.describe.whitening import fit_whitening, load_whitening, save_whitening

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 16)).astype(np.float32) * np.linspace(5, 0.1, 16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = fit_whitening(x, dims=8)
    save_whitening(tmp_path, w, {"fitted_on": "index"})
    again = load_whitening(tmp_path, expect={"fitted_on": "index"})
    assert np.allclose(w(x), again(x)) and w(x).shape == (50, 8)
    # With no shrinkage the whitened (un-normalised) training set has an identity covariance.
    w0 = fit_whitening(x, shrink=0.0)
    y = (x - w0.mean) @ w0.projection
    assert np.allclose(np.cov(y.T, bias=False), np.eye(y.shape[1]), atol=1e-3)


def test_whiten_on_another_folder(bench, tmp_path, home, monkeypatch, capsys):
    other = tmp_path / "other"
    write_originals(other, names=PHOTOS[4:])
    code, out, err = run_cli(["eval-search", bench, "--whiten-on", other, "--json"], monkeypatch, capsys)
    assert code == 0, err
    from lookalike.search.describe.whitening import whitening_info

    info = whitening_info(json.loads(out)["index_path"])
    assert info["fitted_on"] == str(other) and info["vectors"] == len(PHOTOS) - 4


@pytest.mark.parametrize("args, message", [
    (["--qe", "-1"], "--qe"),
    (["--dba", "-2"], "--qe and --dba"),
    (["--qe", "51"], "--qe takes a number of neighbours from 0 to 50"),
    (["--alpha", "99"], "--alpha"),
    (["--quality", "best"], "--quality"),
    (["--pooling", "max"], "unknown pooling"),
    (["--pooling", "gem:0.1", "--size", "128"], "GeM exponent"),
    (["--pooling", "rmac"], "whole-photo"),
    (["--size", "-3"], "--size"),
    (["--size", "4000"], "pixels"),
    (["--scales", "1,x", "--size", "128"], "--scales"),
    (["--scales", "1,1.5"], "--size"),
    (["--whiten-on", "/nonexistent/folder"], "not a folder"),
    (["--report", "out.txt"], ".html"),
    (["--worst", "-1"], "--worst"),
    (["--verify", "-1"], "--verify"),
    (["--verify", "201"], "--verify"),
])
def test_bad_values_give_one_line_and_exit_2(bench, home, monkeypatch, capsys, args, message):
    code, out, err = run_cli(["eval-search", bench, *args], monkeypatch, capsys)
    assert_one_line_error(code, err, message)


def test_bad_benchmarks_give_one_line(tmp_path, home, monkeypatch, capsys):
    cases = {"missing": None, "empty": "", "notjson": "{", "noqueries": json.dumps({"queries": [], "database": ["a.jpg"]}),
             "escape": json.dumps({"queries": [{"query": "../x.jpg", "positives": []}], "database": ["a.jpg"]})}
    for name, text in cases.items():
        root = tmp_path / name
        if text is not None:
            root.mkdir()
            if text:
                (root / "groundtruth.json").write_text(text)
        code, out, err = run_cli(["eval-search", root], monkeypatch, capsys)
        assert_one_line_error(code, err)
