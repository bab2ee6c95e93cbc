"""Export to parquet / npy and import back (`search/store/export.py`, `lookalike export`, `lookalike import`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import run_cli
from lookalike.errors import LookalikeError
from lookalike.search.store.export import iter_parquet, metadata_path, read_metadata
from lookalike.search.store.importer import import_parquet
from lookalike.search.store.index import ImageIndex

BACKBONE = {"model": "tiny_test_net", "pooling": "avg", "dim": 16,
            "preprocess": {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "weights": None}


def unit(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_index(path, root, n: int, backbone=BACKBONE, seed: int = 0):
    """An index of n rows written through the writer API (no images, no model needed)."""
    root.mkdir(parents=True, exist_ok=True)
    vectors = unit(n, backbone["dim"], seed)
    with ImageIndex.create(path, root=root, backbone=backbone) as ix:
        for start in range(0, n, 100):
            part = vectors[start:start + 100]
            rows = ix.append_vectors(part)
            ix.commit(inserts=[(f"sub/img{start + i:05d}.jpg", 1000 + start + i, 1_700_000_000_123_456_789 + start + i,
                                f"{start + i:032x}", r) for i, r in enumerate(rows)])
        ix.touch_manifest(count=n)
    return vectors


def test_parquet_round_trip(tmp_path, monkeypatch, capsys):
    vectors = make_index(tmp_path / "ix", tmp_path / "photos", 250)
    out = tmp_path / "vectors.parquet"
    code, stdout, err = run_cli(["export", tmp_path / "ix", "--out", out, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(stdout)["rows"] == 250

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column_names == ["path", "path_bytes", "size", "mtime", "digest", "vector"]
    assert table.column("path_bytes").null_count == 250  # every name is UTF-8: `path` is exact
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
    meta, dim, rows = read_metadata(out)
    assert (meta["model"], dim, rows) == ("tiny_test_net", 16, 250)

    batches = list(iter_parquet(out, batch_size=64))
    assert [len(b) for b, _ in batches] == [64, 64, 64, 58] and not any(s for _, s in batches)
    first = next(batches[0][0].rows())
    assert first.path == (tmp_path / "photos" / "sub" / "img00000.jpg").as_posix()
    assert (first.size, first.mtime_ns, first.digest) == (1000, 1_700_000_000_123_456_789, f"{0:032x}")
    assert np.array_equal(np.concatenate([b.vectors for b, _ in batches]), vectors)

    # into a new index (created from the file's metadata), then again: nothing changes the second time
    code, stdout, err = run_cli(["import", out, "--index", tmp_path / "copy", "--root", tmp_path / "photos", "--json"],
                            monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["created"] and summary["added"] == 250 and summary["rows"] == 250
    with ImageIndex.open(tmp_path / "copy") as a, ImageIndex.open(tmp_path / "ix") as b:
        assert np.allclose(a.vectors(), b.vectors(), atol=1e-6)
        assert [str(a.path_of(i)) for i in a.ids()] == [str(b.path_of(i)) for i in b.ids()]
        assert a.manifest["model"] == "tiny_test_net" and a.dim == 16
    again = import_parquet(out, tmp_path / "copy")
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 250)


def test_npy_export_has_vectors_and_metadata(tmp_path, monkeypatch, capsys):
    vectors = make_index(tmp_path / "ix", tmp_path / "photos", 130)
    out = tmp_path / "vectors.npy"
    code, _, err = run_cli(["export", tmp_path / "ix", "--format", "npy", "--out", out], monkeypatch, capsys)
    assert code == 0, err
    assert np.array_equal(np.load(out, allow_pickle=False), vectors)
    import pyarrow.parquet as pq

    meta = pq.read_table(metadata_path(out))
    assert meta.num_rows == 130 and "vector" not in meta.column_names



def test_export_never_replaces_a_file_unless_told(tmp_path, monkeypatch, capsys):
    make_index(tmp_path / "ix", tmp_path / "photos", 20)
    precious = tmp_path / "notes.parquet"
    precious.write_bytes(b"not ours")
    code, _, err = run_cli(["export", tmp_path / "ix", "--out", precious], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert precious.read_bytes() == b"not ours"
    sidecar = tmp_path / "v.metadata.parquet"  # npy: its metadata file counts too
    sidecar.write_bytes(b"mine")
    code, _, err = run_cli(["export", tmp_path / "ix", "--format", "npy", "--out", tmp_path / "v.npy"],
                           monkeypatch, capsys)
    assert code == 2 and "v.metadata.parquet" in err and sidecar.read_bytes() == b"mine"
    assert not (tmp_path / "v.npy").exists()
    code, _, err = run_cli(["export", tmp_path / "ix", "--out", precious, "--overwrite"], monkeypatch, capsys)
    assert code == 0, err
    assert precious.read_bytes()[:4] == b"PAR1"

def test_import_keeps_rows_of_files_missing_here_and_skips_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vecs = unit(4)
    vecs[2] = np.nan
    table = pa.table({
        "path": ["/elsewhere/a.jpg", "/elsewhere/b.jpg", "/elsewhere/c.jpg", None],
        "vector": pa.array([list(v) for v in vecs], pa.list_(pa.float32())),
    }, metadata={b"lookalike": json.dumps(BACKBONE).encode()})
    pq.write_table(table, tmp_path / "v.parquet")
    summary = import_parquet(tmp_path / "v.parquet", tmp_path / "ix", root=tmp_path)
    assert summary["added"] == 2
    assert sorted(s["reason"] for s in summary["skipped"]) == ["no path", "vector has values that are not finite"]
    with ImageIndex.open(tmp_path / "ix") as ix:
        assert sorted(str(ix.path_of(i)) for i in ix.ids()) == ["/elsewhere/a.jpg", "/elsewhere/b.jpg"]


def test_import_refuses_another_dimension_or_backbone(tmp_path, monkeypatch, capsys):
    make_index(tmp_path / "ix", tmp_path / "photos", 20)
    out = tmp_path / "v.parquet"
    make_index(tmp_path / "other", tmp_path / "p2", 20, backbone={**BACKBONE, "model": "other_net", "dim": 8})
    with ImageIndex.open(tmp_path / "other") as ix:
        from lookalike.search.store.export import export_index

        export_index(ix, out)
    code, _, err = run_cli(["import", out, "--index", tmp_path / "ix"], monkeypatch, capsys)
    assert code == 2 and "other_net" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["x.jpg"], "vector": pa.array([[0.0] * 15 + [1.0]], pa.list_(pa.float32(), 16))}),
                   tmp_path / "bare.parquet")
    with pytest.raises(LookalikeError, match="--model"):
        import_parquet(tmp_path / "bare.parquet", tmp_path / "ix")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    code, _, err = run_cli(["import", tmp_path / "junk.parquet", "--index", tmp_path / "ix"], monkeypatch, capsys)
    assert code == 2 and "parquet" in err


def test_export_never_writes_into_an_index_folder_or_onto_a_folder(tmp_path, monkeypatch, capsys):
    import os

    from lookalike.search.store.export import export_index

    ix = tmp_path / "photos" / ".lookalike"
    make_index(ix, tmp_path / "photos", 20)
    make_index(tmp_path / "other", tmp_path / "p2", 5)
    db = (ix / "index.db").read_bytes()
    (tmp_path / "link").symlink_to(ix)
    (tmp_path / "v.parquet").symlink_to(ix / "index.db")
    (tmp_path / "folder").mkdir()
    (tmp_path / "f.metadata.parquet").mkdir()
    cases = [(ix / "index.db", "inside the index folder"), (tmp_path / "link" / "manifest.json", "inside"),
             (tmp_path / "v.parquet", "inside"), (tmp_path / "other" / "v.parquet", "inside"),
             (ix / "new.parquet", "inside"), (tmp_path / "folder", "is a folder")]
    for out, why in cases:
        for extra in ([], ["--overwrite"]):
            code, _, err = run_cli(["export", tmp_path / "photos", "--out", out, *extra], monkeypatch, capsys)
            assert code == 2 and why in err and len(err.strip().splitlines()) == 1, (out, err)
    code, _, err = run_cli(["export", ix, "--format", "npy", "--out", tmp_path / "f.npy", "--overwrite"],
                           monkeypatch, capsys)
    assert code == 2 and "f.metadata.parquet is a folder" in err and not (tmp_path / "f.npy").exists()
    assert (ix / "index.db").read_bytes() == db and sorted(os.listdir(tmp_path / "folder")) == []
    with ImageIndex.open(ix) as snap:
        assert len(snap) == 20
        with pytest.raises(LookalikeError, match="inside the index folder"):
            export_index(snap, ix / "index.db")


def _bad_metadata_file(path, **changes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {**BACKBONE, **changes}
    table = pa.table({"path": ["/elsewhere/a.jpg"], "vector": pa.array([list(unit(1)[0])], pa.list_(pa.float32(), 16))},
                     metadata={b"lookalike": json.dumps(meta).encode()})
    pq.write_table(table, path)


@pytest.mark.parametrize("field, value", [
    ("preprocess", None), ("pooling", 7), ("weights", 5), ("pooling", "max"), ("model", 5), ("dim", "16"),
    ("dim", True), ("whitening", "yes"), ("root", 5),
    ("preprocess", {**BACKBONE["preprocess"], "std": [0.5, 0, 0.5]}),
    ("preprocess", {**BACKBONE["preprocess"], "interpolation": "nearest"}),
    ("preprocess", {**BACKBONE["preprocess"], "layers": ["tail"]}),
    ("preprocess", {**BACKBONE["preprocess"], "fit": "whole", "long_side": "big"}),
])
def test_import_refuses_metadata_that_no_index_could_open(tmp_path, monkeypatch, capsys, field, value):
    _bad_metadata_file(tmp_path / "v.parquet", **{field: value})
    code, _, err = run_cli(["import", tmp_path / "v.parquet", "--index", tmp_path / "ix"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert field in err and "delete" not in err
    assert not (tmp_path / "ix" / "manifest.json").exists()  # nothing written that search would then refuse


def _rows_file(path, paths, vectors, vector_type=None, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vtype = vector_type or pa.list_(pa.float32())
    table = pa.table({"path": paths, "vector": pa.array([list(v) for v in vectors], vtype), **columns},
                     metadata={b"lookalike": json.dumps(BACKBONE).encode()})
    pq.write_table(table, path)


def test_import_refuses_unusable_columns_and_rows(tmp_path, monkeypatch, capsys):
    import warnings

    import pyarrow as pa

    _rows_file(tmp_path / "ints.parquet", pa.array([1, 2]), unit(2))
    _rows_file(tmp_path / "digests.parquet", ["/e/a.jpg", "/e/b.jpg"], unit(2), digest=pa.array([1, 2]))
    for name, column in (("ints", "`path`"), ("digests", "`digest`")):
        code, _, err = run_cli(["import", tmp_path / f"{name}.parquet", "--index", tmp_path / "ix"],
                               monkeypatch, capsys)
        assert code == 2 and column in err and len(err.strip().splitlines()) == 1, err

    big = unit(5).astype(np.float64)
    big[1] *= 1e30  # fits float32, but its squared length does not
    big[2] = 1e300  # beyond float32
    _rows_file(tmp_path / "v.parquet", ["/e/a.jpg", "/e/b.jpg", "/e/c.jpg", "/e/d\x00.jpg", ""], big,
               vector_type=pa.list_(pa.float64()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        summary = import_parquet(tmp_path / "v.parquet", tmp_path / "ix", root=tmp_path)
    assert summary["added"] == 2
    reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
    assert reasons == {"/e/c.jpg": "vector has values beyond float32", "/e/d\\x00.jpg": "path holds a NUL byte (row 3)",
                       "row 4": "empty path"}
    with ImageIndex.open(tmp_path / "ix") as ix:
        got = {str(ix.path_of(i)): ix.vector_of(i) for i in ix.ids()}
    assert np.allclose(got["/e/b.jpg"], big[1] / np.linalg.norm(big[1]), atol=1e-6)


def test_non_utf8_names_round_trip_exactly(tmp_path, monkeypatch, capsys):
    import os

    import pyarrow.parquet as pq

    photos = tmp_path / "photos"
    photos.mkdir()
    name = os.fsdecode(b"caf\xff.jpg")  # a Linux name that is not UTF-8, read through surrogateescape
    (photos / name).write_bytes(b"bytes of a photo")
    vec = unit(2)
    with ImageIndex.create(tmp_path / "ix", root=photos, backbone=BACKBONE) as ix:
        rows = ix.append_vectors(vec)
        ix.commit(inserts=[(name, 16, 1, "d" * 32, rows[0]), ("plain.jpg", 1, 1, "e" * 32, rows[1])])
    for fmt, out in (("parquet", tmp_path / "v.parquet"), ("npy", tmp_path / "v.npy")):
        code, _, err = run_cli(["export", tmp_path / "ix", "--format", fmt, "--out", out], monkeypatch, capsys)
        assert code == 0, err
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column("path").to_pylist() == [f"{photos.as_posix()}/caf\\xff.jpg", f"{photos.as_posix()}/plain.jpg"]
    assert table.column("path_bytes").to_pylist() == [os.fsencode(photos / name), None]
    sidecar = pq.read_table(metadata_path(tmp_path / "v.npy"))
    assert sidecar.column("path_bytes")[0].as_py() == os.fsencode(photos / name)

    code, _, err = run_cli(["import", tmp_path / "v.parquet", "--index", tmp_path / "copy"], monkeypatch, capsys)
    assert code == 0, err
    with ImageIndex.open(tmp_path / "copy") as ix:
        paths = sorted(ix.path_of(i) for i in ix.ids())
    assert os.fsencode(paths[0]) == os.fsencode(photos / name) and paths[0].is_file()
    assert import_parquet(tmp_path / "v.parquet", tmp_path / "copy")["unchanged"] == 2  # the same keys again


def test_import_defaults_to_the_root_the_export_records(tmp_path, monkeypatch, capsys):
    make_index(tmp_path / "ix", tmp_path / "photos", 10)
    out = tmp_path / "v.parquet"
    assert run_cli(["export", tmp_path / "ix", "--out", out], monkeypatch, capsys)[0] == 0
    assert read_metadata(out)[0]["root"] == str((tmp_path / "photos").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(["import", out, "--index", tmp_path / "a"], monkeypatch, capsys)
    assert code == 0, err
    with ImageIndex.open(tmp_path / "a") as ix:
        assert ix.root == (tmp_path / "photos").resolve()
        assert ix.id_of(tmp_path / "photos" / "sub" / "img00003.jpg") is not None
    (tmp_path / "photos").rename(tmp_path / "moved")  # the recorded root is not here: the current folder
    assert run_cli(["import", out, "--index", tmp_path / "b"], monkeypatch, capsys)[0] == 0
    with ImageIndex.open(tmp_path / "b") as ix:
        assert ix.root == elsewhere.resolve() and len(ix) == 10
