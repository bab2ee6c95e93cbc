"""The index store: database, manifest, vector file, ANN structures, export and import."""
