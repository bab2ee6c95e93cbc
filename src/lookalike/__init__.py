"""Lookalike: train CNN image classifiers fast, and search images by content with CNN features."""

import os as _os

# NumPy's OpenBLAS keeps its worker threads spinning for about a tenth of a second after every matrix product;
# after each search's one small product that is a core taken from decoding, SIFT and the server's other
# requests. A short timeout puts them to sleep at once (read when NumPy loads OpenBLAS, so set before it is
# imported; a value the user set is kept).
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
