"""Lookalike: train CNN image classifiers fast, and search images by content with CNN features."""

__version__ = "0.1.0"
