"""The index's ANN file (`ann-<n>.ann`, `ann/`: HNSW, IVF, IVF-PQ): derived state, which the database names
(`ann_file`) with a fingerprint of what it was built from (vector file, generation, plan). The writer keeps it in
step with the committed vectors (`AnnBookkeeping`); readers compare the fingerprint before trusting it."""

from __future__ import annotations

import json
from typing import Any, Callable

from ...atomic import fsync_dir
from ...errors import LookalikeError
from . import queries
from .database import _meta, set_meta
from .layout import _ANN_NAME, own_file
from .vectors import RowVectors

CATCH_UP_MAX = 10_000  # images a reader adds to an ANN file that is behind; more: exact until the next run


def ann_fingerprint(vector_file: str, generation: int, kind: str, params: dict) -> str:
    """What an ANN file was built from: the vector file and generation of the index, and the plan (kind and
    build parameters), as one string stored in the file and compared by readers and the writer."""
    return json.dumps({"vector_file": vector_file, "generation": int(generation), "kind": kind,
                       "params": params}, sort_keys=True)


def parse_ann_fingerprint(value: Any) -> dict | None:
    try:
        fp = json.loads(value)
    except (TypeError, ValueError):
        return None
    if not isinstance(fp, dict) or not isinstance(fp.get("generation"), int):
        return None
    return fp

def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, sort_keys=True))


def _header_params(header: dict, fp: dict, n: int) -> dict:
    """`Backend.params()` as a saved file's header (and its fingerprint's plan) tells it, without loading it."""
    out = {"backend": header.get("kind"), "dim": header.get("dim"), "count": n, "storage": header.get("storage"),
           **(header.get("params") or {})}
    if (fp.get("params") or {}).get("pca"):
        out["pca"] = fp["params"]["pca"]
    if int(header.get("rerank", 1)) > 1:
        out["rerank"] = int(header["rerank"])
    return out


class AnnBookkeeping:
    """The writer's side of the ANN file, a part of `IndexWriter` (which provides the connection, the
    transactions, the vector file and compaction)."""

    def update_ann(self, requested: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
        """Bring the ANN file in step with the committed vectors, once per run: nothing when it already is,
        a catch-up (new entries added, removed and changed ones masked) when it is a few commits behind, else a
        fresh build from the vectors (another backend or parameters, `auto` passing a threshold, too many masked
        entries, or a missing or damaged file, which adds a note). Then it is saved under a new name recorded
        as pending first, and switched to in one transaction. `requested` (auto or a kind) is stored in the
        manifest; None keeps the manifest's. Returns the backend's `params()`, with "requested"."""
        from . import ann

        requested = requested or self.ann_requested
        if requested not in ann.CHOICES:
            raise LookalikeError(f"unknown search backend {requested!r}: use one of {', '.join(ann.CHOICES)}")
        if self.manifest.get("ann") != requested:
            self.touch_manifest(ann=requested)
        conn = self._conn
        n = len(self)
        kind, params = ann.plan(requested, n, self.dim)
        recorded = _meta(conn, "ann_file")
        if kind == "exact":
            if recorded is not None:
                self._record_ann(None)
            return {"backend": "exact", "dim": self.dim, "count": n, "dead": 0, "storage": "float32",
                    "requested": requested}
        backend = None
        path = own_file(self.path, recorded, _ANN_NAME)
        if path is not None:
            try:
                header = ann.verify(path)  # the whole file, header included, against its checksums
                fp = parse_ann_fingerprint(header.get("fingerprint"))
                same_plan = fp is not None and fp.get("kind") == kind and fp.get("params") == _jsonable(params) \
                    and fp.get("vector_file") == self._vector_file().name and fp["generation"] <= self.generation
                if same_plan and fp["generation"] == self.generation:
                    return {**_header_params(header, fp, n), "requested": requested}
                if same_plan:
                    backend = ann.load(path)
                    ids, rows = queries.ids_rows_by_row(self._conn)
                    mm = self._open_vectors(self._vector_file().name, int(rows.max()) + 1 if len(rows) else 0)
                    backend.catch_up(ids, rows, RowVectors(mm, rows))
                    if backend.needs_rebuild():
                        backend = None
            except ann.AnnFileError as exc:
                self.notes.append(f"{exc}: rebuilt it from the vectors")
                backend = None
        if backend is None:
            if self.dead_rows() > 0:
                self.compact()  # the build reads the vectors as one memory-mapped range, in file order
            ids, rows = queries.ids_rows_by_row(self._conn)
            vectors = self._gather(self._vector_file().name, rows)
            backend = ann.build(kind, ids, vectors, keys=rows, progress=progress, **params)
            del vectors
        self._save_ann(backend, ann_fingerprint(self._vector_file().name, self.generation, kind,
                                                _jsonable(params)))
        return {**backend.params(), "requested": requested}

    def _save_ann(self, backend, fingerprint: str) -> None:
        name = self._fresh_name(_ANN_NAME, "ann-{}.ann")
        conn = self._conn
        with self._writing():
            with self._transaction():  # no generation bump: derived state, the vectors are unchanged
                set_meta(conn, "pending_ann_file", name)
            backend.save(self.path / name, fingerprint=fingerprint, atomic=False)
            fsync_dir(self.path)
            self._record_ann(name)

    def _record_ann(self, name: str | None) -> None:
        """Switch the database to the ANN file `name` (None: no file, exact search) and remove the old one."""
        conn = self._conn
        with self._writing():
            old = _meta(conn, "ann_file")
            with self._transaction():
                queries.switch_ann_file(conn, name, old)
            self._clean_orphan_files()

