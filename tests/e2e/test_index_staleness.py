"""Stored state is reused only while it still describes what is on disk: a query file changed since it was
indexed is embedded afresh, and a checkpoint replaced under the same path is noticed by index and search."""

from __future__ import annotations

import json
import os
import shutil

from helpers.cli import cli_runner
from helpers.search import pattern_image, tiny_checkpoint


def _photos(folder, n=6):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"p{i}.png").write_bytes(pattern_image(i, side=48))
    return folder


def _other_checkpoint(path):
    """A checkpoint of the same net with other weights (another run's `best.pt`)."""
    import torch

    from lookalike.models import create_model
    from lookalike.train.checkpoint import load_checkpoint, save_checkpoint

    blob = load_checkpoint(tiny_checkpoint(path.parent / "first.pt"))
    torch.manual_seed(1)
    model = create_model("fast", widths=(8, 16, 32))
    save_checkpoint({"meta": blob["meta"], "model_state": model.state_dict()}, path)
    return path


def test_a_query_file_changed_since_indexing_is_embedded_afresh(tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck" / "model.pt")
    root = _photos(tmp_path / "photos")
    home = tmp_path / "home"
    cli = cli_runner(monkeypatch, capsys, home)
    assert cli(["index", root, "--model", ck]).returncode == 0
    shutil.copyfile(root / "p1.png", root / "p0.png")  # `cp b.jpg a.jpg`: same path, new content
    os.utime(root / "p0.png", ns=(1, 1))
    res = cli(["search", root / "p0.png", "--index", root, "--json", "--verify", "0", "-k", "3"])
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)[0]["results"]
    top = hits[0]
    assert top["path"].endswith("p1.png") and top["distance"] < 1e-3  # the byte-identical file comes first


def test_a_replaced_checkpoint_is_refused_by_index_and_search(tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck" / "model.pt")
    root = _photos(tmp_path / "photos")
    home = tmp_path / "home"
    cli = cli_runner(monkeypatch, capsys, home)
    assert cli(["index", root, "--model", ck]).returncode == 0
    manifest = next(home.rglob("manifest.json"))
    recorded = json.loads(manifest.read_text())["model_digest"]
    shutil.copyfile(_other_checkpoint(tmp_path / "other" / "best.pt"), ck)
    (root / "new.png").write_bytes(pattern_image(50, side=48))
    query = tmp_path / "query.png"  # not indexed: embedded by the index's backbone
    query.write_bytes(pattern_image(60, side=48))
    for args in (["index", root, "--model", ck], ["index", root],
                 ["search", query, "--index", root, "--verify", "0"]):
        res = cli(args)
        assert res.returncode == 2, (args, res.stderr)
        line = res.stderr.strip()
        assert len(line.splitlines()) == 1 and "has changed since" in line and "--rebuild" in line
    assert json.loads(manifest.read_text())["model_digest"] == recorded  # nothing was added in the new space
    rebuilt = cli(["index", root, "--model", ck, "--rebuild", "--json"])
    assert rebuilt.returncode == 0 and json.loads(rebuilt.stdout)["indexed"] == 7
