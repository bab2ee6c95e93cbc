"""Search images by content.

- `features`: backbone + preprocessing + pooling -> L2-normalised float32 vectors (`load_embedder`);
  `file_results`: what reading one file came to (`decode_file`, `stream`);
- `index`: the on-disk index (SQLite rows, memory-mapped vector file, ANN file, JSON manifest): `IndexSnapshot`
  (read-only) and `IndexWriter`, opened with `ImageIndex.open`;
- `sync`: incremental indexing of a folder (`index_folder`);
- `ann`: search backends (exact, HNSW, IVF, IVF-PQ) behind one interface; `compact`: PCA and float16;
- `query`: search (`run_queries`, the one query path of the CLI and the web service), compare and
  near-duplicate groups (`dupes_graph`: the kNN graph through a backend); `results`: the shape of a search
  answer, shared by `lookalike search --json` and the web API; `verify`: spatial verification, the shortlist
  re-ranked by local features that agree on one transform;
- `export`: vectors out to parquet / .npy and back in;
- `demo` and `report`: the no-download demo benchmark and its self-contained HTML report; `sample_photos`: its
  gallery (scikit-image's bundled photos and edited copies), which the tests and benchmarks use too.

Submodules are imported on demand so that importing `lookalike` stays light.
"""
