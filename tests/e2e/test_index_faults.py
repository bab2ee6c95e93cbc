"""Fault injection into the index: `lookalike index` killed with SIGKILL at random points of its writes (the ANN
file's save included: the runs use `--ann hnsw`), vector files truncated or deleted, the database deleted, the
ANN file damaged, the disk filled up. After each fault the index must open,
every committed image must still be found at distance 0 by its own file, nothing committed before must have
moved, and the next run must finish the work.

The backbone is a small random-weight CIFAR net (the `backbone` fixture), so that the many runs stay cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.search.store.index import ImageIndex
from lookalike.search.retrieve.query import search

from helpers.cli import run_cli_subprocess
from helpers.search import pattern_image

# Runs `lookalike index ARGS` and kills itself at the TARGET-th fault point: before and after every fsync and
# atomic rename, vector append, commit, generation bump (inside the transaction, before COMMIT), compaction,
# clean-up, manifest write, ANN save and switch, and every few MB written into the ANN file.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import lookalike.search.store.index as I
    import lookalike.search.indexing.sync as S

    S.COMPACT_MIN_DEAD = 0  # compact as soon as dead rows outnumber live ones, so kills land in compactions too
    # TARGET "N": the N-th fault point of the run; "ann:N": the N-th one inside the ANN file's save.
    spec = sys.argv[1]
    only_ann = spec.startswith("ann:")
    target, count, in_ann = int(spec.split(":")[-1]), [0], [False]

    def point():
        if only_ann and not in_ann[0]:
            return
        count[0] += 1
        if count[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)

    def hook(owner, name, ann=False):
        real = getattr(owner, name)

        def hooked(*args, **kwargs):
            if ann:
                in_ann[0] = True
            try:
                point()
                result = real(*args, **kwargs)
                point()
            finally:
                if ann:
                    in_ann[0] = False
            return result

        setattr(owner, name, hooked)

    hook(os, "fsync")
    hook(os, "replace")
    for name in ("append_vectors", "commit", "_bump_generation", "compact", "_clean_orphan_files",
                 "touch_manifest", "_record_ann"):
        hook(I.IndexWriter, name)
    hook(I.IndexWriter, "_save_ann", ann=True)
    import lookalike.search.store.ann as A
    real_section = A.Backend._blob_sections

    def sections(self):  # a kill between the id map and the FAISS structure of the ANN file
        point()
        return real_section(self)

    A.Backend._blob_sections = sections
    from lookalike.cli import main

    sys.argv = ["lookalike", *sys.argv[2:]]
    main()
""")


class Gallery:
    """The image folder, changed at random between runs; knows which files a step touched."""

    def __init__(self, folder: Path, rng: np.random.Generator) -> None:
        self.folder, self.rng, self.seed = folder, rng, 0
        folder.mkdir(parents=True)
        for _ in range(8):
            self.add()
        # A name that is not valid UTF-8 rides along through every fault.
        with open(os.path.join(os.fsencode(folder), b"z\xe9t\xe9.png"), "wb") as fh:
            fh.write(pattern_image(999))

    def add(self) -> str:
        self.seed += 1
        name = f"p{self.seed:03d}.png"
        (self.folder / name).write_bytes(pattern_image(self.seed))
        return name

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*.png"))

    def mutate(self) -> set[str]:
        """Add, delete, rename, rewrite and copy files at random; returns the names touched."""
        touched = {self.add() for _ in range(int(self.rng.integers(1, 4)))}
        names = [n for n in self.files() if n not in touched and n.startswith("p")]
        self.rng.shuffle(names)
        ops = ["delete", "rename", "rewrite", "copy"]
        for op, name in zip(self.rng.permutation(ops)[: int(self.rng.integers(1, 5))], names):
            path = self.folder / name
            touched.add(name)
            if op == "delete":
                path.unlink()
            elif op == "rename":
                (self.folder / "moved").mkdir(exist_ok=True)
                target = f"moved/{name}"
                path.rename(self.folder / target)
                touched.add(target)
            elif op == "rewrite":
                self.seed += 1
                path.write_bytes(pattern_image(self.seed))
            else:
                target = f"copy-{name}"
                shutil.copyfile(path, self.folder / target)
                touched.add(target)
        return touched


def _state(ix_path: Path) -> dict[str, tuple[int, int, int, np.ndarray]]:
    """{rel: (id, size, mtime_ns, vector)} of what is committed. The writer must open without any repair:
    a kill never leaves the index in a state that needs one."""
    with ImageIndex.open(ix_path, readonly=False) as w:
        assert w.notes == [], w.notes
        entries = w.entries()
    with ImageIndex.open(ix_path) as ro:
        return {rel: (e[0], e[1], e[2], ro.vector_of(e[0]).copy()) for rel, e in entries.items()}


def _check(ix_path: Path, folder: Path, embedder, before: dict, touched: set[str]) -> dict:
    """Every committed image whose file is unchanged since it was committed is found at distance 0 by that
    file; every image committed before the run and untouched since kept its id and vector."""
    state = _state(ix_path)
    current = {}
    for rel, (image_id, size, mtime, vector) in state.items():
        path = folder / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # deleted, and the run was killed before forgetting it
        if (st.st_size, st.st_mtime_ns) == (size, mtime):
            current[rel] = (image_id, path)
    fresh, skipped = embedder.embed_paths([str(p) for _, p in current.values()])
    assert not skipped
    with ImageIndex.open(ix_path) as ro:
        hits = search(ro, fresh, k=1)  # through the ANN file, caught up, or exact when it is missing
        assert len(ro.notes) <= 1, ro.notes
        for (rel, (image_id, _)), vec, hit in zip(current.items(), fresh, hits):
            assert float(np.linalg.norm(vec - ro.vector_of(image_id))) < 1e-4, rel
            assert hit[0]["distance"] < 1e-3, rel  # found at distance 0 (by itself, or by an identical copy)
    for rel, (image_id, _, _, vector) in before.items():
        if rel in touched:
            continue
        assert rel in state, f"{rel} was forgotten"
        assert state[rel][0] == image_id and np.array_equal(state[rel][3], vector), f"{rel} moved"
    return state


def _complete(ix_path: Path, gallery: Gallery, state: dict, strays: set[str] = frozenset()) -> None:
    """After a finished run: every file indexed, the ANN file in step (no note), no other ANN file left but
    `strays` (those of a deleted database, which the new one cannot show to be its own)."""
    assert sorted(state) == gallery.files()
    with ImageIndex.open(ix_path) as ro:
        assert ro.backend().kind == "hnsw" and ro.notes == [], ro.notes
        names = {p.name for p in ix_path.glob("*.ann")}
        assert ro.ann_file in names and names - {ro.ann_file} <= strays, (names, strays)


def test_kill_9_at_random_points_and_damaged_files(backbone, home, tmp_path):
    ckpt, embedder = backbone
    rng = np.random.default_rng(20261201)
    gallery = Gallery(tmp_path / "photos", rng)
    ix_path = tmp_path / "ix"
    args = ["index", gallery.folder, "--index", ix_path, "--model", ckpt, "--batch-size", "3", "--ann", "hnsw",
            "--json"]
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    before: dict = {}
    touched: set[str] = set()
    strays: set[str] = set()
    outcomes = []
    for step in range(13):
        if step in (3, 6, 9, 11):  # damage a file, then a plain run repairs it
            if not ix_path.exists():
                continue
            fault = {3: "truncate vectors", 6: "delete vectors", 9: "delete database", 11: "damage ANN"}[step]
            with ImageIndex.open(ix_path, readonly=False) as w:
                vfile = w._vector_file()
                ann_name = w._meta(w._conn, "ann_file")
            if fault == "damage ANN":
                if ann_name is None:
                    continue
                afile = ix_path / ann_name
                with open(afile, "r+b") as fh:
                    fh.seek(afile.stat().st_size // 2)
                    fh.write(b"\xff" * 64)
                with ImageIndex.open(ix_path) as ro:  # a reader searches exactly, with one note
                    assert ro.backend().kind == "exact" and len(ro.notes) == 1 and "damaged" in ro.notes[0]
                proc = run_cli_subprocess(args, home)
                assert proc.returncode == 0, proc.stderr[-3000:]
                notes = json.loads(proc.stdout)["notes"]
                assert len(notes) == 1 and "rebuilt it from the vectors" in notes[0], notes
                state = _check(ix_path, gallery.folder, embedder, before, touched)
                _complete(ix_path, gallery, state, strays)
                continue
            if fault == "truncate vectors" and vfile.exists():
                size = vfile.stat().st_size
                with open(vfile, "r+b") as fh:
                    fh.truncate(int(rng.integers(0, max(1, size))))
            elif fault == "delete vectors":
                vfile.unlink(missing_ok=True)
            else:
                for name in ("index.db", "index.db-wal", "index.db-shm"):
                    (ix_path / name).unlink(missing_ok=True)
                strays |= {p.name for p in ix_path.glob("*.ann")}
            try:
                ImageIndex.open(ix_path).close()  # a reader may find nothing lost, else it must say what to run
            except LookalikeError as exc:
                assert "run `lookalike index" in str(exc) and "--rebuild" not in str(exc)
            proc = run_cli_subprocess(args, home)
            assert proc.returncode == 0, proc.stderr[-3000:]
            summary = json.loads(proc.stdout)
            outcomes.append((fault, len(summary["notes"])))
            state = _check(ix_path, gallery.folder, embedder, {}, set())
            _complete(ix_path, gallery, state, strays)
            before, touched = state, set()
            continue
        touched |= gallery.mutate()
        # Every third run is killed inside the ANN file's save (its pending record, the file's writes and
        # fsync, the switch), the others anywhere.
        target = f"ann:{int(rng.integers(1, 8))}" if step % 3 == 1 else str(int(rng.integers(1, 60)))
        proc = subprocess.run([sys.executable, "-c", CHILD, target, *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        outcomes.append((target, proc.returncode))
        if not (ix_path / "manifest.json").exists():
            continue  # killed before the index existed
        state = _check(ix_path, gallery.folder, embedder, before, touched)
        if proc.returncode == 0:
            _complete(ix_path, gallery, state, strays)
            before, touched = state, set()
        else:  # what the killed run committed counts as "before" for the next run only where untouched
            before = {rel: v for rel, v in state.items() if rel not in touched}
    assert any(code == -signal.SIGKILL for t, code in outcomes if str(t).isdigit()), outcomes
    assert any(code == -signal.SIGKILL for t, code in outcomes if str(t).startswith("ann:")), outcomes
    proc = run_cli_subprocess(args, home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _complete(ix_path, gallery, _check(ix_path, gallery.folder, embedder, before, touched), strays)


# Inside a private mount namespace with a small tmpfs at MNT: index, fill the disk, run twice more (each must end
# in one line naming the full disk), free the space, run again; copies the index out for the checks.
FULL_DISK = textwrap.dedent("""
    import json, os, shutil, subprocess, sys
    mnt, folder, ckpt, out, extra = sys.argv[1:6]
    ix = os.path.join(mnt, "ix")
    cmd = [sys.executable, "-c", "from lookalike.cli import main; main()", "index", folder, "--index", ix,
           "--model", ckpt, "--batch-size", "4"]
    runs = [subprocess.run(cmd, capture_output=True, text=True)]
    filler = os.path.join(mnt, "filler")
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    fh.write(b"\\0" * chunk)
            except OSError:
                pass
    shutil.copytree(extra, folder, dirs_exist_ok=True)  # new photos to index on the full disk
    runs += [subprocess.run(cmd, capture_output=True, text=True) for _ in range(2)]
    os.unlink(filler)
    runs.append(subprocess.run(cmd, capture_output=True, text=True))
    shutil.copytree(ix, out)
    print(json.dumps([[r.returncode, r.stderr] for r in runs]))
""")


def _unshare_works(mnt: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', str(mnt)],
                           capture_output=True)
    return probe.returncode == 0


def test_full_disk_is_one_line_and_the_next_run_resumes(backbone, home, tmp_path):
    ckpt, embedder = backbone
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _unshare_works(mnt):
        pytest.skip("cannot mount a small tmpfs here (needs `unshare -rm` with user namespaces, or root)")
    folder, extra = tmp_path / "photos", tmp_path / "extra"
    folder.mkdir()
    extra.mkdir()
    for i in range(6):
        (folder / f"a{i}.png").write_bytes(pattern_image(100 + i))
    for i in range(9):
        (extra / f"b{i}.png").write_bytes(pattern_image(200 + i))
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"',
                           str(mnt), sys.executable, "-c", FULL_DISK, str(mnt), str(folder), str(ckpt),
                           str(tmp_path / "ix-copy"), str(extra)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout)
    assert runs[0][0] == 0, runs[0][1]
    for code, err in runs[1:3]:  # the run that meets the full disk, and the one after it
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and "Traceback" not in err, err
        assert lines[-1].startswith("error: disk full: cannot write the index at "), err
        assert "rebuild" not in err
    assert runs[3][0] == 0, runs[3][1]
    # The copy lives outside the tmpfs; it names the same photo folder, so the usual checks apply.
    state = _check(tmp_path / "ix-copy", folder, embedder, {}, set())
    assert sorted(state) == sorted(p.name for p in folder.iterdir())
