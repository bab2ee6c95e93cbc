"""The training side of a pretrained backbone follows the photos: never upsampled past their own size."""

from PIL import Image

from lookalike.datasets import typical_side
from lookalike.train.probe import pretrained_input_side


def test_photos_smaller_than_the_weights_side_keep_their_own_size():
    assert pretrained_input_side("efficientnet_lite0", 160) == 160
    assert pretrained_input_side("efficientnet_lite0", 170) == 160  # a multiple of the net's stride
    assert pretrained_input_side("efficientnet_lite0", 100) == 96
    assert pretrained_input_side("efficientnet_lite0", 500) == 224  # larger photos: the weights' own side
    assert pretrained_input_side("efficientnet_lite2", 200) == 192
    assert pretrained_input_side("efficientnet_lite2", 300) == 260
    # tiny images (CIFAR) are upsampled as transfer learning does; unknown sizes take the weights' side
    assert pretrained_input_side("efficientnet_lite0", 32) == 224
    assert pretrained_input_side("efficientnet_lite0", None) == 224


def test_typical_side_reads_the_most_common_size_of_a_folder(tmp_path):
    for cls, sizes in {"a": [(200, 150)] * 3, "b": [(200, 150), (90, 300)]}.items():
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, "red").save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not an image")
    assert typical_side(str(tmp_path)) == 150
    assert typical_side("cifar10") is None
    assert typical_side(str(tmp_path / "missing")) is None
