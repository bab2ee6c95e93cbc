"""Descriptor options as properties of an index: `lookalike index --size/--scales/--pooling/--whiten/--whiten-on`
stored in the index and applied by `search`, `serve` and `dupes`; `--qe`/`--dba` at search time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.search import PHOTOS, photo, write_copies, write_originals
from lookalike.search.sample_photos import colour, jpeg_bytes

from lookalike.search.store.index import ImageIndex


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    write_originals(folder)
    write_copies(folder, names=PHOTOS[:3])
    return folder


def _index(args, monkeypatch, capsys) -> dict:
    code, out, err = run_cli(["index", *args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    return json.loads(out)


def _stored(index_dir: Path) -> dict[str, np.ndarray]:
    with ImageIndex.open(index_dir) as ix:
        return {Path(ix.path_of(int(i))).name: np.array(v) for i, v in zip(ix.ids(), ix.vectors())}


def test_whitening_is_fitted_stored_and_applied_to_index_and_queries(photos, tmp_path, home, embedder, monkeypatch,
                                                                    capsys):
    from lookalike.search.describe.whitening import fit_whitening, load_for_index, power_for

    ix_dir = tmp_path / "ix"
    _index([photos, "--index", ix_dir, "--whiten"], monkeypatch, capsys)
    manifest = json.loads((ix_dir / "manifest.json").read_text())
    record = manifest["whitening"]
    assert manifest["whiten"] == "index" and record["fitted_on"] == "index"
    assert record["vectors"] == len(list(photos.iterdir())) and (ix_dir / record["file"]).is_file()
    with ImageIndex.open(ix_dir) as ix:
        assert ix.whitening == record  # the database's record, committed with the vectors, is the manifest's
    # The stored vectors are the whitening of the raw descriptors, with the fit the index made from them.
    names = sorted(p.name for p in photos.iterdir())
    raw, _ = embedder.embed_paths([str(photos / n) for n in names])
    whitening = load_for_index(ix_dir, record)
    assert record["power"] == power_for("avg") == 0.5  # the signed square root of average pooling
    expected = fit_whitening(raw, power=0.5).padded(raw.shape[1])(raw)
    stored = _stored(ix_dir)
    np.testing.assert_allclose(np.stack([stored[n] for n in names]), whitening(raw), atol=1e-4)
    np.testing.assert_allclose(whitening(raw), expected, atol=1e-4)
    assert not np.allclose(whitening(raw), raw, atol=1e-2)
    # A query from outside the index goes through the same whitening: a byte copy lands on its original.
    outside = tmp_path / "query.jpg"
    shutil.copyfile(photos / "chelsea-crop.jpg", outside)
    code, out, err = run_cli(["search", outside, "--index", ix_dir, "--json", "-k", "2"], monkeypatch, capsys)
    assert code == 0, err
    hits = json.loads(out)[0]["results"]
    assert Path(hits[0]["path"]).name == "chelsea-crop.jpg" and hits[0]["distance"] < 1e-3
    # A new image indexed later is whitened with the stored fit, not a new one.
    (photos / "later.jpg").write_bytes(jpeg_bytes(colour(photo("coins")), 70))
    shutil.copyfile(photos / "coffee.jpg", photos / "copy.jpg")
    _index([photos, "--index", ix_dir], monkeypatch, capsys)
    assert json.loads((ix_dir / "manifest.json").read_text())["whitening"] == record
    stored = _stored(ix_dir)
    later, _ = embedder.embed_paths([str(photos / "later.jpg")])
    np.testing.assert_allclose(stored["later.jpg"], whitening(later)[0], atol=1e-4)
    # dupes runs on the whitened vectors: the byte copy and its original form a group at any threshold.
    code, out, err = run_cli(["dupes", "--index", ix_dir, "--json", "--verify", "0", "--threshold", "0.01"],
                             monkeypatch, capsys)
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert [sorted(Path(p).name for p in [g["keeper"], *(m["path"] for m in g["members"])]) for g in groups] \
        == [["coffee.jpg", "copy.jpg"]]


def test_whitening_fitted_on_another_folder(photos, tmp_path, home, monkeypatch, capsys):
    other = tmp_path / "other"
    write_copies(other, names=PHOTOS[3:6])
    ix_dir = tmp_path / "ix"
    _index([photos, "--index", ix_dir, "--whiten-on", other], monkeypatch, capsys)
    record = json.loads((ix_dir / "manifest.json").read_text())["whitening"]
    assert record["fitted_on"] == str(other.resolve()) and record["vectors"] == len(list(other.iterdir()))
    # Another fit, or none, needs --rebuild: the unwhitened vectors are gone.
    for args in (["--no-whiten"], ["--whiten"]):
        code, out, err = run_cli(["index", photos, "--index", ix_dir, *args], monkeypatch, capsys)
        assert code == 2 and "--rebuild" in err and err.count("\n") == 1, err
    _index([photos, "--index", ix_dir, "--rebuild", "--no-whiten"], monkeypatch, capsys)
    manifest = json.loads((ix_dir / "manifest.json").read_text())
    assert manifest.get("whitening") is None and not list(ix_dir.glob("whitening-*.npz"))


def test_whitening_added_to_an_existing_index_and_a_changed_file_refused(photos, tmp_path, home, monkeypatch,
                                                                         capsys):
    ix_dir = tmp_path / "ix"
    _index([photos, "--index", ix_dir], monkeypatch, capsys)
    before = _stored(ix_dir)
    _index([photos, "--index", ix_dir, "--whiten"], monkeypatch, capsys)  # no --rebuild: the raw vectors are there
    after = _stored(ix_dir)
    assert before.keys() == after.keys() and not np.allclose(before["camera.jpg"], after["camera.jpg"], atol=1e-2)
    record = json.loads((ix_dir / "manifest.json").read_text())["whitening"]
    path = ix_dir / record["file"]
    path.write_bytes(path.read_bytes()[:-8] + b"12345678")
    code, out, err = run_cli(["search", photos / "camera.jpg", photos / "coins.jpg", "--index", ix_dir],
                             monkeypatch, capsys)
    assert code == 0  # indexed files use their stored vectors: no embedding, no whitening needed
    outside = tmp_path / "q.jpg"
    shutil.copyfile(photos / "camera.jpg", outside)
    code, out, err = run_cli(["search", outside, "--index", ix_dir], monkeypatch, capsys)
    assert code == 2 and "does not match" in err and err.count("\n") == 1, err


def test_whole_photo_descriptor_is_stored_and_used_for_queries(photos, tmp_path, home, monkeypatch, capsys):
    ix_dir = tmp_path / "ix"
    _index([photos, "--index", ix_dir, "--size", "160", "--scales", "1,1.25", "--pooling", "gem:2"],
           monkeypatch, capsys)
    manifest = json.loads((ix_dir / "manifest.json").read_text())
    assert manifest["pooling"] == "gem:2"
    assert {k: manifest["preprocess"][k] for k in ("fit", "long_side", "scales")} == {
        "fit": "whole", "long_side": 160, "scales": [1.0, 1.25]}
    outside = tmp_path / "q.jpg"
    shutil.copyfile(photos / "rocket.jpg", outside)
    code, out, err = run_cli(["search", outside, "--index", ix_dir, "--json", "-k", "1"], monkeypatch, capsys)
    assert code == 0, err
    hit = json.loads(out)[0]["results"][0]
    assert Path(hit["path"]).name == "rocket.jpg" and hit["distance"] < 1e-3
    # Rerunning without the options keeps the index's descriptor; another one is refused.
    assert _index([photos, "--index", ix_dir], monkeypatch, capsys)["unchanged"] == len(list(photos.iterdir()))
    code, out, err = run_cli(["index", photos, "--index", ix_dir, "--size", "0"], monkeypatch, capsys)
    assert code == 2 and "--rebuild" in err and err.count("\n") == 1, err


def test_qe_and_dba_search_match_their_definition(photos, tmp_path, home, monkeypatch, capsys):
    """With a shortlist that holds the whole index, search-time DBA ranks exactly as the DBA of every stored
    vector would; QE adds the query's nearest neighbours (itself left out)."""
    from lookalike.search.retrieve.query import Expansion, expanded_search

    ix_dir = tmp_path / "ix"
    _index([photos, "--index", ix_dir], monkeypatch, capsys)
    alpha = 3.0
    with ImageIndex.open(ix_dir) as ix:
        ids = np.asarray(ix.ids())
        db = np.asarray(ix.vectors(), np.float32)
        q = 0
        results = expanded_search(ix, db[q:q + 1], 5, Expansion(qe=2, dba=1, alpha=alpha), exclude_ids=[{int(ids[q])}])
    sims = db @ db[q]
    sims[q] = -np.inf
    top = np.argsort(-sims)[:2]
    qv = db[q] + ((np.clip(sims[top], 0, None) ** alpha)[:, None] * db[top]).sum(0)
    qv /= np.linalg.norm(qv)
    s = db @ db.T
    dba = np.zeros_like(db)
    for i in range(len(db)):
        nn = np.argsort(-s[i])[:2]  # itself and its nearest neighbour
        dba[i] = ((np.clip(s[i, nn], 0, None) ** alpha)[:, None] * db[nn]).sum(0)
    dba /= np.linalg.norm(dba, axis=1, keepdims=True)
    scores = dba @ qv
    scores[q] = -np.inf
    expected = [int(ids[i]) for i in np.argsort(-scores)[:5]]
    assert [h["id"] for h in results[0]] == expected
    np.testing.assert_allclose([h["similarity"] for h in results[0]], np.sort(scores)[::-1][:5], atol=1e-5)
    code, out, err = run_cli(["search", photos / "chelsea-colour.jpg", "--index", ix_dir, "--qe", "1", "--dba", "1",
                              "--json", "-k", "3"], monkeypatch, capsys)
    assert code == 0, err
    hits = json.loads(out)[0]["results"]
    assert len(hits) == 3 and Path(hits[0]["path"]).name.startswith("chelsea")
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)


def test_default_crop_descriptor_pools_head_and_blocks_and_old_indexes_keep_the_head(photos, tmp_path, home,
                                                                                      monkeypatch, capsys):
    from lookalike.search.describe.features import load_embedder
    from lookalike.search.retrieve.query import DEFAULT_DUPE_THRESHOLD, TWO_LAYER_DUPE_THRESHOLD, dupe_threshold

    ix_dir = tmp_path / "ix"
    _index([photos, "--index", ix_dir], monkeypatch, capsys)
    manifest = json.loads((ix_dir / "manifest.json").read_text())
    assert manifest["preprocess"]["layers"] == ["head", "blocks"] and manifest["dim"] == 1280 + 320
    assert dupe_threshold(manifest) == TWO_LAYER_DUPE_THRESHOLD
    # The stored vector is the head's and the blocks' average-pooled parts, each of unit length, joined.
    names = sorted(p.name for p in photos.iterdir())
    stored = _stored(ix_dir)
    head, _ = load_embedder(inputs={"layers": "head"}).embed_paths([str(photos / names[0])])
    blocks, _ = load_embedder(inputs={"layers": "blocks"}).embed_paths([str(photos / names[0])])
    np.testing.assert_allclose(stored[names[0]], np.concatenate([head[0], blocks[0]]) / np.sqrt(2), atol=1e-4)
    # An index of the head alone (as every index made before the option) stays so when indexed again.
    old = tmp_path / "old"
    _index([photos, "--index", old, "--layers", "head"], monkeypatch, capsys)
    manifest = json.loads((old / "manifest.json").read_text())
    assert "layers" not in manifest["preprocess"] and manifest["dim"] == 1280
    assert dupe_threshold(manifest) == DEFAULT_DUPE_THRESHOLD
    assert _index([photos, "--index", old], monkeypatch, capsys)["unchanged"] == len(names)
    code, out, err = run_cli(["index", photos, "--index", old, "--layers", "head,blocks"], monkeypatch, capsys)
    assert code == 2 and "layers head+blocks" in err and "--rebuild" in err and err.count("\n") == 1, err
    # Whole photos keep the head alone by default.
    whole = tmp_path / "whole"
    _index([photos, "--index", whole, "--size", "160"], monkeypatch, capsys)
    assert json.loads((whole / "manifest.json").read_text())["dim"] == 1280


@pytest.mark.parametrize("args, message", [
    (["--size", "-1"], "--size"),
    (["--size", "5000"], "pixels"),
    (["--size", "128", "--scales", "1,x"], "--scales"),
    (["--scales", "1,1.5"], "--size"),
    (["--size", "128", "--scales", "9"], "scales"),
    (["--pooling", "max"], "unknown pooling"),
    (["--pooling", "rmac"], "whole-photo"),
    (["--pooling", "gem:40", "--size", "128"], "GeM exponent"),
    (["--whiten-on", "/nonexistent/folder"], "not a folder"),
    (["--whiten-on", ".", "--no-whiten"], "contradict"),
    (["--layers", "fc"], "unknown --layers"),
    (["--layers", "head,head"], "unknown --layers"),
    (["--layers", "blocks", "--model", "resnet50"], "needs one of"),
])
def test_bad_index_options_give_one_line_and_exit_2(photos, tmp_path, home, monkeypatch, capsys, args, message):
    code, out, err = run_cli(["index", photos, "--index", tmp_path / "ix", *args], monkeypatch, capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "ix" / "manifest.json").exists()


@pytest.mark.parametrize("command, args, message", [
    ("search", ["--qe", "-1"], "--qe"),
    ("search", ["--qe", "1000"], "--qe"),
    ("search", ["--dba", "-1"], "--dba"),
    ("search", ["--alpha", "99"], "--alpha"),
    ("search", ["--alpha", "nan"], "--alpha"),
    ("serve", ["--qe", "-1"], "--qe"),
    ("serve", ["--dba", "51"], "--dba"),
    ("serve", ["--alpha", "-1"], "--alpha"),
])
def test_bad_search_options_give_one_line_and_exit_2(tmp_path, home, monkeypatch, capsys, command, args, message):
    target = [tmp_path / "q.jpg"] if command == "search" else []
    code, out, err = run_cli([command, *target, "--index", tmp_path / "nothing", *args], monkeypatch, capsys)
    assert_one_line_error(code, err, message)


def test_web_service_searches_with_the_index_whitening_and_the_serve_expansion(photos, tmp_path, home, monkeypatch,
                                                                                capsys):
    from PIL import Image

    from lookalike.search.retrieve.query import Expansion, expanded_search
    from lookalike.web.service import SearchService

    ix_dir = tmp_path / "ix"
    _index([photos, "--index", ix_dir, "--whiten"], monkeypatch, capsys)
    service = SearchService(ix_dir)
    try:
        upload = Image.open(photos / "astronaut.jpg").convert("RGB")
        hits = service.search_image(upload, "upload.jpg", 2).results
        assert Path(hits[0].path).name == "astronaut.jpg" and hits[0].distance < 1e-3  # whitened like the index
        service.expansion = Expansion(qe=1, dba=1)  # what `lookalike serve --qe 1 --dba 1` sets
        image_id = service.index.id_of(photos / "coins.jpg")
        got = [r.id for r in service.search_id(image_id, 4).results]
        with ImageIndex.open(ix_dir) as ix:
            want = expanded_search(ix, ix.vector_of(image_id)[None], 4, Expansion(qe=1, dba=1),
                                   exclude_ids=[{image_id}])
        assert got == [h["id"] for h in want[0]]
    finally:
        service.close()
