"""The index store: manifest, SQLite rows, vector file; crash-safe ordering, compaction, migrations, threads."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from helpers.vectors import BACKBONE, DIM, toy_index, unit
from lookalike.search.store import index as I
from lookalike.search.store.index import FORMAT_VERSION, ImageIndex, change_stamp, default_index_path


def make(tmp_path, n: int = 5):
    return toy_index(tmp_path, n)


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


def test_writer_and_snapshot_answer_the_same_reads(tmp_path):
    from lookalike.search.retrieve.query import search

    ix, _, vecs = make(tmp_path)
    ix.commit(deletes=[2])  # a dead row in the vector file: positions and ids no longer coincide
    ro = ImageIndex.open(tmp_path / "ix")
    live = [1, 3, 4, 5]
    nearest = sorted(live, key=lambda i: -float(vecs[i - 1] @ vecs[3]))
    for index in (ix, ro):
        assert np.allclose(index.lookup([5, 1]), vecs[[4, 0]])
        with pytest.raises(KeyError):
            index.lookup([2])
        _, found = index.backend().search_similarities(vecs[[3]], 4, index.lookup)
        assert list(found[0]) == nearest
        assert [h["id"] for h in search(index, vecs[[3]], k=4)[0]] == nearest
    ro.close()
    ix.close()


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
    with pytest.raises(LookalikeError, match="damaged .*restore it from a backup.*keeps its vectors") as exc:
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
    os.chmod(old_file, 0o640)  # a mode the user chose outlives the rewrite
    ix.compact()
    assert ix._vector_file() != old_file and not old_file.exists()
    assert stat.S_IMODE(ix._vector_file().stat().st_mode) == 0o640
    assert ix.dead_rows() == 0
    assert np.array_equal(ix.vectors(), before)
    assert list(ix.ids()) == [4, 5, 6] and ix.path_of(4).name == "renamed.jpg"
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert np.allclose(ro.vectors(), np.concatenate([new, vecs[4:]]))


def test_writer_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_LOCK_WAIT", "0.2")  # a second writer waits that long, then gives up
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
    ix = ImageIndex.create(tmp_path / "ix", root=tmp_path / "photos", backbone=BACKBONE, replace=True)  # --rebuild
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
    assert json.loads(mpath.read_text())["format_version"] == FORMAT_VERSION == 7
    assert ix.failures() == {}
    conn = sqlite3.connect(tmp_path / "ix" / "index.db")
    assert "keypoints" in {r[1] for r in conn.execute("PRAGMA table_info(renditions)")}  # format 7's column
    conn.close()
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
    ImageIndex.create(path, root=root, backbone=BACKBONE, replace=True).close()  # a rebuild, empty so far
    assert change_stamp(path) not in {first, second, third, fourth, fifth, None}
    assert change_stamp(tmp_path / "nowhere") is None


def test_readonly_index_shared_between_threads(tmp_path):
    from lookalike.search.retrieve.query import search

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


# --- ownership: only files the index can prove its own are ever deleted ---------------------------------------
def test_create_refuses_folders_it_cannot_prove_its_own(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    plain = tmp_path / "plain"  # an ordinary folder that happens to hold .f32 files and a manifest.json
    plain.mkdir()
    for name, data in (("weights.f32", b"\1" * 64), ("vectors-0.f32", b"\2" * 64), ("notes.txt", b"mine")):
        (plain / name).write_bytes(data)
    before = {f.name: f.read_bytes() for f in plain.iterdir()}
    with pytest.raises(LookalikeError, match="not empty and holds no Lookalike index") as exc:
        ImageIndex.create(plain, root=root, backbone=BACKBONE)
    assert "\n" not in str(exc.value)
    (plain / "manifest.json").write_text(json.dumps({"name": "a web app", "icons": []}))
    before["manifest.json"] = (plain / "manifest.json").read_bytes()
    with pytest.raises(LookalikeError, match="does not hold a Lookalike index that can be replaced"):
        ImageIndex.create(plain, root=root, backbone=BACKBONE, replace=True)  # what --rebuild does
    assert {f.name: f.read_bytes() for f in plain.iterdir() if f.name != "write.lock"} == before

    # New, empty, or holding only what a kill during creation leaves: taken.
    ImageIndex.create(tmp_path / "new" / "ix", root=root, backbone=BACKBONE).close()
    (tmp_path / "empty").mkdir()
    ImageIndex.create(tmp_path / "empty", root=root, backbone=BACKBONE).close()
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "write.lock").touch()
    (tmp_path / "killed" / ".manifest.json.abc123.tmp").write_text("{")
    ImageIndex.create(tmp_path / "killed", root=root, backbone=BACKBONE).close()
    with pytest.raises(LookalikeError, match="is a file"):
        ImageIndex.create(plain / "notes.txt", root=root, backbone=BACKBONE)


def test_rebuild_deletes_only_the_files_the_old_index_names(tmp_path):
    ix, root, _ = make(tmp_path)
    old_vectors = ix._vector_file()
    ix.close()
    folder = tmp_path / "ix"
    (folder / "vectors-7.f32").write_bytes(b"\3" * 32)  # not named by the database: not the index's to delete
    (folder / "README.txt").write_text("a user's note")
    ix = ImageIndex.create(folder, root=root, backbone=BACKBONE, replace=True)  # --rebuild
    assert not old_vectors.exists() and len(ix) == 0
    assert (folder / "vectors-7.f32").read_bytes() == b"\3" * 32 and (folder / "README.txt").exists()
    assert ix._vector_file().name == "vectors-8.f32"  # never appends to a file it cannot account for
    assert any("vectors-7.f32" in note and "delete it yourself" in note for note in ix.notes)
    ix.close()


def test_only_recorded_vector_files_are_cleaned_up(tmp_path):
    ix, _, vecs = make(tmp_path, n=6)
    folder = tmp_path / "ix"
    stray = folder / "vectors-50.f32"
    stray.write_bytes(b"\4" * 32)
    ix.commit(deletes=[1, 2])
    old = ix._vector_file()
    ix.compact()  # the old file is recorded as retired, then removed
    assert not old.exists() and stray.exists()
    current = ix._vector_file()
    assert current.name == "vectors-51.f32"  # numbered after every file there, so the stray is never overwritten
    # A compaction killed after writing its new file: recorded as pending, removed by the next writer.
    pending = folder / "vectors-52.f32"
    ix._conn.execute("INSERT INTO meta VALUES ('pending_vector_file', ?)", (pending.name,))
    pending.write_bytes(b"\5" * 32)
    ix.close()
    with ImageIndex.open(folder) as ro:  # readers never delete
        assert pending.exists() and np.allclose(ro.vectors(), vecs[2:])
    ImageIndex.open(folder, readonly=False).close()
    assert not pending.exists() and stray.exists() and current.exists()


# --- the vector file and the database are checked against each other on open ------------------------------
@pytest.mark.parametrize("damage", ["truncate", "cut-mid-row", "delete"])
def test_writer_repairs_a_short_vector_file_by_forgetting_lost_rows(tmp_path, damage):
    ix, root, vecs = make(tmp_path, n=5)
    vfile = ix._vector_file()
    ix.close()
    if damage == "delete":
        vfile.unlink()
    else:
        vfile.write_bytes(vfile.read_bytes()[: DIM * 4 * 2 + (DIM * 2 if damage == "cut-mid-row" else 0)])
    kept = 0 if damage == "delete" else 2
    with pytest.raises(LookalikeError, match="run `lookalike index"):
        ImageIndex.open(tmp_path / "ix")  # readers refuse, and say how to repair
    ix = ImageIndex.open(tmp_path / "ix", readonly=False)
    assert len(ix) == kept and len(ix.notes) == 1
    assert f"forgot the {5 - kept} images" in ix.notes[0] and "\n" not in ix.notes[0]
    new = unit(5 - kept, seed=11)
    rows = ix.append_vectors(new)
    assert rows == list(range(kept, 5))  # after the surviving rows: none of them is overwritten
    ix.commit(inserts=[(f"img{i}.jpg", 1, 1, f"n{i}", r) for i, r in zip(range(kept, 5), rows)])
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert len(ro) == 5 and not ro.notes
        got = {ro.path_of(int(i)).name: v for i, v in zip(ro.ids(), ro.vectors())}
    for i in range(kept):
        assert np.array_equal(got[f"img{i}.jpg"], vecs[i])
    for j, i in enumerate(range(kept, 5)):
        assert np.array_equal(got[f"img{i}.jpg"], new[j])


def test_missing_database_is_an_error_for_readers_and_restarted_by_the_writer(tmp_path):
    ix, root, _ = make(tmp_path)
    ix.touch_manifest(count=5)
    old_vectors = ix._vector_file()
    ix.close()
    folder = tmp_path / "ix"
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(LookalikeError, match="index database .* is missing: run `lookalike index"):
        ImageIndex.open(folder)
    assert change_stamp(folder) is None
    ix = ImageIndex.open(folder, readonly=False)
    assert len(ix) == 0 and bool(ix) and any("was missing" in n for n in ix.notes)
    assert ix._vector_file() != old_vectors and old_vectors.exists()  # a fresh file; the old one left alone
    rows = ix.append_vectors(unit(1, seed=2))
    assert rows == [0]
    ix.commit(inserts=[("again.jpg", 1, 1, "a", rows[0])])
    ix.close()
    with ImageIndex.open(folder) as ro:
        assert len(ro) == 1


@pytest.mark.parametrize("field, value", [
    ("dim", "8"), ("dim", True), ("dim", 0), ("model", 3), ("preprocess", [1, 2]), ("root", None),
    ("format_version", "2"), ("weights", 5), ("count", "many"),
    ("preprocess", {"input_size": "32"}), ("preprocess", {"mean": [0.5, 0.5]}), ("preprocess", {"std": "x"}),
])
def test_manifest_with_wrong_types_is_one_line(tmp_path, field, value):
    ix, _, _ = make(tmp_path)
    ix.close()
    mpath = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest[field] = value
    mpath.write_text(json.dumps(manifest))
    for readonly in (True, False):
        with pytest.raises(LookalikeError, match=f"damaged or not Lookalike's \\(.*{field.split('.')[0]}") as exc:
            ImageIndex.open(tmp_path / "ix", readonly=readonly)
        assert "\n" not in str(exc.value) and "keeps its vectors" in str(exc.value)
        assert "delete" not in str(exc.value)  # it may hold the only copy of imported vectors
    mpath.write_text(json.dumps([1, 2]))
    with pytest.raises(LookalikeError, match="not a JSON object"):
        ImageIndex.open(tmp_path / "ix")


# --- an empty index is an index ---------------------------------------------------------------------------------
def test_empty_index_is_truthy_and_can_be_reopened_for_writing(tmp_path):
    ix = ImageIndex.create(tmp_path / "ix", root=tmp_path, backbone=BACKBONE)
    assert len(ix) == 0 and bool(ix)
    ix.close()
    for _ in range(2):  # reopened, closed, reopened: the lock is released each time
        with ImageIndex.open(tmp_path / "ix", readonly=False) as w:
            assert len(w) == 0 and bool(w)
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert len(ro) == 0 and bool(ro) and ro.vectors().shape == (0, DIM)


# --- names that are not valid UTF-8 ----------------------------------------------------------------------------
def test_non_utf8_names_round_trip(tmp_path):
    import os

    from lookalike.paths import printable

    ix, root, _ = make(tmp_path, n=1)
    name = os.fsdecode(b"z\xe9t\xe9.jpg")  # what os.walk gives for that name: surrogate escapes
    (row,) = ix.append_vectors(unit(1, seed=3))
    ix.commit(inserts=[(f"sub/{name}", 1, 2, "zz", row)], failed=[(f"bad-{name}", 3, 4, "not an image")])
    assert f"sub/{name}" in ix.entries() and f"bad-{name}" in ix.failures()
    kinds = dict(ix._conn.execute("SELECT path, typeof(path) FROM images").fetchall())
    assert kinds["img0.jpg"] == "text" and kinds[b"sub/z\xe9t\xe9.jpg"] == "blob"  # the file system's bytes
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:
        image_id = ro.id_of(root / "sub" / name)
        assert image_id == 2 and ro.path_of(image_id) == root.resolve() / "sub" / name
        assert os.fsencode(str(ro.path_of(image_id))).endswith(b"/sub/z\xe9t\xe9.jpg")
        assert printable(ro.path_of(image_id)).endswith("sub/z\\xe9t\\xe9.jpg")
    ix = ImageIndex.open(tmp_path / "ix", readonly=False)
    ix.commit(cleared=[f"bad-{name}"], deletes=[ix.id_of(root / "sub" / name)])
    assert ix.failures() == {} and len(ix) == 1
    ix.close()


# --- storage errors: one line naming the cause; never --rebuild for a permission problem ------------------------
def test_sqlite_disk_full_is_one_line_and_the_next_commit_resumes(tmp_path):
    ix, _, _ = make(tmp_path)
    # SQLite's own limit on the database size fails a transaction exactly as a full disk does (SQLITE_FULL).
    pages = ix._conn.execute("PRAGMA page_count").fetchone()[0]
    ix._conn.execute(f"PRAGMA max_page_count = {pages}")
    rows = ix.append_vectors(unit(400, seed=4))
    with pytest.raises(LookalikeError, match="^disk full: .*free some space") as exc:
        ix.commit(inserts=[(f"n{i:03d}-{'x' * 200}.jpg", 1, 1, f"d{i}", r) for i, r in enumerate(rows)])
    assert "rollback" not in str(exc.value) and "\n" not in str(exc.value)
    assert len(ix) == 5  # the failed batch left nothing behind
    ix._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    ix.commit(inserts=[(f"n{i:03d}.jpg", 1, 1, f"d{i}", r) for i, r in enumerate(rows)])
    assert len(ix) == 405
    ix.close()


def test_enospc_writing_vectors_is_one_line(tmp_path, monkeypatch):
    import errno
    import os

    ix, _, _ = make(tmp_path)

    def full(fd):  # what a full disk answers when the appended rows are flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("lookalike.search.store.writer.os.fsync", full)
    with pytest.raises(LookalikeError, match="^disk full: cannot write the index at .*No space left"):
        ix.append_vectors(unit(2, seed=1))
    ix.close()


def test_storage_error_messages():
    import errno
    import sqlite3
    from pathlib import Path

    from lookalike.search.store.index import storage_error

    where = Path("/srv/photos/.lookalike")
    denied = [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "Read-only file system"),
              sqlite3.OperationalError("attempt to write a readonly database"),
              sqlite3.OperationalError("unable to open database file")]
    for exc in denied:
        for writing in (True, False):
            msg = str(storage_error(exc, where, writing=writing))
            assert "rebuild" not in msg and "delete" not in msg and "\n" not in msg, msg
            assert msg.startswith("cannot write" if writing else "cannot read"), msg
    for exc in (OSError(errno.ENOSPC, "No space left on device"), sqlite3.OperationalError("database or disk is full")):
        assert str(storage_error(exc, where, writing=True)).startswith("disk full: cannot write the index at /srv")
    damaged = str(storage_error(sqlite3.DatabaseError("file is not a database"), where, writing=False,
                                root="/srv/photos"))
    assert "--rebuild" in damaged and "images themselves are untouched" in damaged
    assert storage_error(ValueError("a bug"), where, writing=True) is None
    assert storage_error(sqlite3.IntegrityError("UNIQUE constraint failed"), where, writing=True) is None
