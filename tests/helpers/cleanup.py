"""A small library indexed without a model (toy vectors, real stamps and digests), for the duplicate actions."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.vectors import BACKBONE, unit
from lookalike.search.describe.features import file_digest
from lookalike.search.store.index import ImageIndex


def make_library(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Path]:
    """`files` ({relative name: bytes}) written under tmp_path/lib and indexed: (root, index folder)."""
    root = tmp_path / "lib"
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    index_dir = tmp_path / "ix"
    ix = ImageIndex.create(index_dir, root=root, backbone=BACKBONE)
    try:
        rows = ix.append_vectors(unit(len(files)))
        inserts = []
        for (name, data), row in zip(files.items(), rows):
            st = os.stat(root / name)
            inserts.append((name, st.st_size, st.st_mtime_ns, file_digest(data), row))
        ix.commit(inserts=inserts)
    finally:
        ix.close()
    return root.resolve(), index_dir.resolve()


def group(root: Path, kind: str, *names: str, sizes: dict | None = None) -> dict:
    """A group of `names` under `root`, with pixel counts from `sizes` ({name: (w, h)}, else 10x10)."""
    sizes = sizes or {}
    members = []
    for name in names:
        w, h = sizes.get(name, (10, 10))
        st = os.stat(root / name)
        members.append({"path": str(root / name), "width": w, "height": h, "size": st.st_size,
                        "mtime": st.st_mtime, "date": None})
    return {"kind": kind, "members": members}


def rows(index_dir: Path) -> set[str]:
    """The stored paths the index holds."""
    with ImageIndex.open(index_dir, readonly=False) as ix:
        return {path for path, _ in ix.iter_entries()}


def tree(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of the regular files under `folder` (links followed), for before/after checks."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
