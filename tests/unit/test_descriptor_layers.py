"""The feature maps a descriptor pools: parsing `--layers`, the two-layer pooling and its near-duplicate default."""

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.search.describe.features import input_options, inputs_of, parse_layers, pool_maps
from lookalike.search.retrieve.query import DEFAULT_DUPE_THRESHOLD, TWO_LAYER_DUPE_THRESHOLD, dupe_threshold


@pytest.mark.parametrize("text, names", [(None, ["head"]), ("head", ["head"]), ("blocks", ["blocks"]),
                                         ("blocks, HEAD", ["head", "blocks"]), (["head", "blocks"], ["head", "blocks"])])
def test_layers_are_parsed_in_a_fixed_order(text, names):
    assert parse_layers(text) == names


@pytest.mark.parametrize("text", ["", "fc", "head,,blocks", "head,head"])
def test_bad_layers_are_refused(text):
    with pytest.raises(LookalikeError, match="--layers"):
        parse_layers(text)


def test_the_head_alone_leaves_no_key_and_an_index_without_one_reads_as_the_head():
    assert "layers" not in input_options(layers="head")
    assert input_options(layers="head,blocks")["layers"] == ["head", "blocks"]
    assert inputs_of({"mean": [0.5] * 3})["layers"] == ["head"]
    assert inputs_of({"layers": ["head", "blocks"]})["layers"] == ["head", "blocks"]


def test_two_layer_pooling_normalises_each_part_before_joining():
    rng = np.random.default_rng(0)
    head, blocks = rng.random((2, 6, 4, 4)), rng.random((2, 3, 4, 4)) * 100  # very different scales
    joined = pool_maps(np.concatenate([head, blocks], axis=1), "avg", parts=(6, 3))
    expected = np.concatenate([pool_maps(head, "avg"), pool_maps(blocks, "avg")], axis=1) / np.sqrt(2)
    np.testing.assert_allclose(joined, expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1.0, rtol=1e-5)


def test_dupes_threshold_follows_the_descriptor():
    assert dupe_threshold({"preprocess": {"layers": ["head", "blocks"]}}) == TWO_LAYER_DUPE_THRESHOLD
    assert dupe_threshold({"preprocess": {}}) == dupe_threshold({}) == DEFAULT_DUPE_THRESHOLD
    assert TWO_LAYER_DUPE_THRESHOLD < DEFAULT_DUPE_THRESHOLD
