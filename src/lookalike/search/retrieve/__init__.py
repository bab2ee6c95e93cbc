"""Answering queries: search, expansion, spatial verification, near-duplicates, reports."""
