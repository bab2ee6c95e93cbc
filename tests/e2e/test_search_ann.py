"""The search backend inside the index: `lookalike index --ann`, the ANN file as derived state (rebuilt when
deleted or damaged, caught up when behind), `auto` switching at its threshold, search / serve / dupes going
through the backend, and imported rows that a later `index` run keeps.

The backbone is a small random-weight CIFAR net (the `backbone` fixture) so that each run costs little.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike.search.store import ann
from lookalike.search.store.index import ImageIndex, IndexWriter
from lookalike.search.retrieve.query import Query, find_duplicates, group_vectors, run_queries, search
from lookalike.search.indexing.sync import index_folder

from helpers.cli import run_cli
from helpers.search import pattern_image


def gallery(folder: Path, n: int, start: int = 0, copies: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"p{i:03d}.png"
        path.write_bytes(pattern_image(i))
        paths.append(path)
    for i in range(copies):  # the same bytes under another name: a near-duplicate group of two
        shutil.copyfile(paths[i], folder / f"copy-{i:03d}.png")
    return paths


def same_hits(hits: list[list[dict]], ix, queries: np.ndarray, k: int) -> bool:
    """The hits have exact's top-k distances, each the true distance of its image (identical copies tie, so
    ids may differ where distances are equal)."""
    dist, _ = ann.build("exact", ix.ids(), ix.vectors()).search(queries, k)
    for row, d, q in zip(hits, dist, queries):
        true = [float(np.linalg.norm(ix.vector_of(h["id"]) - q)) for h in row]
        if not (np.allclose([h["distance"] for h in row], d, atol=2e-3) and np.allclose(true, d, atol=2e-3)):
            return False
    return True


def test_search_serve_and_dupes_go_through_the_backend(backbone, home, tmp_path, monkeypatch, capsys):
    ckpt, emb = backbone
    folder = tmp_path / "photos"
    gallery(folder, 40, copies=4)
    summary = index_folder(folder, tmp_path / "ix", embedder=emb, ann="hnsw")
    assert summary["ann"]["backend"] == "hnsw" and summary["ann"]["requested"] == "hnsw"
    assert len(list((tmp_path / "ix").glob("ann-*.ann"))) == 1
    with ImageIndex.open(tmp_path / "ix") as ix:
        assert ix.backend().kind == "hnsw" and ix.notes == []
        vecs = ix.vectors()
        assert same_hits(search(ix, vecs, k=5), ix, vecs, 5)
        groups = find_duplicates(ix, threshold=0.05)
        ids = ix.ids()
        assert groups == [[int(ids[i]) for i in g] for g in group_vectors(vecs, 0.05)] and len(groups) == 4
        by_file = run_queries(ix, [Query(name="q", path=folder / "p007.png")], 3, embedder=lambda: emb)[0].results
        assert by_file[0].path != str(folder / "p007.png")  # an indexed query is left out of its own results
        own = ix.id_of(folder / "p007.png")
        dist, found = ann.build("exact", ix.ids(), ix.vectors()).search(ix.vector_of(own)[None], 4)
        assert own not in [h.id for h in by_file]
        assert np.allclose([h.distance for h in by_file], dist[0][found[0] != own][:3], atol=2e-3)

    code, out, err = run_cli(["index", folder, "--index", tmp_path / "ix", "--model", ckpt, "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["ann"]["backend"] == "hnsw"  # kept from the manifest
    code, out, err = run_cli(["search", folder / "p003.png", "--index", tmp_path / "ix", "-k", "3", "--json"],
                             monkeypatch, capsys)
    assert code == 0 and err == "", err
    code, out, err = run_cli(["dupes", "--index", tmp_path / "ix", "--verify", "0", "--threshold", "0.05", "--json"],
                             monkeypatch, capsys)
    assert code == 0 and len(json.loads(out)["groups"]) == 4, err

    from lookalike.web.service import SearchService

    service = SearchService(tmp_path / "ix", embedder=emb)
    try:
        stats = service.stats()
        assert stats["ann"]["backend"] == "hnsw" and stats["ann"]["m"] == ann.HNSW_M and stats["notes"] == []
        with ImageIndex.open(tmp_path / "ix") as ix:
            some = int(ix.ids()[10])
            dist, found = ann.build("exact", ix.ids(), ix.vectors()).search(ix.vector_of(some)[None], 6)
        got = service.search_id(some, 5).results
        assert some not in [r.id for r in got]
        assert np.allclose([r.distance for r in got], dist[0][found[0] != some][:5], atol=2e-3)
        assert len(find_duplicates(service.index, threshold=0.05)) == 4
    finally:
        service.close()


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_deleted_or_damaged_ann_file_means_one_warning_and_a_rebuild(backbone, home, tmp_path, monkeypatch,
                                                                       capsys, damage):
    ckpt, emb = backbone
    folder = tmp_path / "photos"
    gallery(folder, 12)
    index_folder(folder, tmp_path / "ix", embedder=emb, ann="hnsw")
    (file,) = (tmp_path / "ix").glob("ann-*.ann")
    if damage == "delete":
        file.unlink()
    else:
        data = bytearray(file.read_bytes())
        data[len(data) // 2:len(data) // 2 + 32] = b"\0" * 32
        file.write_bytes(bytes(data))
    with ImageIndex.open(tmp_path / "ix") as ix:  # readers search exactly, never trust the file
        assert ix.backend().kind == "exact" and len(ix.notes) == 1
        vecs = ix.vectors()
        assert same_hits(search(ix, vecs, k=3), ix, vecs, 3)
    code, out, err = run_cli(["search", folder / "p002.png", "--index", tmp_path / "ix", "-k", "2"], monkeypatch,
                             capsys)
    assert code == 0 and len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert "searching exactly" in err and "--rebuild" not in err
    code, out, err = run_cli(["index", folder, "--index", tmp_path / "ix", "--model", ckpt], monkeypatch, capsys)
    assert code == 0 and err.count("rebuilt it from the vectors") == 1, err
    assert "search backend: hnsw" in out
    with ImageIndex.open(tmp_path / "ix") as ix:
        assert ix.backend().kind == "hnsw" and ix.notes == []
    assert file.name not in {p.name for p in (tmp_path / "ix").glob("*.ann")} or damage == "delete"


def test_a_file_behind_the_index_is_caught_up_by_readers(backbone, home, tmp_path, monkeypatch):
    _, emb = backbone
    folder = tmp_path / "photos"
    paths = gallery(folder, 10)
    index_folder(folder, tmp_path / "ix", embedder=emb, ann="hnsw")
    gallery(folder, 3, start=100)
    paths[0].unlink()
    with monkeypatch.context() as m:  # a run killed after its commits, before its ANN save
        m.setattr(IndexWriter, "update_ann", lambda self, *a, **k: {})
        index_folder(folder, tmp_path / "ix", embedder=emb)
    with ImageIndex.open(tmp_path / "ix") as ix:
        backend = ix.backend()
        assert backend.kind == "hnsw" and ix.notes == [] and len(backend) == len(ix) == 12
        vecs = ix.vectors()
        assert same_hits(search(ix, vecs, k=3), ix, vecs, 3)


def test_auto_switches_at_its_threshold_through_index(backbone, home, tmp_path, monkeypatch):
    _, emb = backbone
    monkeypatch.setattr(ann.choice, "EXACT_MAX_ROWS", 6)  # where `choose` reads it
    folder = tmp_path / "photos"
    paths = gallery(folder, 6)
    ix_path = tmp_path / "ix"
    summary = index_folder(folder, ix_path, embedder=emb)
    assert summary["ann"]["backend"] == "exact" and summary["ann"]["requested"] == "auto"
    assert not list(ix_path.glob("*.ann"))  # exact is rebuilt at open, never saved
    gallery(folder, 1, start=50)
    summary = index_folder(folder, ix_path, embedder=emb)
    assert summary["ann"]["backend"] == "hnsw" and len(list(ix_path.glob("*.ann"))) == 1
    with ImageIndex.open(ix_path) as ix:
        assert ix.backend().kind == "hnsw" and json.loads((ix_path / "manifest.json").read_text())["ann"] == "auto"
    paths[0].unlink()
    summary = index_folder(folder, ix_path, embedder=emb)
    assert summary["ann"]["backend"] == "exact" and not list(ix_path.glob("*.ann"))  # its own file, removed
    with ImageIndex.open(ix_path) as ix:
        assert ix.backend().kind == "exact" and ix.notes == []


def test_import_keeps_rows_outside_the_root_across_index_runs(backbone, home, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike.search.store.importer import import_parquet

    _, emb = backbone
    folder = tmp_path / "photos"
    paths = gallery(folder, 6)
    ix_path = tmp_path / "ix"
    index_folder(folder, ix_path, embedder=emb)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, emb.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    backbone_meta = {k: emb.describe().get(k) for k in ("model", "pooling", "dim", "preprocess", "weights")}
    table = pa.table({"path": ["/elsewhere/a.jpg", "/elsewhere/b.jpg", str(folder / "gone-here.png")],
                      "vector": pa.array([list(v) for v in vecs], pa.list_(pa.float32(), emb.dim))},
                     metadata={b"lookalike": json.dumps(backbone_meta).encode()})
    pq.write_table(table, tmp_path / "v.parquet")
    summary = import_parquet(tmp_path / "v.parquet", ix_path)
    assert summary["added"] == 3 and summary["rows"] == 9

    paths[0].unlink()  # the root's own file goes, the imported rows stay
    summary = index_folder(folder, ix_path, embedder=emb)
    assert summary["removed"] == 1 and summary["indexed"] == 8
    with ImageIndex.open(ix_path) as ix:
        hits = search(ix, vecs, k=1)
        assert [h[0]["path"] for h in hits] == ["/elsewhere/a.jpg", "/elsewhere/b.jpg", str(folder / "gone-here.png")]
        assert all(h[0]["distance"] < 1e-3 for h in hits)
        assert ix.id_of("/elsewhere/a.jpg") is not None
    # Once an imported file turns up under the root and differs, the root's run treats it as its own.
    (folder / "gone-here.png").write_bytes(pattern_image(77))
    summary = index_folder(folder, ix_path, embedder=emb)
    assert summary["updated"] == 1 and summary["indexed"] == 8
    (folder / "gone-here.png").unlink()
    summary = index_folder(folder, ix_path, embedder=emb)
    assert summary["removed"] == 1 and summary["indexed"] == 7
