"""Reads of scattered rows of the vector file (rerank lookups, single vectors) go through a mapping advised
MADV_RANDOM; scans keep the default read-ahead; the values read are the same either way."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from helpers.vectors import BACKBONE, DIM, unit
from lookalike.search.store.index import ImageIndex, advise_random


def scattered_index(tmp_path: Path):
    """An index whose live rows are out of file order, with dead rows between them."""
    root = tmp_path / "photos"
    root.mkdir()
    ix = ImageIndex.create(tmp_path / "ix", root=root, backbone=BACKBONE)
    vecs = unit(40)
    rows = ix.append_vectors(vecs)
    ix.commit(inserts=[(f"img{i}.jpg", 100 + i, 1000 + i, f"d{i}", r) for i, r in enumerate(rows)])
    ix.commit(deletes=[2, 5, 9, 17])
    (row,) = ix.append_vectors(unit(1, seed=7))
    ix.commit(updates=[(3, "changed.jpg", 1, 2, "dx", row)])
    return ix


def test_scattered_reads_equal_the_scan(tmp_path):
    ix = scattered_index(tmp_path)
    ids, whole = ix.ids(), np.array(ix.vectors())
    for i in (1, 3, 40):
        assert np.array_equal(ix.vector_of(i), whole[list(ids).index(i)])
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert np.array_equal(ro.ids(), ids) and np.array_equal(np.array(ro.vectors()), whole)
        pick = ids[np.random.default_rng(1).permutation(len(ids))[:12]]
        assert np.array_equal(ro.lookup(pick), whole[np.searchsorted(ids, pick)])
        assert ro.lookup(pick).dtype == np.float32 and ro.lookup(pick).flags.writeable
        for i in pick[:4]:
            assert np.array_equal(ro.vector_of(int(i)), whole[np.searchsorted(ids, i)])
        with pytest.raises(KeyError):
            ro.lookup([2])  # deleted


def test_read_rows_match_the_file(tmp_path):
    ix = scattered_index(tmp_path)
    raw = np.fromfile(ix._vector_file(), np.float32).reshape(-1, DIM)
    want = [40, 0, 13, 13, 7]
    assert np.array_equal(ix.read_rows(want), raw[want])
    assert ix.read_rows([]).shape == (0, DIM)
    ix.close()


def test_empty_index_lookup(tmp_path):
    ImageIndex.create(tmp_path / "ix", root=tmp_path, backbone=BACKBONE).close()
    with ImageIndex.open(tmp_path / "ix") as ro:
        assert ro.lookup([]).shape == (0, DIM)


def test_advise_random_keeps_values_and_is_a_no_op_elsewhere(tmp_path, monkeypatch):
    data = unit(50)
    path = tmp_path / "v.f32"
    data.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    assert advise_random(mm) is mm and np.array_equal(mm, data)
    part = mm[10:20]
    assert advise_random(part) is part and np.array_equal(part[[3, 1]], data[[13, 11]])
    plain = data.copy()
    assert advise_random(plain) is plain  # not a mapping: nothing to advise
    monkeypatch.delattr(mmap, "MADV_RANDOM", raising=False)  # a platform without the advice
    again = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    assert advise_random(again) is again and np.array_equal(again, data)


def _vector_file_flags(vector_file: Path) -> list[set[str]]:
    """VmFlags of this process's mappings of `vector_file` (Linux /proc/self/smaps)."""
    flags, current = [], None
    target = os.path.realpath(vector_file)
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not line.startswith("VmFlags"):
                current = head[5] if len(head) >= 6 else None
            elif line.startswith("VmFlags") and current == target:
                flags.append(set(head[1:]))
    return flags


@pytest.mark.skipif(not (hasattr(mmap, "MADV_RANDOM") and os.path.exists("/proc/self/smaps")),
                    reason="needs madvise and Linux /proc/self/smaps")
def test_snapshot_maps_scattered_reads_without_read_ahead(tmp_path):
    ix = scattered_index(tmp_path)
    vector_file = ix._vector_file()
    ix.close()
    with ImageIndex.open(tmp_path / "ix") as ro:
        ro.lookup(ro.ids()[:3])
        flags = _vector_file_flags(vector_file)
        # One mapping marked for random reads ("rr": the kernel reads no pages around a fault), one for scans.
        assert any("rr" in f for f in flags) and any("rr" not in f for f in flags)
