"""Search images by content, in stages whose folders read as the pipeline:

- `describe/`: backbone + preprocessing + pooling -> L2-normalised float32 vectors (`features.load_embedder`),
  PCA-whitening, the weights file's digest, and what reading one file came to (`file_results`);
- `store/`: the on-disk index (`index`: SQLite rows, memory-mapped vector file, ANN file, JSON manifest;
  `IndexSnapshot` read-only and `IndexWriter`, opened with `ImageIndex.open`), search backends (`ann`: exact,
  HNSW, IVF, IVF-PQ behind one interface; `compact`: PCA and float16), vectors out to parquet and back in
  (`export`, `importer`, `manifest_check`);
- `indexing/`: bringing an index up to date with its folder (`sync.index_folder`), across the processes of a
  torchrun group (`sharded`);
- `retrieve/`: answering queries (`query.run_queries`, the one query path of the CLI and the web service; compare;
  alpha-QE and DBA), spatial verification (`verify`), near-duplicate groups (`dupes_graph`), the shape of an
  answer (`results`) and the HTML report (`report`);
- `evaluation/`: the benchmarks' own protocols (`evaluate`, `metrics`);
- `demo` and `sample_photos`: the no-download demo benchmark and its gallery; `presets`: named settings.

Submodules are imported on demand so that importing `lookalike` stays light.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Where each module of the flat layout went: `lookalike.search.index` still imports (the same module object as
# `lookalike.search.store.index`) for code written against the old paths.
MOVED = {
    **{m: f"store.{m}" for m in ("index", "ann", "compact", "export", "importer", "manifest_check")},
    **{m: f"describe.{m}" for m in ("features", "whitening", "model_digest", "file_results")},
    **{m: f"indexing.{m}" for m in ("sync", "sharded")},
    **{m: f"retrieve.{m}" for m in ("query", "verify", "dupes_graph", "results", "report")},
    **{m: f"evaluation.{m}" for m in ("evaluate", "metrics")},
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        head, _, name = fullname.rpartition(".")
        if head == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        if fullname == f"{__name__}.onnx_runtime":
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        name = spec.name.rpartition(".")[2]
        target = "lookalike.onnx_runtime" if name == "onnx_runtime" else f"{__name__}.{MOVED[name]}"
        return importlib.import_module(target)

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.append(_OldPaths())
