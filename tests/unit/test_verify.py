"""Spatial verification (`search/retrieve/verify.py`) on real photos: SIFT inliers of a scene against an edited view of
it and against other photos, the gain rule, the re-ranking of a shortlist, the bounded feature cache, and the
ranking hook of `evaluate_groundtruth`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers.search import photo

from lookalike.errors import LookalikeError
from lookalike.search.retrieve import verify
from lookalike.search.evaluation.evaluate import Benchmark, Descriptors, evaluate_groundtruth
from lookalike.search.evaluation.metrics import holidays_ap


def _view(img: Image.Image) -> Image.Image:
    """Another view of the same scene: turned 20 degrees, cropped off centre, shrunk by a quarter."""
    w, h = img.size
    turned = img.rotate(20, resample=Image.Resampling.BICUBIC, expand=False)
    part = turned.crop((int(w * 0.1), int(h * 0.05), int(w * 0.9), int(h * 0.85)))
    return part.resize((int(part.width * 0.75), int(part.height * 0.75)), Image.Resampling.BILINEAR)


def test_a_view_of_the_same_scene_verifies_and_other_photos_do_not():
    scene = verify.local_features(photo("astronaut"))
    same = verify.count_inliers(scene, verify.local_features(_view(photo("astronaut"))))
    others = [verify.count_inliers(scene, verify.local_features(photo(name)))
              for name in ("camera", "chelsea", "coffee", "rocket")]
    assert same >= 3 * verify.MIN_INLIERS
    assert max(others) < verify.MIN_INLIERS
    assert verify.verification_gain(same) > 0 and all(verify.verification_gain(n) == 0 for n in others)


def test_local_features_are_taken_at_a_bounded_size():
    big = photo("coffee").resize((2000, 1333))
    feats = verify.local_features(big)
    assert feats.long_side == verify.LONG_SIDE
    assert 0 < len(feats.points) <= verify.MAX_KEYPOINTS and feats.descriptors.shape == (len(feats.points), 128)
    assert feats.points.max() <= verify.LONG_SIDE and feats.descriptors.dtype == np.float32
    # RootSIFT rows: square roots of L1-normalised histograms, so unit L2 norm.
    norms = np.linalg.norm(feats.descriptors.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-2)
    blank = verify.local_features(Image.new("RGB", (64, 48), (128, 128, 128)))
    assert len(blank.points) == 0 and verify.count_inliers(blank, feats) == 0


def test_gain_starts_at_min_inliers_and_saturates():
    assert verify.verification_gain(0) == 0.0
    assert verify.verification_gain(verify.MIN_INLIERS - 1) == 0.0
    assert verify.verification_gain(verify.MIN_INLIERS) == pytest.approx(verify.MIN_INLIERS / verify.FULL_INLIERS)
    assert verify.verification_gain(verify.FULL_INLIERS) == 1.0 == verify.verification_gain(10 * verify.FULL_INLIERS)


def _hit(rank: int, path, similarity: float) -> dict:
    return {"rank": rank, "id": rank, "path": str(path), "similarity": similarity,
            "distance": float(np.sqrt(2 - 2 * similarity))}


def test_rerank_moves_the_verified_view_up_and_keeps_the_rest(tmp_path):
    for name in ("camera", "coins", "chelsea", "rocket"):
        photo(name).save(tmp_path / f"{name}.jpg")
    _view(photo("chelsea")).save(tmp_path / "chelsea-view.jpg")
    hits = [_hit(1, tmp_path / "camera.jpg", 0.9), _hit(2, tmp_path / "gone.jpg", 0.85),
            _hit(3, tmp_path / "coins.jpg", 0.8), _hit(4, tmp_path / "chelsea-view.jpg", 0.7),
            _hit(5, tmp_path / "rocket.jpg", 0.6)]
    verifier = verify.Verifier(shortlist=4)
    ranked = verifier.rerank(hits, verifier.features_of(tmp_path / "chelsea.jpg"))
    assert [h["path"] for h in ranked] == [hits[i]["path"] for i in (3, 0, 1, 2, 4)]
    assert [h["rank"] for h in ranked] == [1, 2, 3, 4, 5]
    assert ranked[0]["inliers"] >= verify.MIN_INLIERS
    assert ranked[2]["inliers"] is None  # the vanished file: not verified, its place among the others kept
    assert "inliers" not in ranked[4]  # beyond the shortlist: untouched
    assert ranked[0]["similarity"] == 0.7  # the scores shown stay the descriptor's
    # A query whose own image cannot be read verifies nothing: hits as they were, gains all zero.
    assert verifier.rerank(hits, None) == hits
    assert verifier.gains(None, [h["path"] for h in hits]).tolist() == [0.0] * len(hits)


def test_feature_cache_is_bounded(tmp_path):
    paths = []
    for name in ("camera", "coins", "rocket"):
        paths.append(tmp_path / f"{name}.png")
        photo(name, side=96).save(paths[-1])
    verifier = verify.Verifier(shortlist=3, cache_images=2)
    for p in paths:
        assert verifier.features_of(p) is not None
    assert len(verifier._cache) == 2 and str(paths[0]) not in verifier._cache


@pytest.mark.parametrize("shortlist", [0, -3, verify.MAX_SHORTLIST + 1])
def test_shortlist_out_of_range_is_a_user_error(shortlist):
    with pytest.raises(LookalikeError, match="--verify"):
        verify.Verifier(shortlist)


def test_evaluate_groundtruth_ranks_with_the_rescore_of_the_shortlist(tmp_path):
    # Query q; positive p sits third by descriptor; the rescore lifts p over both distractors.
    bench = Benchmark(tmp_path, "groundtruth", ["q", "a", "b", "p"],
                      queries=[{"query": "q", "positives": ["p"], "junk": []}])
    database = np.eye(4, dtype=np.float32)
    query = np.array([1.0, 0.9, 0.8, 0.7], np.float32)
    database[0] = query / np.linalg.norm(query)
    seen = []

    def rescore(name, positions):
        seen.append((name, [int(x) for x in positions]))
        return np.where(positions == 3, 1.0, 0.0).astype(np.float32)

    args = (bench, Descriptors(database, database[[0]][:, None, :]), np.array([0]), np.arange(4), [0])
    plain = evaluate_groundtruth(*args)["figures"]
    lifted_run = evaluate_groundtruth(*args, rescore=rescore, shortlist=3)
    lifted = lifted_run["figures"]
    top_pos, top_score = lifted_run["per_query"][0]["_top"][0]
    assert top_pos == 3 and top_score == pytest.approx(float(database[3] @ database[0]))  # reported: the descriptor's
    assert plain["mAP"] == pytest.approx(holidays_ap([2], 1)) and plain["P@1"] == 0.0
    assert lifted["mAP"] == 1.0 and lifted["P@1"] == 1.0
    assert seen == [("q", [1, 2, 3])]  # the query itself is never shortlisted
    short = evaluate_groundtruth(*args, rescore=rescore, shortlist=2)["figures"]
    assert short["mAP"] == plain["mAP"]  # p is outside a shortlist of two: nothing changes


def test_a_nearly_featureless_result_earns_no_gain_from_many_matches_on_its_few_points():
    # The result has three keypoints; thirty of the query's (ten at each of three places, as SIFT gives several
    # orientations at one spot) are near copies of them. They agree with one transform, but only three points of
    # the result are involved: three inliers, not thirty.
    rng = np.random.default_rng(0)
    base = np.abs(rng.normal(size=(3, 128))).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    result = verify.LocalFeatures(np.array([[10, 10], [200, 40], [90, 180]], np.float32), base, 256)
    desc = np.repeat(base, 10, axis=0) + rng.normal(0, 0.01, (30, 128)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    query = verify.LocalFeatures(np.repeat(result.points * 1.2 + 5, 10, axis=0), desc.astype(np.float32), 320)
    assert verify.count_inliers(query, result) <= 3
    assert verify.verification_gain(verify.count_inliers(query, result)) == 0
