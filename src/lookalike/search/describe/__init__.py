"""Descriptors: the backbone and its preprocessing, pooling, whitening, decode outcomes."""
