"""The index store: manifest, SQLite rows, vector file; crash-safe ordering, compaction, migrations, threads."""

from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.search import index as I
from lookalike.search.index import FORMAT_VERSION, ImageIndex, change_stamp, default_index_path

DIM = 8
BACKBONE = {"model": "toy", "pooling": "avg", "dim": DIM, "weights": None,
            "preprocess": {"mean": [0.5] * 3, "std": [0.5] * 3, "input_size": 32, "resize_size": 32}}


def unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make(tmp_path, n: int = 5):
    root = tmp_path / "photos"
    root.mkdir(exist_ok=True)
    ix = ImageIndex.create(tmp_path / "ix", root=root, backbone=BACKBONE)
    vecs = unit(n)
    rows = ix.append_vectors(vecs)
    ix.commit(inserts=[(f"img{i}.jpg", 100 + i, 1000 + i, f"d{i}", r) for i, r in enumerate(rows)])
    return ix, root, vecs


def test_roundtrip_and_api(tmp_path):
    ix, root, vecs = make(tmp_path)
    ix.touch_manifest(count=5)
    ix.close()
    ro = ImageIndex.open(tmp_path / "ix")
    assert len(ro) == 5
    assert ro.ids().dtype == np.int64 and list(ro.ids()) == [1, 2, 3, 4, 5]
    assert ro.vectors().dtype == np.float32 and np.allclose(ro.vectors(), vecs)
    assert ro.path_of(3) == root.resolve() / "img2.jpg"
    assert ro.id_of(root / "img2.jpg") == 3 and ro.id_of(root / "nope.jpg") is None
    assert ro.id_of(tmp_path / "elsewhere.jpg") is None
    with pytest.raises(KeyError):
        ro.path_of(99)
    stats = ro.stats()
    assert set(stats) == {"count", "model", "dim", "pooling", "updated_at", "root", "index_path"}
    assert stats["count"] == 5 and stats["model"] == "toy" and stats["dim"] == DIM
    m = ro.manifest
    assert m["format_version"] == FORMAT_VERSION and m["preprocess"]["input_size"] == 32
    assert m["updated_at"].endswith("+00:00")
    ro.close()


def test_open_accepts_image_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("LOOKALIKE_HOME", raising=False)
    root = tmp_path / "photos"
    root.mkdir()
    assert default_index_path(root) == root.resolve() / ".lookalike"
    ImageIndex.create(default_index_path(root), root=root, backbone=BACKBONE).close()
    with ImageIndex.open(root) as ix:
        assert ix.path == root.resolve() / ".lookalike" and len(ix) == 0
        assert ix.vectors().shape == (0, DIM)


def test_default_path_moves_under_lookalike_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path / "home"))
    p = default_index_path(tmp_path / "photos")
    assert p.parent == tmp_path / "home" / "indexes" and p.name.startswith("photos-")
    assert default_index_path(tmp_path / "other") != p


def test_missing_and_damaged_index(tmp_path):
    with pytest.raises(LookalikeError, match="no index at"):
        ImageIndex.open(tmp_path)
    ix, _, _ = make(tmp_path)
    ix.close()
    (tmp_path / "ix" / "manifest.json").write_text("{ not json")
    with pytest.raises(LookalikeError, match="damaged .*images themselves are untouched"):
        ImageIndex.open(tmp_path / "ix")
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps({**BACKBONE, "root": str(tmp_path),
                                                                 "format_version": FORMAT_VERSION}))
    (tmp_path / "ix" / "index.db").write_bytes(b"garbage" * 100)
    for name in ("index.db-wal", "index.db-shm"):
        (tmp_path / "ix" / name).unlink(missing_ok=True)
    with pytest.raises(LookalikeError, match="damaged.*--rebuild.*untouched"):
        ImageIndex.open(tmp_path / "ix")
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps({**BACKBONE, "root": str(tmp_path),
                                                                 "format_version": 1}))
    with pytest.raises(LookalikeError, match="damaged.*--rebuild"):  # the upgrade meets the damage: same advice
        ImageIndex.open(tmp_path / "ix", readonly=False)


def test_truncated_vector_file_is_an_error_not_a_crash(tmp_path):
    ix, _, _ = make(tmp_path)
    vfile = ix._vector_file()
    ix.close()
    vfile.write_bytes(vfile.read_bytes()[: DIM * 4 * 2])
    with pytest.raises(LookalikeError, match="holds 2 vectors, fewer than index.db refers to: run `lookalike index"):
        ImageIndex.open(tmp_path / "ix")
    vfile.unlink()
    with pytest.raises(LookalikeError, match="is missing: run `lookalike index"):
        ImageIndex.open(tmp_path / "ix")


def test_partial_vector_write_is_dropped(tmp_path):
    """A kill in the middle of a vector write leaves a partial row and rows no database row references."""
    ix, _, vecs = make(tmp_path)
    vfile = ix._vector_file()
    with open(vfile, "ab") as fh:  # an unreferenced whole row, then half a row
        fh.write(unit(1, seed=5).tobytes() + b"\0" * (DIM * 2))
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:  # readers ignore both
        assert np.allclose(ro.vectors(), vecs)
    ix = ImageIndex.open(tmp_path / "ix", readonly=False)
    rows = ix.append_vectors(unit(2, seed=9))
    assert rows == [6, 7]  # after the 5 live rows and the orphan, partial row truncated
    ix.commit(inserts=[("new0.jpg", 1, 1, "n0", rows[0]), ("new1.jpg", 1, 1, "n1", rows[1])])
    assert np.allclose(ix.vectors()[-2:], unit(2, seed=9))
    assert ix.dead_rows() == 1
    ix.close()


def test_updates_deletes_and_compaction(tmp_path):
    ix, _, vecs = make(tmp_path, n=6)
    ix.commit(deletes=[1, 2, 3])
    new = unit(1, seed=3)
    (row,) = ix.append_vectors(new)
    ix.commit(updates=[(4, "renamed.jpg", 1, 2, "d3x", row)])
    assert ix.dead_rows() == 4
    before = ix.vectors().copy()
    old_file = ix._vector_file()
    ix.compact()
    assert ix._vector_file() != old_file and not old_file.exists()
    assert ix.dead_rows() == 0
    assert np.array_equal(ix.vectors(), before)
    assert list(ix.ids()) == [4, 5, 6] and ix.path_of(4).name == "renamed.jpg"
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert np.allclose(ro.vectors(), np.concatenate([new, vecs[4:]]))


def test_writer_lock(tmp_path):
    ix, _, _ = make(tmp_path)
    with pytest.raises(LookalikeError, match="another"):
        ImageIndex.open(tmp_path / "ix", readonly=False)
    ix.close()
    ImageIndex.open(tmp_path / "ix", readonly=False).close()


def test_reader_sees_only_committed_rows(tmp_path):
    ix, _, vecs = make(tmp_path)
    rows = ix.append_vectors(unit(3, seed=7))  # written, not yet committed
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert len(ro) == 5 and np.allclose(ro.vectors(), vecs)
    ix.commit(inserts=[(f"late{i}.jpg", 1, 1, f"l{i}", r) for i, r in enumerate(rows)])
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert len(ro) == 8
    ix.close()


def test_migration_hook(tmp_path, monkeypatch):
    ix, _, _ = make(tmp_path)
    ix.close()
    mpath = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**manifest, "format_version": I.OLDEST_READABLE - 1}))
    with pytest.raises(LookalikeError, match="older format"):  # too old to search: the writer must upgrade it
        ImageIndex.open(tmp_path / "ix")
    mpath.write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION - 1}))
    monkeypatch.delitem(I.MIGRATIONS, FORMAT_VERSION - 1)
    with pytest.raises(LookalikeError, match="cannot be upgraded"):
        ImageIndex.open(tmp_path / "ix", readonly=False)
    seen = []
    monkeypatch.setitem(I.MIGRATIONS, FORMAT_VERSION - 1, lambda path: seen.append(path))
    ImageIndex.open(tmp_path / "ix", readonly=False).close()
    assert seen == [(tmp_path / "ix").resolve()]
    assert json.loads(mpath.read_text())["format_version"] == FORMAT_VERSION
    mpath.write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(LookalikeError, match="newer"):
        ImageIndex.open(tmp_path / "ix")


def test_failures_are_recorded_replaced_and_cleared(tmp_path):
    ix, _, _ = make(tmp_path)
    assert ix.failures() == {}
    ix.commit(failed=[("bad.jpg", 10, 20, "not an image"), ("cut.jpg", 30, 40, "corrupt or truncated")])
    assert ix.failures() == {"bad.jpg": (10, 20, "not an image"), "cut.jpg": (30, 40, "corrupt or truncated")}
    ix.commit(failed=[("bad.jpg", 11, 21, "empty file")], cleared=["cut.jpg"])  # one transaction with the rows
    assert ix.failures() == {"bad.jpg": (11, 21, "empty file")}
    assert len(ix) == 5  # images untouched
    ix.close()
    ix = ImageIndex.create(tmp_path / "ix", root=tmp_path / "photos", backbone=BACKBONE)  # what --rebuild does
    assert ix.failures() == {}
    ix.close()


def test_format_1_index_is_upgraded_in_place(tmp_path):
    """An index written before the failures table existed: readers search it as it is, the writer upgrades it."""
    ix, _, vecs = make(tmp_path)
    ix.touch_manifest(count=5)
    ix.close()
    conn = sqlite3.connect(tmp_path / "ix" / "index.db")  # back to the format 1 schema
    conn.execute("DROP TABLE failures")
    conn.commit()
    conn.close()
    mpath = tmp_path / "ix" / "manifest.json"
    mpath.write_text(json.dumps({**json.loads(mpath.read_text()), "format_version": 1}))
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert len(ro) == 5 and np.allclose(ro.vectors(), vecs)
    assert json.loads(mpath.read_text())["format_version"] == 1  # reading changed nothing

    ix = ImageIndex.open(tmp_path / "ix", readonly=False)
    assert json.loads(mpath.read_text())["format_version"] == FORMAT_VERSION == 2
    assert ix.failures() == {}
    ix.commit(failed=[("bad.jpg", 1, 2, "not an image")])
    assert ix.failures() == {"bad.jpg": (1, 2, "not an image")}
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:  # the images and vectors came through unchanged
        assert len(ro) == 5 and np.allclose(ro.vectors(), vecs) and ro.path_of(1).name == "img0.jpg"


def test_change_stamp_moves_with_every_committed_change(tmp_path):
    ix, root, _ = make(tmp_path)
    path = tmp_path / "ix"
    first = change_stamp(path)
    assert first is not None and change_stamp(path) == first  # nothing changed, nothing moved
    rows = ix.append_vectors(unit(1, seed=4))
    assert change_stamp(path) == first  # written, not committed: readers would not see it
    ix.commit(inserts=[("more.jpg", 1, 1, "m", rows[0])])
    second = change_stamp(path)
    assert second != first
    with ImageIndex.open(path) as ro:  # a snapshot knows the generation it was read at
        assert ro.generation == second[-1] == first[-1] + 1
    ix.commit(deletes=[1, 2, 3, 4])
    third = change_stamp(path)
    ix.compact()
    fourth = change_stamp(path)
    ix.touch_manifest(count=2)
    fifth = change_stamp(path)
    assert len({first, second, third, fourth, fifth}) == 5
    ix.close()
    assert change_stamp(path) == fifth  # closing the writer is no change
    ImageIndex.create(path, root=root, backbone=BACKBONE).close()  # a rebuild, empty so far
    assert change_stamp(path) not in {first, second, third, fourth, fifth, None}
    assert change_stamp(tmp_path / "nowhere") is None


def test_readonly_index_shared_between_threads(tmp_path):
    from lookalike.search.query import search

    ix, _, vecs = make(tmp_path, n=50)
    ix.close()
    ro = ImageIndex.open(tmp_path / "ix")
    expected = search(ro, vecs[:10], k=3)
    errors, results = [], []

    def work():
        try:
            for _ in range(20):
                results.append(search(ro, vecs[:10], k=3) == expected)
                [ro.path_of(int(i)) for i in ro.ids()]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80 and all(results)
    ro.close()
