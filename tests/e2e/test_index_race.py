"""Two real processes writing one index: the second waits for the first's lock, then reopens what the first
made (its root check and backbone check apply); it never starts the index over. A lock held too long gets one
line naming the holder's PID."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from helpers.cli import cli_runner
from helpers.search import pattern_image, tiny_checkpoint

# Takes the index folder's write lock, says so, waits, then starts an index there holding 3 imported rows:
# what `lookalike import` does while another `lookalike index` is loading its model.
HOLDER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from lookalike.search.store.index import IndexWriter
    ix, root, backbone, hold = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
    w = IndexWriter.take(ix)
    print("locked", flush=True)
    time.sleep(hold)
    w.start(root=root, backbone=backbone)
    vecs = np.eye(3, backbone["dim"], dtype=np.float32)
    rows = w.append_vectors(vecs)
    w.commit(inserts=[(f"elsewhere/{i}.jpg", 1, 1, f"d{i}", r) for i, r in enumerate(rows)], imported=True)
    w.close()
""")


def _photos(folder, n=4):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"p{i}.png").write_bytes(pattern_image(i))
    return folder


def _holder(ix, root, backbone, hold):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(ix), str(root), json.dumps(backbone), str(hold)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_waits_then_reopens_the_index_the_first_made(tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck" / "model.pt")
    root = _photos(tmp_path / "photos")
    # The backbone the `index` run will describe, from an index of the same photos elsewhere.
    cli = cli_runner(monkeypatch, capsys, tmp_path / "home")
    ref = cli(["index", root, "--index", tmp_path / "ref", "--model", ck])
    assert ref.returncode == 0, ref.stderr
    manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    backbone = {k: manifest[k] for k in ("model", "pooling", "dim", "preprocess", "weights") if k in manifest}

    ix = tmp_path / "ix"
    holder = _holder(ix, root, backbone, hold=1.0)
    second = cli(["index", root, "--index", ix, "--model", ck, "--json"])  # this process: the second writer
    assert holder.wait(timeout=60) == 0
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["added"] == 4 and summary["indexed"] == 7  # the first writer's 3 imported rows are kept

    from lookalike.search.store.index import ImageIndex

    with ImageIndex.open(ix) as snap:
        assert len(snap) == 7
        imported = [i for i in snap.ids() if "elsewhere" in str(snap.path_of(i))]
        assert len(imported) == 3  # the first writer's vectors, as it wrote them
        assert np.allclose(np.stack([snap.vector_of(i) for i in imported]), np.eye(3, snap.dim))


def test_second_writer_of_another_folder_is_refused_by_the_root_check(tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck" / "model.pt")
    mine, theirs = _photos(tmp_path / "mine"), _photos(tmp_path / "theirs", n=2)
    ix = tmp_path / "ix"
    holder = _holder(ix, theirs, {"model": "x", "pooling": "avg", "dim": 8, "preprocess": {}, "weights": None},
                     hold=1.0)
    second = cli_runner(monkeypatch, capsys, tmp_path / "home")(["index", mine, "--index", ix, "--model", ck])
    assert holder.wait(timeout=60) == 0
    assert second.returncode == 2
    assert "belongs to" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    from lookalike.search.store.index import ImageIndex

    with ImageIndex.open(ix) as snap:  # the first writer's index, untouched
        assert len(snap) == 3


def test_a_lock_held_past_the_wait_names_the_holder(tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck" / "model.pt")
    root = _photos(tmp_path / "photos", n=1)
    ix = tmp_path / "ix"
    holder = _holder(ix, root, {"model": "x", "pooling": "avg", "dim": 8, "preprocess": {}, "weights": None},
                     hold=1.5)
    monkeypatch.setenv("LOOKALIKE_LOCK_WAIT", "0.5")
    second = cli_runner(monkeypatch, capsys, tmp_path / "home")(["index", root, "--index", ix, "--model", ck])
    assert second.returncode == 2
    line = second.stderr.strip()
    assert len(line.splitlines()) == 1 and f"PID {holder.pid}" in line and "Traceback" not in line
    assert holder.wait(timeout=60) == 0
