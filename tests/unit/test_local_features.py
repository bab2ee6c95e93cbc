"""Local features as the index stores them (`search/describe/local_features.py`): a packed record unpacks to
exactly what a fresh extraction gives, anything else read from the database is refused whole; and the ratio-test
matcher of `verify.py` finds the matches OpenCV's brute-force matcher finds."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from helpers.search import photo

from lookalike.search.describe import local_features as lf
from lookalike.search.retrieve import verify


def test_packed_features_unpack_to_a_fresh_extraction():
    image = photo("coffee").resize((900, 600))
    blob = lf.packed_features(image)
    fresh = lf.local_features(image, lf.LIBRARY_SIDE)
    back = lf.unpack(blob)
    assert back.long_side == fresh.long_side == lf.LIBRARY_SIDE
    assert 50 < len(back.points) <= lf.LIBRARY_KEYPOINTS
    assert np.array_equal(back.descriptors, fresh.descriptors)  # raw SIFT bytes: RootSIFT taken alike
    assert np.abs(back.points - fresh.points).max() <= 0.125  # float16 positions: an eighth of a pixel here
    assert len(blob) == 8 + len(back.points) * 132  # header, 4 bytes of position and 128 of descriptor each
    # Both images verify against each other as well from the record as from a fresh extraction.
    other = lf.local_features(image.crop((100, 50, 800, 560)), lf.QUERY_SIDE, lf.QUERY_KEYPOINTS)
    assert abs(verify.count_inliers(other, back) - verify.count_inliers(other, fresh)) <= 2


def test_an_image_without_keypoints_packs_to_an_empty_record():
    from PIL import Image

    back = lf.unpack(lf.packed_features(Image.new("L", (300, 200), 128)))
    assert back is not None and len(back.points) == 0 and back.descriptors.shape == (0, 128)


def _record(n=3, side=256, points=None):
    pts = np.asarray(points if points is not None else [[1, 2], [30, 40], [200, 100]][:n], np.float32)
    return lf.pack(pts, np.full((len(pts), 128), 7, np.uint8), side)


@pytest.mark.parametrize("blob", [
    None, b"", b"LKP1", "text", 12,
    _record()[:-1],  # cut short
    _record() + b"\0",  # a byte too many
    b"XXXX" + _record()[4:],  # another magic
    struct.pack("<4sHH", b"LKP1", lf.MAX_KEYPOINTS + 1, 256) + bytes((lf.MAX_KEYPOINTS + 1) * 132),  # too many
    _record(side=0),
    _record(points=[[1, 2], [float("nan"), 3], [4, 5]]),
    _record(points=[[1, 2], [300, 3], [4, 5]]),  # off an image 256 pixels long
])
def test_anything_but_a_whole_record_is_refused(blob):
    assert lf.unpack(blob) is None


def test_a_record_read_back_is_whole():
    back = lf.unpack(_record())
    assert back.points.tolist() == [[1, 2], [30, 40], [200, 100]] and back.long_side == 256
    assert np.allclose(np.linalg.norm(back.descriptors.astype(np.float32), axis=1), 1.0, atol=1e-2)


def test_ratio_matches_agree_with_opencvs_brute_force_matcher():
    cv2 = lf.opencv()
    a = lf.local_features(photo("astronaut"), 384).descriptors
    b = lf.local_features(photo("astronaut").rotate(15).crop((20, 20, 480, 400)), 384).descriptors
    rows, cols, sims = verify.ratio_matches(a, b)
    assert np.all((sims > 0) & (sims <= 1.0001))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.astype(np.float32), b.astype(np.float32), k=2)
    expected = {(p[0].queryIdx, p[0].trainIdx) for p in pairs
                if len(p) == 2 and p[0].distance < verify.RATIO * p[1].distance}
    found = set(zip(rows.tolist(), cols.tolist()))
    assert len(expected) > 30
    # Float rounding may settle a near tie either way: all but a handful agree.
    assert len(found ^ expected) <= max(2, len(expected) // 50)
    empty = np.zeros((0, 128), np.float32)
    assert [len(x) for x in verify.ratio_matches(empty, b)] == [0, 0, 0]
    assert [len(x) for x in verify.ratio_matches(a, b[:1])] == [0, 0, 0]  # no second neighbour: no ratio
