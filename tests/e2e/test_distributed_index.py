"""Sharded indexing under torchrun (gloo, 2 CPU processes): the index equals a single process's, renames are
still found, and a run whose worker is killed resumes from the committed batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from lookalike.search.store.index import ImageIndex
from lookalike.search.indexing.sync import index_folder

from helpers.search import photo, write_originals
from lookalike.search.sample_photos import jpeg_bytes

COUNTS = ("indexed", "added", "updated", "removed", "renamed", "unchanged")


def _photos(folder: Path, n: int = 14) -> Path:
    """`n` distinct photos (shifted crops) and one file that is not an image."""
    names = ["astronaut", "camera", "coffee", "rocket"]
    write_originals(folder, names)
    for i in range(n - len(names)):
        img = photo(names[i % 4])
        (folder / f"v{i:02d}.jpg").write_bytes(jpeg_bytes(img.crop((i, i, img.width - 20 + i, img.height - 20)), 85))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _vectors(index_path: Path) -> dict[str, np.ndarray]:
    with ImageIndex.open(index_path) as ix:
        return {str(ix.path_of(int(i))): np.array(ix.vector_of(int(i))) for i in ix.ids()}


def _same_index(a: Path, b: Path) -> None:
    va, vb = _vectors(a), _vectors(b)
    assert sorted(va) == sorted(vb)
    for path in va:
        assert np.allclose(va[path], vb[path], atol=1e-5), path


def _index_2(folder: Path, index: Path, home: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike", "index", str(folder), "--index", str(index),
                           "--batch-size", "3", "--nproc", "2", "--json", *extra],
                          env={**os.environ, "LOOKALIKE_HOME": str(home)}, capture_output=True, text=True,
                          timeout=600)


def test_two_processes_index_like_one(home, embedder, tmp_path):
    folder = _photos(tmp_path / "photos")
    one, two = tmp_path / "one", tmp_path / "two"
    single = index_folder(folder, one, batch_size=3, embedder=embedder)
    proc = _index_2(folder, two, home)
    assert proc.returncode == 0, proc.stderr
    sharded = json.loads(proc.stdout)  # one JSON document: only rank 0 reports
    assert {k: sharded[k] for k in COUNTS} == {k: single[k] for k in COUNTS}
    assert [s["path"] for s in sharded["skipped"]] == [s["path"] for s in single["skipped"]]
    _same_index(one, two)

    # Incremental: a rename keeps its vector, a new file is embedded, as in one process.
    os.rename(folder / "v03.jpg", folder / "renamed.jpg")
    (folder / "new.jpg").write_bytes(jpeg_bytes(photo("chelsea"), 85))
    single = index_folder(folder, one, batch_size=3, embedder=embedder)
    proc = _index_2(folder, two, home)
    assert proc.returncode == 0, proc.stderr
    sharded = json.loads(proc.stdout)
    assert {k: sharded[k] for k in COUNTS} == {k: single[k] for k in COUNTS}
    assert (sharded["renamed"], sharded["added"]) == (1, 1)
    _same_index(one, two)


# Rank 1 dies (SIGKILL, no clean-up) when it is about to send its third batch (of 7 batches of 3 files, rank 1
# has batches 1, 3 and 5): rank 0 has committed the batches of the first two rounds, 0 to 3.
KILL_RANK_1 = textwrap.dedent("""
    import os, signal, sys
    import lookalike.search.indexing.sharded as S
    from lookalike.cli import main
    real_gather, sent = S._gather, []
    def gather(group, results, dim):
        if group.rank == 1 and results:
            sent.append(1)
            if len(sent) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_gather(group, results, dim)
    S._gather = gather
    sys.argv = ["lookalike", "index", *sys.argv[1:]]
    main()
""")


def test_killed_worker_then_resume(home, embedder, tmp_path):
    folder = _photos(tmp_path / "photos", n=20)
    index = tmp_path / "ix"
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(folder), "--index", str(index), "--batch-size", "3"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    with ImageIndex.open(index, readonly=False) as ix:  # opens after the kill, holding the committed batches
        committed = len(ix)
        failures = len(ix.failures())
    assert committed + failures == 12  # 4 batches of 3 files (the broken one is remembered as a failure)
    proc = _index_2(folder, index, home)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["unchanged"], summary["added"], summary["indexed"]) == (committed, 20 - committed, 20)
    index_folder(folder, tmp_path / "one", batch_size=3, embedder=embedder)
    _same_index(index, tmp_path / "one")


def test_two_processes_whiten_like_one(home, tmp_path, monkeypatch):
    """A whitened index: the images the second process embeds are whitened by the writer, as one process would."""
    from lookalike.search.describe.features import load_embedder

    monkeypatch.setenv("LOOKALIKE_HOME", str(home))
    embedder = load_embedder()  # its own: the index's whitening is attached to it
    folder = _photos(tmp_path / "photos")
    one, two = tmp_path / "one", tmp_path / "two"
    index_folder(folder, one, batch_size=3, embedder=embedder, whiten=True)
    proc = _index_2(folder, two, home, "--whiten")
    assert proc.returncode == 0, proc.stderr
    _same_index(one, two)
    with ImageIndex.open(two) as ix:
        assert ix.whitening is not None
    # New images after the fit: embedded across both processes, then whitened with the stored whitening.
    for i in range(7):
        img = photo("chelsea")
        (folder / f"new{i}.jpg").write_bytes(jpeg_bytes(img.crop((3 * i, 0, img.width - 30 + 3 * i, img.height)), 85))
    index_folder(folder, one, batch_size=3, embedder=embedder)
    proc = _index_2(folder, two, home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["added"] == 7
    _same_index(one, two)
