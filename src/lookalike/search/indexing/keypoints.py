"""Store the local features of images indexed before they were stored (index format 6 and older), from the
renditions those images already have: no photo file is read and no image is embedded again. Until then,
verification runs SIFT on their renditions at search time, as it did before.

Each batch is committed on its own, so an interrupted run keeps what it stored and the next one goes on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from .facts import in_batches

BATCH = 200  # renditions whose features are committed together


def _packed(jpeg: bytes) -> Optional[bytes]:
    from ...images import load_image
    from ..describe.local_features import packed_features

    try:
        return packed_features(load_image(jpeg))
    except Exception:  # a damaged rendition: stored as "none", verification reads the file as before
        return None


def fill_keypoints(index, progress: Callable[[int, int], None] | None = None) -> int:
    """Take and store the local features of every rendition of the writer `index` that lacks them; returns how
    many. `progress(done, total)` after each committed batch. SIFT and the decodes run one thread per core
    (both release the GIL)."""
    from ...device import free_cores

    total = index.count_keypoints_missing()
    if not total:
        return 0
    with ThreadPoolExecutor(max(1, free_cores())) as pool:
        def store(batch: list) -> None:
            blobs = pool.map(_packed, [jpeg for _, jpeg in batch])
            index.store_keypoints([(image_id, blob) for (image_id, _), blob in zip(batch, blobs)])

        return in_batches(total, lambda last: index.keypoints_missing(last, BATCH), store, progress)
