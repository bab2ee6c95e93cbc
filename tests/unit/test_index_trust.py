"""What the index reads from its own database and files is checked before it is trusted: file names, row
numbers, counters and the ANN file's header. Readers refuse with one line; the writer repairs."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

from helpers.vectors import toy_index, unit
from lookalike.errors import LookalikeError
from lookalike.search.store import ann
from lookalike.search.store.index import ImageIndex


def make(tmp_path, n: int = 6, backend: str | None = None):
    ix, _, vecs = toy_index(tmp_path, n)
    if backend:
        ix.update_ann(backend)
    ix.close()
    return tmp_path / "ix", vecs


def set_db(folder, sql: str, *args) -> None:
    conn = sqlite3.connect(folder / "index.db")
    conn.execute(sql, args)
    conn.commit()
    conn.close()


def one_line_refusal(folder) -> str:
    with pytest.raises(LookalikeError) as exc:
        ImageIndex.open(folder)
    text = str(exc.value)
    assert "\n" not in text and "delete" not in text
    return text


@pytest.mark.parametrize("name", ["../../victim.txt", "/tmp/elsewhere.f32", "vectors-1.f32/../../x", "notes.txt"])
def test_a_vector_file_name_not_the_index_own_is_never_opened(tmp_path, name):
    folder, _ = make(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    set_db(folder, "UPDATE meta SET value = ? WHERE key = 'vector_file'", name)
    assert "not the index's own" in one_line_refusal(folder)
    with ImageIndex.open(folder, readonly=False) as w:  # the writer repairs: a fresh file, rows forgotten
        assert any("not the index's own" in note for note in w.notes)
        assert len(w) == 0 and w._vector_file().parent == folder
        w.append_vectors(unit(2, seed=3))
    assert victim.read_text() == "the user's file"
    with ImageIndex.open(folder) as snap:
        assert len(snap) == 0


def test_a_vector_file_that_is_a_link_is_never_written_through(tmp_path):
    folder, _ = make(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"x" * 64)
    vfile = next(folder.glob("vectors-*.f32"))
    vfile.unlink()
    os.symlink(victim, vfile)
    assert "not the index's own" in one_line_refusal(folder)
    with ImageIndex.open(folder, readonly=False) as w:
        w.append_vectors(unit(1, seed=4))
    assert victim.read_bytes() == b"x" * 64


@pytest.mark.parametrize("sql, args, kept", [
    ("UPDATE images SET row = 'abc' WHERE id = 2", (), 5),
    ("UPDATE images SET row = -1 WHERE id = 2", (), 5),
    ("UPDATE images SET row = 0 WHERE id = 2", (), 4),  # two images share row 0: both forgotten
    ("UPDATE images SET row = 2.5 WHERE id = 3", (), 5),
    ("UPDATE meta SET value = 'abc' WHERE key = 'generation'", (), 6),
])
def test_rows_and_counters_of_the_wrong_kind(tmp_path, sql, args, kept):
    folder, vecs = make(tmp_path)
    set_db(folder, sql, *args)
    assert "damaged" in one_line_refusal(folder)
    with ImageIndex.open(folder, readonly=False) as w:
        assert len(w) == kept and isinstance(w.generation, int)
    with ImageIndex.open(folder) as snap:  # repaired: readable, and every vector is the one its image had
        assert len(snap) == kept
        for image_id in snap.ids():
            assert np.allclose(snap.vector_of(image_id), vecs[int(image_id) - 1])


def _edit_header(path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))


def test_an_edited_ann_header_is_damage_and_the_writer_rebuilds_it(tmp_path):
    folder, vecs = make(tmp_path, n=60, backend="hnsw")
    path = next(folder.glob("ann-*.ann"))
    _edit_header(path, b'"entries": 60', b'"entries": 61')
    with pytest.raises(ann.AnnFileError, match="header"):
        ann.verify(path)
    with ImageIndex.open(folder) as snap:  # a reader searches exactly, with a note
        hits = snap.backend().search(vecs[:1], 1)
        assert any("damaged" in note for note in snap.notes)
    with ImageIndex.open(folder, readonly=False) as w:
        params = w.update_ann()
        assert params["backend"] == "hnsw" and any("rebuilt" in note for note in w.notes)
    fresh = next(folder.glob("ann-*.ann"))
    assert fresh != path and not path.exists()
    ann.verify(fresh)
    with ImageIndex.open(folder) as snap:
        snap.backend()
        assert not snap.notes
    assert hits is not None


def test_an_ann_file_of_the_older_format_is_rebuilt_by_the_writer(tmp_path):
    folder, _ = make(tmp_path, n=60, backend="hnsw")
    path = next(folder.glob("ann-*.ann"))
    header = ann.read_params(path)
    raw_old = json.dumps(header, sort_keys=True).encode()
    del header["header_crc32"]
    header["version"] = 1
    raw = json.dumps(header, sort_keys=True).encode()
    data = path.read_bytes()
    import struct

    trailer = struct.Struct("<Q8s")
    body = data[:-(trailer.size + len(raw_old))]
    path.write_bytes(body + raw + trailer.pack(len(raw), data[:8]))
    with ImageIndex.open(folder) as snap:  # still read as it is
        snap.backend()
        assert not snap.notes
    with ImageIndex.open(folder, readonly=False) as w:
        w.update_ann()
    assert not path.exists() and ann.read_params(next(folder.glob("ann-*.ann")))["version"] == ann.FILE_VERSION
