"""Search images by content.

- `features`: backbone + preprocessing + pooling -> L2-normalised float32 vectors (`load_embedder`);
- `index`: the on-disk index (SQLite rows, memory-mapped vector file, JSON manifest) (`ImageIndex`);
- `sync`: incremental indexing of a folder (`index_folder`);
- `query`: search, compare and near-duplicate groups over stored vectors;
- `demo` and `report`: the no-download demo gallery and its self-contained HTML report.

Submodules are imported on demand so that importing `lookalike` stays light.
"""
