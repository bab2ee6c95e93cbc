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
