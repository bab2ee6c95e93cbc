import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.cifar import write_cifar_batches
from helpers.datasets import broken_folder_dataset, make_folder_dataset
from lookalike import datasets
from lookalike.datasets import load_data
from lookalike.errors import LookalikeError

pytestmark = pytest.mark.usefixtures("isolated_home")


def test_folder_dataset_loads_into_uint8_tensors(tiny_folder_dataset):
    d = load_data(str(tiny_folder_dataset))
    assert d.classes == ["circle", "square", "triangle"]
    assert d.train.in_memory and d.train.images.dtype == torch.uint8
    assert d.train.images.shape == (36, 3, 32, 32) and d.test.images.shape == (12, 3, 32, 32)
    assert d.train.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert d.input_size == 32 and len(d.mean) == 3 and all(0 < s < 1 for s in d.std)
    # The PNG at index 0 decodes to exactly its pixels.
    png = np.asarray(Image.open(tiny_folder_dataset / "train" / "circle" / "0000.png").convert("RGB"))
    assert np.array_equal(d.train.images[0].permute(1, 2, 0).numpy(), png)


def test_cache_is_reused_and_invalidated(tiny_folder_dataset, isolated_home, monkeypatch):
    load_data(str(tiny_folder_dataset))
    cached = sorted((isolated_home / "datasets").glob("*.pt"))
    assert len(cached) == 2  # train and test

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(datasets, "_decode_one", no_decoding)
    again = load_data(str(tiny_folder_dataset))
    assert again.train.images.shape[0] == 36
    monkeypatch.undo()
    monkeypatch.setenv("LOOKALIKE_HOME", str(isolated_home))
    # Changing one file (size and mtime) gives a new key: the train split is decoded again.
    f = tiny_folder_dataset / "train" / "square" / "0000.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(f)
    os.utime(f, ns=(1, 1))
    d = load_data(str(tiny_folder_dataset))
    assert len(sorted((isolated_home / "datasets").glob("*.pt"))) == 3
    assert d.train.images[12].float().mean().item() < 3


def test_corrupt_image_is_skipped_and_named(tiny_folder_dataset):
    bad = tiny_folder_dataset / "train" / "circle" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    d = load_data(str(tiny_folder_dataset))
    assert len(d.train) == 36
    assert len(d.skipped) == 1 and "broken.jpg" in d.skipped[0]
    # The skip survives the cache: a later run names the file again.
    assert "broken.jpg" in load_data(str(tiny_folder_dataset)).skipped[0]


def test_mixed_sizes_are_fitted_to_one_side(tmp_path):
    root = make_folder_dataset(tmp_path / "d", n_train=2, n_test=1, size=32)
    Image.new("RGB", (40, 24), (9, 9, 9)).save(root / "train" / "circle" / "wide.png")
    d = load_data(str(root))
    assert d.train.images.shape[1:] == (3, 32, 32) and len(d.train) == 7


def test_large_images_stream_with_resize(tmp_path):
    root = make_folder_dataset(tmp_path / "big", n_train=3, n_test=2, size=96)
    d = load_data(str(root), image_size=72, cache_bytes=0)  # a budget of 0: every photo streams
    assert not d.train.in_memory and d.input_size == 72
    x, y = d.train.batch(torch.tensor([0, 4, 8]))
    assert x.shape == (3, 3, 72, 72) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 2]
    # A file that breaks after listing is dropped from its batch and named.
    d.train.files[4].write_bytes(b"garbage")
    x, y = d.train.batch(torch.tensor([0, 4, 8]))
    assert x.shape[0] == 2 and y.tolist() == [0, 2] and "0001.jpg" in d.train.skipped[0]
    # Default side for large images is 128.
    assert load_data(str(root)).input_size == 128


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("no_test", "no test/ folder"),
    ("empty_class", "holds no images"),
    ("mismatch", "different classes"),
    ("no_classes", "no class sub-folders"),
])
def test_bad_folders_raise_clear_errors(tmp_path, case, message):
    with pytest.raises(LookalikeError, match=message):
        load_data(str(broken_folder_dataset(tmp_path, case)))


def test_cifar_batches_folder_is_accepted(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):
        d = load_data(str(path))
        assert d.classes == datasets.CIFAR10_CLASSES
        assert d.train.images.shape == (100, 3, 32, 32) and d.test.images.shape == (20, 3, 32, 32)


def test_cifar10_from_cache_folder(isolated_home):
    write_cifar_batches(isolated_home / "datasets" / "cifar10" / "cifar-10-batches-py")
    d = load_data("cifar10")
    assert len(d.train) == 100 and d.input_size == 32


def test_cifar10_offline_names_data_dir(monkeypatch):
    # A real download attempt against a closed local port: fails at once, like an offline machine.
    monkeypatch.setattr(datasets, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(LookalikeError, match="--data DIR"):
        load_data("cifar10")


def test_auto_model_takes_the_fast_net_up_to_the_small_side_and_photo_above(tmp_path):
    assert [datasets.model_for_side(side) for side in (32, datasets.SMALL_MAX_SIDE, datasets.SMALL_MAX_SIDE + 1)] == [
        "fast", "fast", "photo"]
    make_folder_dataset(tmp_path / "big", n_train=2, n_test=1, size=96)
    assert datasets.auto_model(str(tmp_path / "big")) == "photo"
    assert datasets.auto_model(str(tmp_path / "big"), image_size=48) == "fast"  # the training side decides
