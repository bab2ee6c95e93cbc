"""Retrieval benchmarks' own protocols (mAP, mAP@R), measured through the search path."""
