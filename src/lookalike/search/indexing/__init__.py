"""Bringing an index up to date with its folder, on one process or many."""
