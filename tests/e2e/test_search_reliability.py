"""`lookalike index / search / dupes` when things go wrong: a mistyped --index, damaged or missing index files,
an index that starts empty, names that are not valid UTF-8, special and giant files, and a user who may only
read the index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import assert_one_line_error, run_cli, run_cli_subprocess
from helpers.search import photo, write_originals
from lookalike.images import MAX_FILE_BYTES
from lookalike.search.store.index import ImageIndex
from lookalike.search.sample_photos import jpeg_bytes


def test_index_refuses_an_ordinary_folder_and_deletes_nothing(home, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    write_originals(folder, ["coffee"])
    plain = tmp_path / "work"
    plain.mkdir()
    (plain / "model.f32").write_bytes(b"\1" * 128)
    (plain / "vectors-0.f32").write_bytes(b"\2" * 128)
    (plain / "manifest.json").write_text('{"name": "something else"}')
    before = {f.name: f.read_bytes() for f in plain.iterdir()}
    for extra in ([], ["--rebuild"]):
        code, _, err = run_cli(["index", folder, "--index", plain, *extra], monkeypatch, capsys)
        line = assert_one_line_error(code, err, str(plain))
        assert "--rebuild" not in line
        assert {f.name: f.read_bytes() for f in plain.iterdir() if f.name != "write.lock"} == before
    (plain / "manifest.json").unlink()
    code, _, err = run_cli(["index", folder, "--index", plain, "--rebuild"], monkeypatch, capsys)
    assert_one_line_error(code, err, "not empty and holds no Lookalike index")
    assert (plain / "model.f32").exists() and (plain / "vectors-0.f32").exists()


def _all_found_at_zero(index_path, folder, embedder) -> None:
    """Every image's own file finds it at distance 0, and two different photos are never that close."""
    with ImageIndex.open(index_path) as ix:
        paths = [ix.path_of(int(i)) for i in ix.ids()]
        vecs = ix.vectors()
        fresh, _ = embedder.embed_paths([str(p) for p in paths])
        assert np.allclose(fresh, vecs, atol=1e-4)
        dist = np.sqrt(np.clip(2 - 2 * vecs @ vecs.T, 0, None))
        np.fill_diagonal(dist, 9)
        assert dist.min() > 0.05
    assert sorted(p.name for p in paths) == sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg")


@pytest.mark.parametrize("damage", ["truncate vectors", "delete vectors", "delete database"])
def test_damaged_index_files_are_refused_by_search_and_repaired_by_index(home, embedder, tmp_path, monkeypatch, capsys,
                                                                         damage):
    folder = tmp_path / "photos"
    originals = write_originals(folder, ["coffee", "camera", "rocket", "astronaut"])
    ix_path = tmp_path / "ix"
    assert run_cli(["index", folder, "--index", ix_path, "--batch-size", "2"], monkeypatch, capsys)[0] == 0
    with ImageIndex.open(ix_path) as ix:
        vfile = ix.path / f"vectors-{0}.f32"
        row_bytes = ix.dim * 4
    if damage == "truncate vectors":
        vfile.write_bytes(vfile.read_bytes()[: row_bytes + 100])  # one whole row and part of the next
    elif damage == "delete vectors":
        vfile.unlink()
    else:
        for name in ("index.db", "index.db-wal", "index.db-shm"):
            (ix_path / name).unlink(missing_ok=True)
    for args in (["search", originals[0], "--index", ix_path], ["dupes", "--index", ix_path]):
        code, out, err = run_cli(args, monkeypatch, capsys)
        line = assert_one_line_error(code, err, "run `lookalike index")
        assert "--rebuild" not in line and out == ""
    # New photos arrive too: none of them may land on a row the database still points at.
    (folder / "chelsea.jpg").write_bytes(jpeg_bytes(photo("chelsea")))
    (folder / "coins.jpg").write_bytes(jpeg_bytes(photo("coins")))
    code, out, err = run_cli(["index", folder, "--index", ix_path, "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 6 and len(summary["notes"]) == 1
    assert summary["added"] == {"truncate vectors": 5, "delete vectors": 6, "delete database": 6}[damage]
    code, out, err = run_cli(["index", folder, "--index", ix_path], monkeypatch, capsys)
    assert code == 0 and "6 unchanged" in out and "warning" not in err  # repaired once, quiet after
    _all_found_at_zero(ix_path, folder, embedder)
    code, out, err = run_cli(["search", originals[1], "--index", ix_path, "--json", "--include-self"],
                             monkeypatch, capsys)
    assert code == 0 and json.loads(out)[0]["results"][0]["distance"] < 1e-3


def test_repair_note_is_shown_by_the_cli(home, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    write_originals(folder, ["coffee", "camera"])
    assert run_cli(["index", folder], monkeypatch, capsys)[0] == 0
    with ImageIndex.open(folder) as ix:
        vfile = ix.path / "vectors-0.f32"
    vfile.unlink()
    code, out, err = run_cli(["index", folder], monkeypatch, capsys)
    assert code == 0 and "2 added" in out
    assert "warning: vector file" in err and "is missing" in err and "embeds them again" in err


KILL_BEFORE_FIRST_BATCH = textwrap.dedent("""
    import os, signal, sys
    import lookalike.search.store.index as I
    real = I.IndexWriter.commit
    def commit(self, *args, **kwargs):  # the index exists, no batch has committed: die
        os.kill(os.getpid(), signal.SIGKILL)
    I.IndexWriter.commit = commit
    from lookalike.search.indexing.sync import index_folder
    index_folder(sys.argv[1], sys.argv[2])
""")


def test_an_empty_index_can_always_be_updated(home, tmp_path, monkeypatch, capsys):
    # An empty folder, indexed; photos arrive later.
    folder = tmp_path / "later"
    folder.mkdir()
    code, out, err = run_cli(["index", folder], monkeypatch, capsys)
    assert code == 0 and "0 images indexed" in out, err
    write_originals(folder, ["coffee", "camera"])
    code, out, err = run_cli(["index", folder], monkeypatch, capsys)
    assert code == 0 and "2 images indexed" in out, err

    # kill -9 after the index was created, before its first batch committed.
    other = tmp_path / "killed"
    write_originals(other, ["rocket", "coins"])
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_FIRST_BATCH, str(other), str(tmp_path / "ix")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    code, out, err = run_cli(["index", other, "--index", tmp_path / "ix"], monkeypatch, capsys)
    assert code == 0 and "2 images indexed" in out, err

    # index.db deleted from an empty index.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["index", empty], monkeypatch, capsys)[0] == 0
    from lookalike.search.store.index import default_index_path

    (default_index_path(empty) / "index.db").unlink()
    write_originals(empty, ["chelsea"])
    code, out, err = run_cli(["index", empty], monkeypatch, capsys)
    assert code == 0 and "1 images indexed" in out, err


def test_names_that_are_not_utf8_are_indexed_found_shown_escaped_and_forgotten(home, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    write_originals(folder, ["coffee", "camera"])
    raw = os.path.join(os.fsencode(folder), b"z\xe9t\xe9.jpg")
    with open(raw, "wb") as fh:
        fh.write(jpeg_bytes(photo("rocket")))
    with open(os.path.join(os.fsencode(folder), b"bad-\xff.jpg"), "wb") as fh:
        fh.write(b"not an image")  # a failure with such a name is remembered too
    write_originals(folder / "sub", ["astronaut"])  # committed in a later batch than the odd names
    code, out, err = run_cli(["index", folder, "--batch-size", "1", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 4 and summary["skipped"][0]["path"].endswith("bad-\\xff.jpg")
    code, out, err = run_cli(["index", folder], monkeypatch, capsys)
    assert code == 0 and "4 unchanged" in out and "bad-\\xff.jpg" in err

    query = os.fsdecode(raw)
    code, out, err = run_cli(["search", query, "--index", folder, "--json", "--include-self", "-k", "1"],
                             monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)[0]
    assert result["query"].endswith("z\\xe9t\\xe9.jpg")
    assert result["results"][0]["path"].endswith("z\\xe9t\\xe9.jpg") and result["results"][0]["distance"] < 1e-3
    code, out, err = run_cli(["search", folder / "camera.jpg", "--index", folder, "-k", "4"], monkeypatch, capsys)
    assert code == 0 and "rank" in out, err  # the table prints (its narrow columns may cut the names short)
    with ImageIndex.open(folder) as ix:
        image_id = ix.id_of(query)
        assert image_id is not None and os.fsencode(str(ix.path_of(image_id))) == raw

    os.unlink(raw)
    code, out, err = run_cli(["index", folder, "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["removed"] == 1 and json.loads(out)["indexed"] == 3


def test_indexing_names_special_and_giant_files_and_finishes(tmp_path, shared_home):
    """The whole `lookalike index` run over a folder holding a FIFO, a link to /dev/zero and a 3 GB sparse
    file beside a real photo: the photo is indexed, the others are skipped with their reasons."""
    if not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"):
        pytest.skip("needs FIFOs and /dev/zero")
    folder = tmp_path / "photos"
    folder.mkdir()
    photo("coffee").save(folder / "coffee.png")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    with open(folder / "huge.png", "wb") as fh:
        fh.truncate(3_000_000_000)
    run = run_cli_subprocess(["index", folder, "--index", tmp_path / "idx", "--json"], shared_home, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["indexed"] == 1
    reasons = {os.path.basename(s["path"]): s["reason"] for s in summary["skipped"]}
    assert reasons == {
        "pipe.jpg": "not a regular file (a named pipe)",
        "zero.jpg": "not a regular file (a character device)",
        "huge.png": f"3,000,000,000 bytes is over the {MAX_FILE_BYTES:,}-byte file limit",
    }


# --- a user who may read but not write the index ----------------------------------------------------------------
READ_ONLY = textwrap.dedent("""
    import json, subprocess, sys
    lookalike = [sys.executable, "-c", "from lookalike.cli import main; main()"]
    ro, folder, query = sys.argv[1:4]
    runs = [subprocess.run(lookalike + args, capture_output=True, text=True) for args in (
        ["search", query, "--index", ro, "--json", "-k", "2", "--include-self"],
        ["dupes", "--index", ro, "--json"],
        ["index", folder, "--index", ro],
        ["index", folder, "--index", ro, "--rebuild"],
    )]
    print(json.dumps([[r.returncode, r.stdout, r.stderr] for r in runs]))
""")


def _read_only_view(tmp_path: Path, index_path: Path) -> list[str] | None:
    """The command prefix that runs a command with a read-only view of `index_path` at `tmp_path / "ro"`: a
    read-only bind mount in a private mount namespace, or, for a user other than root, the folder chmod'ed
    read-only. None when neither is possible here."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if shutil.which("unshare"):
        prefix = ["unshare", "-rm", "sh", "-c",
                  'mount --bind "$0" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"',
                  str(index_path), str(ro)]
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    if os.geteuid() != 0:  # root ignores permission bits, so chmod proves nothing there
        ro.rmdir()
        ro.symlink_to(index_path)
        for f in [index_path, *index_path.iterdir()]:
            f.chmod(0o555 if f.is_dir() else 0o444)
        return []
    return None


def test_a_reader_without_write_access_can_search_and_gets_no_rebuild_advice(home, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    originals = write_originals(folder, ["coffee", "camera", "rocket"])
    ix_path = tmp_path / "ix"
    assert run_cli(["index", folder, "--index", ix_path], monkeypatch, capsys)[0] == 0
    prefix = _read_only_view(tmp_path, ix_path)
    if prefix is None:
        pytest.skip("running as root without mount namespaces: no way to make the index read-only here")
    try:
        env = {**os.environ, "LOOKALIKE_HOME": str(home)}
        proc = subprocess.run([*prefix, sys.executable, "-c", READ_ONLY, str(tmp_path / "ro"), str(folder),
                               str(originals[0])], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs = json.loads(proc.stdout)
    finally:
        for f in [ix_path, *ix_path.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)
    (code, out, err), (dcode, dout, derr) = runs[0], runs[1]
    assert code == 0, err
    hits = json.loads(out)[0]["results"]
    assert hits[0]["path"] == str(originals[0].resolve()) and hits[0]["distance"] < 5e-3
    assert dcode == 0 and "groups" in json.loads(dout), derr
    for code, out, err in runs[2:]:
        line = assert_one_line_error(code, err, "cannot write the index at")
        assert "rebuild" not in line and "delete" not in line
    assert sorted(f.name for f in ix_path.iterdir()) == ["index.db", "manifest.json", "vectors-0.f32", "write.lock"]
