"""Plain functions the tests share: data generators, ways to run the CLI, a live server, file snapshots.

Fixtures (a cache folder, the default embedder, the web gallery...) live in the conftest.py files; what a test
calls directly lives here, imported as `from helpers.<module> import ...` (pyproject puts tests/ on sys.path).
Test photos come from the library's `lookalike.search.sample_photos`, which `lookalike demo` uses too.
"""
