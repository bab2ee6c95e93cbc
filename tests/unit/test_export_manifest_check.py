"""`manifest_check.backbone_problem`: what `lookalike import` accepts as the backbone of a new index."""

from __future__ import annotations

import pytest

from lookalike.models.pretrained import PREPROCESS
from lookalike.search.describe.features import input_options
from lookalike.search.store.manifest_check import backbone_problem

LITE0 = {"model": "efficientnet_lite0", "pooling": "avg", "dim": 1600, "weights": None,
         "preprocess": {**PREPROCESS["efficientnet_lite0"], **input_options(trim=True, layers=["head", "blocks"])}}


@pytest.mark.parametrize("description", [
    LITE0,
    {**LITE0, "dim": 1280, "pooling": "gem:2", "weights": "/models/lite0.pth",
     "preprocess": {**PREPROCESS["efficientnet_lite0"], **input_options(416, [1.0, 1.25], trim=True)}},
    {**LITE0, "dim": 1280, "pooling": "rmac", "preprocess": {**PREPROCESS["efficientnet_lite0"],
                                                             **input_options(512)}},
    {"model": "/runs/a/best.pt", "pooling": "avg", "dim": 64, "weights": None,  # a trained checkpoint's
     "preprocess": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "input_size": 32, "resize_size": 32,
                    "interpolation": "bilinear"}, "whitening": {"file": "whitening-0123456789abcdef.npz"},
     "root": "/photos"},
])
def test_the_descriptions_lookalike_makes_pass(description):
    assert backbone_problem(description) is None


@pytest.mark.parametrize("change, named", [
    ({"pooling": "rmac"}, "pooling"),  # R-MAC needs whole-photo inputs
    ({"pooling": "GeM"}, "pooling"),
    ({"dim": 0}, "dim"), ({"dim": 1 << 20}, "dim"),
    ({"weights": ""}, "weights"),
    ({"preprocess": {**LITE0["preprocess"], "mean": [0.5, float("nan"), 0.5]}}, "preprocess.mean"),
    ({"preprocess": {**LITE0["preprocess"], "input_size": 10**6}}, "preprocess.input_size"),
    ({"preprocess": {**LITE0["preprocess"], "layers": ["blocks", "head"]}}, "preprocess.layers"),
    ({"preprocess": {**LITE0["preprocess"], "trim": "yes"}}, "preprocess.trim"),
    ({"preprocess": {**PREPROCESS["efficientnet_lite0"], "fit": "whole", "long_side": 416, "scales": [9.0]}},
     "scales"),
    ({"preprocess": {**PREPROCESS["efficientnet_lite0"], "long_side": 416}}, "long_side"),
])
def test_each_unusable_field_is_named(change, named):
    problem = backbone_problem({**LITE0, **change})
    assert problem is not None and named in problem


def test_not_an_object():
    assert backbone_problem(["efficientnet_lite0"]) == "not a JSON object"
