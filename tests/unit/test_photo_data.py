"""Photo data: folder layouts, the decoded-once photo cache, batched random-resized crops."""

import os
import random
import shutil

import pytest
import torch

from helpers.datasets import make_class_image, make_folder_dataset
from lookalike import photo_cache
from lookalike.datasets import load_data, split_per_class
from lookalike.errors import LookalikeError
from lookalike.train.photo_augment import random_resized_crop

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture
def photos(tmp_path):
    """3 classes of 80-px photos: 8 train and 3 held out each, in train/ and test/."""
    return make_folder_dataset(tmp_path / "photos", n_train=8, n_test=3, size=80)


def test_train_with_val_folder(photos):
    (photos / "test").rename(photos / "val")
    d = load_data(str(photos), image_size=48 + 24)
    assert len(d.train) == 24 and len(d.test) == 9 and d.layout["test"].endswith("val")
    assert d.train.in_memory and d.train.images.shape[1:] == (3, 72, 72)


def test_val_is_evaluated_during_training_and_test_by_evaluate(photos):
    shutil.copytree(photos / "test", photos / "val")
    assert load_data(str(photos), image_size=72).layout["test"].endswith("val")
    assert load_data(str(photos), image_size=72, need_train=False).layout["test"].endswith("test")


def test_single_folder_is_split_per_class_the_same_way_every_time(photos):
    single = photos.parent / "single"
    shutil.copytree(photos / "train", single)
    d = load_data(str(single), image_size=72, val_fraction=0.25)
    assert len(d.train) == 18 and len(d.test) == 6  # 2 of each class's 8
    assert torch.bincount(d.test.labels).tolist() == [2, 2, 2]
    again = load_data(str(single), image_size=72, val_fraction=0.25)
    assert again.layout["held_out_sha256"] == d.layout["held_out_sha256"]
    assert torch.equal(again.test.images, d.test.images)
    # Without --val-fraction a single folder holds out the default fifth.
    assert load_data(str(single), image_size=72).layout["val_fraction"] == 0.2
    # Evaluating a checkpoint of that run reads the same held-out photos.
    held = load_data(str(single), image_size=72, val_fraction=0.25, need_train=False)
    assert torch.equal(held.test.images, d.test.images) and len(held.train) == 0


def test_split_depends_on_names_only(tmp_path):
    files = {"a": [tmp_path / f"{i}.jpg" for i in range(10)], "b": [tmp_path / "x.jpg"]}
    train, held = split_per_class(files, 0.3)
    assert len(held["a"]) == 3 and len(train["a"]) == 7
    assert held["b"] == [] and train["b"] == files["b"]  # one photo stays for training
    assert split_per_class({"a": list(reversed(files["a"])), "b": files["b"]}, 0.3)[1] == held


def test_lone_train_folder_needs_a_val_fraction(photos):
    shutil.rmtree(photos / "test")
    with pytest.raises(LookalikeError, match="--val-fraction"):
        load_data(str(photos))
    d = load_data(str(photos), image_size=72, val_fraction=0.25)
    assert len(d.test) == 6 and d.layout["val_fraction"] == 0.25


def test_val_fraction_with_a_val_folder_is_refused(photos):
    with pytest.raises(LookalikeError, match="--val-fraction splits a folder without"):
        load_data(str(photos), val_fraction=0.2)


def test_class_folder_without_images_is_one_clear_error(photos):
    (photos / "train" / "empty").mkdir()
    with pytest.raises(LookalikeError, match="class folder .*empty holds no images"):
        load_data(str(photos), image_size=72)


def test_unreadable_photos_are_skipped_and_named(photos):
    (photos / "train" / "square" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    d = load_data(str(photos), image_size=72)
    assert len(d.train) == 24 and any("broken.jpg" in s for s in d.skipped)
    # From the cache, the skip is named again.
    assert any("broken.jpg" in s for s in load_data(str(photos), image_size=72).skipped)


def _cache_files(home):
    return sorted(p.name for p in (home / "photos").iterdir() if not p.name.startswith("."))


def test_photo_cache_is_memory_mapped_and_reused(photos, isolated_home):
    messages = []
    first = load_data(str(photos), image_size=72, progress=messages.append)
    assert sum("decoding" in m for m in messages) == 2  # train and test, once each
    files = _cache_files(isolated_home)
    assert len(files) == 4 and sum(f.endswith(".u8") for f in files) == 2
    messages.clear()
    second = load_data(str(photos), image_size=72, progress=messages.append)
    assert not any("decoding" in m for m in messages)
    assert torch.equal(first.train.images, second.train.images)
    assert _cache_files(isolated_home) == files
    if os.path.exists("/proc/self/maps"):  # memory-mapped from the cache files, not read into memory
        maps = open("/proc/self/maps").read()
        assert sum(name in maps for name in files if name.endswith(".u8")) == 2
    # Copy-on-write: a change to the tensor never reaches the cache file.
    second.train.images[0] = 0
    assert torch.equal(load_data(str(photos), image_size=72).train.images, first.train.images)


def test_photo_cache_is_rebuilt_when_a_file_changes(photos, isolated_home):
    load_data(str(photos), image_size=72)
    before = _cache_files(isolated_home)
    target = photos / "train" / "circle" / "0000.png"
    make_class_image(2, 80, random.Random(5)).save(target)
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    messages = []
    d = load_data(str(photos), image_size=72, progress=messages.append)
    assert sum("decoding" in m for m in messages) == 1  # only the changed split
    after = _cache_files(isolated_home)
    assert len(after) == 4 and after != before  # the stale cache of that split is replaced, not kept
    assert len(d.train) == 24
    # Another side is another cache.
    load_data(str(photos), image_size=64 + 16)
    assert len(_cache_files(isolated_home)) == 8


def test_photo_cache_respects_its_memory_budget(photos, isolated_home):
    one_split = photo_cache.cache_bytes(24, 72)
    d = load_data(str(photos), image_size=72, cache_bytes=one_split)
    assert d.train.in_memory and not d.test.in_memory  # the train split filled the budget: test streams
    x, y = d.test.batch(torch.tensor([0, 3, 8]))
    assert x.shape == (3, 3, 72, 72) and y.tolist() == [0, 1, 2]
    streamed = load_data(str(photos), image_size=72, cache_bytes=0)
    assert not streamed.train.in_memory and not streamed.test.in_memory
    assert torch.equal(streamed.train.batch(torch.arange(24))[0], d.train.images)


def test_damaged_cache_is_rebuilt_not_trusted(photos, isolated_home):
    first = load_data(str(photos), image_size=72)
    expected = first.train.images.clone(), first.test.images.clone()
    del first  # a mapping of a file truncated under it would fault
    for data_file in (p for p in (isolated_home / "photos").iterdir() if p.suffix == ".u8"):
        with open(data_file, "r+b") as fh:
            fh.truncate(100)
    again = load_data(str(photos), image_size=72)
    assert torch.equal(again.train.images, expected[0]) and torch.equal(again.test.images, expected[1])


def test_random_resized_crop_shapes_and_determinism():
    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    a = random_resized_crop(x, torch.Generator().manual_seed(3), 32, 0.25)
    b = random_resized_crop(x, torch.Generator().manual_seed(3), 32, 0.25)
    c = random_resized_crop(x, torch.Generator().manual_seed(4), 32, 0.25)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) <= 255
    # Scale 1 without flips is the whole image, resampled: a constant image stays constant.
    flat = torch.full((2, 3, 40, 40), 77, dtype=torch.uint8)
    assert torch.allclose(random_resized_crop(flat, torch.Generator(), 24, 1.0, flip=False), torch.full((2, 3, 24, 24), 77.0))
    assert random_resized_crop(x[:0], torch.Generator(), 16, 0.5).shape == (0, 3, 16, 16)
